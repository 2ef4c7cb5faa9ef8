"""Images in, captions out: a checkpoint's model, preprocessing and tokenizer held together.

    cap = purevedec.Captioner.from_pretrained("nlpconnect/vit-gpt2-image-captioning")
    cap.caption(["cat.jpg", pil_image], num_beams=4)        # -> ["a cat sitting on a couch", ...]

Generation goes through ``purevedec.generate`` (transformers' generate options, defaults from
the checkpoint's generation config); one call per batch of ``batch_size`` images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np

from ..checkpoints.loader import load, local_dir
from ..errors import ModelNotFound
from ..generation import generate
from ..generation.options import defaults_for
from .image import ImageConfig, ImageInput, as_list, load_image_config, preprocess
from .text import TextTokenizer, load_tokenizer


class Caption(NamedTuple):
    """One generated caption of one image.

    ``text`` is the decoded caption, special tokens skipped. ``score`` is the sequence score ``generate`` reports: the length-normalised beam score for
    beam search, the sum of the generated tokens' log-probabilities for greedy search and
    sampling. ``token_ids`` are the generated tokens (the decoder start token excluded) up to
    and including the first EOS. ``attention`` is None unless asked for: [T, P] float32, per
    generated token, the cross-attention over the P image patches (row-major over the patch
    grid), averaged over layers and heads, without the CLS token's share."""
    text: str
    score: float
    token_ids: tuple[int, ...]
    attention: Optional[np.ndarray]


def model_dir(name: str | os.PathLike) -> str:
    """A local checkpoint directory, or a hub id fetched to (or found in) the local cache."""
    try:  # the loader's own resolver: it fetches only one weights format, with the side files
        return local_dir(name)
    except Exception as e:  # offline, unknown repo, bad id: all end the same way for the caller
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelNotFound(f"cannot load model {os.fspath(name)!r}: {why}") from None


def _generated(row: np.ndarray, eos) -> int:
    """How many tokens of ``row`` (decoder start excluded) were generated, up to the first EOS."""
    eos = set(np.atleast_1d(eos).tolist()) if eos is not None else set()
    for i, token in enumerate(row.tolist()):
        if token in eos:
            return i + 1
    return len(row)


def _patch_attention(cross: np.ndarray) -> np.ndarray:
    """[T, layers, heads, S] -> [T, S-1]: averaged over layers and heads (every layer reads the
    image, and no single one is known to be the grounded one), CLS position dropped."""
    return cross.mean(axis=(1, 2))[:, 1:]


@dataclass(frozen=True)
class Captioner:
    """A checkpoint ready to caption: params (with their config), preprocessing and tokenizer.

    Build it with ``Captioner.from_pretrained(name_or_path, dtype=None)``. ``caption`` returns
    texts, ``captions`` yields ``Caption`` records. Options are ``purevedec.generate``'s
    (num_beams, max_new_tokens, do_sample, temperature, top_k, top_p, num_return_sequences,
    ...); unset ones come from the checkpoint's generation config. Inputs are paths, PIL images
    or arrays (HWC, CHW or HW)."""
    params: Any
    """The model's params (they carry their config)."""
    config: Any
    """The model's ``purevedec.Config``."""
    image_config: ImageConfig
    """The checkpoint's preprocessing (``preprocessor_config.json``)."""
    tokenizer: TextTokenizer
    """The checkpoint's tokenizer."""
    dtype: Any = None
    """Compute dtype for generate (None: float32)."""

    @classmethod
    def from_pretrained(cls, name: str | os.PathLike, *, dtype=None) -> "Captioner":
        path = model_dir(name)
        params, config = load(path, dtype=dtype)
        return cls(params, config, load_image_config(path), load_tokenizer(path), dtype)

    @property
    def generation_config(self):
        """The checkpoint's generation defaults (what ``caption`` uses unless told otherwise)."""
        return self.params.get("generation_config") or defaults_for(self.config)

    def pixels(self, images: ImageInput | Iterable[ImageInput]) -> np.ndarray:
        return preprocess(images, self.image_config)

    def caption_pixels(self, pixels: np.ndarray, *, attention: bool = False, **options) -> list[Caption]:
        """One generate call over pixels [B,3,H,W]; B * num_return_sequences captions."""
        options = {k: v for k, v in options.items() if v is not None}
        if self.dtype is not None:
            options.setdefault("dtype", self.dtype)
        out = generate(self.params, pixels, self.config, output_cross_attentions=attention, **options)
        eos = options.get("eos_token_id", self.generation_config.eos_token_id)
        sequences, scores = np.asarray(out.sequences), np.asarray(out.scores)
        cross = np.asarray(out.cross_attentions) if attention else None
        captions = []
        for i, row in enumerate(sequences):
            n = _generated(row[1:], eos)
            captions.append(Caption(self.tokenizer.decode(row), float(scores[i]), tuple(row[1:1 + n].tolist()),
                                    _patch_attention(cross[i, :n]) if cross is not None else None))
        return captions

    def captions(self, images: Sequence[ImageInput], *, batch_size: int = 8, attention: bool = False,
                 **options) -> Iterator[Caption]:
        """Captions for ``images`` in order, generated ``batch_size`` images at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        images = as_list(images)
        for start in range(0, len(images), batch_size):
            yield from self.caption_pixels(self.pixels(images[start:start + batch_size]),
                                           attention=attention, **options)

    def caption(self, images, *, batch_size: int = 8, **options) -> list[str]:
        """Caption texts, as transformers' ``batch_decode(generate(...), skip_special_tokens=True)``."""
        return [c.text for c in self.captions(images, batch_size=batch_size, **options)]
