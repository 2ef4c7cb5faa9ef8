"""Cross-attention heatmaps: one cell per generated token, the image under a heat overlay.

Rendered with PIL only (no plotting library). Each cell shows the image at its own aspect
ratio (at most CELL pixels on its longer side): the model sees the image resized to a square,
so its patch grid maps linearly back onto the original. Each token's attention over the patch
grid is scaled to [0, 1] on its own (tokens differ a lot in how peaked they are), upsampled to
the cell, coloured from dark blue (that token's lowest weight) to yellow (its highest) and
blended over the image; the colour scale is drawn under the grid. The token's text is written
under its cell with PIL's default font; special tokens (EOS, BOS, pad) are bracketed and red.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

CELL = 160          # pixels on the longer side of each heatmap
LABEL = 20          # pixels of text under each cell
SCALE = 36          # pixels of the colour scale under the grid (bar and its legend)
COLUMNS = 5
ALPHA = 0.55        # weight of the heat colour over the image
SPECIAL_COLOUR = (200, 0, 0)


def grid_shape(tokens: int, columns: int = COLUMNS) -> tuple[int, int]:
    """(rows, columns) of the grid for ``tokens`` cells (at least one cell, for an empty caption)."""
    cols = max(1, min(columns, tokens))
    return max(1, -(-tokens // cols)), cols


def cell_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of one cell: the image's aspect ratio, CELL pixels on its longer side."""
    w, h = image_size
    if w >= h:
        return CELL, max(1, round(CELL * h / w))
    return max(1, round(CELL * w / h)), CELL


def map_size(tokens: int, image_size: tuple[int, int], columns: int = COLUMNS) -> tuple[int, int]:
    """(width, height) in pixels of the PNG for ``tokens`` generated tokens over an image of
    ``image_size`` (width, height); the grid is at least as wide as the colour scale needs."""
    rows, cols = grid_shape(tokens, columns)
    cw, ch = cell_size(image_size)
    return max(cols * cw, CELL), rows * (ch + LABEL) + SCALE


def _heat_colours(weights: np.ndarray) -> np.ndarray:
    """[h,w] in [0,1] -> [h,w,3] uint8: dark blue (low) through red to yellow (high)."""
    r = np.clip(2 * weights, 0, 1)
    g = np.clip(2 * weights - 1, 0, 1)
    b = np.clip(0.5 - weights, 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def _cell(base: Image.Image, attention: np.ndarray, grid: tuple[int, int]) -> Image.Image:
    """One token: attention [P] over a ``grid`` of patches, blended over ``base`` (RGB)."""
    w = attention.reshape(grid).astype(np.float64)
    span = w.max() - w.min()
    w = (w - w.min()) / span if span > 0 else np.zeros_like(w)
    heat = Image.fromarray(_heat_colours(w)).resize(base.size, Image.Resampling.BILINEAR)
    return Image.blend(base, heat, ALPHA)


def _scale(canvas: Image.Image, draw: ImageDraw.ImageDraw, top: int) -> None:
    """The colour bar, low to high, with its legend, across the canvas from row ``top``."""
    width = canvas.size[0]
    canvas.paste(Image.fromarray(_heat_colours(np.linspace(0, 1, width)[None].repeat(10, 0))), (0, top + 4))
    draw.text((2, top + 18), "low", fill="black")
    draw.text((width - 30, top + 18), "high", fill="black")
    draw.text((width // 2 - 36, top + 18), "per token", fill="black")


def render(image: Image.Image, attention: np.ndarray, labels: list[str], grid: tuple[int, int],
           columns: int = COLUMNS, special: Optional[Sequence[bool]] = None) -> Image.Image:
    """The heatmap grid for one image. attention [T,P] with P = grid[0] * grid[1]; labels [T];
    ``special`` [T] marks the special tokens (their labels are bracketed and red)."""
    if attention.shape != (len(labels), grid[0] * grid[1]):
        raise ValueError(f"attention of shape {attention.shape} does not fit {len(labels)} tokens "
                         f"over a {grid[0]}x{grid[1]} patch grid")
    special = list(special) if special is not None else [False] * len(labels)
    if len(special) != len(labels):
        raise ValueError(f"special marks {len(special)} tokens, labels {len(labels)}")
    cw, ch = cell_size(image.size)
    base = image.convert("RGB").resize((cw, ch), Image.Resampling.BICUBIC)
    size = map_size(len(labels), image.size, columns)
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    cols = grid_shape(len(labels), columns)[1]
    for i, (weights, label, is_special) in enumerate(zip(attention, labels, special)):
        x, y = (i % cols) * cw, (i // cols) * (ch + LABEL)
        canvas.paste(_cell(base, weights, grid), (x, y))
        draw.text((x + 4, y + ch + 4), f"[{label}]" if is_special else label,
                  fill=SPECIAL_COLOUR if is_special else "black")
    _scale(canvas, draw, size[1] - SCALE)
    return canvas
