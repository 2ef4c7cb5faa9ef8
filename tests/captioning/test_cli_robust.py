"""The command line keeps every good result (issue 11): hostile file names and folders, bad
options, closed or full outputs, resumed runs. Each test builds its own tiny files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

import purevedec
from purevedec.captioning.escape import unescape
from cli_util import checkpoint, make_images, run_cli, run_subprocess, start_subprocess, torch_pixels  # noqa: F401 (fixture)


def _variant(checkpoint, tmp_path, generation: dict) -> str:
    """The tiny checkpoint with its generation_config.json replaced by ``generation``."""
    path = tmp_path / "variant"
    shutil.copytree(checkpoint[1], path)
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 0,
                                                             "decoder_start_token_id": 0, **generation}))
    return str(path)


@pytest.mark.parametrize("source", ["generation_config", "flags"])
def test_return_sequences_grouped_per_file(checkpoint, tmp_path, source):
    """num_return_sequences=2 (from the checkpoint's generation config, or the flags) over 3 files
    in batches of 2: each file gets its own 2 captions, as transformers makes them."""
    import torch
    from transformers import AutoTokenizer
    model, path = checkpoint
    paths = make_images(tmp_path / "imgs", 3)
    with torch.no_grad():
        ref = model.generate(pixel_values=torch_pixels(path, paths), max_new_tokens=5, num_beams=3,
                             num_return_sequences=2, output_scores=True, return_dict_in_generate=True)
    texts = AutoTokenizer.from_pretrained(path).batch_decode(ref.sequences, skip_special_tokens=True)
    if source == "generation_config":
        model_arg = _variant(checkpoint, tmp_path, {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 5})
        flags = []
    else:
        model_arg, flags = path, ["--num-beams", "3", "--num-return-sequences", "2", "--max-new-tokens", "5"]
    code, out, _ = run_cli(["caption", *paths, "--model", model_arg, "--batch-size", "2", *flags])
    assert code == 0
    assert out.splitlines() == [f"{p}\t{t}" for i, p in enumerate(paths) for t in texts[2 * i:2 * i + 2]]
    code, out, _ = run_cli(["caption", *paths, "--model", model_arg, "--batch-size", "2", "--format", "jsonl", *flags])
    rows = [json.loads(r) for r in out.splitlines()]
    assert code == 0 and [r["path"] for r in rows] == paths
    assert [r["captions"] for r in rows] == [texts[0:2], texts[2:4], texts[4:6]]
    assert [r["caption"] for r in rows] == texts[0::2]
    assert np.allclose([s for r in rows for s in r["scores"]], ref.sequences_scores.numpy(), atol=1e-4)


def test_sampling_checkpoint_works_and_repeats(checkpoint, tmp_path):
    """A do_sample checkpoint captions from the CLI: the default seed repeats, another seed
    differs, and the records are the Captioner's for the same key (whose pairing with each image
    test_cli checks against transformers)."""
    import jax
    path = _variant(checkpoint, tmp_path, {"do_sample": True, "top_k": 0, "max_new_tokens": 6})
    paths = make_images(tmp_path / "imgs", 3)
    argv = ["caption", *paths, "--model", path, "--batch-size", "2", "--format", "jsonl"]
    code, first, _ = run_cli(argv)
    assert code == 0 and run_cli(argv)[1] == first
    assert run_cli(argv + ["--seed", "5"])[1] != first
    cap = purevedec.Captioner.from_pretrained(path)
    expected = [r[0].score for r in cap.captions(paths, batch_size=2, key=jax.random.key(0))]
    assert np.allclose([json.loads(r)["score"] for r in first.splitlines()], expected, atol=1e-5)
    code, out, _ = run_cli(argv + ["--no-do-sample", "--num-return-sequences", "1"])
    assert code == 0 and len(out.splitlines()) == 3


@pytest.mark.parametrize("flags, says", [
    (["--num-beams", "0"], "--num-beams"), (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--batch-size", "0"], "--batch-size"), (["--temperature", "nan"], "--temperature"),
    (["--temperature", "0"], "temperature"), (["--top-p", "1.5"], "top_p"), (["--top-k", "-1"], "top_k"),
    (["--num-beams", "x"], "--num-beams"),
])
def test_bad_numbers_before_loading(tmp_path, flags, says):
    code, out, err = run_cli(["caption", "x.png", "--model", str(tmp_path / "no-model"), *flags])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and says in err


@pytest.mark.parametrize("flags, generation, says", [
    (["--max-new-tokens", "100000"], {}, "n_positions"),
    ([], {"max_length": 100}, "n_positions"),
    (["--num-return-sequences", "2"], {}, "num_return_sequences"),
    (["--num-beams", "2", "--num-return-sequences", "3"], {}, "num_return_sequences"),
])
def test_bad_options_for_this_model(checkpoint, tmp_path, flags, generation, says):
    img = make_images(tmp_path / "imgs", 1)[0]
    path = _variant(checkpoint, tmp_path, generation)
    code, out, err = run_cli(["caption", img, "--model", path, *flags])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert says in err and "Traceback" not in err


def test_glob_over_symlink_loop_each_file_once(checkpoint, tmp_path):
    root = tmp_path / "d"
    paths = make_images(root, 2) + make_images(root / "sub", 1)
    os.symlink("..", root / "sub" / "loop")
    os.symlink(paths[0], root / "sub" / "alias.png")        # the same file under a second name
    start = time.monotonic()
    code, out, _ = run_cli(["caption", str(root / "**" / "*.png"), str(root), paths[1], "--model", checkpoint[1],
                         "--max-new-tokens", "3"])
    named = [line.split("\t")[0] for line in out.splitlines()]
    assert code == 0 and sorted(named) == sorted(paths) and len(named) == 3
    assert time.monotonic() - start < 120


def test_fifo_and_folder_named_like_images_are_skipped(checkpoint, tmp_path):
    paths = make_images(tmp_path / "imgs", 2)
    fifo = tmp_path / "imgs" / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "imgs" / "dir.png").mkdir()
    result = run_subprocess("caption", str(fifo), str(tmp_path / "imgs"), str(tmp_path / "imgs" / "dir.png" ),
                  "--model", checkpoint[1], "--max-new-tokens", "3", timeout=240)
    assert result.returncode == 1, result.stderr
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == paths
    assert "pipe.png: a FIFO" in result.stderr and "Traceback" not in result.stderr


def test_broken_pipe_exits_quietly(checkpoint, tmp_path):
    paths = make_images(tmp_path / "imgs", 4)
    proc = start_subprocess("caption", *paths, "--model", checkpoint[1], "--batch-size", "1", "--max-new-tokens", "3",
                            stdout=subprocess.PIPE)
    first = proc.stdout.readline()          # like `| head -1`: read one line, then close the pipe
    proc.stdout.close()
    _, err = proc.communicate(timeout=240)
    assert first.startswith(paths[0].encode())
    assert proc.returncode == 141 and err == b"", err.decode()


def test_full_stdout_is_one_line(checkpoint, tmp_path):
    paths = make_images(tmp_path / "imgs", 1)
    with open("/dev/full", "w") as full:
        result = run_subprocess("caption", *paths, "--model", checkpoint[1], "--max-new-tokens", "3", stdout=full,
                      capture_output=False, stderr=subprocess.PIPE)
    assert result.returncode == 3 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "No space left" in result.stderr


def test_hostile_names_are_escaped(checkpoint, tmp_path):
    folder = tmp_path / "imgs"
    paths = make_images(folder, 3)
    tricky = [str(folder / "a\tb.png"), str(folder / "new\nline.png"), str(folder / "esc\x1b[2J.png")]
    for good, name in zip(paths, tricky):
        shutil.copy(good, name)
    broken = str(folder / "bad\x1b]0;title\x07.png")
    open(broken, "wb").write(b"junk")
    code, out, err = run_cli(["caption", *tricky, broken, "--model", checkpoint[1], "--max-new-tokens", "3"])
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 3 and [unescape(line.split("\t")[0]) for line in lines] == tricky
    assert "\x1b" not in out and "\x1b" not in err and "\x07" not in err and "bad\\x1b]0;title\\x07.png" in err
    code, out, _ = run_cli(["caption", *tricky, "--model", checkpoint[1], "--max-new-tokens", "3", "--format", "jsonl"])
    assert "\x1b" not in out and [json.loads(line)["path"] for line in out.splitlines()] == tricky
    bad_model = str(tmp_path / "model\x1b[31m")
    code, _, err = run_cli(["caption", paths[0], "--model", bad_model])
    assert code == 2 and "\x1b" not in err and len(err.strip().splitlines()) == 1


def test_skip_existing_resumes_and_repairs_a_cut_line(checkpoint, tmp_path, monkeypatch):
    paths = make_images(tmp_path / "imgs", 4)
    out_file = tmp_path / "caps.jsonl"
    base = ["--model", checkpoint[1], "--max-new-tokens", "3", "--format", "jsonl", "--output", str(out_file)]
    code, stdout, _ = run_cli(["caption", *paths[:2], *base])
    assert code == 0 and stdout == ""
    with open(out_file, "a") as f:
        f.write('{"path": "' + paths[2][:5])       # a run killed in the middle of a line
    code, _, err = run_cli(["caption", *paths, *base, "--skip-existing"])
    assert code == 0 and "skipping 2 file(s)" in err and "unfinished last line" in err
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["path"] for r in rows] == paths
    code, _, err = run_cli(["caption", *paths, *base, "--skip-existing"])
    assert code == 0 and "skipping 4 file(s)" in err and len(out_file.read_text().splitlines()) == 4
    monkeypatch.chdir(tmp_path)  # the same files spelled relative to another folder: still skipped
    relative = [os.path.join(".", "imgs", "..", "imgs", os.path.basename(p)) for p in paths]
    code, _, err = run_cli(["caption", *relative, *base, "--skip-existing"])
    assert code == 0 and "skipping 4 file(s)" in err and len(out_file.read_text().splitlines()) == 4
    code, _, err = run_cli(["caption", *paths, *base[:-4], "--skip-existing", "--output", str(out_file)])
    assert code == 2 and "--format" in err                       # a jsonl file read as text: refused
    code, _, err = run_cli(["caption", *paths, "--model", checkpoint[1], "--skip-existing"])
    assert code == 2 and "--output" in err


def test_any_read_failure_is_that_files_error(checkpoint, tmp_path, monkeypatch):
    """A decompression bomb, and any exception while reading one image, is that file's error line."""
    from purevedec.captioning import captioner
    paths = make_images(tmp_path / "imgs", 3)
    bomb = str(tmp_path / "imgs" / "bomb.png")
    Image.new("RGB", (200, 200)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)     # 40,000 pixels > 2x the limit: DecompressionBombError
    real = captioner.pixels_of

    def flaky(image, config):
        if str(image).endswith("im1.png"):
            raise MemoryError("simulated")
        return real(image, config)
    monkeypatch.setattr(captioner, "pixels_of", flaky)
    code, out, err = run_cli(["caption", paths[0], bomb, paths[1], paths[2], "--model", checkpoint[1],
                           "--max-new-tokens", "3", "--batch-size", "2"])
    assert code == 1 and [line.split("\t")[0] for line in out.splitlines()] == [paths[0], paths[2]]
    assert "bomb.png" in err and "im1.png" in err and "MemoryError" in err and "Traceback" not in err


