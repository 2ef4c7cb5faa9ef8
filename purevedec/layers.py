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
    if 1 < rows <= MAX_TRANSPOSED_ROWS and x.dtype == F32:
        out = _few_rows_product(flat, w)
    else:
        out = product("mi,oi->mo", flat, w)
    return out[:rows].reshape(*x.shape[:-1], w.shape[0])


# Up to this many float32 rows (decode steps: batch x beams) a weight product runs as w @ x.T
# (low-precision products keep one kernel: this CPU, without bf16 instructions, could not time them).
MAX_TRANSPOSED_ROWS = 64


def _few_rows_product(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [m, i] @ w[o, i].T for a few rows, computed as (w @ x.T).T: on XLA:CPU the [o, m] result
    runs 1.2-2.5x faster than the [m, o] one at 2-64 rows (fp32 [16,1024] x [4096,1024]: 1.3 vs
    2.5 ms; the LM head [16,1024] x [50265,1024]: 17 vs 44 ms). The two transposes of the small
    activations are copies XLA would otherwise fold into the product, choosing the slow kernel
    again; the optimization barriers keep them as copies."""
    x_t = jax.lax.optimization_barrier(x.T)
    return jax.lax.optimization_barrier(product("oi,im->om", w, x_t)).T


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
    if key is not None and dropout_rate > 0.0:  # dropout acts on the normalised weights
        weights = dropout(jax.nn.softmax(_scores(q, k, mask, bias, scale), axis=-1), dropout_rate, key)
        return product("bhtu,bhuk->bhtk", weights.astype(v.dtype), v).astype(v.dtype), weights
    group = heads_per_group(q.shape, k.shape)
    if group is None:
        return _attend(q, k, v, mask, bias, scale)
    # The weights are only built (a second pass over the scores) when a caller uses them.
    return (_attend_in_groups(q, k, v, mask, bias, scale, group),
            jax.nn.softmax(_scores(q, k, mask, bias, scale), axis=-1))


def _scores(q, k, mask, bias, scale: float) -> jax.Array:
    """float32 [B,H,T,U]: scaled q·k plus ``bias``, masked keys at MASKED."""
    scores = product("bhtk,bhuk->bhtu", q, k) * scale
    if bias is not None:
        scores = scores + bias.astype(F32)
    return scores if mask is None else jnp.where(mask, scores, MASKED)


def _attend(q, k, v, mask, bias, scale: float):
    """(out, weights) with the normalisation after the value product: exp(s - max) feeds the
    matmul directly and the division touches [..,T,K] instead of [..,T,U] (~2x faster at ViT
    sizes on XLA:CPU). The normalised weights cost a pass only when a caller uses them."""
    scores = _scores(q, k, mask, bias, scale)
    e = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    total = jnp.sum(e, axis=-1, keepdims=True)
    out = product("bhtu,bhuk->bhtk", e.astype(v.dtype), v) / total
    return out.astype(v.dtype), e / total


# Score matrices of at least this many entries per head are attended to a few heads at a time,
# each group's scores about GROUP_SCORES_BYTES: XLA:CPU streams one whole [B,H,T,U] tensor through
# memory several times (products, max, exp, sum), and at 577 tokens (ViT-B/16 at 384 px, TrOCR's
# encoders) that ran ~2.5x slower than the same work in cache-sized groups (8 crops: 256 -> 100 ms
# per layer; torch's fused kernel: 79 ms). At 197 tokens one pass is faster.
MIN_GROUPED_SCORES = 256 * 256
GROUP_SCORES_BYTES = 3 * 2 ** 20


def heads_per_group(q_shape, k_shape) -> int | None:
    """How many heads of one image to attend to at once, or None for one pass over the batch:
    the largest divisor of H whose scores fit GROUP_SCORES_BYTES (at least one head)."""
    (b, heads, t, _), u = q_shape, k_shape[-2]
    if t * u < MIN_GROUPED_SCORES or b * heads == 1:
        return None
    fits = max(1, GROUP_SCORES_BYTES // (4 * t * u))
    return max(g for g in range(1, heads + 1) if heads % g == 0 and g <= fits)


def _group(x, image, head, heads: int):
    """The [1, heads, ...] slice at (image, head) of x [B|1, H|1, ...]; broadcast axes stay 1."""
    x = x.reshape((1,) * (4 - x.ndim) + x.shape)
    start = (image if x.shape[0] > 1 else 0, head if x.shape[1] > 1 else 0, 0, 0)
    return jax.lax.dynamic_slice(x, start, (1, heads if x.shape[1] > 1 else 1, *x.shape[2:]))


def _attend_in_groups(q, k, v, mask, bias, scale: float, g: int) -> jax.Array:
    """``_attend``'s output, computed for ``g`` heads of one image per loop step and written in place."""
    b, heads, t, _ = q.shape
    per_image = heads // g

    def one_group(i, out):
        image, head = i // per_image, (i % per_image) * g
        pick = lambda x: None if x is None else _group(x, image, head, g)  # noqa: E731
        part, _ = _attend(pick(q), pick(k), pick(v), pick(mask), pick(bias), scale)
        return jax.lax.dynamic_update_slice(out, part, (image, head, 0, 0))

    return jax.lax.fori_loop(0, b * per_image, one_group, jnp.zeros((b, heads, t, v.shape[-1]), v.dtype))


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


def checkpointed(layer, params, x, *more, constants=()):
    """``layer(params, x, *more, *constants)`` -> y (one array) with jax.checkpoint's saving: the
    forward pass keeps only the inputs and the backward pass recomputes the layer. ``constants``
    (masks, dropout keys) get no gradient. Unlike jax.checkpoint, the recomputation is tied to y's
    cotangent, so it cannot start before the backward pass reaches this layer: XLA:CPU otherwise
    scheduled every layer's recomputation at the start of the backward pass, all of them live at
    once, and remat saved no memory at all (vit-gpt2 batch 8: 2.95 GB of temp buffers either way)."""
    @jax.custom_vjp
    def run(params, x, more, constants):
        return layer(params, x, *more, *constants)

    def forward(params, x, more, constants):
        return layer(params, x, *more, *constants), (params, x, more, constants)

    def backward(saved, dy):
        params, x, more, constants = saved
        # x + 0 * (one entry of dy): the same x, but only once dy exists (XLA keeps a float
        # product with zero: it is not an identity for inf and NaN).
        after = x + (dy.reshape(-1)[0] * 0).astype(x.dtype)
        _, pullback = jax.vjp(lambda p, x, m: layer(p, x, *m, *constants), params, after, more)
        return (*pullback(dy), None)

    run.defvjp(forward, backward)
    return run(params, x, more, constants)


def layer_outputs(layer, params, x, *more, constants=(), remat: bool = False, side_outputs: int = 1):
    """``layer(params, x, *more, *constants)`` -> (y, *side outputs) (attention weights, a cache).
    With ``remat``, y is ``checkpointed`` (recomputed in the backward pass) and the
    ``side_outputs`` come back None: they are not kept."""
    if not remat:
        return layer(params, x, *more, *constants)
    y = checkpointed(lambda *args: layer(*args)[0], params, x, *more, constants=constants)
    return (y,) + (None,) * side_outputs
