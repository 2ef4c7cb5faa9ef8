"""Stateless primitives shared by every model file.

Shape letters used in comments across the package:
  B batch, S encoder tokens, T decoder (query) tokens, U key tokens, D width, H heads,
  K head dim, F MLP width, V vocab, L layers, C channels, P patch pixels.

Dense kernels are stored [d_out, d_in] (PyTorch's Linear layout) and applied as ``x @ w.T``:
on the CPU this project targets that layout reads weights at the memory bound in the
decode loop (see docs/perf-notes.md), and it costs nothing for encoder-sized matmuls.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading

import jax
import jax.numpy as jnp
from jax import custom_batching

from . import backend_tuning
from .config_fields import ACTIVATION_NAMES

F32 = jnp.float32


def product(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """einsum of two operands accumulating in float32 and returning float32, whatever the input dtype.

    As PyTorch does for bf16/fp16 matmuls; on XLA:CPU it is also the fast form: a bf16 x bf16
    product with a float32 result takes the native bf16 kernels (AMX/AVX512-BF16 where the CPU
    has them), one with a bf16 result runs several times slower than float32.

    It emits the dot_general (and transpose) that ``jnp.einsum`` would, without tracing
    ``jnp.einsum`` itself, which took half of the time tracing ``generate`` takes (docs/perf-notes.md)."""
    dims, order = _dot_plan(spec)
    out = jax.lax.dot_general(a, b, dims, preferred_element_type=F32)
    return out if order is None else out.transpose(order)


@functools.lru_cache(maxsize=None)
def _dot_plan(spec: str):
    """"ab,cb->ac"-style spec -> (dot_general dimension numbers, output transpose or None).
    Letters in both operands and the output are batch axes, in both operands only contracted."""
    inputs, out = spec.replace(" ", "").split("->")
    lhs, rhs = inputs.split(",")
    if len(set(lhs)) < len(lhs) or len(set(rhs)) < len(rhs) or len(set(out)) < len(out):
        raise ValueError(f"product spec {spec!r}: each letter at most once per operand and in the output")
    batch = [c for c in lhs if c in rhs and c in out]
    contract = [c for c in lhs if c in rhs and c not in out]
    if set(out) != set(batch) | (set(lhs) - set(rhs)) | (set(rhs) - set(lhs)):
        raise ValueError(f"product spec {spec!r}: the output must be the shared letters it keeps plus every "
                         "letter of one operand only")
    dims = (([lhs.index(c) for c in contract], [rhs.index(c) for c in contract]),
            ([lhs.index(c) for c in batch], [rhs.index(c) for c in batch]))
    produced = batch + [c for c in lhs if c not in rhs] + [c for c in rhs if c not in lhs]
    order = tuple(produced.index(c) for c in out)
    return dims, None if order == tuple(range(len(out))) else order


def min_low_precision_rows() -> int:
    """Fewest rows a low-precision weight product runs with where the backend pads them
    (backend_tuning; XLA:CPU's one-row bf16 path is a slow matrix-vector one): 4 with AMX, whose
    kernel's fixed cost falls up to ~4 rows; 2 elsewhere, where 2 rows read the weights ~1.4x
    faster than 4 (AVX512-BF16; docs/perf-notes.md)."""
    return 4 if backend_tuning.cpu_has_amx() else 2


def rows_product(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., i] @ w[o, i].T -> float32 [..., o]; inside ``slots_as_rows`` a product vmapped over
    slots is one product of every slot's rows (``_slot_rows_product``)."""
    if _FOLD_SLOTS.active:
        return _slot_rows_product(x, w)
    return _rows_product(x, w)


class _FoldSlots(threading.local):
    active = False


_FOLD_SLOTS = _FoldSlots()


@contextlib.contextmanager
def slots_as_rows():
    """While tracing the body, a weight product vmapped over slots (the engine's one-row states)
    runs as one product of all the slots' rows, with ``rows_product``'s few-row tricks: XLA:CPU's
    batched form of such products read float32 weights at 10.9 GB/s against 19.0 as one matrix
    (docs/perf-notes.md). Inference only: the folded product has no reverse-mode derivative."""
    before, _FOLD_SLOTS.active = _FOLD_SLOTS.active, True
    try:
        yield
    finally:
        _FOLD_SLOTS.active = before


@custom_batching.custom_vmap
def _slot_rows_product(x, w):
    return _rows_product(x, w)


@_slot_rows_product.def_vmap
def _fold_rule(axis_size, in_batched, x, w):
    x_batched, w_batched = in_batched
    if w_batched:  # per-slot weights: nothing to share
        return jax.vmap(_rows_product, in_axes=(0 if x_batched else None, 0))(x, w), True
    if not x_batched:
        x = jnp.broadcast_to(x, (axis_size,) + x.shape)
    return _slot_rows_product(x, w), True   # the slot axis is one more leading row axis


def _rows_product(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., i] @ w[o, i].T -> float32 [..., o]. Where the backend runs these tricks
    (``backend_tuning``): fewer than ``min_low_precision_rows()`` low-precision rows are padded with zero
    rows for the product (decode steps at batch 1-3), and a few float32 rows take ``_few_rows_product``."""
    rows = math.prod(x.shape[:-1])
    tricks = backend_tuning.current()
    # One matrix of rows: the weight gradient is then one product contracting a single axis
    # (contracting [B,T] together was slower: docs/perf-notes.md).
    flat = x.reshape(rows, x.shape[-1])
    least = min_low_precision_rows()
    if tricks.pad_low_precision_rows and rows < least and x.dtype != F32:
        flat = jnp.pad(flat, ((0, least - rows), (0, 0)))
    if tricks.transposed_few_rows and 1 < rows <= MAX_TRANSPOSED_ROWS and x.dtype == F32:
        out = _few_rows_product(flat, w)
    else:
        out = product("mi,oi->mo", flat, w)
    return out[:rows].reshape(*x.shape[:-1], w.shape[0])


# Up to this many float32 rows (decode steps: batch x beams) a weight product runs as w @ x.T where
# the backend does (low-precision products keep one kernel: they could not be timed on the CPU).
MAX_TRANSPOSED_ROWS = 64


def _few_rows_product(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [m, i] @ w[o, i].T for a few rows, computed as (w @ x.T).T: on XLA:CPU the [o, m] result
    runs faster than the [m, o] one at 2-64 rows (docs/perf-notes.md). The two transposes of the
    small activations are copies XLA would otherwise fold into the product, choosing the slow
    kernel again; the optimization barriers keep them as copies."""
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


assert set(ACTIVATIONS) == ACTIVATION_NAMES, "config_fields.ACTIVATION_NAMES must list exactly the formulas here"


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
    return jnp.where(keep_mask(key, rate, x.shape), x / (1.0 - rate), 0).astype(x.dtype)


def keep_mask(key, rate: float, shape) -> jax.Array:
    """bool ``shape``, each entry False with probability ``rate`` (to 2^-32): 32 random bits per
    entry from XLA's ThreeFry bit generator, seeded by all the key's bits, compared with
    rate * 2^32. Same key, same mask, whatever the key's PRNG implementation; cheaper than
    jax.random.bernoulli's uniform floats (docs/perf-notes.md)."""
    words = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    words = jnp.ravel(words).astype(jnp.uint32)
    words = jnp.concatenate([words, jnp.zeros(-words.size % 4, jnp.uint32)])  # threefry's 2 words: counter 0
    state = jax.lax.reduce(words.reshape(-1, 4), jnp.uint32(0), jax.lax.bitwise_xor, (0,))  # longer keys folded
    _, bits = jax.lax.rng_bit_generator(state, tuple(shape), jnp.uint32,
                                        algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY)
    return bits >= jnp.uint32(min(round(rate * 2 ** 32), 2 ** 32 - 1))


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
    (masks, dropout keys) get no gradient. Where the backend needs it (``backend_tuning``), the
    recomputation is tied to y's cotangent, so it cannot start before the backward pass reaches
    this layer: XLA:CPU otherwise scheduled every layer's recomputation at the start of the
    backward pass, all of them live at once, and remat saved no memory (docs/perf-notes.md)."""
    tie = backend_tuning.current().tie_remat_cotangent

    @jax.custom_vjp
    def run(params, x, more, constants):
        return layer(params, x, *more, *constants)

    def forward(params, x, more, constants):
        return layer(params, x, *more, *constants), (params, x, more, constants)

    def backward(saved, dy):
        params, x, more, constants = saved
        # x + 0 * (one entry of dy): the same x, but only once dy exists (XLA keeps a float
        # product with zero: it is not an identity for inf and NaN).
        after = x + (dy.reshape(-1)[0] * 0).astype(x.dtype) if tie else x
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
