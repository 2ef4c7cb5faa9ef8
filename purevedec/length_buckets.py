"""Decoder lengths rounded up to buckets, so that a few compiled programs serve every length.

Every new decoder length T is a new shape, and a new shape compiles the whole model again
(7-11 s for vit-gpt2 on this project's CPU). With ``pad_to_multiple_of=m``, ``forward``, ``loss``
and ``score`` pad the decoder's columns on the right up to the next multiple of m (at most the
position table's length) and cut the results back to T, so lengths 1..m share one program. The
decoder is causal, so a padded column never reaches an earlier one: the results are those of the
unpadded call, up to the rounding of a differently shaped matmul (~1e-7). The new columns hold
token 0, position 0, attention mask 0 and label -100, all in range, so none of them turns to NaN
(which a zero attention weight would not cancel). With a dropout key the masks are drawn for the
padded shape, so they differ from the unpadded call's (the same distribution).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .validate import positive_int


def bucket_length(length: int, multiple: int | None, limit: int) -> int:
    """``length`` rounded up to a multiple of ``multiple`` (None: unchanged), at most ``limit`` (the
    positions the decoder's table covers) unless ``length`` itself is longer."""
    if multiple is None:
        return length
    positive_int(multiple, "pad_to_multiple_of", ValueError)
    return max(length, min(-(-length // multiple) * multiple, limit))


def pad_columns(x, length: int, value):
    """[B,T] -> [B,length] with ``value`` in the new columns; None stays None. Concrete arrays are
    padded with numpy, so that padding compiles nothing per T; traced ones with jax."""
    if x is None or x.shape[1] == length:
        return x
    xp = jnp if isinstance(x, jax.core.Tracer) else np
    return xp.pad(xp.asarray(x), ((0, 0), (0, length - x.shape[1])), constant_values=value)


def trim_decoder_output(out, length: int):
    """``forward``'s result at the bucket's length cut back to ``length`` decoder positions: the
    logits [B,T,V] and, in an ``Output``, the decoder's hidden states [B,T,D], self-attention
    [B,H,T,T] and cross-attention [B,H,T,S] weights. The encoder's fields do not depend on T."""
    if not hasattr(out, "_replace"):
        return out[:, :length]
    cut = lambda xs, *slices: None if xs is None else tuple(x[slices] for x in xs)  # noqa: E731
    every = slice(None)
    return out._replace(
        logits=out.logits[:, :length],
        decoder_hidden_states=cut(out.decoder_hidden_states, every, slice(length)),
        decoder_attentions=cut(out.decoder_attentions, every, every, slice(length), slice(length)),
        cross_attentions=cut(out.cross_attentions, every, every, slice(length)))
