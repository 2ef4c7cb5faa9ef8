"""The decoding cache every decoder family shares, and the pieces of cached decoding that are
the same for all of them: initialisation, the key/value write, the cached causal mask, token
positions per row, and the guard against writing past the end.

Shape letters: B images, R decoder rows (R/B per image, image-major), H heads, K head width,
S encoder tokens, Tmax the cache length, t the tokens fed in one step, L decoder layers.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from . import backend_tuning
from .attention import attention, attention_after_cache


class DecoderCache(NamedTuple):
    """What cached decoding carries from one step to the next (a pytree: jit, donation and
    sharding see its arrays)."""
    self_kv: tuple
    """Per layer, the self-attention (keys, values), each [R,H,Tmax,K]; positions >= ``pos`` are unwritten."""
    cross_kv: tuple
    """Per layer, the cross-attention (keys, values) over the image, each [B,H,S,K]: computed
    once per image and shared by its R/B rows (beams, samples)."""
    mask: jax.Array
    """[R,Tmax] bool: which cached positions hold real tokens (False: padding, or not yet written)."""
    offset: jax.Array
    """[R] int32: each row's padding so far, so its positions count from its first real token."""
    pos: jax.Array
    """[] int32: the next write index (tokens already cached, padding included)."""


# The entries with one row per decoder row, which follow their row when beams are reordered.
ROW_FIELDS = ("self_kv", "mask", "offset")


def init_cache(dec, cross_kv: list, rows: int, max_len: int, dtype,
               constrain: Callable[[jax.Array], jax.Array] = lambda x: x) -> DecoderCache:
    """An empty cache for ``rows`` decoder rows of ``max_len`` tokens over the given cross K/V.
    The self-attention buffers' shape comes from the decoder config (``n_layer``, ``n_head``,
    ``head_dim``); ``constrain`` places each per-row array (rows split like the images)."""
    shape = (rows, dec.n_head, max_len, dec.head_dim)
    empty = tuple((constrain(jnp.zeros(shape, dtype)), constrain(jnp.zeros(shape, dtype))) for _ in range(dec.n_layer))
    return DecoderCache(self_kv=empty, cross_kv=tuple(cross_kv),
                        mask=constrain(jnp.zeros((rows, max_len), bool)),
                        offset=constrain(jnp.zeros((rows,), jnp.int32)), pos=jnp.zeros((), jnp.int32))


def write_kv(layer: tuple, k: jax.Array, v: jax.Array, pos) -> tuple:
    """One layer's (keys, values) [R,H,Tmax,K] with the new k, v [R,H,t,K] written at ``pos``."""
    return tuple(_write(buf, new.astype(buf.dtype), (0, 0, pos, 0)) for buf, new in zip(layer, (k, v)))


def _write(buf: jax.Array, new: jax.Array, start: tuple) -> jax.Array:
    """``dynamic_update_slice``; a 16-bit float buffer written through its bits where the backend
    asks: XLA:CPU widens a bf16 update to float32 over the whole buffer, every step."""
    if buf.dtype.itemsize != 2 or not backend_tuning.current().integer_cache_writes:
        return jax.lax.dynamic_update_slice(buf, new, start)
    bits = jax.lax.dynamic_update_slice(jax.lax.bitcast_convert_type(buf, jnp.uint16),
                                        jax.lax.bitcast_convert_type(new, jnp.uint16), start)
    return jax.lax.bitcast_convert_type(bits, buf.dtype)


def valid_tokens(ids: jax.Array, attention_mask) -> jax.Array:
    """[R,t] bool: the real tokens of a step (``attention_mask`` 0 marks padding; None: all real)."""
    return jnp.ones(ids.shape, bool) if attention_mask is None else attention_mask != 0


class StepMask(NamedTuple):
    """Which keys the t queries of a cached step see: the cache's real tokens from before the step,
    and the step's own real tokens up to each query (``attend_self`` reads the two blocks)."""
    cached: jax.Array
    """[R,1,1,Tmax] bool: real tokens cached before the step (positions < ``pos``; what lies beyond,
    such as rejected draft tokens, is hidden)."""
    new: jax.Array
    """[R,1,t,t] bool: the step's real tokens, each query seeing itself and those before it."""
    full: jax.Array
    """[R,1,t,Tmax] bool: both, over the buffer after the step's write."""


