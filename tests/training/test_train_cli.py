"""`purevedec train` as a user runs it: flags checked up front, checkpoints that caption, the
bundled shapes model fine-tuned, and Ctrl-C at each phase (a subprocess, the signal sent when
the command prints the phase's marker)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import purevedec as pv

pytest.importorskip("optax")
from purevedec.commands import main  # noqa: E402
from purevedec.training.loop import checkpoints  # noqa: E402


def _data(tmp_path, n=6):
    folder = tmp_path / "data"
    folder.mkdir()
    lines = []
    for i in range(n):
        arr = np.random.RandomState(i).randint(0, 256, (16, 16, 3)).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"im{i}.png")
        lines.append(json.dumps({"image": f"im{i}.png", "caption": f"t{3 + i} t{4 + i}"}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from models import make_reference, save_captioning_checkpoint
    return save_captioning_checkpoint(make_reference(seed=2), tmp_path_factory.mktemp("m") / "model")


@pytest.mark.parametrize("flags, named", [
    (["--keep", "0"], "--keep 0"), (["--keep", "-1"], "--keep -1"), (["--epochs", "0"], "--epochs 0"),
    (["--batch-size", "-2"], "--batch-size -2"), (["--validation-fraction", "nan"], "--validation-fraction nan"),
    (["--learning-rate", "inf"], "--learning-rate inf"), (["--label-smoothing", "1.5"], "--label-smoothing 1.5"),
    (["--seed", "-1"], "--seed -1"), (["--seed", str(2 ** 70)], "--seed"), (["--max-steps", "0"], "--max-steps 0"),
    (["--eval-every", "-3"], "--eval-every -3"), (["--patience", "0"], "--patience 0"),
    (["--batch-size", "3", "--accumulation-steps", "2"], "--accumulation-steps 2"),
])
def test_bad_flags_are_one_line_before_loading(tmp_path, capsys, flags, named):
    data = _data(tmp_path)
    code = main(["train", "no-such-model-dir/", data, "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and named in err, err  # the model was never looked for
    assert not os.path.exists(tmp_path / "out")


def test_an_out_that_is_a_file_is_refused_untouched(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert main(["train", "no-such-model-dir/", _data(tmp_path), "--out", str(notes)]) == 2
    assert "--out" in capsys.readouterr().err and notes.read_text() == "mine"


def test_a_tokenizer_smaller_than_the_model_is_one_line_before_training(tmp_path, model, capsys):
    """Evaluation and the saved checkpoints would decode the ids past the tokenizer to nothing."""
    import shutil
    from tokenizers import Tokenizer, models
    small = shutil.copytree(model, tmp_path / "small")
    for name in os.listdir(small):
        if "token" in name or name in ("vocab.json", "merges.txt"):
            os.remove(small / name)
    Tokenizer(models.WordLevel({"t0": 0, "t1": 1, "t2": 2}, unk_token="t0")).save(str(small / "tokenizer.json"))
    out = tmp_path / "out"
    code = main(["train", str(small), _data(tmp_path), "--out", str(out), "--compile-cache", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "3 token ids, fewer than the model's vocabulary of 50" in err[-1], err
    assert not out.exists()


def test_help_shows_each_default(capsys):
    try:
        assert main(["train", "--help"]) == 0
    except SystemExit as e:
        assert e.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: 5e-05)", "(default: 8)", "(default: 0.1)", "(default: linear)", "(default: 2)"):
        assert shown in out


def test_every_checkpoint_is_a_model_folder_that_captions(tmp_path, model, capsys):
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel
    data, out = _data(tmp_path), tmp_path / "out"
    assert main(["train", model, data, "--out", str(out), "--epochs", "2", "--batch-size", "2", "--no-progress",
                 "--compile-cache", "none", "--learning-rate", "1e-3"]) == 0
    found = [p for _, p in checkpoints(str(out))]
    assert [os.path.basename(p) for p in found] == ["checkpoint-3", "checkpoint-6"]
    image = os.path.join(data, "im0.png")
    for folder in (*found, str(out / "best")):
        captioner = pv.Captioner.from_pretrained(folder)
        pv.load(folder)
        hf = VisionEncoderDecoderModel.from_pretrained(folder)
        tokenizer, processor = AutoTokenizer.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder)
        pixels = processor(Image.open(image).convert("RGB"), return_tensors="pt").pixel_values
        theirs = hf.generate(pixels, max_new_tokens=8, do_sample=False, num_beams=1)
        ours = captioner.caption([image], max_new_tokens=8)[0]
        assert isinstance(ours, str) and tokenizer.decode(theirs[0], skip_special_tokens=True) == ours
    capsys.readouterr()
    assert main(["caption", "--model", str(out / "best"), image, "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(image)


def test_the_bundled_shapes_model_fine_tunes_and_unknown_words_are_reported(tmp_path, capsys):
    data = tmp_path / "shapes"
    assert main(["render-shapes", "--out", str(data), "--count", "6"]) == 0
    lines = open(data / "captions.jsonl").read().splitlines()
    first = json.loads(lines[0])
    lines[0] = json.dumps({**first, "caption": first["caption"] + " near a dragon"})
    (data / "captions.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["train", "purevedec:shapes", str(data), "--out", str(out), "--batch-size", "3", "--no-progress",
                 "--validation-fraction", "0.34"]) == 0
    err = capsys.readouterr().err
    assert "1 of 6 captions (16.7%) contain words the tokenizer does not know" in err and "'near' (1)" in err
    assert "'dragon' (1)" in err
    evals = [json.loads(x) for x in open(out / "metrics.jsonl") if '"eval"' in x]
    assert len(evals) == 1 and "val_exact_match" in evals[0]
    assert main(["caption", "--model", str(out / "best"), str(data / json.loads(lines[1])["image"]),
                 "--no-progress"]) == 0


# ---- Ctrl-C at each phase --------------------------------------------------------------------------

PHASES = {  # phase -> (marker line prefix, its occurrence, extra flags)
    "loading": ("loading ", 1, []),
    "compiling": ("compiling the train step", 1, ["--compile-cache", "none"]),
    "training": ("training: first step", 1, ["--epochs", "3000", "--eval-every", "100000", "--save-every", "100000"]),
    "evaluating": ("evaluating at step 2", 1, ["--save-every", "1", "--eval-every", "2", "--epochs", "50"]),
    "saving": ("saving checkpoint-2", 1, ["--save-every", "1", "--eval-every", "100000", "--epochs", "50"]),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_ctrl_c_at_each_phase_exits_130_with_whole_checkpoints(tmp_path, model, phase):
    marker, _, flags = PHASES[phase]
    data, out = _data(tmp_path), tmp_path / "out"
    env = {**os.environ, "PUREVEDEC_COMPILE_CACHE": str(tmp_path.parent / "train-cli-cache")}
    cmd = [sys.executable, "-m", "purevedec", "train", model, data, "--out", str(out), "--batch-size", "1",
           "--no-progress", "--validation-fraction", "0.34", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith(marker):
                proc.send_signal(signal.SIGINT)
                sent = time.monotonic()
                break
        else:
            pytest.fail(f"no marker {marker!r}: {''.join(seen)[-2000:]}")
        rest = proc.stderr.read()
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    stopped = time.monotonic() - sent
    assert code == 130, "".join(seen) + rest
    assert stopped < 20, stopped  # seconds on a loaded 2-core machine; the watcher's grace is 3 s
    assert "interrupted" in rest and ("Run the same command again to resume" in rest or "nothing to resume" in rest)
    for _, path in checkpoints(str(out)):  # every checkpoint left is whole
        pv.load(path)
        assert {"tokenizer.json", "preprocessor_config.json", "train_state.npz"} <= set(os.listdir(path))
    if phase in ("evaluating", "saving"):
        assert checkpoints(str(out)), rest  # the one before the interrupted phase is there


LOSSY_EVALUATE = """
import os, signal, sys, time
import purevedec.training.loop as loop
from purevedec.commands import main

