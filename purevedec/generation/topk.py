"""``top_k`` over the last axis that keeps a batch split over devices where it is.

XLA partitions ``lax.top_k`` by gathering its whole operand onto every device (its partitioner
has no rule for a top-k whose rows are split), so a data-parallel beam search or top-k sampler
would all-gather the [rows, vocab] scores of the whole batch at every step. Rows are
independent: here each device takes the top-k of its own rows, through
``custom_partitioning`` (only the last axis must be whole on a device). On one device, and
inside ``shard_map``, it is ``lax.top_k`` itself: the same program as before. ``custom_vmap``
gives it a batching rule (``custom_partitioning`` has none), so ``generate_core`` still runs
under ``vmap``.
"""

from __future__ import annotations

from functools import cache, partial

import jax
from jax.custom_batching import custom_vmap
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec


def _rows_split(mesh, arg) -> NamedSharding:
    """The operand's sharding with its rows kept as they are split and the last axis whole."""
    sharding = arg.sharding
    rows = sharding.spec[0] if isinstance(sharding, NamedSharding) and len(sharding.spec) else None
    return NamedSharding(sharding.mesh if isinstance(sharding, NamedSharding) else mesh, PartitionSpec(rows, None))


@partial(custom_partitioning, static_argnums=(1,))
def _rows_top_k(x, k: int):
    """x [R,N] -> (values, indices) [R,k]"""
    return jax.lax.top_k(x, k)


def _partition(k, mesh, arg_shapes, result_shape):
    rows = _rows_split(mesh, arg_shapes[0])
    return mesh, lambda x: jax.lax.top_k(x, k), [rows, rows], (rows,)


def _infer(k, mesh, arg_shapes, result_shape):
    rows = _rows_split(mesh, arg_shapes[0])
    return [rows, rows]


# r: rows (may stay split), n: the ranked axis (must be whole on each device), k: the kept entries.
_rows_top_k.def_partition(partition=_partition, infer_sharding_from_operands=_infer,
                          sharding_rule="r n -> r k, r k", need_replication_factors=("n",))


@cache
def _top_k_of(k: int):
    @custom_vmap
    def run(x):
        lead = x.shape[:-1]
        values, indices = _rows_top_k(x.reshape(-1, x.shape[-1]), k)
        return values.reshape(*lead, k), indices.reshape(*lead, k)

    @run.def_vmap
    def batched(axis_size, in_batched, x):  # the vmapped axis is moved to the front: more rows
        return run(x), (True, True)

    return run


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k(x, k)`` for x [..., N] with at least one leading (row) axis: the k largest
    entries of each row and their indices, lower index first among equal values."""
    if x.ndim < 2:
        return jax.lax.top_k(x, k)
    return _top_k_of(int(k))(x)
