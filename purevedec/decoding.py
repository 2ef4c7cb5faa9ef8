"""Cached decoding, the public way: ``init_cache`` (cross-attention K/V once per image, empty
self-attention buffers) and ``step`` (feed tokens, get logits and the next cache), with
``cache_step``, their unjitted core, for generation."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from .backend_tuning import decode_jit
from .config import Config
from .decoder_cache import DecoderCache, check_not_donated, init_cache as init_decoder_cache
from .inputs import check_enc, check_ids, check_mask, compute_dtype, is_concrete
from .models import decoder_family
from .params import unpack
from .passes import layer_kv
from .sharding import batch_split, constrain_rows


def new_cache(weights, enc, config: Config, max_len: int, rows_per_image: int, dtype,
              split: NamedSharding | None = None) -> DecoderCache:
    """The decoding cache (traceable): cross K/V from ``enc`` once per image, empty self K/V.

    The empty buffers depend on no input, so nothing tells the partitioner how to place them: when
    the images are split over devices (``split``, from ``batch_split``), their rows are split the
    same way (rows are image-major, so each device keeps the rows of its own images); without it a
    jitted ``init_cache`` returns them whole on every device."""
    return init_decoder_cache(config.decoder, layer_kv(weights, enc, config, dtype), enc.shape[0] * rows_per_image,
                              max_len, dtype, lambda a: constrain_rows(a, split))


@partial(jax.jit, static_argnames=("config", "max_len", "rows_per_image", "dtype", "split"))
def _init_cache_jit(weights, enc, *, config, max_len, rows_per_image, dtype, split):
    return new_cache(weights, enc, config, max_len, rows_per_image, dtype, split)


def init_cache(params, enc, config: Config | None = None, max_len: int = None, *, rows_per_image: int = 1,
               dtype=jnp.float32):
    """A decoding cache for ``max_len`` decoder tokens. Cross-attention K/V are computed here,
    once per image; ``rows_per_image`` decoder rows (beams, samples) share them, image-major
    (row r reads image r // rows_per_image). Returns a ``DecoderCache`` (its fields: self and cross
    K/V per layer, key mask, per-row offset, position); ``cache.offset`` [R] counts each row's
    padding so far: the attention mask of a left-padded prompt sets it in ``step``."""
    weights, config = unpack(params, config)
    check_enc(enc, config)
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or \
            not 0 < max_len <= config.decoder.n_positions:
        raise ValueError(f"max_len={max_len!r} must be an int in [1, n_positions={config.decoder.n_positions}]")
    if isinstance(rows_per_image, bool) or not isinstance(rows_per_image, (int, np.integer)) or rows_per_image < 1:
        raise ValueError(f"rows_per_image={rows_per_image!r} must be a positive int")
    return _init_cache_jit(weights, enc, config=config, max_len=int(max_len), rows_per_image=int(rows_per_image),
                           dtype=compute_dtype(dtype), split=batch_split(enc))


POSITIONS = ("per_row", "shifted")


def shifted_positions(positions: str) -> bool:
    """Check the ``positions`` option of step/generate: whether positions are transformers' shifted ones.

    "per_row" (default): a row's positions count from its first real token, so a left-padded
    row continues exactly as it would alone. "shifted": positions are buffer indices, so left
    padding shifts a row's positions, as transformers numbers a padded decoder_input_ids."""
    if not isinstance(positions, str) or positions not in POSITIONS:
        raise ValueError(f"positions={positions!r} must be one of {POSITIONS}: 'per_row' counts each row's "
                         "positions from its first real token, 'shifted' (transformers) from the buffer start")
    return positions == "shifted"


def cache_step(weights, cache, ids, config: Config, attention_mask=None, dtype=jnp.float32, *, shifted=False):
    """The unjitted core of ``step``, for use inside other jitted code (generate); also returns
    the per-layer cross-attention weights."""
    return decoder_family(config.decoder).apply_cached(weights["decoder"], cache, ids, config.decoder,
                                               attention_mask=attention_mask, shifted=shifted, dtype=dtype)


def _step(weights, cache, ids, attention_mask, *, config, dtype, shifted):
    logits, cache, _ = cache_step(weights, cache, ids, config, attention_mask, dtype, shifted=shifted)
    return logits, cache


_step_donating = decode_jit(_step, static_argnames=("config", "dtype", "shifted"), donate_argnames=("cache",))
_step_keeping = decode_jit(_step, static_argnames=("config", "dtype", "shifted"))


def step(params, cache, ids, config: Config | None = None, *, attention_mask=None, positions: str = "per_row",
         dtype=jnp.float32, donate: bool = True):
    """Feed ``ids`` [R,t] (a prompt, or one token) to the cached decoder: (logits [R,t,V], cache).
    ``attention_mask`` [R,t] marks padding inside a ragged, left-padded prompt (0 = padding).

    ``positions="per_row"`` (default): the padding is counted into ``cache.offset`` and each
    row's positions count from its first real token, in this step and every later one: each
    row's logits are those of the row alone. ``positions="shifted"`` numbers tokens by their
    buffer index, as transformers does for a left-padded decoder_input_ids (its batched output).
    Without padding both are the same (positions 0, 1, 2, ...).

    By default the input cache is donated (its buffers are reused), so keep using the returned
    one (stepping a donated cache again raises an error saying so). ``donate=False`` leaves it
    intact: branch a shared prefix into several continuations by stepping the same cache more than once. Past ``max_len`` a concrete cache raises; under jit
    the logits come back NaN (the write would otherwise overwrite the last slot)."""
    weights, config = unpack(params, config)
    check_ids(ids, config)
    check_mask(attention_mask, ids, "attention_mask")
    shifted = shifted_positions(positions)
    if not isinstance(cache, DecoderCache):
        raise TypeError(f"cache must be the DecoderCache init_cache returns, got {type(cache).__name__}")
    check_not_donated(cache)
    rows, max_len = cache.mask.shape
    if ids.shape[0] != rows:
        raise ValueError(f"ids have {ids.shape[0]} rows, the cache holds {rows}")
    if is_concrete(cache.pos) and int(cache.pos) + ids.shape[1] > max_len:
        raise ValueError(f"cache is full: {int(cache.pos)} + {ids.shape[1]} tokens > max_len={max_len}")
    run = _step_donating if donate else _step_keeping
    return run(weights, cache, ids, attention_mask, config=config, dtype=compute_dtype(dtype), shifted=shifted)
