"""The train step on a device mesh: the state placed by the sharding rules, the batch over "data".

    state = shard_state(init_state(params, cfg, seed), mesh, cfg, fsdp=False)
    step = make_sharded_train_step(cfg, state)
    state, metrics = step(state, pixels, labels)     # numpy or global jax arrays, batch first

The params take ``shard_params``' layout (heads, MLP width and vocabulary over "model"; with
``fsdp`` the largest free axis of big tensors over "data"); each optimizer moment takes its
param's sharding (optax's ``tree_map_params`` finds which state leaves mirror the params);
the step count, the schedule's count and the PRNG key are replicated. The step is jitted with
the state's shardings as its output shardings, so every update keeps the layout, and with
FSDP the "data"-split weights are gathered where the loss uses them (``sharding.weight_gathers``),
so activations and gradients' per-example work stay on each device's rows.
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..params import unpack
from ..sharding import DATA, beside_weights, check_mesh, param_specs, weight_gathers
from .optim import TrainConfig, make_optimizer, optax
from .step import StepMetrics, TrainState, train_step


def param_shardings(params, mesh: Mesh, *, rules=None, fsdp: bool = False):
    """A tree like ``params`` (config entries kept) with each weight's NamedSharding by the rules."""
    _, config = unpack(params)
    specs = param_specs(config, mesh, rules=rules, fsdp=fsdp)
    placed = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    return {**placed, **beside_weights(params, lambda _: NamedSharding(mesh, PartitionSpec()))}


def state_shardings(state: TrainState, mesh: Mesh, cfg: TrainConfig, *, rules=None, fsdp: bool = False) -> TrainState:
    """The NamedSharding of every leaf of ``state``: params by the rules, optimizer moments as
    their params, everything else (counts, step, key) replicated."""
    check_mesh(mesh)
    params = param_shardings(state.params, mesh, rules=rules, fsdp=fsdp)
    whole = NamedSharding(mesh, PartitionSpec())
    opt = optax.tree_map_params(make_optimizer(cfg), lambda _, sharding: sharding, state.opt_state, params,
                                transform_non_params=lambda _: whole)
    return TrainState(params, opt, whole, whole)


def shard_state(state: TrainState, mesh: Mesh, cfg: TrainConfig, *, rules=None, fsdp: bool = False) -> TrainState:
    """``state`` placed on ``mesh`` (see ``state_shardings``); ``cfg`` must be the one that made it.
    Under several processes every process passes the same state (same params, same seed)."""
    shardings = state_shardings(state, mesh, cfg, rules=rules, fsdp=fsdp)
    if jax.process_count() == 1:
        return jax.device_put(state, shardings)
    # Arrays on one local device cannot be put on other processes' devices: go through host memory.
    return jax.tree.map(_put_from_host, state, shardings)


def _put_from_host(x, sharding: NamedSharding):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.device_put(np.asarray(x), sharding)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch first, over "data" (replicated on a mesh without it)."""
    return NamedSharding(mesh, PartitionSpec(DATA) if mesh.shape.get(DATA, 1) > 1 else PartitionSpec())


def _mesh_of(state: TrainState) -> Mesh:
    sharding = jax.tree.leaves(state.params)[0].sharding
    if not isinstance(sharding, NamedSharding):
        raise ValueError("make_sharded_train_step needs a state placed on a mesh: use shard_state(state, mesh, cfg)")
    return sharding.mesh


def make_sharded_train_step(cfg: TrainConfig, state: TrainState, *, donate: bool = True):
    """``step(state, pixels, labels, decoder_attention_mask=None) -> (state, StepMetrics)`` for a
    state placed by ``shard_state``: the new state has the same shardings, the metrics are
    replicated. Inputs that are not yet global jax arrays are split over "data" (their batch
    size must be a multiple of its size); under several processes, pass global arrays
    (``jax.make_array_from_process_local_data``)."""
    mesh = _mesh_of(state)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    batch = batch_sharding(mesh)
    whole = NamedSharding(mesh, PartitionSpec())
    run = jax.jit(partial(train_step, cfg=cfg, gathers=weight_gathers(state.params, batch)),
                  out_shardings=(shardings, StepMetrics(*[whole] * len(StepMetrics._fields))),
                  donate_argnums=(0,) if donate else ())

    def place(x):
        if x is None or (isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding)):
            return x
        n = mesh.shape.get(DATA, 1)
        if x.shape[0] % n:
            raise ValueError(f"a batch of {x.shape[0]} rows cannot be split over the mesh's 'data' axis of size "
                             f"{n}: the batch size must be a multiple of {n}")
        return jax.device_put(x, batch)

    def step(state, pixels, labels, decoder_attention_mask=None):
        return run(state, place(pixels), place(labels), place(decoder_attention_mask))
    step.program = run  # the jitted train_step (for .lower(...): its compiled text, its costs)
    return step
