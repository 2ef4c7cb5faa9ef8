"""`purevedec render-shapes`: the scenes asked for, as PNG files with a captions.jsonl that
`purevedec train` reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from purevedec.commands import main
from purevedec.shapes.scenes import scene
from purevedec.training.data import read_folder


def test_render_writes_the_scenes_asked_for(tmp_path):
    assert main(["render-shapes", "--out", str(tmp_path), "--count", "3", "--stream", "4", "--first", "2"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == [f"scene-4-{i:05d}.png" for i in (2, 3, 4)]
    for row, i in zip(rows, (2, 3, 4)):
        want = scene(4, i)
        assert row["caption"] == want.caption
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / row["image"])), np.asarray(want.image))
    data = read_folder(str(tmp_path))
    assert len(data.examples) == 3 and not data.problems
    assert scene(4, 2).caption != scene(5, 2).caption or not np.array_equal(np.asarray(scene(4, 2).image),
                                                                            np.asarray(scene(5, 2).image))


@pytest.mark.parametrize("flags", [["--count", "0"], ["--first", "-1"], ["--stream", "-2"]])
def test_render_refuses_bad_ranges(tmp_path, capsys, flags):
    assert main(["render-shapes", "--out", str(tmp_path / "o"), *flags]) == 2
    assert "--count must be positive" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
