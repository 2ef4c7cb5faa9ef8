"""Captions -> training labels, as ``purevedec train`` makes them: each caption's token ids (no
special tokens added), cut to ``max_length - 1`` tokens, then the end-of-sequence token, then
-100 (``IGNORE_INDEX``: positions the loss does not count) up to the row length.

The labels are unshifted: ``loss(params, pixels, labels)`` shifts them right behind the decoder
start token itself (``shift_right``), as transformers' ``VisionEncoderDecoderModel`` does.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError
from .cross_entropy import IGNORE_INDEX


def caption_ids(encode: Callable[[str], Sequence[int]], caption: str, eos_token_id: int,
                max_length: int) -> tuple[list[int], bool]:
    """(token ids ending with ``eos_token_id``, whether the caption was cut to fit ``max_length``)."""
    if max_length < 2:
        raise ConfigError(f"max_length={max_length}: a label row needs at least one token and the eos")
    ids = [int(i) for i in encode(caption)]
    cut = len(ids) > max_length - 1
    return ids[: max_length - 1] + [int(eos_token_id)], cut


def caption_labels(tokenizer, captions: Sequence[str], eos_token_id: int, *, max_length: int = 32,
                   length: int | None = None) -> np.ndarray:
    """int32 labels [len(captions), T] for ``loss``: each row a caption's ids (``tokenizer.encode``,
    e.g. ``purevedec.TextTokenizer``), its eos, then -100. T is the longest row, or ``length``
    (at least that long) for fixed shapes. Captions longer than ``max_length - 1`` tokens are cut.

    >>> labels = caption_labels(tokenizer, ["a dog", "two cats on a sofa"], eos_token_id=50256)
    """
    if isinstance(captions, str):
        raise ConfigError("captions must be a list of strings, not one string")
    rows = [caption_ids(tokenizer.encode, c, eos_token_id, max_length)[0] for c in captions]
    width = max((len(r) for r in rows), default=1)
    if length is not None:
        if length < width:
            raise ConfigError(f"length={length} is shorter than the longest caption's {width} tokens (with eos)")
        width = length
    out = np.full((len(rows), width), IGNORE_INDEX, np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out
