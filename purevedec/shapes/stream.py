"""Fresh training batches of rendered scenes, prepared on threads ahead of the train step.

Batch ``n`` of stream ``seed`` holds scenes ``(seed, n*B) .. (seed, n*B + B-1)``: a function of
(seed, n) alone, so a run is reproducible and any batch can be rebuilt on its own.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple

import numpy as np

from ..captioning.image import ImageConfig, preprocess_one
from ..captioning.loader_pipeline import read_ahead
from ..training.cross_entropy import IGNORE_INDEX
from .scenes import scene


class SceneBatch(NamedTuple):
    pixels: np.ndarray      # float32 [B,C,H,W], preprocessed as the model's image processor does
    labels: np.ndarray      # int32 [B,T]: caption ids, eos, then -100
    captions: list[str]


def label_row(caption: str, vocab: dict[str, int], eos_id: int, length: int) -> np.ndarray:
    ids = [vocab[w] for w in caption.split()] + [eos_id]
    if len(ids) > length:
        raise ValueError(f"caption {caption!r} needs {len(ids)} tokens, more than {length}")
    row = np.full(length, IGNORE_INDEX, np.int32)
    row[:len(ids)] = ids
    return row


def scene_batch(seed: int, start: int, size: int, image_config: ImageConfig, vocab: dict[str, int],
                eos_id: int, length: int) -> SceneBatch:
    """Scenes ``(seed, start) .. (seed, start+size-1)`` rendered, preprocessed and tokenised."""
    rows = []
    for index in range(start, start + size):
        s = scene(seed, index)
        rows.append((preprocess_one(s.image, image_config), label_row(s.caption, vocab, eos_id, length), s.caption))
    return SceneBatch(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), [r[2] for r in rows])


def batches(seed: int, first: int, count: int, batch_size: int, image_config: ImageConfig,
            vocab: dict[str, int], eos_id: int, length: int, *, threads: int = 2,
            ahead: int = 2) -> Iterator[SceneBatch]:
    """Batches ``first .. first+count-1`` of stream ``seed``, up to ``ahead`` of them in
    preparation on ``threads`` threads while the caller trains on the current one (the
    captioning layer's read-ahead pool; pillow and numpy release the GIL)."""
    def read(n, _):
        return scene_batch(seed, n * batch_size, batch_size, image_config, vocab, eos_id, length)
    with contextlib.closing(read_ahead(range(first, first + count), read, workers=threads, window=ahead)) as loaded:
        for item in loaded:
            if item.error is not None:  # a rendering bug, not a bad input: stop the run
                raise item.error
            yield item.value
