"""The training speed section (benchmarks/train_speed.py) on a tiny model: it runs through
benchmarks.run --only train, both libraries train the same model on the same batch with the same
weight-decay mask, and its table and JSON hold finite positive numbers for both."""

import json
import math
import statistics

import numpy as np

import purevedec as pv
from benchmarks import run, train_speed
from models import make_reference, save_captioning_checkpoint


def test_weight_decay_masks_cover_the_same_weights(tmp_path):
    """torch's AdamW groups (by parameter name) decay exactly as many weights as purevedec's mask,
    among the weights a step updates (torch's AdamW skips a parameter without a gradient: ViT's
    pooler, whose output VisionEncoderDecoderModel never uses)."""
    import torch
    from purevedec.training.optim import decays, leaf_flags
    model = make_reference()
    path = save_captioning_checkpoint(model, tmp_path / "ckpt")
    params, _ = pv.load(path)
    flags = jax_leaves(leaf_flags(params, decays))
    sizes = jax_leaves(params)
    ours = sum(int(np.size(a)) for a, f in zip(sizes, flags) if f)
    px, lb = train_speed.batch_arrays(path, 2)
    model.train()(pixel_values=torch.from_numpy(px), labels=torch.from_numpy(lb).long()).loss.backward()
    updated = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    theirs = sum(p.numel() for n, p in updated if train_speed._decays(n))
    assert ours == theirs > 0
    total = sum(p.numel() for n, p in updated)
    assert 0 < total - theirs == sum(int(np.size(a)) for a, f in zip(sizes, flags) if not f)


def jax_leaves(tree):
    import jax
    return jax.tree.leaves(tree)


def test_train_section_runs_alone_and_writes_a_well_formed_table(tmp_path):
    out = tmp_path / "results"
    res = run.main(["--only", "train", "--tiny", "--batches", "2", "--dtypes", "float32", "--remat-cells=",
                    "--xla-remat-cells=2:float32", "--steps", "2", "--out", str(out)])
    saved = json.loads((out / "train.json").read_text())
    assert saved["cells"] == json.loads(json.dumps(res["cells"]))
    (cell,) = saved["cells"]
    assert (cell["batch"], cell["dtype"], cell["remat"]) == (2, "float32", False)
    for lib in ("purevedec", "transformers"):
        r = cell[lib]
        assert len(r["step_s"]) == 2 and len(r["warmup_s"]) == 1 and len(r["losses"]) == 3
        assert r["images_per_s"] == 2 / statistics.median(r["step_s"]) > 0
        assert r["peak_mb"] > 0 and all(math.isfinite(x) and x > 0 for x in r["losses"])
    assert cell["ratio"] == cell["purevedec"]["images_per_s"] / cell["transformers"]["images_per_s"]
    # Same tiny model (vocabulary 50), same batch: the first losses (dropout on) are both near the
    # eval-mode loss transformers computes here, independently of the benchmark's children.
    import torch
    model = make_reference()
    px, lb = train_speed.batch_arrays(_checkpoint(model, tmp_path), 2)
    with torch.no_grad():
        ref = float(model(pixel_values=torch.from_numpy(px), labels=torch.from_numpy(lb).long()).loss)
    for lib in ("purevedec", "transformers"):
        assert abs(cell[lib]["losses"][0] - ref) < 0.1 * ref
    (x,) = saved["xla"]
    assert x["plain_mb"] > 0 and x["remat_mb"] > 0 and x["saved_mb"] == x["plain_mb"] - x["remat_mb"]
    md = (out / "train.md").read_text()
    assert "## Training speed and memory (tiny random)" in md and "purevedec img/s" in md
    assert "transformers img/s" in md and "saved by remat MB" in md
    row = next(line for line in md.splitlines() if line.startswith("| 2 | float32 | no |"))
    numbers = [float(c) for c in row.strip("|").split("|")[3:] if c.strip() and not c.strip().endswith("x")]
    assert len(numbers) == 6 and all(math.isfinite(v) and v > 0 for v in numbers)


def _checkpoint(model, tmp_path):
    path = tmp_path / "ref"
    model.save_pretrained(path)
    return str(path)


def test_run_forwards_only_train_options():
    args = run._args(["--only", "train", "--tiny", "--batches", "8", "--steps", "5"])
    assert run._train_argv(args)[:2] == ["--steps", "5"] and "--batches=8" in run._train_argv(args)
    assert "--tiny" in run._train_argv(args) and args.batches == "8"
    plain = run._args([])
    assert plain.batches == "1,8,32" and plain.train_args == []
