"""Each `purevedec train` flag reaches the setting it names: the command runs up to the training
loop, which is replaced by a stand-in that records what it was given (training itself is tested
in test_train*.py)."""

from __future__ import annotations

import json

import pytest

from cli_util import caption_folder

pytest.importorskip("optax")

# flag and value -> (where the setting lives, attribute, expected value)
FLAGS = {
    ("--epochs", "3"): ("run", "epochs", 3),
    ("--seed", "7"): ("run", "seed", 7),
    ("--eval-every", "5"): ("run", "eval_every", 5),
    ("--keep", "4"): ("run", "keep", 4),
    ("--no-progress", None): ("run", "progress", False),
    ("--metrics", "cer,bleu"): ("run", "metrics", ("exact", "bleu", "cer")),  # exact always; METRICS order
    ("--best-metric", "bleu"): ("run", "best_metric", "bleu"),
    ("--learning-rate", "0.25"): ("train", "learning_rate", 0.25),
    ("--weight-decay", "0.125"): ("train", "weight_decay", 0.125),
    ("--warmup-steps", "1"): ("train", "warmup_steps", 1),  # at most the run's 1 step
    ("--schedule", "cosine"): ("train", "schedule", "cosine"),
    ("--max-grad-norm", "0.5"): ("train", "max_grad_norm", 0.5),
    ("--max-grad-norm", "0"): ("train", "max_grad_norm", None),
    ("--accumulation-steps", "2"): ("train", "accumulation_steps", 2),
    ("--label-smoothing", "0.1"): ("train", "label_smoothing", 0.1),
    ("--dtype", "bfloat16"): ("train", "dtype", "bfloat16"),
    ("--remat", None): ("train", "remat", True),
    ("--freeze-encoder", None): ("train", "freeze_encoder", True),
    ("--freeze-embeddings", None): ("train", "freeze_embeddings", True),
    ("--batch-size", "4"): ("batcher", "batch_size", 4),
    ("--captions-per-image", "2"): ("batcher", "captions_per_image", 2),
    ("--max-length", "9"): ("batcher", "max_length", 9),
    ("--threads", "1"): ("batcher", "threads", 1),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from models import make_reference, save_captioning_checkpoint
    root = tmp_path_factory.mktemp("flags")
    return save_captioning_checkpoint(make_reference(seed=2), root / "model"), caption_folder(root / "data", n=8)


def run_train(monkeypatch, tmp_path, inputs, *flags) -> dict:
    """`purevedec train MODEL DATA --out OUT FLAGS`: what fit() received."""
    from purevedec.commands import main
    from purevedec.training import data, loop
    seen = {}
    batcher_init = data.Batcher.__init__

    def record_batcher(self, **kw):
        seen["batcher"] = kw
        batcher_init(self, **kw)

    def fake_fit(params, train, val, batcher, cfg, run, decode, say=None):
        seen.update(train_set=train, val_set=val, train=cfg, run=run)
        return {"recorded": True}
    monkeypatch.setattr(data.Batcher, "__init__", record_batcher)
    monkeypatch.setattr(loop, "fit", fake_fit)
    assert main(["train", *inputs, "--out", str(tmp_path / "out"), "--validation-fraction", "0.25", *flags]) == 0
    return seen


@pytest.mark.parametrize("flag", list(FLAGS), ids=lambda f: " ".join(x for x in f if x))
def test_flag_sets_its_setting(monkeypatch, tmp_path, capsys, inputs, flag):
    where, name, want = FLAGS[flag]
    seen = run_train(monkeypatch, tmp_path, inputs, *(x for x in flag if x is not None))
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"recorded": True}
    got = seen[where][name] if where == "batcher" else getattr(seen[where], name)
    assert got == want
    # and without the flag, the setting is something else (the flag is what changed it)
    default = run_train(monkeypatch, tmp_path, inputs)
    assert (default[where][name] if where == "batcher" else getattr(default[where], name)) != want


def test_validation_fraction_and_out(monkeypatch, tmp_path, inputs):
    seen = run_train(monkeypatch, tmp_path, inputs)
    assert (len(seen["train_set"].examples), len(seen["val_set"].examples)) == (6, 2)  # 8 images, 0.25 held out
    assert seen["run"].out_dir == str(tmp_path / "out")
