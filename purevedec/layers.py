"""Stateless primitives shared by every model file.

Shape letters used in comments across the package:
  B batch, S encoder tokens, T decoder (query) tokens, U key tokens, D width, H heads,
  K head dim, F MLP width, V vocab, L layers, C channels, P patch pixels.

Dense kernels are stored [d_out, d_in] (PyTorch's Linear layout) and applied as ``x @ w.T``:
on the CPU this project targets that layout reads weights at the memory bound in the
decode loop (see docs/perf-notes.md), and it costs nothing for encoder-sized matmuls.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .config import ACTIVATION_NAMES

F32 = jnp.float32
# Large negative score for masked keys. A finite value (not -inf) keeps fully masked rows,
# such as a left-padding query, finite: they become uniform, as in transformers' eager path.
MASKED = float(jnp.finfo(F32).min)


def dense_shape(d_out: int, d_in: int, bias: bool = True) -> dict:
    return {"w": (d_out, d_in), "b": (d_out,)} if bias else {"w": (d_out, d_in)}


def norm_shape(d: int) -> dict:
    return {"scale": (d,), "bias": (d,)}


def product(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """einsum accumulating in float32 and returning float32, whatever the input dtype.

    As PyTorch does for bf16/fp16 matmuls; on XLA:CPU it is also the fast form: a bf16 x bf16
    product with a float32 result takes the native bf16 kernels (AMX/AVX512-BF16 where the CPU
    has them), one with a bf16 result runs several times slower than float32."""
    return jnp.einsum(spec, a, b, preferred_element_type=F32)


# Fewest rows a low-precision weight product runs with. XLA:CPU sends a one-row bf16 product to a
# matrix-vector path ~10x slower than its matrix kernel, and that kernel's fixed cost per call
# falls further up to about 4 rows: a bf16 greedy batch-1 decode step took 26 ms with one row
# padded to two, 23 ms padded to four (fp32: 27 ms).
MIN_LOW_PRECISION_ROWS = 4


def rows_product(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., i] @ w[o, i].T -> float32 [..., o]; fewer than MIN_LOW_PRECISION_ROWS
    low-precision rows are padded with zero rows for the product (decode steps at batch 1-3)."""
    rows = math.prod(x.shape[:-1])
    # One matrix of rows: the weight gradient is then one product contracting a single axis;
    # contracting [B,T] together ran the whole ViT backward ~1.5x slower on XLA:CPU.
    flat = x.reshape(rows, x.shape[-1])
    if rows < MIN_LOW_PRECISION_ROWS and x.dtype != F32:
        flat = jnp.pad(flat, ((0, MIN_LOW_PRECISION_ROWS - rows), (0, 0)))
    return product("mi,oi->mo", flat, w)[:rows].reshape(*x.shape[:-1], w.shape[0])


def dense(p: dict, x: jax.Array, dtype) -> jax.Array:
    """[..., d_in] -> [..., d_out] with p = {"w": [d_out, d_in], "b": [d_out] (optional)};
    accumulated and biased in float32, rounded once to ``dtype``."""
    y = rows_product(x.astype(dtype), p["w"].astype(dtype))
    if "b" in p:
        y = y + p["b"].astype(dtype).astype(F32)
    return y.astype(dtype)


def layer_norm(p: dict, x: jax.Array, eps: float) -> jax.Array:
    """Layer norm in float32 (stable in bf16/fp16), cast back to the input dtype."""
    x32 = x.astype(F32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    y = y * p["scale"].astype(F32) + p["bias"].astype(F32)
    return y.astype(x.dtype)


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _gelu_exact(x):
    return 0.5 * x * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


# transformers' ACT2FN names, each with the same formula (exact erf GELU for "gelu", the tanh
# approximation for GPT-2's "gelu_new"). Activations with learned parameters are absent.
ACTIVATIONS = {
    "gelu": _gelu_exact,
    "gelu_python": _gelu_exact,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_python_tanh": _gelu_tanh,
    "gelu_accurate": _gelu_tanh,
    "gelu_fast": lambda x: 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "gelu_10": lambda x: jnp.clip(_gelu_exact(x), -10.0, 10.0),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),
    "relu6": jax.nn.relu6,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.01),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "hardswish": jax.nn.hard_swish,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "linear": lambda x: x,
    "laplace": lambda x: 0.5 * (1.0 + jax.lax.erf((x - 0.707107) / (0.282095 * math.sqrt(2.0)))),
    "sqrtsoftplus": lambda x: jnp.sqrt(jax.nn.softplus(x)),
}


