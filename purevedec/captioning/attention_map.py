"""Cross-attention heatmaps: one cell per generated token, the image under a heat overlay.

Rendered with PIL only (no plotting library): each token's attention over the patch grid is
scaled to [0, 1] on its own (tokens differ a lot in how peaked they are), upsampled to the
cell, coloured from dark blue to yellow and blended over the image; the token's text is
written under its cell with PIL's default font.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

CELL = 160          # pixels per heatmap side
LABEL = 20          # pixels of text under each cell
COLUMNS = 5
ALPHA = 0.55        # weight of the heat colour over the image


def grid_shape(tokens: int, columns: int = COLUMNS) -> tuple[int, int]:
    """(rows, columns) of the grid for ``tokens`` cells (at least one cell, for an empty caption)."""
    cols = max(1, min(columns, tokens))
    return max(1, -(-tokens // cols)), cols


def map_size(tokens: int, columns: int = COLUMNS) -> tuple[int, int]:
    """(width, height) in pixels of the PNG for ``tokens`` generated tokens."""
    rows, cols = grid_shape(tokens, columns)
    return cols * CELL, rows * (CELL + LABEL)


def _heat_colours(weights: np.ndarray) -> np.ndarray:
    """[h,w] in [0,1] -> [h,w,3] uint8: dark blue (low) through red to yellow (high)."""
    r = np.clip(2 * weights, 0, 1)
    g = np.clip(2 * weights - 1, 0, 1)
    b = np.clip(0.5 - weights, 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def _cell(base: Image.Image, attention: np.ndarray, grid: tuple[int, int]) -> Image.Image:
    """One token: attention [P] over a ``grid`` of patches, blended over ``base`` (CELL x CELL RGB)."""
    w = attention.reshape(grid).astype(np.float64)
    span = w.max() - w.min()
    w = (w - w.min()) / span if span > 0 else np.zeros_like(w)
    heat = Image.fromarray(_heat_colours(w)).resize(base.size, Image.Resampling.BILINEAR)
    return Image.blend(base, heat, ALPHA)


def render(image: Image.Image, attention: np.ndarray, labels: list[str], grid: tuple[int, int],
           columns: int = COLUMNS) -> Image.Image:
    """The heatmap grid for one image. attention [T,P] with P = grid[0] * grid[1]; labels [T]."""
    if attention.shape != (len(labels), grid[0] * grid[1]):
        raise ValueError(f"attention of shape {attention.shape} does not fit {len(labels)} tokens "
                         f"over a {grid[0]}x{grid[1]} patch grid")
    base = image.convert("RGB").resize((CELL, CELL), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", map_size(len(labels), columns), "white")
    draw = ImageDraw.Draw(canvas)
    cols = grid_shape(len(labels), columns)[1]
    for i, (weights, label) in enumerate(zip(attention, labels)):
        x, y = (i % cols) * CELL, (i // cols) * (CELL + LABEL)
        canvas.paste(_cell(base, weights, grid), (x, y))
        draw.text((x + 4, y + CELL + 4), label, fill="black")
    return canvas
