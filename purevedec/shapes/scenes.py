"""Synthetic captioned scenes: one or two coloured shapes on a light canvas, rendered by pillow.

The distribution (issue 19's, fixed): a square canvas of side 96..256 px on a uniform background
(each channel 225..255); one or two filled shapes, ``circle`` (a disc), ``square`` or
``triangle`` (isosceles, apex up, as wide as tall), each in a square box whose side is 0.20..0.32
of the canvas, fully inside it; two boxes at least 0.04 of the side apart, never the same colour
and kind twice. Colours are the six ``COLOURS`` with every channel jittered by up to ±15.

Captions: ``a {colour} {shape}``, or for two shapes with dx, dy the difference of their box
centres, ``a … left of a …`` (left one first) when |dx| ≥ |dy|, else ``a … above a …`` (upper one
first). Scenes where | |dx| − |dy| | < 0.1 of the side are redrawn, so no relation is ambiguous.

Scene ``i`` of stream ``seed`` is drawn from ``numpy.random.default_rng([seed, i])``: the same pair
gives the same image and caption on every machine, and different streams never share a scene.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 210),
           "yellow": (225, 195, 30), "purple": (130, 50, 170), "orange": (235, 130, 30)}
KINDS = ("circle", "square", "triangle")
MIN_SIDE, MAX_SIDE = 96, 256
BOX_MIN, BOX_MAX = 0.20, 0.32   # box side as a fraction of the canvas side
MIN_GAP = 0.04                  # between two boxes, as a fraction of the side
MIN_RELATION_MARGIN = 0.1       # | |dx| - |dy| | at least this fraction of the side
JITTER = 15


class Shape(NamedTuple):
    kind: str
    colour: str
    rgb: tuple[int, int, int]
    box: tuple[int, int, int]   # x0, y0, size in pixels: the box covers [x0, x0+size) x [y0, y0+size)

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, size = self.box
        return x0 + size / 2, y0 + size / 2

    @property
    def name(self) -> str:
        return f"a {self.colour} {self.kind}"


class Scene(NamedTuple):
    image: Image.Image          # RGB, side x side
    caption: str
    shapes: tuple[Shape, ...]


def _shape(rng: np.random.Generator, side: int) -> Shape:
    kind = KINDS[rng.integers(len(KINDS))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    rgb = tuple(int(np.clip(c + rng.integers(-JITTER, JITTER + 1), 0, 255)) for c in COLOURS[colour])
    size = int(rng.integers(int(np.ceil(BOX_MIN * side)), int(np.floor(BOX_MAX * side)) + 1))
    x0, y0 = (int(v) for v in rng.integers(0, side - size + 1, size=2))
    return Shape(kind, colour, rgb, (x0, y0, size))


def _gap(a: Shape, b: Shape) -> int:
    """Pixels between two boxes along the axis where they are furthest apart (<= 0 if they overlap)."""
    (ax, ay, asz), (bx, by, bsz) = a.box, b.box
    return max(bx - (ax + asz), ax - (bx + bsz), by - (ay + asz), ay - (by + bsz))


def _valid_pair(a: Shape, b: Shape, side: int) -> bool:
    if (a.kind, a.colour) == (b.kind, b.colour) or _gap(a, b) < MIN_GAP * side:
        return False
    dx, dy = b.centre[0] - a.centre[0], b.centre[1] - a.centre[1]
    return abs(abs(dx) - abs(dy)) >= MIN_RELATION_MARGIN * side


def caption_of(shapes: tuple[Shape, ...]) -> str:
    if len(shapes) == 1:
        return shapes[0].name
    a, b = shapes
    dx, dy = b.centre[0] - a.centre[0], b.centre[1] - a.centre[1]
    if abs(dx) >= abs(dy):
        first, second = (a, b) if dx > 0 else (b, a)
        return f"{first.name} left of {second.name}"
    first, second = (a, b) if dy > 0 else (b, a)
    return f"{first.name} above {second.name}"


def _draw(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    x0, y0, size = shape.box
    x1, y1 = x0 + size - 1, y0 + size - 1          # pillow boxes include their last pixel
    if shape.kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=shape.rgb)
    elif shape.kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=shape.rgb)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=shape.rgb)


def render(shapes: tuple[Shape, ...], side: int, background: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        _draw(draw, shape)
    return image


def scene(seed: int, index: int) -> Scene:
    """Scene ``index`` of stream ``seed`` (both non-negative ints)."""
    rng = np.random.default_rng([seed, index])
    side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    background = tuple(int(c) for c in rng.integers(225, 256, size=3))
    first = _shape(rng, side)
    shapes: tuple[Shape, ...] = (first,)
    if rng.integers(2):
        second = _shape(rng, side)
        while not _valid_pair(first, second, side):
            second = _shape(rng, side)
        shapes = (first, second)
    return Scene(render(shapes, side, background), caption_of(shapes), shapes)


def vocabulary() -> list[str]:
    """Every word a caption can hold, in a fixed order."""
    return ["a", *COLOURS, *KINDS, "left", "of", "above"]
