"""``training.png`` beside ``metrics.jsonl``: the run drawn with pillow (no plotting library).

Left: the training loss and the validation loss (log10 scale) against steps, evaluations marked
with dots. Right: the scores of the generated validation captions (exact match, BLEU, CIDEr, CER,
WER: whichever were computed), one coloured line with dots per metric, legend in the corner.
Ticks: round step numbers on x, decades (loss) or round values (scores) on y.
"""

from __future__ import annotations

import math
import os

from PIL import Image, ImageDraw

PANEL_W, PANEL_H, LEFT, BOTTOM, TOP = 460, 320, 56, 40, 26
COLOURS = [(200, 40, 40), (40, 70, 210), (30, 150, 60), (180, 120, 0), (140, 40, 170), (0, 140, 150)]
SCORES = ("val_exact_match", "val_bleu", "val_cider", "val_cer", "val_wer")


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.0e}"


class _Panel:
    def __init__(self, draw, left: int, title: str, x_max: float, y_lo: float, y_hi: float):
        self.draw, self.x_max, self.y_lo, self.y_hi = draw, x_max or 1, y_lo, y_hi if y_hi > y_lo else y_lo + 1
        self.x0, self.y0, self.x1, self.y1 = left + LEFT, TOP, left + PANEL_W - 14, PANEL_H - BOTTOM
        draw.rectangle((self.x0, self.y0, self.x1, self.y1), outline=(0, 0, 0))
        draw.text((self.x0, 6), title, fill=(0, 0, 0))
        for x in nice_ticks(0, self.x_max):
            px, _ = self.at(x, self.y_lo)
            draw.line((px, self.y1, px, self.y1 + 4), fill=(0, 0, 0))
            draw.text((px - 3 * len(_label(x)), self.y1 + 6), _label(x), fill=(0, 0, 0))
        draw.text((self.x1 - 30, self.y1 + 20), "step", fill=(0, 0, 0))

    def at(self, x: float, y: float) -> tuple[float, float]:
        t = (min(max(y, self.y_lo), self.y_hi) - self.y_lo) / (self.y_hi - self.y_lo)
        return self.x0 + (self.x1 - self.x0) * x / self.x_max, self.y1 - (self.y1 - self.y0) * t

    def y_tick(self, value: float, text: str) -> None:
        _, py = self.at(0, value)
        self.draw.line((self.x0 - 4, py, self.x0, py), fill=(0, 0, 0))
        self.draw.text((self.x0 - 6 - 6 * len(text), py - 6), text, fill=(0, 0, 0))

    def series(self, points, colour, dots: bool, legend: str | None = None, row: int = 0) -> None:
        xy = [self.at(x, y) for x, y in points]
        if len(xy) > 1:
            self.draw.line(xy, fill=colour, width=2)
        for px, py in xy if dots else ():
            self.draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
        if legend:
            self.draw.text((self.x1 - 110, self.y0 + 6 + 14 * row), legend, fill=colour)


def _log10(v: float) -> float:
    return math.log10(max(v, 1e-6))


def write_plot(records: list[dict], path: str) -> str:
    """Draw the train and eval records of a run (``metrics.jsonl``'s) to ``path`` (PNG)."""
    train = [(r["step"], _log10(r["loss"])) for r in records if r.get("event") == "train" and _finite(r.get("loss"))]
    evals = [r for r in records if r.get("event") == "eval"]
    val = [(r["step"], _log10(r["val_loss"])) for r in evals if _finite(r.get("val_loss"))]
    x_max = max([x for x, _ in train + val], default=1)
    image = Image.new("RGB", (2 * PANEL_W, PANEL_H), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    ys = [y for _, y in train + val] or [0.0]
    lo, hi = math.floor(min(ys)), math.ceil(max(ys))
    hi = hi if hi > lo else lo + 1
    loss = _Panel(draw, 0, "loss (log scale)", x_max, lo, hi)
    for k in range(lo, hi + 1):
        loss.y_tick(k, _label(10.0 ** k))
    loss.series(train, COLOURS[0], dots=False, legend="train", row=0)
    loss.series(val, COLOURS[1], dots=True, legend="validation", row=1)
    names = [k for k in SCORES if any(_finite(r.get(k)) for r in evals)]
    top = max([1.0] + [r[k] for r in evals for k in names if _finite(r.get(k))])
    scores = _Panel(draw, PANEL_W, "validation caption scores", x_max, 0.0, top)
    for v in nice_ticks(0.0, top):
        scores.y_tick(v, _label(v))
    for row, name in enumerate(names):
        points = [(r["step"], r[name]) for r in evals if _finite(r.get(name))]
        scores.series(points, COLOURS[(row + 2) % len(COLOURS)], dots=True, legend=name[4:], row=row)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    image.save(tmp)
    os.replace(tmp, path)
    return path


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