assert set(ACTIVATIONS) == ACTIVATION_NAMES, "config.ACTIVATION_NAMES must list exactly the formulas here"


def activation(name: str, x: jax.Array) -> jax.Array:
    # Computed in float32: tanh/erf polynomials lose visible accuracy in bf16.
    return ACTIVATIONS[name](x.astype(F32)).astype(x.dtype)


def split_heads(x: jax.Array, heads: int) -> jax.Array:
    """[B,T,H*K] -> heads-first [B,H,T,K]: attention's two products are then plain batched
    matmuls, and caches kept in this layout are read without a transposing copy per step
    (contracting the [B,T,H,K] layout directly ran ~3x slower on XLA:CPU; docs/perf-notes.md)."""
    return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads).swapaxes(-3, -2)


def merge_heads(x: jax.Array) -> jax.Array:
    """[B,H,T,K] -> [B,T,H*K]"""
    x = x.swapaxes(-3, -2)
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def attention(q, k, v, mask, scale: float, *, upcast: bool = False, dropout_rate: float = 0.0, key=None,
              bias=None):
    """Softmax attention, heads first. q [B,H,T,K], k/v [B,H,U,K], mask bool broadcastable to
    [B,H,T,U] (True = attend) or None; ``bias`` float broadcastable to [B,H,T,U] is added to the
    scaled scores (BEiT's relative positions). Returns out [B,H,T,K] and weights [B,H,T,U] (float32).

    ``upcast`` computes q·k in float32 too (GPT-2's ``reorder_and_upcast_attn``); the softmax
    is always float32. With a ``key``, dropout acts on the weights (as in transformers).
    """
    if q.shape[-2] == 1 and q.dtype != F32 and not upcast and key is None:
        # One low-precision query row (a decode step): XLA:CPU turns both products into matrix-
        # vector ones that first copy all of K and V to float32, every step. Two query rows keep
        # the native bf16 kernel (bf16 greedy batch 8: ~70 -> ~55 ms per token).
        out, weights = attention(jnp.pad(q, [(0, 0)] * (q.ndim - 2) + [(0, 1), (0, 0)]), k, v, mask, scale,
                                 bias=bias)
        return out[..., :1, :], weights[..., :1, :]
    if upcast:
        q, k = q.astype(F32), k.astype(F32)
    scores = product("bhtk,bhuk->bhtu", q, k) * scale
    if bias is not None:
        scores = scores + bias.astype(F32)
    if mask is not None:
        scores = jnp.where(mask, scores, MASKED)
    if key is not None and dropout_rate > 0.0:  # dropout acts on the normalised weights
        weights = dropout(jax.nn.softmax(scores, axis=-1), dropout_rate, key)
        return product("bhtu,bhuk->bhtk", weights.astype(v.dtype), v).astype(v.dtype), weights
    # Softmax with the normalisation after the product: exp(s - max) feeds the matmul directly
    # and the division touches [..,T,K] instead of [..,T,U]; ~2x faster at ViT sizes on
    # XLA:CPU. The normalised weights are only built when a caller uses them.
    e = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    total = jnp.sum(e, axis=-1, keepdims=True)
    out = product("bhtu,bhuk->bhtk", e.astype(v.dtype), v) / total
    return out.astype(v.dtype), e / total


def causal_mask(t: int, attention_mask: jax.Array | None, batch: int) -> jax.Array:
    """bool [B,1,T,T]: causal, and keys the attention mask marks as padding are hidden."""
    mask = jnp.tril(jnp.ones((t, t), bool))[None, None]
    if attention_mask is not None:
        mask = mask & (attention_mask[:, None, None, :] != 0)
    return jnp.broadcast_to(mask, (batch, 1, t, t))


def dropout(x: jax.Array, rate: float, key) -> jax.Array:
    """Inverted dropout; a no-op when ``key`` is None (inference) or the rate is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def site_key(key, *path: int):
    """A distinct, reproducible key for one dropout site (None stays None)."""
    if key is None:
        return None
    for i in path:
        key = jax.random.fold_in(key, i)
    return key
