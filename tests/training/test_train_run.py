"""The fine-tuning loop's schedule, resume and files (a tiny model, in process): evaluations and
checkpoints when asked, max steps, early stopping, no duplicate log rows, atomic folders, the
train-state reader, the caption-file reader under bad input, and the labels helper."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import purevedec as pv

pytest.importorskip("optax")
from purevedec.training import TrainConfig  # noqa: E402
from purevedec.training.data import Batcher, Dataset, Example, read_folder  # noqa: E402
from purevedec.training.loop import RunConfig, checkpoints, fit  # noqa: E402


def _inputs(n_train=4):
    config = pv.Config(
        encoder=pv.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                             image_size=8, patch_size=4),
        decoder=pv.GPT2Config(vocab_size=20, n_positions=8, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                              eos_token_id=1),
        decoder_start_token_id=0, pad_token_id=1, eos_token_id=1)
    params = pv.init_params(config, __import__("jax").random.key(0))
    examples = [Example(f"im{i}.png", [f"t{3 + i} t{4 + i}"]) for i in range(n_train + 2)]
    batcher = Batcher(encode=lambda s: [int(w[1:]) for w in s.split()],
                      load=lambda p: np.full((3, 8, 8), float(p[2]), np.float32), image_shape=(3, 8, 8),
                      eos_token_id=1, batch_size=2, max_length=6, buckets=(6,), threads=1)
    return params, Dataset(examples[:n_train]), Dataset(examples[n_train:]), batcher


def _log(out):
    return [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]


def _fit(out, n_train=4, decode=None, **run):
    params, train, val, batcher = _inputs(n_train)
    lines = []
    result = fit(params, train, val, batcher, TrainConfig(learning_rate=1e-3, total_steps=100),
                 RunConfig(out_dir=str(out), progress=False, **run), decode=decode, say=lines.append)
    return result, lines


def test_eval_every_and_save_every_mean_steps_not_epochs(tmp_path):
    """2 steps an epoch, 4 epochs: evaluations every 3 steps (and the last), checkpoints every 4."""
    _, lines = _fit(tmp_path, epochs=4, eval_every=3, save_every=4, keep=10)
    log = _log(tmp_path)
    assert [r["step"] for r in log if r["event"] == "eval"] == [3, 6, 8]
    assert [s for s, _ in checkpoints(str(tmp_path))] == [4, 8]
    assert [r["step"] for r in log if r["event"] == "train"] == list(range(1, 9))
    evaluation_lines = [x for x in lines if x.startswith("step ")]
    assert len(evaluation_lines) == 3 and "best loss" in evaluation_lines[0] and "train loss" in evaluation_lines[0]
    assert os.path.getsize(tmp_path / "training.png") > 1000


def test_default_evaluates_and_saves_each_epoch_and_max_steps_stops(tmp_path):
    _fit(tmp_path, epochs=3, max_steps=5, keep=10)
    log = _log(tmp_path)
    assert [r["step"] for r in log if r["event"] == "eval"] == [2, 4, 5]
    assert [s for s, _ in checkpoints(str(tmp_path))] == [2, 4, 5]
    assert max(r["step"] for r in log if r["event"] == "train") == 5


def _scripted(per_image):
    texts = iter(per_image)
    return lambda ids: next(texts)


def test_patience_stops_when_the_best_metric_stalls(tmp_path):
    """Exact match 1.0 at the first evaluation, 0 after it: patience 2 stops after the third."""
    script = ["t7 t8", "t8 t9"] + ["zz"] * 40  # the two validation images' references, then wrong
    result, lines = _fit(tmp_path, epochs=10, eval_every=1, patience=2, decode=_scripted(script),
                         metrics=("exact",), best_metric="exact")
    evals = [r for r in _log(tmp_path) if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [1, 2, 3] and result["step"] == 3
    assert json.load(open(tmp_path / "best" / "best.json"))["step"] == 1
    assert any(x.startswith("early stop at step 3") for x in lines)


def test_resume_appends_no_duplicate_rows_and_says_where(tmp_path):
    _fit(tmp_path, epochs=2, keep=10)
    for name in ("checkpoint-4",):  # as if the run had been killed after logging step 4, before saving it
        import shutil
        shutil.rmtree(tmp_path / name)
    _, lines = _fit(tmp_path, epochs=2, keep=10)
    log = _log(tmp_path)
    steps = [r["step"] for r in log if r["event"] == "train"]
    assert steps == [1, 2, 3, 4]
    assert [r["step"] for r in log if r["event"] == "eval"] == [2, 4]
    assert any(x.startswith(f"resuming from {tmp_path / 'checkpoint-2'} (step 2 of 4, epoch 2)") for x in lines)


def test_keep_must_leave_a_checkpoint():
    with pytest.raises(pv.ConfigError, match="keep"):
        RunConfig(out_dir="x", keep=0)
    with pytest.raises(pv.ConfigError, match="eval_every"):
        RunConfig(out_dir="x", eval_every=-1)


def test_evaluation_length_follows_the_decoder_positions(tmp_path):
    from purevedec.training.loop import eval_length
    params, *_ = _inputs()
    assert eval_length(params, None) == 7  # 8 positions, the start token takes one
    with pytest.raises(pv.ConfigError, match="at most 7 tokens"):
        eval_length(params, 8)


# ---- atomic folders ---------------------------------------------------------------------------------

def test_an_interrupt_between_the_renames_leaves_the_previous_folder(tmp_path, monkeypatch):
    from purevedec.training import checkpoint_dir as cd
    params, *_ = _inputs()
    target = str(tmp_path / "best")
    cd.write_model_folder(target, params, [])
    before = open(os.path.join(target, "model.safetensors"), "rb").read()
    renames = []
    real_rename = os.rename

    def interrupted_rename(a, b):
        renames.append((a, b))
        if len(renames) == 2:  # after moving the old folder aside, before moving the new one in
            raise KeyboardInterrupt
        real_rename(a, b)
    monkeypatch.setattr(cd.os, "rename", interrupted_rename)
    with pytest.raises(KeyboardInterrupt):
        cd.write_model_folder(target, {**params, "decoder": {**params["decoder"], "wte": params["decoder"]["wte"] * 2}}, [])
    monkeypatch.setattr(cd.os, "rename", real_rename)
    assert not os.path.exists(target) and len(renames) == 2
    assert cd.recover(str(tmp_path)) == [target]
    assert open(os.path.join(target, "model.safetensors"), "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["best"]  # the unfinished new folder is gone
    pv.load(target)


# ---- the train state file ---------------------------------------------------------------------------

def test_a_bad_train_state_is_refused_naming_the_file(tmp_path):
    from purevedec.training import init_state, restore_state, save_state
    params, *_ = _inputs()
    cfg = TrainConfig(total_steps=4)
    good = save_state(str(tmp_path / "s.npz"), init_state(params, cfg, 0))
    template = init_state(params, cfg, 0)
    data = open(good, "rb").read()
    (tmp_path / "short.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "big.npz").write_bytes(data + b"\0" * (len(data) + (2 << 20)))
    for name, why in (("short.npz", "truncated"), ("big.npz", "more than"), ("none.npz", "missing")):
        with pytest.raises(pv.CheckpointError, match=why) as e:
            restore_state(str(tmp_path / name), template)
        assert name in str(e.value)
    as_float = init_state(params, cfg, 0)._replace(step=np.float32(0))
    save_state(str(tmp_path / "typed.npz"), as_float)
    with pytest.raises(pv.CheckpointError, match=r"typed.npz: \S*step is float32"):
        restore_state(str(tmp_path / "typed.npz"), template)


def test_a_checkpoint_folder_without_its_state_is_refused(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(pv.CheckpointError, match="checkpoint-3.*train_state.npz: missing"):
        checkpoints(str(tmp_path))


# ---- caption files ------------------------------------------------------------------------------------

def _folder(tmp_path, name, content: bytes):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    from PIL import Image
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    (folder / name).write_bytes(content)
    return str(folder)


@pytest.mark.parametrize("content, problem", [
    (b'{"image": "a.png", "caption": "ok"}\n{"image": "a.png", "caption": "caf\xe9"}\n', "captions.jsonl:2: not UTF-8"),
    (b'{"image": "a.png", "caption": "' + b"x" * (2 << 20) + b'"}\n', "captions.jsonl:1: line longer than"),
])
def test_caption_file_errors_name_file_and_line(tmp_path, content, problem):
    with pytest.raises(pv.ConfigError, match=problem):
        read_folder(_folder(tmp_path, "captions.jsonl", content))


def test_hostile_jsonl_lines_are_skipped_with_file_and_line(tmp_path):
    lines = [b'{"image": "a.png", "caption": "good"}', b"[" * 100000 + b"]" * 100000,
             b'{"image": "a.png", "caption": "x", "n": ' + b"9" * 5000 + b"}",
             b'{"image": "../outside.png", "caption": "x"}', b'{"image": "/etc/hostname", "caption": "x"}']
    data = read_folder(_folder(tmp_path, "captions.jsonl", b"\n".join(lines) + b"\n"))
    assert [e.captions for e in data.examples] == [["good"]]
    assert any("captions.jsonl:2: not usable JSON (RecursionError" in p for p in data.problems)
    assert any("captions.jsonl:3: not usable JSON (ValueError" in p for p in data.problems)
    assert any("captions.jsonl:4: image '../outside.png' is outside the data folder" in p for p in data.problems)
    assert any("captions.jsonl:5: image '/etc/hostname' is outside" in p for p in data.problems)
    allowed = read_folder(str(tmp_path / "data"), allow_outside=True)
    assert any(e.image == "/etc/hostname" for e in allowed.examples) == os.path.isfile("/etc/hostname")


@pytest.mark.parametrize("content, problem", [
    (b"picture,text\na.png,x\n", r"captions.csv:1: needs the columns 'image' and 'caption'"),
    (b"image,caption\na.png," + b"x" * 200000 + b"\n", r"captions.csv:2: field larger than field limit"),
    (b"image,caption\na.png,ok\na.png,\xff\xfe\n", r"captions.csv:3: not UTF-8"),
])
def test_bad_csv_is_one_error_naming_file_and_line(tmp_path, content, problem):
    with pytest.raises(pv.ConfigError, match=problem):
        read_folder(_folder(tmp_path, "captions.csv", content))


# ---- labels for API users ---------------------------------------------------------------------------

def test_caption_labels_tokenize_append_eos_and_pad():
    from purevedec.training import caption_labels

    class Words:
        def encode(self, text):
            return [int(w[1:]) for w in text.split()]
    labels = caption_labels(Words(), ["t5 t6 t7", "t9", "t3 t4 t5 t6 t7 t8"], eos_token_id=2, max_length=5)
    assert labels.dtype == np.int32
    assert labels.tolist() == [[5, 6, 7, 2, -100], [9, 2, -100, -100, -100], [3, 4, 5, 6, 2]]
    assert caption_labels(Words(), ["t5"], eos_token_id=2, length=4).tolist() == [[5, 2, -100, -100]]
    with pytest.raises(pv.ConfigError, match="length=1 is shorter"):
        caption_labels(Words(), ["t5"], eos_token_id=2, length=1)


def test_an_error_after_training_saves_what_was_trained(tmp_path):
    def broken_decode(ids):
        raise RuntimeError("scorer exploded")
    with pytest.raises(RuntimeError, match="scorer exploded"):
        _fit(tmp_path, epochs=1, decode=broken_decode)
    assert [s for s, _ in checkpoints(str(tmp_path))] == [2]  # the epoch's 2 steps are on disk
    pv.load(str(tmp_path / "checkpoint-2"))


# ---- watching a run ---------------------------------------------------------------------------------

def test_an_unreadable_image_is_reported_once_not_every_epoch():
    told = []

    def load(path):
        if path == "im1.png":
            raise OSError("truncated file")
        return np.zeros((3, 8, 8), np.float32)
    batcher = Batcher(encode=lambda s: [3], load=load, image_shape=(3, 8, 8), eos_token_id=1, batch_size=2,
                      max_length=4, threads=1, report=told.append)
    data = Dataset([Example(f"im{i}.png", ["t3"]) for i in range(3)])
    for epoch in range(3):
        batches = list(batcher.batches(data, seed=0, epoch=epoch))
        assert sum(len(b.images) for b in batches) == 2
    assert told == ["im1.png: unreadable image skipped (truncated file)"] and batcher.problems == told


def test_the_progress_estimate_leaves_out_the_first_steps_compilation():
    import io
    import time
    from tqdm import tqdm
    from purevedec.training.loop import _restart_clock
    bars = [tqdm(total=1000, file=io.StringIO(), smoothing=0) for _ in range(2)]
    time.sleep(1.0)  # the first step: compilation
    for bar in bars:
        bar.update(1)
    _restart_clock(bars[1])
    time.sleep(0.05)
    for bar in bars:
        bar.update(1)
    rates = [bar.format_dict["n"] - bar.format_dict["initial"] for bar in bars]
    elapsed = [bar.format_dict["elapsed"] for bar in bars]
    plain, restarted = (r / e for r, e in zip(rates, elapsed))
    assert restarted > 3 * plain  # ~20 steps/s after the restart against ~2 with the compile counted


def test_plot_ticks_are_round_numbers():
    from purevedec.training.plot import nice_ticks
    assert nice_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]
    assert nice_ticks(0, 7) == [0, 2, 4, 6]
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 37) == [0, 10, 20, 30]


def test_rerunning_a_finished_run_changes_nothing(tmp_path):
    _fit(tmp_path, epochs=1)
    log = (tmp_path / "metrics.jsonl").read_text()
    result, lines = _fit(tmp_path, epochs=1)
    assert (tmp_path / "metrics.jsonl").read_text() == log and result["step"] == 2
    assert any(x.startswith("resuming from") and "(step 2 of 2" in x for x in lines)
