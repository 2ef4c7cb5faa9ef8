"""The captioned-folder reader and the batcher (no model: fast), then the loop and command end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from purevedec.training.data import Batcher, bucket_length, default_buckets, read_folder, split


def _png(path, seed):
    arr = np.random.RandomState(seed).randint(0, 256, (16, 16, 3)).astype(np.uint8)
    Image.fromarray(arr).save(path)


def make_folder(tmp_path, n=5, fmt="jsonl", extras=True):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(n):
        _png(folder / f"im{i}.png", i)
    if fmt == "jsonl":
        lines = [json.dumps({"image": f"im{i}.png", "captions": [f"t{3 + i} t{4 + i}", f"t{10 + i}"]}) for i in range(n)]
        if extras:
            lines += ["{not json", json.dumps({"image": "missing.png", "caption": "t5"}),
                      json.dumps({"image": "im0.png", "caption": "   "})]
        (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    else:
        rows = ["image,caption"] + [f"im{i}.png,t{3 + i} t{4 + i}" for i in range(n)] + ["im1.png,t20 t21 t22"]
        (folder / "captions.csv").write_text("\n".join(rows) + "\n")
    return str(folder)


def test_read_jsonl_reports_and_skips_bad_entries(tmp_path):
    data = read_folder(make_folder(tmp_path))
    assert [os.path.basename(e.image) for e in data.examples] == [f"im{i}.png" for i in range(5)]
    assert data.examples[2].captions == ["t5 t6", "t12"]
    assert len(data.problems) == 3
    assert any("captions.jsonl:6: not JSON" in p for p in data.problems)
    assert any(":7: image file 'missing.png' not found" in p for p in data.problems)
    assert any(":8: im0.png: no caption" in p for p in data.problems)


def test_read_csv_groups_rows_of_one_image(tmp_path):
    data = read_folder(make_folder(tmp_path, fmt="csv"))
    assert data.examples[1].captions == ["t4 t5", "t20 t21 t22"] and not data.problems
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no captions.jsonl or captions.csv"):
        read_folder(str(tmp_path / "empty"))


def test_split_is_seeded_and_disjoint(tmp_path):
    data = read_folder(make_folder(tmp_path, n=5))
    train, val = split(data, 0.4, seed=1)
    again, _ = split(data, 0.4, seed=1)
    assert len(val.examples) == 2 and len(train.examples) == 3
    assert {e.image for e in train.examples}.isdisjoint(e.image for e in val.examples)
    assert [e.image for e in again.examples] == [e.image for e in train.examples]
    other = {tuple(e.image for e in split(data, 0.4, seed=s)[1].examples) for s in range(6)}
    assert len(other) > 1


def _batcher(**kw):
    words = lambda s: [int(w[1:]) for w in s.split()]  # noqa: E731 - "t5 t6" -> [5, 6]
    def load(path):
        if "bad" in path:
            raise OSError("cannot identify image file")
        return np.full((3, 4, 4), float(os.path.basename(path)[2:-4]), np.float32)  # the image's index
    args = dict(encode=words, load=load, image_shape=(3, 4, 4), eos_token_id=2, batch_size=2, max_length=8,
                buckets=(4, 8), threads=2)
    return Batcher(**{**args, **kw})


def test_batches_have_fixed_shapes_and_keep_the_masked_last_batch(tmp_path):
    data = read_folder(make_folder(tmp_path, n=5, extras=False))
    batcher = _batcher(captions_per_image=2)
    batches = list(batcher.batches(data))
    assert len(batches) == 3
    assert [b.pixels.shape for b in batches] == [(2, 3, 4, 4)] * 3
    assert batches[0].labels.shape == (4, 4)  # longest caption + eos fits the bucket of 4
    last = batches[-1]
    assert len(last.images) == 1
    assert (last.pixels[1] == 0).all() and (last.labels[2:] == -100).all()  # masked, not dropped
    assert last.labels[:2].tolist() == [[7, 8, 2, -100], [14, 2, -100, -100]]  # image 4: both captions then eos
    assert bucket_length(5, (4, 8)) == 8 and default_buckets(40) == (8, 16, 32, 40)


def test_shuffle_is_seeded_per_epoch_and_covers_every_image_once(tmp_path):
    data = read_folder(make_folder(tmp_path, n=5, extras=False))
    batcher = _batcher()
    def order(seed, epoch):
        return [int(b.pixels[i, 0, 0, 0]) for b in batcher.batches(data, seed=seed, epoch=epoch)
                for i in range(len(b.images))]
    assert order(3, 0) == order(3, 0)
    assert sorted(order(3, 0)) == [0, 1, 2, 3, 4]
    assert order(3, 0) != order(3, 1) or order(3, 0) != order(3, 2)


def test_long_captions_are_cut_and_bad_images_reported(tmp_path):
    data = read_folder(make_folder(tmp_path, n=3, extras=False))
    data.examples[1].image = data.examples[1].image.replace("im1", "bad1")
    data.examples[0].captions = ["t3 t4 t5 t6 t7 t8 t9 t10 t11"]  # 9 words, max_length 8 with eos
    batcher = _batcher(batch_size=3)
    (batch,) = list(batcher.batches(data))
    assert batcher.truncated == 1 and batch.labels[0].tolist() == [3, 4, 5, 6, 7, 8, 9, 2]
    assert len(batcher.problems) == 1 and "bad1.png: unreadable image skipped" in batcher.problems[0]
    assert len(batch.images) == 2 and (batch.labels[2] == -100).all()  # the skipped image's row is masked


def test_train_command_end_to_end_and_resume(tmp_path, capsys):
    """Two runs of `purevedec train` (the second resumes after a simulated crash) end with the
    params of an uninterrupted run; checkpoints are HF directories; problems are reported."""
    pytest.importorskip("optax")
    import shutil

    import purevedec as pv
    from models import make_reference, save_captioning_checkpoint
    from purevedec.commands import main  # the `purevedec` command line

    model = save_captioning_checkpoint(make_reference(seed=2), tmp_path / "model")
    data = make_folder(tmp_path, n=5)
    common = [model, data, "--epochs", "2", "--batch-size", "2", "--validation-fraction", "0.2", "--eval-every", "1",
              "--keep", "10", "--learning-rate", "1e-3", "--no-progress", "--max-length", "8"]
    assert main(["train", *common, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "missing.png" in err and "not JSON" in err
    log = [json.loads(x) for x in open(tmp_path / "a" / "metrics.jsonl")]
    train_steps = [r["step"] for r in log if r["event"] == "train"]
    assert train_steps == [1, 2, 3, 4]  # 4 training images, batch 2 (last partial batch kept), 2 epochs
    assert all("val_loss" in r and "val_exact_match" in r for r in log if r["event"] == "eval")
    assert os.path.isdir(tmp_path / "a" / "best")

    # "crash" after step 1: keep only checkpoint-1, then run again
    b = tmp_path / "b"
    assert main(["train", *common, "--out", str(b)]) == 0
    for name in os.listdir(b):
        if name.startswith("checkpoint-") and name != "checkpoint-1":
            shutil.rmtree(b / name)
    assert main(["train", *common, "--out", str(b)]) == 0
    ours, _ = pv.load(str(b / "checkpoint-4"))
    want, _ = pv.load(str(tmp_path / "a" / "checkpoint-4"))
    for x, y in zip(pv.params.flatten(want).values(), pv.params.flatten(ours).values()):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=0, atol=1e-6)