def step_mask(cache: DecoderCache, valid: jax.Array) -> tuple[StepMask, jax.Array]:
    """(the self-attention mask of ``t`` new tokens, the updated key mask [R,Tmax]): each new
    token sees every earlier or equal position the key mask marks real."""
    t = valid.shape[1]
    max_len = cache.mask.shape[1]
    key_mask = jax.lax.dynamic_update_slice(cache.mask, valid, (0, cache.pos))  # [R,Tmax]
    causal = jnp.arange(max_len)[None, :] <= (cache.pos + jnp.arange(t))[:, None]  # [t,Tmax]
    cached = cache.mask & (jnp.arange(max_len) < cache.pos)
    own = jnp.tril(jnp.ones((t, t), bool))[None] & valid[:, None, :]  # [R,t,t]
    full = causal[None, None] & key_mask[:, None, None, :]
    return StepMask(cached=cached[:, None, None, :], new=own[:, None], full=full), key_mask


def attend_self(q, k, v, mask, scale: float, *, cache=None, pos=None, upcast: bool = False, dropout_rate: float = 0.0,
                key=None) -> tuple:
    """A layer's self-attention: (out [R,H,t,K], weights [R,H,t,U], the layer's updated (keys,
    values) or None). Without ``cache`` the queries attend over k, v under ``mask`` [R,1,t,t]; with
    it (this layer's (keys, values) [R,H,Tmax,K]) ``mask`` is the step's ``StepMask``, the new k, v
    are written at ``pos`` and the queries attend over the cache and themselves."""
    if cache is None:
        return (*attention(q, k, v, mask, scale, upcast=upcast, dropout_rate=dropout_rate, key=key), None)
    if key is not None and dropout_rate > 0.0:  # dropout on the weights of the whole buffer, as without a cache
        cache = write_kv(cache, k, v, pos)
        return (*attention(q, *cache, mask.full, scale, upcast=upcast, dropout_rate=dropout_rate, key=key), cache)
    out, weights = attention_after_cache(q, cache, (k, v), mask.cached, mask.new, pos, scale, upcast=upcast)
    # The write waits for the attention's reads of the old buffer (a data dependence through the barrier),
    # so that XLA writes the buffer in place instead of copying it first (docs/perf-notes.md).
    out, k, v = jax.lax.optimization_barrier((out, k, v))
    return out, weights, write_kv(cache, k, v, pos)


def token_positions(cache: DecoderCache, valid, t: int, shifted: bool) -> tuple[jax.Array, jax.Array]:
    """(position ids [R,t], the updated offsets [R]) of ``t`` new tokens, ``valid`` [R,t]
    marking the real ones (None: all are).

    Per row by default: a real token's position is the number of real tokens before it in its
    row (buffer index minus the padding so far, kept in ``cache.offset``), so a left-padded row
    continues exactly as it would alone. ``shifted`` keeps buffer indices and leaves the offsets
    alone, as transformers numbers a left-padded decoder_input_ids (padding shifts the row).
    Padding itself sits at position 0 (it is hidden; a negative index would embed as NaN)."""
    buffer_pos = cache.pos + jnp.arange(t)  # [t]
    if shifted or valid is None:  # no new padding: the offsets stay
        return buffer_pos[None, :] - cache.offset[:, None], cache.offset
    padding = cache.offset[:, None] + jnp.cumsum(~valid, axis=1, dtype=jnp.int32)  # [R,t] padding up to each token
    return jnp.where(valid, buffer_pos - padding, 0), padding[:, -1]


def advance(cache: DecoderCache, self_kv: list, key_mask: jax.Array, t: int, offset=None) -> DecoderCache:
    """The cache after a step of ``t`` tokens: the new buffers and key mask, ``pos`` moved on."""
    return cache._replace(self_kv=tuple(self_kv), mask=key_mask, pos=cache.pos + t,
                          offset=cache.offset if offset is None else offset)


def guard_overflow(logits: jax.Array, cache: DecoderCache, t: int) -> jax.Array:
    """NaN logits when a step of ``t`` tokens from ``cache.pos`` would pass the cache's end
    (possible only under jit): the write would otherwise have overwritten the last slot."""
    return jnp.where(cache.pos + t <= cache.mask.shape[1], logits, jnp.nan)


def check_not_donated(cache) -> None:
    """Refuse a cache whose buffers an earlier donating ``step`` already reused."""
    concrete = (x for x in jax.tree.leaves(cache) if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer))
    if any(x.is_deleted() for x in concrete):
        raise ValueError("this cache was donated to an earlier step, which reused its buffers for the cache it "
                         "returned: keep using the returned cache, or pass donate=False to step to keep the input "
                         "cache intact (to branch one prefix into several continuations)")
