"""Softmax attention, heads first: q [B,H,T,K] over k/v [B,H,U,K].

Three CPU-minded choices, none of which changes what is computed:
- the normalisation comes after the value product (one pass over the scores fewer);
- long sequences are attended to a few heads at a time, each group's scores cache-sized, on the
  backends ``backend_tuning`` says (XLA:CPU);
- the derivative is written out (``softmax_attention``'s custom JVP, linear in the tangents, so
  forward mode works and JAX transposes it for the backward pass): the backward pass keeps only
  the inputs and each query's max and 1/sum, rebuilds the weights once, and runs the four
  products of the textbook gradient, in the same groups of heads as the forward pass.
  Autodiff of the forward pass instead kept every exp'd score and differentiated the max as
  well, several times slower (docs/perf-notes.md).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from . import backend_tuning
from .layers import F32, dropout, product

# Large negative score for masked keys. A finite value (not -inf) keeps fully masked rows,
# such as a left-padding query, finite: they become uniform, as in transformers' eager path.
MASKED = float(jnp.finfo(F32).min)

# Where the backend groups heads (backend_tuning), score matrices of at least this many entries per
# head are attended to a few heads at a time, each group's scores about GROUP_SCORES_BYTES:
# XLA:CPU streams a whole [B,H,T,U] tensor through memory several times (docs/perf-notes.md).
MIN_GROUPED_SCORES = 256 * 256
GROUP_SCORES_BYTES = 3 * 2 ** 20


def attention(q, k, v, mask, scale: float, *, upcast: bool = False, dropout_rate: float = 0.0, key=None,
              bias=None):
    """Softmax attention, heads first. q [B,H,T,K], k/v [B,H,U,K], mask bool broadcastable to
    [B,H,T,U] (True = attend) or None; ``bias`` float broadcastable to [B,H,T,U] is added to the
    scaled scores (BEiT's relative positions). Returns out [B,H,T,K] and weights [B,H,T,U] (float32).

    ``upcast`` computes q·k in float32 too (GPT-2's ``reorder_and_upcast_attn``); the softmax
    is always float32. With a ``key``, dropout acts on the weights (as in transformers).
    The weights cost a second pass over the scores, made only when a caller uses them.
    """
    if key is None and _pads_single_row(q, upcast):
        out, weights = attention(_two_rows(q), k, v, mask, scale, bias=bias)
        return out[..., :1, :], weights[..., :1, :]
    if upcast:
        q, k = q.astype(F32), k.astype(F32)
    if key is not None and dropout_rate > 0.0:  # dropout acts on the normalised weights
        weights = dropout(jax.nn.softmax(_scores(q, k, mask, bias, scale), axis=-1), dropout_rate, key)
        return product("bhtu,bhuk->bhtk", weights.astype(v.dtype), v).astype(v.dtype), weights
    as4 = lambda x: None if x is None else x.reshape((1,) * (4 - x.ndim) + x.shape)  # noqa: E731
    out = softmax_attention(q, k, v, as4(mask), as4(bias), scale, heads_per_group(q.shape, k.shape))
    return out, jax.nn.softmax(_scores(q, k, mask, bias, scale), axis=-1)


def attention_after_cache(q, cached: tuple, new: tuple, cached_mask, new_mask, pos, scale: float, *,
                          upcast: bool = False):
    """Softmax attention of a decode step's queries q [B,H,t,K] over two blocks of keys taken as one:
    ``cached`` (keys, values) [B,H,U,K] as the cache held them before the step, and ``new`` (keys,
    values) [B,H,t,K] of the step's own tokens; masks bool broadcastable to [B,H,t,U] and [B,H,t,t].
    Returns out [B,H,t,K] and the weights [B,H,t,U] over the buffer with the new keys at ``pos``.

    The same softmax as ``attention`` over the written buffer, but it reads the buffer before the
    step's write: XLA:CPU can then write the new keys in place, where a write read back by the
    attention made it copy the whole buffer several times a step (docs/perf-notes.md)."""
    if _pads_single_row(q, upcast):
        out, weights = attention_after_cache(_two_rows(q), cached, new, cached_mask, new_mask, pos, scale)
        return out[..., :1, :], weights[..., :1, :]
    (k_old, v_old), (k_new, v_new) = cached, new
    if upcast:
        q, k_old, k_new = q.astype(F32), k_old.astype(F32), k_new.astype(F32)
    s_old = _scores(q, k_old, cached_mask, None, scale)
    s_new = _scores(q, k_new, new_mask, None, scale)
    top = jnp.maximum(jnp.max(s_old, axis=-1, keepdims=True), jnp.max(s_new, axis=-1, keepdims=True))
    e_old, e_new = jnp.exp(s_old - top), jnp.exp(s_new - top)
    inv_total = 1.0 / (jnp.sum(e_old, axis=-1, keepdims=True) + jnp.sum(e_new, axis=-1, keepdims=True))
    out = (product("bhtu,bhuk->bhtk", e_old.astype(v_old.dtype), v_old)
           + product("bhtu,bhuk->bhtk", e_new.astype(v_new.dtype), v_new)) * inv_total
    weights = jax.lax.dynamic_update_slice(e_old * inv_total, e_new * inv_total, (0, 0, 0, pos))
    return out.astype(v_old.dtype), weights


def _pads_single_row(q, upcast: bool) -> bool:
    """Whether to attend with one low-precision query row (a decode step) padded to two: with one,
    XLA:CPU turns both products into matrix-vector ones that first copy all of K and V to float32,
    every step; two rows keep the native bf16 kernel (docs/perf-notes.md)."""
    return q.shape[-2] == 1 and q.dtype != F32 and not upcast and backend_tuning.current().pad_single_query


def _two_rows(q):
    """q [..., 1, K] with a zero query row after it."""
    return jnp.pad(q, [(0, 0)] * (q.ndim - 2) + [(0, 1), (0, 0)])


def shared_kv_attention(q, k, v, scale: float, *, upcast: bool = False, dropout_rate: float = 0.0, key=None):
    """Cross-attention of R/B query rows per image over their image's K/V: q [R,H,T,K] (rows
    image-major), k/v [B,H,S,K] -> (out [R,H,T,K], weights [R,H,T,S]). The rows of an image
    (beams, samples) are folded into its query axis, so K/V are never copied per row."""
    b, heads = k.shape[0], k.shape[1]
    rows, t = q.shape[0], q.shape[2]
    per_image = rows // b
    fold = lambda x: x.reshape(b, per_image, heads, t, -1).swapaxes(1, 2).reshape(b, heads, per_image * t, -1)  # noqa: E731
    unfold = lambda x: x.reshape(b, heads, per_image, t, -1).swapaxes(1, 2).reshape(rows, heads, t, -1)  # noqa: E731
    out, weights = attention(fold(q), k, v, None, scale, upcast=upcast, dropout_rate=dropout_rate, key=key)
    return unfold(out), unfold(weights)


def heads_per_group(q_shape, k_shape) -> int | None:
    """How many heads of one image to attend to at once, or None for one pass over the batch:
    the largest divisor of H whose scores fit GROUP_SCORES_BYTES (at least one head)."""
    (b, heads, t, _), u = q_shape, k_shape[-2]
    if not backend_tuning.current().grouped_attention or t * u < MIN_GROUPED_SCORES or b * heads == 1:
        return None
    fits = max(1, GROUP_SCORES_BYTES // (4 * t * u))
    return max(g for g in range(1, heads + 1) if heads % g == 0 and g <= fits)


def _scores(q, k, mask, bias, scale: float) -> jax.Array:
    """float32 [B,H,T,U]: scaled q·k plus ``bias``, masked keys at MASKED."""
    scores = product("bhtk,bhuk->bhtu", q, k) * scale
    if bias is not None:
        scores = scores + bias.astype(F32)
    return scores if mask is None else jnp.where(mask, scores, MASKED)


def _forward(q, k, v, mask, bias, scale: float):
    """(out, each query's max score, 1 / its sum of exp(score - max)); out = (exp(s - max) @ v) / sum,
    so the exp'd scores feed the product directly and the division touches [..,T,K], not [..,T,U]
    (~2x faster at ViT sizes on XLA:CPU)."""
    scores = _scores(q, k, mask, bias, scale)
    top = jnp.max(scores, axis=-1, keepdims=True)
    e = jnp.exp(scores - top)
    inv_total = 1.0 / jnp.sum(e, axis=-1, keepdims=True)
    return (product("bhtu,bhuk->bhtk", e.astype(v.dtype), v) * inv_total).astype(v.dtype), top, inv_total


def _tangent(q, k, v, mask, bias, top, inv_total, d_q, d_k, d_v, d_bias, scale: float):
    """Tangent of out (linear in d_q, d_k, d_v, d_bias) from the saved max and 1/sum: the weights w
    rebuilt once, d_scores = (d_q·k + q·d_k) * scale + d_bias (none for masked keys),
    d_w = w * (d_scores - rowsum(w * d_scores)), d_out = d_w @ v + w @ d_v."""
    w = jnp.exp(_scores(q, k, mask, bias, scale) - top) * inv_total
    # scale applied to the [..,T,K] tangents: on the [..,T,U] scores, its transpose became a whole
    # [B,H,T,U] array of the constant that XLA:CPU read in the backward pass.
    d_scores = (product("bhtk,bhuk->bhtu", (d_q * scale).astype(k.dtype), k)
                + product("bhtk,bhuk->bhtu", q, (d_k * scale).astype(q.dtype)))
    if d_bias is not None:
        d_scores = d_scores + d_bias.astype(F32)
    if mask is not None:
        d_scores = jnp.where(mask, d_scores, 0.0)
    # Written as two products, not w * (d_scores - rowsum): under jit(vmap) (jacfwd) XLA:CPU's YNN
    # fusion of that form, with w unbatched, returned wrong values (jax 0.10.2).
    d_w = w * d_scores - w * jnp.sum(w * d_scores, axis=-1, keepdims=True)
    d_out = product("bhtu,bhuk->bhtk", d_w.astype(v.dtype), v) + product("bhtu,bhuk->bhtk", w.astype(v.dtype), d_v)
    return d_out.astype(v.dtype)


@partial(jax.custom_jvp, nondiff_argnums=(5, 6))
def softmax_attention(q, k, v, mask, bias, scale: float, group: int | None):
    """out [B,H,T,K] of softmax(q·k * scale + bias, masked) @ v, in groups of ``group`` heads of one
    image at a time (None: one pass). mask and bias are 4-dim, broadcastable to [B,H,T,U]."""
    return _run(q, k, v, mask, bias, scale, group)[0]


def _run(q, k, v, mask, bias, scale, group):
    if group is None:
        return _forward(q, k, v, mask, bias, scale)
    return _in_groups(lambda *a: _forward(*a, scale), (q, k, v, mask, bias), group)


@softmax_attention.defjvp
def _run_jvp(scale, group, primals, tangents):
    """The custom derivative: out's tangent is linear in the inputs' tangents, so JAX pushes
    tangents forward (jvp, jacfwd, linearize) and transposes this rule for the backward pass. Under
    jax.checkpoint the backward pass keeps only the inputs and each query's max and 1/sum, and
    rebuilds the weights once (not every exp'd score kept, nor the max differentiated)."""
    q, k, v, mask, bias = primals
    d_q, d_k, d_v, _, d_bias = tangents
    out, top, inv_total = _run(q, k, v, mask, bias, scale, group)
    d_out = jax.checkpoint(_run_tangent, static_argnums=(11, 12), prevent_cse=False)(
        q, k, v, mask, bias, top, inv_total, d_q, d_k, d_v, d_bias, scale, group)
    return out, d_out


def _run_tangent(q, k, v, mask, bias, top, inv_total, d_q, d_k, d_v, d_bias, scale, group):
    inputs = (q, k, v, mask, bias, top, inv_total, d_q, d_k, d_v, d_bias)
    if group is None:
        return _tangent(*inputs, scale)
    return _in_groups(jax.checkpoint(lambda *a: (_tangent(*a, scale),), prevent_cse=False), inputs, group)[0]


def _in_groups(fn, inputs, g: int):
    """``fn`` on each image's groups of ``g`` heads of the 4-dim ``inputs`` ([B|1, H|1, ...] or None,
    an axis of size 1 broadcast), its 4-dim results [1, g, ...] put together as [B, H, ...]. Loops
    over images, then over groups, slicing leading axes only: transposed for the backward pass, the
    loops slice cotangents the same way, where dynamic slices of whole inputs would add a whole-size
    cotangent per step."""
    heads = inputs[0].shape[1]

    def image(xs):  # [H|1, ...] -> each result [H, ...]
        groups = tuple(None if x is None else x.reshape(heads // g if x.shape[0] > 1 else 1, -1, *x.shape[1:])
                       for x in xs)
        parts = _map_leading(lambda ys: fn(*(None if y is None else y[None] for y in ys)), groups)
        return tuple(p.reshape(heads, *p.shape[3:]) for p in parts)

    return _map_leading(image, inputs)


def _map_leading(fn, inputs):
    """fn on each slice of the inputs' leading axis (inputs of leading size 1 or None are passed
    whole, without that axis, to every call), results stacked on a new leading axis."""
    n = max(x.shape[0] for x in inputs if x is not None)
    sliced = tuple(x is not None and x.shape[0] == n for x in inputs)

    def body(carry, xs):
        xs = iter(xs)
        return carry, fn(tuple(next(xs) if s else (None if x is None else x[0]) for x, s in zip(inputs, sliced)))

    return jax.lax.scan(body, None, tuple(x for x, s in zip(inputs, sliced) if s), length=n)[1]
