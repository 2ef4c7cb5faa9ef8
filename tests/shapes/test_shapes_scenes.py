"""The scene generator against issue 19's specification, checked from the rendered pixels alone:
shapes are found by segmentation, their kind from how much of their box they fill, their colour
from the nearest named colour, and the caption rebuilt from those measurements by the rule the
issue states (written here again, independently of purevedec.shapes)."""

import numpy as np
import pytest

from purevedec.shapes.scenes import scene

NAMED = {"red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 210),
         "yellow": (225, 195, 30), "purple": (130, 50, 170), "orange": (235, 130, 30)}
SCENES = 300


def _runs(profile: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of non-zero entries."""
    on = np.concatenate([[0], (profile > 0).astype(int), [0]])
    edges = np.flatnonzero(np.diff(on))
    return list(zip(edges[::2], edges[1::2]))


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """Split the shape mask into one or two shapes: two boxes are apart along x or y, so the
    projection on that axis has a gap."""
    for axis in (0, 1):  # projection on x (sum over rows), then on y
        runs = _runs(mask.sum(axis=axis))
        if len(runs) == 2:
            parts = []
            for a, b in runs:
                m = np.zeros_like(mask)
                if axis == 0:
                    m[:, a:b] = mask[:, a:b]
                else:
                    m[a:b, :] = mask[a:b, :]
                parts.append(m)
            return parts
    return [mask]


def _measure(part: np.ndarray, rgb: np.ndarray) -> dict:
    ys, xs = np.nonzero(part)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    fill = part.sum() / ((x1 - x0) * (y1 - y0))
    # square fills its box, a disc pi/4 of it, the triangle half of it
    kind = "square" if fill > 0.93 else "circle" if fill > 0.65 else "triangle"
    mean = rgb[part].mean(axis=0)
    colour = min(NAMED, key=lambda n: np.abs(mean - NAMED[n]).sum())
    return {"box": (x0, y0, x1, y1), "centre": ((x0 + x1) / 2, (y0 + y1) / 2), "name": f"a {colour} {kind}",
            "rgb": mean, "colour": colour, "kind": kind}


def _caption(shapes: list[dict]) -> str:
    if len(shapes) == 1:
        return shapes[0]["name"]
    a, b = shapes
    dx, dy = b["centre"][0] - a["centre"][0], b["centre"][1] - a["centre"][1]
    if abs(dx) >= abs(dy):
        left, right = (a, b) if dx > 0 else (b, a)
        return f"{left['name']} left of {right['name']}"
    top, bottom = (a, b) if dy > 0 else (b, a)
    return f"{top['name']} above {bottom['name']}"


@pytest.fixture(scope="module")
def measured():
    out = []
    for i in range(SCENES):
        s = scene(7, i)
        rgb = np.asarray(s.image).astype(np.int32)
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
        mask = rgb.min(axis=2) < 150          # every colour has a channel <= 75, the background >= 225
        shapes = [_measure(p, rgb) for p in _components(mask)]
        out.append((s, rgb, border, shapes))
    return out


def test_caption_matches_what_is_drawn(measured):
    for s, _, _, shapes in measured:
        assert len(shapes) == len(s.shapes)
        assert _caption(shapes) == s.caption


def test_canvas_background_and_colours_in_range(measured):
    counts = {1: 0, 2: 0}
    for s, rgb, border, shapes in measured:
        side = rgb.shape[0]
        assert rgb.shape == (side, side, 3) and 96 <= side <= 256
        background = rgb[~(rgb.min(axis=2) < 150)]
        assert (background.min(axis=0) == background.max(axis=0)).all()  # uniform
        assert (background[0] >= 225).all() and (background[0] <= 255).all()
        for shape in shapes:
            assert np.abs(shape["rgb"] - NAMED[shape["colour"]]).max() <= 15.5
        counts[len(shapes)] += 1
    assert min(counts.values()) > SCENES // 4   # both kinds of scene are common


def test_geometry_within_the_specification(measured):
    for s, rgb, _, shapes in measured:
        side = rgb.shape[0]
        for sh in shapes:
            x0, y0, x1, y1 = sh["box"]
            assert 0 <= x0 and x1 <= side and 0 <= y0 and y1 <= side
            for extent in (x1 - x0, y1 - y0):   # a box side of 0.20-0.32 of the canvas (+-1 px of drawing)
                assert 0.20 * side - 1 <= extent <= 0.32 * side + 1
        if len(shapes) == 2:
            a, b = (sh["box"] for sh in shapes)
            gap = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
            assert gap >= 0.04 * side - 1
            assert (shapes[0]["colour"], shapes[0]["kind"]) != (shapes[1]["colour"], shapes[1]["kind"])
            dx = shapes[1]["centre"][0] - shapes[0]["centre"][0]
            dy = shapes[1]["centre"][1] - shapes[0]["centre"][1]
            assert abs(abs(dx) - abs(dy)) >= 0.1 * side - 1


def test_every_word_appears():
    words = {w for i in range(400) for w in scene(3, i).caption.split()}
    assert words == {"a", "left", "of", "above", "circle", "square", "triangle", *NAMED}


def test_deterministic_per_stream_and_index():
    a, b = scene(11, 5), scene(11, 5)
    assert a.caption == b.caption and a.image.tobytes() == b.image.tobytes()
    others = [scene(12, 5), scene(11, 6)]
    assert all(o.image.tobytes() != a.image.tobytes() for o in others)
