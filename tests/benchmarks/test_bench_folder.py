"""The folder benchmark (issue 14) on a tiny model: its generated folder is what it says, and
the section runs both command lines end to end, agreeing caption for caption."""

import json

import numpy as np
from PIL import Image

from benchmarks import folder_speed, run


def test_generated_folder_is_mixed_size_photo_like_jpegs(tmp_path):
    paths = folder_speed.make_folder(str(tmp_path / "f"), 12, seed=3, sides=(64, 900))
    assert [p.rsplit("/", 1)[1] for p in paths] == [f"img{i:03d}.jpg" for i in range(12)]
    longs = []
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            longs.append(max(im.size))
            pixels = np.asarray(im, np.float32)
        assert pixels.std() > 10          # texture, not a flat colour
        assert np.abs(np.diff(pixels, axis=1)).mean() > 2   # noise: neighbours differ
    assert min(longs) >= 64 and max(longs) <= 900 and max(longs) > 2 * min(longs)
    again = folder_speed.make_folder(str(tmp_path / "g"), 2, seed=3, sides=(64, 900))
    with Image.open(paths[0]) as a, Image.open(again[0]) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))   # the same seed draws the same images


def test_only_folder_runs_both_jobs_and_agrees(tmp_path):
    out = tmp_path / "out"
    res = run.main(["--only", "folder", "--tiny", "--folder-images", "5", "--folder-batches", "2",
                    "--folder-sides", "40,160", "--dtypes", "float32", "--tokens", "3", "--out", str(out)])
    saved = json.loads((out / "folder.json").read_text())
    assert saved["folder"]["runs"] == res["folder"]["runs"]
    runs = {r["library"]: r for r in saved["folder"]["runs"]}
    assert set(runs) == {"purevedec", "transformers"}
    for r in runs.values():
        assert 0 < r["first_caption_s"] <= r["job_s"] and abs(r["images_per_s"] - 5 / r["job_s"]) < 1e-9
        # the two command lines caption every file alike (transformers' own output is the reference)
        assert r["captions_equal"] == 1.0
    names = {t["name"] for t in saved["targets"]}
    assert names == {"folder job time vs transformers (float32, best batches)",
                     "folder first caption, warm cache, vs transformers (float32)"}
    md = (out / "folder.md").read_text()
    assert "## Captioning a folder (5 JPEGs" in md and "| purevedec | float32 | 2 |" in md