def evaluate(*args, **kwargs):  # as numpy does: the interrupt raised in a callback becomes another error
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    except KeyboardInterrupt:
        raise SystemError("<built-in function> returned a result with an exception set") from None

loop.evaluate = evaluate
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_that_a_library_turns_into_an_error_is_still_an_interrupt(tmp_path, model):
    """Not "saving before stopping on an error" and the captioning driver's bare "interrupted"
    (what the evaluating phase above printed once in CI), but the train command's own message."""
    data, out = _data(tmp_path), tmp_path / "out"
    env = {**os.environ, "PUREVEDEC_COMPILE_CACHE": str(tmp_path.parent / "train-cli-cache")}
    proc = subprocess.run([sys.executable, "-c", LOSSY_EVALUATE, "train", model, data, "--out", str(out),
                           "--batch-size", "1", "--no-progress", "--validation-fraction", "0.34", "--save-every", "1",
                           "--eval-every", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert "Run the same command again to resume" in proc.stderr and "error" not in proc.stderr, proc.stderr
    assert [step for step, _ in checkpoints(str(out))] == [1], proc.stderr  # step 2 is evaluated before it is saved


def test_ctrl_c_ends_a_process_stuck_in_native_code():
    """The main thread in a long native call (here OpenSSL's PBKDF2, as XLA's compiler would be)
    never runs Python's handler; the watcher thread ends the process after its grace period."""
    script = ("import hashlib\nfrom purevedec.training.interrupt import InterruptGuard\n"
              "with InterruptGuard(lambda: 'stopped; resume with the same command', grace=1.0):\n"
              "    print('busy', flush=True)\n    hashlib.pbkdf2_hmac('sha256', b'x', b'y', 2_000_000_000)\n"
              "print('finished', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "busy\n"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
    assert code == 130 and time.monotonic() - sent < 15
    assert "stopped; resume" in proc.stderr.read() and "finished" not in proc.stdout.read()


@pytest.mark.parametrize("command, flags, named", [
    ("train-shapes", ["--steps", "0"], "--steps 0"), ("train-shapes", ["--batch-size", "-1"], "--batch-size -1"),
    ("train-shapes", ["--learning-rate", "nan"], "--learning-rate nan"), ("train-shapes", ["--seed", "-4"], "--seed -4"),
    ("train-shapes", ["--warmup-steps", "9000"], "--warmup-steps 9000"), ("render-shapes", ["--count", "0"], "--count"),
])
def test_shapes_commands_check_flags_first(tmp_path, capsys, command, flags, named):
    assert main([command, "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and "\n" not in err and not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("command", ["train-shapes", "render-shapes", "train"])
def test_an_out_or_cache_that_is_a_file_is_one_line(tmp_path, capsys, command):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    extra = ["no-such-model/", _data(tmp_path)] if command == "train" else []
    assert main([command, *extra, "--out", str(notes)]) == 2
    assert "--out" in capsys.readouterr().err and notes.read_text() == "mine"
    if command == "train":
        assert main([command, *extra, "--out", str(tmp_path / "o"), "--compile-cache", str(notes)]) == 2
        assert "--compile-cache" in capsys.readouterr().err and notes.read_text() == "mine"


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, model, capsys, monkeypatch):
    from purevedec.training import checkpoint_dir
    data, out = _data(tmp_path), tmp_path / "out"
    common = [model, data, "--out", str(out), "--batch-size", "2", "--no-progress", "--compile-cache", "none"]
    assert main(["train", *common]) == 0
    before = (out / "checkpoint-3" / "model.safetensors").read_bytes()

    def full_disk(params, path):
        os.makedirs(path, exist_ok=True)
        open(os.path.join(path, "model.safetensors"), "wb").write(b"\0" * 10)  # a partial write, then ENOSPC
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint_dir, "save", full_disk)
    capsys.readouterr()
    assert main(["train", *common, "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "purevedec train: [Errno 28] No space left on device"
    assert not any("Traceback" in line for line in err)
    assert (out / "checkpoint-3" / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(out)) == ["best", "checkpoint-3", "metrics.jsonl", "training.png"]


def test_a_second_run_reuses_every_compiled_program(tmp_path, model):
    """The train step, the evaluation's loss and generation: the first run fills the compilation
    cache, an identical second run (a fresh process) adds nothing to it."""
    cache = tmp_path / "cache"
    data = _data(tmp_path)

    def run(out):
        cmd = [sys.executable, "-m", "purevedec", "train", model, data, "--out", str(tmp_path / out), "--batch-size",
               "2", "--no-progress", "--compile-cache", str(cache)]
        env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # the suite's own cache
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr
        return sorted(os.listdir(cache))
    first = run("a")
    assert len(first) >= 3  # at least the train step, the loss sums and generate
    assert run("b") == first