def test_interrupt_leaves_whole_lines(checkpoint, tmp_path):
    """Ctrl-C after the first record: exit 130 with one line, and the output holds whole lines only.
    (1000 images: with the read-ahead threads a shorter job could finish before the signal lands
    on a loaded machine.)"""
    paths = make_images(tmp_path / "imgs", 1000, size=(8, 8))
    out_file = tmp_path / "caps.txt"
    proc = start_subprocess("caption", *paths, "--model", checkpoint[1], "--batch-size", "1", "--max-new-tokens", "3",
                            "--output", str(out_file))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and (not out_file.exists() or out_file.stat().st_size == 0):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    text = out_file.read_text()
    assert proc.returncode == 130 and err.decode().strip() == "interrupted", err.decode()
    lines = text.splitlines()
    assert text.endswith("\n") and 0 < len(lines) < len(paths) and all(line.split("\t")[0] in paths for line in lines)


@pytest.mark.parametrize("library", ["swallows", "converts"])
def test_interrupt_that_a_library_loses_still_stops_the_job(checkpoint, tmp_path, monkeypatch, library):
    """Ctrl-C landing in Python code that a C extension called can be lost (code that clears the
    error) or turned into another error (numpy's SystemError "returned a result with an exception
    set"); either way the job stops with exit 130 and whole records instead of running to its end
    or printing a traceback. Simulated where the main thread formats the third record."""
    from purevedec.captioning import cli
    paths = make_images(tmp_path / "imgs", 6, size=(8, 8))
    real, calls = cli.format_record, []

    def lossy(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                if library == "converts":
                    raise SystemError("<function> returned a result with an exception set") from None
        return real(*a, **kw)
    monkeypatch.setattr(cli, "format_record", lossy)
    code, out, err = run_cli(["caption", *paths, "--model", checkpoint[1], "--max-new-tokens", "3", "--batch-size", "1"])
    assert code == 130 and err.strip() == "interrupted", err
    assert [line.split("\t")[0] for line in out.splitlines()] == paths[:3 if library == "swallows" else 2]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # the handler is put back
