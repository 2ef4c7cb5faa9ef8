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
    return tuple(jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), (0, 0, pos, 0))
                 for buf, new in zip(layer, (k, v)))


def valid_tokens(ids: jax.Array, attention_mask) -> jax.Array:
    """[R,t] bool: the real tokens of a step (``attention_mask`` 0 marks padding; None: all real)."""
    return jnp.ones(ids.shape, bool) if attention_mask is None else attention_mask != 0


def step_mask(cache: DecoderCache, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(the self-attention mask [R,1,t,Tmax] of ``t`` new tokens, the updated key mask [R,Tmax]):
    each new token sees every earlier or equal position the key mask marks real."""
    t = valid.shape[1]
    max_len = cache.mask.shape[1]
    key_mask = jax.lax.dynamic_update_slice(cache.mask, valid, (0, cache.pos))  # [R,Tmax]
    causal = jnp.arange(max_len)[None, :] <= (cache.pos + jnp.arange(t))[:, None]  # [t,Tmax]
    return causal[None, None] & key_mask[:, None, None, :], key_mask


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
