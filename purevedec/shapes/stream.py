"""Fresh training batches of rendered scenes, prepared on threads ahead of the train step.

Batch ``n`` of stream ``seed`` holds scenes ``(seed, n*B) .. (seed, n*B + B-1)``: a function of
(seed, n) alone, so a run is reproducible and any batch can be rebuilt on its own.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, NamedTuple

import numpy as np

from ..captioning.image import ImageConfig, preprocess_one
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
                eos_id: int, length: int, pool: ThreadPoolExecutor | None = None) -> SceneBatch:
    """Scenes ``(seed, start) .. (seed, start+size-1)`` rendered, preprocessed and tokenised."""
    def one(index):
        s = scene(seed, index)
        return preprocess_one(s.image, image_config), label_row(s.caption, vocab, eos_id, length), s.caption
    indices = range(start, start + size)
    rows = list(pool.map(one, indices)) if pool is not None else [one(i) for i in indices]
    return SceneBatch(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), [r[2] for r in rows])


def batches(seed: int, first: int, count: int, batch_size: int, image_config: ImageConfig,
            vocab: dict[str, int], eos_id: int, length: int, *, threads: int = 2,
            ahead: int = 2) -> Iterator[SceneBatch]:
    """Batches ``first .. first+count-1`` of stream ``seed``, ``ahead`` of them in preparation
    while the caller trains on the current one (pillow and numpy release the GIL)."""
    with ThreadPoolExecutor(threads) as pool:
        def submit(n):
            return pool.submit(scene_batch, seed, n * batch_size, batch_size, image_config, vocab, eos_id, length)
        pending = deque(submit(n) for n in range(first, min(first + ahead, first + count)))
        for n in range(first, first + count):
            batch = pending.popleft().result()
            if n + ahead < first + count:
                pending.append(submit(n + ahead))
            yield batch
