"""Softmax attention, heads first: q [B,H,T,K] over k/v [B,H,U,K].

Three CPU-minded choices, none of which changes what is computed:
- the normalisation comes after the value product (one pass over the scores fewer);
- long sequences are attended to a few heads at a time, each group's scores cache-sized, on the
  backends ``backend_tuning`` says (XLA:CPU);
- the backward pass is written out (``softmax_attention``'s custom VJP): it keeps only the
  inputs and each query's max and 1/sum, rebuilds the weights once, and runs the four
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
    single_low_precision_row = q.shape[-2] == 1 and q.dtype != F32 and not upcast and key is None
    if single_low_precision_row and backend_tuning.current().pad_single_query:
        # One low-precision query row (a decode step): XLA:CPU turns both products into matrix-
        # vector ones that first copy all of K and V to float32, every step; two rows keep the
        # native bf16 kernel (docs/perf-notes.md).
        out, weights = attention(jnp.pad(q, [(0, 0)] * (q.ndim - 2) + [(0, 1), (0, 0)]), k, v, mask, scale,
                                 bias=bias)
        return out[..., :1, :], weights[..., :1, :]
    if upcast:
        q, k = q.astype(F32), k.astype(F32)
    if key is not None and dropout_rate > 0.0:  # dropout acts on the normalised weights
        weights = dropout(jax.nn.softmax(_scores(q, k, mask, bias, scale), axis=-1), dropout_rate, key)
        return product("bhtu,bhuk->bhtk", weights.astype(v.dtype), v).astype(v.dtype), weights
    as4 = lambda x: None if x is None else x.reshape((1,) * (4 - x.ndim) + x.shape)  # noqa: E731
    out = softmax_attention(q, k, v, as4(mask), as4(bias), scale, heads_per_group(q.shape, k.shape))
    return out, jax.nn.softmax(_scores(q, k, mask, bias, scale), axis=-1)


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


def _backward(q, k, v, mask, bias, top, inv_total, d_out, scale: float):
    """Cotangents of (q, k, v, bias) from the saved max and 1/sum: the weights w rebuilt once,
    d_scores = w * (d_w - rowsum(w * d_w)) with d_w = d_out @ v.T, masked keys getting none."""
    w = jnp.exp(_scores(q, k, mask, bias, scale) - top) * inv_total
    d_out = d_out.astype(v.dtype)
    d_v = product("bhtu,bhtk->bhuk", w.astype(v.dtype), d_out)
    d_w = product("bhtk,bhuk->bhtu", d_out, v)
    d_scores = w * (d_w - jnp.sum(w * d_w, axis=-1, keepdims=True))
    if mask is not None:
        d_scores = jnp.where(mask, d_scores, 0.0)
    d_q = product("bhtu,bhuk->bhtk", d_scores.astype(k.dtype), k) * scale
    d_k = product("bhtu,bhtk->bhuk", d_scores.astype(q.dtype), q) * scale
    grads = [_sum_to(g, x.shape).astype(x.dtype) for g, x in ((d_q, q), (d_k, k), (d_v, v))]
    return (*grads, None if bias is None else _sum_to(d_scores, bias.shape).astype(bias.dtype))


def _sum_to(x, shape):
    """x summed over the axes that ``shape`` broadcasts (size 1 there)."""
    axes = tuple(i for i, (n, m) in enumerate(zip(shape, x.shape)) if n == 1 and m != 1)
    return jnp.sum(x, axis=axes, keepdims=True) if axes else x


@partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def softmax_attention(q, k, v, mask, bias, scale: float, group: int | None):
    """out [B,H,T,K] of softmax(q·k * scale + bias, masked) @ v, in groups of ``group`` heads of one
    image at a time (None: one pass). mask and bias are 4-dim, broadcastable to [B,H,T,U]."""
    return _run(q, k, v, mask, bias, scale, group)[0]


def _run(q, k, v, mask, bias, scale, group):
    if group is None:
        return _forward(q, k, v, mask, bias, scale)
    b, heads, t, _ = q.shape
    stats = jnp.zeros((b, heads, t, 1), F32)
    return _in_groups(lambda *a: _forward(*a, scale), (q, k, v, mask, bias),
                      (jnp.zeros(q.shape[:-1] + v.shape[-1:], v.dtype), stats, stats), group)


def _run_saving(q, k, v, mask, bias, scale, group):
    out, top, inv_total = _run(q, k, v, mask, bias, scale, group)
    return out, (q, k, v, mask, bias, top, inv_total)


def _run_backward(scale, group, saved, d_out):
    q, k, v, mask, bias, top, inv_total = saved
    inputs = (q, k, v, mask, bias, top, inv_total, d_out)
    if group is None:
        d_q, d_k, d_v, d_bias = _backward(*inputs, scale)
    else:
        zeros = tuple(None if x is None else jnp.zeros(x.shape, x.dtype) for x in (q, k, v, bias))
        d_q, d_k, d_v, d_bias = _in_groups(lambda *a: _backward(*a, scale), inputs, zeros, group)
    return d_q, d_k, d_v, None, d_bias


softmax_attention.defvjp(_run_saving, _run_backward)


def _in_groups(fn, inputs, totals, g: int):
    """``fn`` on each image's groups of ``g`` heads (slices of the 4-dim ``inputs``; None passes
    through), its results added into the matching slices of ``totals`` (a tuple of 4-dim arrays or
    None, updated in place by the loop)."""
    b, heads = inputs[0].shape[:2]
    per_image = heads // g

    def one_group(i, totals):
        image, head = i // per_image, (i % per_image) * g
        parts = fn(*(None if x is None else _group(x, image, head, g) for x in inputs))
        return tuple(None if t is None else _add_to_group(t, p, image, head) for t, p in zip(totals, parts))

    return jax.lax.fori_loop(0, b * per_image, one_group, totals)


def _start(x, image, head):
    return (image if x.shape[0] > 1 else 0, head if x.shape[1] > 1 else 0, 0, 0)


def _group(x, image, head, heads: int):
    """The [1, heads, ...] slice at (image, head) of x [B|1, H|1, ...]; broadcast axes stay 1."""
    return jax.lax.dynamic_slice(x, _start(x, image, head), (1, heads if x.shape[1] > 1 else 1, *x.shape[2:]))


def _add_to_group(total, part, image, head):
    """total with ``part`` (summed to that slice's shape) added at (image, head)'s slice."""
    start = _start(total, image, head)
    part = _sum_to(part, (1, total.shape[1] if total.shape[1] == 1 else part.shape[1], *total.shape[2:]))
    return jax.lax.dynamic_update_slice(total, jax.lax.dynamic_slice(total, start, part.shape) + part, start)
