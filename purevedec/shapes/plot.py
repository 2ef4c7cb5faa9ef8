"""A small PNG of a training run drawn with pillow (no plotting library in the dependencies):
training loss (log scale) on the left, validation exact match on the right, against steps."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

PANEL_W, PANEL_H, MARGIN = 420, 300, 48


def _panel(draw: ImageDraw.ImageDraw, left: int, title: str, points: list[tuple[float, float]],
           y_range: tuple[float, float], y_labels: list[tuple[float, str]], colour) -> None:
    x0, y0, x1, y1 = left + MARGIN, MARGIN // 2, left + PANEL_W - 12, PANEL_H - MARGIN
    draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
    draw.text((x0, 4), title, fill=(0, 0, 0))
    if not points:
        return
    x_max = max(p[0] for p in points) or 1
    lo, hi = y_range

    def at(x, y):
        t = (min(max(y, lo), hi) - lo) / ((hi - lo) or 1)
        return x0 + (x1 - x0) * x / x_max, y1 - (y1 - y0) * t
    for value, label in y_labels:
        _, y = at(0, value)
        draw.line((x0 - 4, y, x0, y), fill=(0, 0, 0))
        draw.text((left + 4, y - 6), label, fill=(0, 0, 0))
    draw.text((x0, y1 + 6), "0", fill=(0, 0, 0))
    draw.text((x1 - 40, y1 + 6), f"{int(x_max)} steps", fill=(0, 0, 0))
    draw.line([at(x, y) for x, y in points], fill=colour, width=2)


def write_training_plot(history: list[dict], path: str) -> None:
    train = [(e["step"], math.log10(max(e["loss"], 1e-6))) for e in history if e["event"] == "train"]
    evals = [(e["step"], e["exact_match"]) for e in history if e["event"] == "eval"]
    image = Image.new("RGB", (2 * PANEL_W, PANEL_H), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    lo = math.floor(min((y for _, y in train), default=-3))
    hi = math.ceil(max((y for _, y in train), default=1))
    _panel(draw, 0, "training loss (log10)", train, (lo, hi),
           [(k, f"1e{k}") for k in range(lo, hi + 1)], (200, 40, 40))
    _panel(draw, PANEL_W, "validation exact match", evals, (0.0, 1.0),
           [(k / 4, f"{k / 4:.2f}") for k in range(5)], (40, 70, 210))
    image.save(path)
