"""The jitted train step: accumulated, token-weighted gradients of the loss, one optimizer update.

The state is a NamedTuple of arrays (and the params' static config), so it can be saved,
restored, sharded and donated as one pytree. Dropout keys come from the state alone: step s
uses fold_in(rng, s) and micro-batch i of it fold_in(that, i), so a resumed run draws exactly
the masks an uninterrupted one would.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..params import check_params, weights_of
from ..sharding import gather_weights
from .cross_entropy import IGNORE_INDEX, loss_core
from .optim import TrainConfig, frozen_flags, learning_rate_schedule, make_optimizer, optax


class TrainState(NamedTuple):
    params: dict        # float32 master weights, carrying their config
    opt_state: object   # the optax state (AdamW moments, schedule count)
    step: jax.Array     # int32 scalar: optimizer updates done
    rng: jax.Array      # the run's base PRNG key (never advanced: keys are derived from step)


class StepMetrics(NamedTuple):
    loss: jax.Array           # mean loss over the step's counted tokens (all micro-batches)
    loss_sum: jax.Array
    tokens: jax.Array
    accuracy: jax.Array
    grad_norm: jax.Array      # global norm before clipping
    learning_rate: jax.Array  # the rate this update used


def init_state(params, cfg: TrainConfig, key) -> TrainState:
    """A fresh state: float32 copies of the params (the master weights), the optimizer's zeroed
    moments, step 0 and ``key`` (a jax key, or an int seed) for dropout.

    An int seed makes an "rbg" key: dropout draws every activation's mask, and XLA compiled the
    default threefry generator's train step ~3x slower than rbg's on this project's CPU."""
    check_params(params)
    params = jax.tree.map(lambda x: jnp.array(x, jnp.float32), params)
    key = jax.random.key(key, impl="rbg") if isinstance(key, int) else key
    return TrainState(params, make_optimizer(cfg).init(params), jnp.zeros((), jnp.int32), key)


def _micro_batches(x, n: int, what: str, group: int = 1):
    """[R,...] -> [n,R/n,...], micro-batch i taking the groups i, i+n, i+2n, ... of ``group``
    consecutive rows (an image's caption rows stay together and follow their image). Strided, so
    that a batch split over devices in contiguous blocks gives every micro-batch rows of every
    device and the scan moves nothing between them (consecutive blocks would put the devices'
    split on the scanned axis, and gather the batch)."""
    if x is None:
        return None
    if x.shape[0] % (n * group):
        raise ValueError(f"{what} has {x.shape[0]} rows, not divisible into accumulation_steps={n} micro-batches")
    grouped = x.reshape(x.shape[0] // (n * group), n, group, *x.shape[1:])
    return jnp.swapaxes(grouped, 0, 1).reshape(n, x.shape[0] // n, *x.shape[1:])


def _gradients(params, pixels, labels, mask, key, cfg: TrainConfig, gathers=None):
    """Gradients of the mean loss over all the step's tokens, however the batch was split: each
    micro-batch differentiates its summed loss divided by the whole step's token count. That count
    is known before the forward pass (labels other than -100), so the division rides on the
    backward pass's first cotangent instead of a pass over every gradient afterwards (a read and
    a write of 0.96 GB at vit-gpt2's size)."""
    config = params["config"]
    frozen = frozen_flags(params, cfg)
    inv_tokens = 1.0 / jnp.maximum(jnp.sum(labels != IGNORE_INDEX), 1).astype(jnp.float32)

    def summed(p, px, lb, mk, k):
        p = jax.tree.map(lambda x, f: jax.lax.stop_gradient(x) if f else x, p, frozen)  # no work for frozen parts
        p = gather_weights(p, gathers)  # FSDP: whole weights here, so activations keep the batch's split
        out = loss_core(weights_of(p), px, lb, config, decoder_attention_mask=mk, key=k,
                        label_smoothing=cfg.label_smoothing, dtype=cfg.compute_dtype, remat=cfg.remat)
        return out.loss_sum * inv_tokens, out

    def one(carry, xs):
        i, px, lb, mk = xs
        (_, out), g = jax.value_and_grad(summed, has_aux=True)(params, px, lb, mk, jax.random.fold_in(key, i))
        grads, total, tokens, correct = carry
        return (jax.tree.map(jnp.add, grads, g), total + out.loss_sum, tokens + out.tokens,
                correct + out.correct), None

    n = cfg.accumulation_steps
    k = max(labels.shape[0] // max(pixels.shape[0], 1), 1)  # caption rows per image
    xs = (jnp.arange(n), _micro_batches(pixels, n, "pixels"), _micro_batches(labels, n, "labels", k),
          _micro_batches(mask, n, "decoder_attention_mask", k))
    zero = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32))
    (grads, total, tokens, correct), _ = jax.lax.scan(one, zero, xs)  # one micro-batch: XLA drops the loop
    return grads, total, tokens, correct


def train_step(state: TrainState, pixels, labels, decoder_attention_mask=None, *, cfg: TrainConfig,
               gathers=None):
    """One optimizer update from a batch: pixels [B,C,H,W], labels [B*k,T] (-100 = not counted),
    split into cfg.accumulation_steps micro-batches along B. Returns (new state, StepMetrics).
    ``gathers``: FSDP's weights to gather (``sharding.weight_gathers`` of ``state.params``)."""
    key = jax.random.fold_in(state.rng, state.step)
    grads, total, tokens, correct = _gradients(state.params, pixels, labels, decoder_attention_mask, key, cfg,
                                               gathers)
    updates, opt_state = make_optimizer(cfg).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    denom = jnp.maximum(tokens, 1).astype(jnp.float32)
    metrics = StepMetrics(total / denom, total, tokens, correct.astype(jnp.float32) / denom,
                          optax.global_norm(grads), learning_rate_schedule(cfg)(state.step))
    return TrainState(params, opt_state, state.step + 1, state.rng), metrics


_step_donating = jax.jit(train_step, static_argnames=("cfg",), donate_argnums=(0,))
_step_keeping = jax.jit(train_step, static_argnames=("cfg",))


def make_train_step(cfg: TrainConfig, *, donate: bool = True):
    """``step(state, pixels, labels, decoder_attention_mask=None) -> (state, StepMetrics)``: the
    jitted ``train_step`` for ``cfg`` (compiled once per cfg and batch shape, shared by every
    caller); with ``donate`` the input state's buffers are reused, so keep only the returned state."""
    run = _step_donating if donate else _step_keeping

    def step(state, pixels, labels, decoder_attention_mask=None):
        return run(state, pixels, labels, decoder_attention_mask, cfg=cfg)
    return step


def _eval_sums(params, pixels, labels, mask, *, dtype):
    out = loss_core(weights_of(params), pixels, labels, params["config"], decoder_attention_mask=mask, dtype=dtype)
    return out.loss_sum, out.tokens, out.correct


eval_sums = jax.jit(_eval_sums, static_argnames=("dtype",))
