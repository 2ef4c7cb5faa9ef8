"""Place params and batches on a device mesh with axes "data" and "model" (JAX's own sharding).

``shard_params`` splits attention heads, the MLP width and the vocabulary over "model" (tensor
parallelism) and, with ``fsdp=True``, the largest remaining axis of every big tensor over "data";
everything else is replicated. ``shard_batch`` splits a batch over "data". The model functions
then run unchanged under ``jit``: XLA's partitioner inserts the collectives. Either axis may be
absent from the mesh or of size 1.

The rules are a public table from logical axis names (each family's parameter description names
every dimension: "heads", "mlp", "vocab", "embed", ...; see ``param_spec``) to mesh axes; a
logical axis the table does not name is replicated. A new family is sharded correctly as soon as
its description names its axes. Research code can pass its own table (``rules=``) or extend
``MODEL_RULES``. A dimension the mesh axis does not divide stays replicated, with a warning naming it.

Layout notes: kernels are [d_out, d_in], so "output rows" are axis 0. Heads are contiguous
blocks of K rows of a q/k/v kernel, so splitting rows in M blocks gives each device H/M whole
heads. GPT-2's fused self-attention kernel stacks [q; k; v] (3 x H*K rows) and is split the same
way, in M contiguous blocks of 3H/M whole heads: for M > 1 a block mixes q, k and v heads (the
first device holds q's first heads, the last v's last), so XLA moves the q/k/v pieces to the
devices of their heads after the product; the kernel's memory is still split M ways.
"""

from __future__ import annotations

import warnings
from typing import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from .config import Config
from .param_spec import HEADS, MLP, VOCAB, Param
from .params import EXTRA_KEY, STATIC_KEYS, flatten, map_with_path, param_description, param_shapes, unpack

DATA, MODEL = "data", "model"

# Logical axis -> mesh axis (tensor parallelism): attention heads, the MLP width and the vocabulary.
MODEL_RULES: Mapping[str, str] = {HEADS: MODEL, MLP: MODEL, VOCAB: MODEL}
# Tensors with fewer elements stay whole on every device under fsdp=True (norms, biases, cls).
FSDP_MIN_SIZE = 1024


def check_mesh(mesh: Mesh) -> None:
    """purevedec's reshapes assume the partitioner places intermediates (Auto axes)."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    explicit = [n for n, t in zip(mesh.axis_names, mesh.axis_types) if t != AxisType.Auto]
    if explicit:
        raise ValueError(
            f"mesh axes {explicit} are not Auto ({mesh.axis_types}): purevedec runs on meshes whose axes the "
            "partitioner places; build one with jax.make_mesh(shape, names, "
            "axis_types=(jax.sharding.AxisType.Auto,) * len(names))")


def _axis_size(mesh: Mesh, axis) -> int:
    return mesh.shape.get(axis, 1) if axis is not None else 1


def _rule_axes(param: Param, rules: Mapping) -> list:
    """The mesh axis of each dimension by its logical name; a mesh axis is used once (the first
    dimension naming it), since one array cannot be split twice over the same devices."""
    axes, used = [], set()
    for name in param.axes:
        axis = rules.get(name) if name is not None else None
        axes.append(None if axis in used else axis)
        used.add(axis)
    return axes


def _fsdp_axes(axes: list, shape: tuple, mesh: Mesh) -> list:
    """The largest dimension not already split, over "data", for tensors of FSDP_MIN_SIZE elements or more."""
    size = 1
    for d in shape:
        size *= d
    free = [i for i in range(len(shape)) if axes[i] is None]
    if size >= FSDP_MIN_SIZE and free and DATA in mesh.shape:
        axes[max(free, key=lambda i: shape[i])] = DATA
    return axes


def leaf_spec(path: str, param: Param, mesh: Mesh, rules: Mapping = MODEL_RULES, fsdp: bool = False) -> PartitionSpec:
    """One param's PartitionSpec on ``mesh``: its logical axes through ``rules``, the fsdp axis, then
    any axis that is absent, of size 1, or does not divide its dimension dropped (the last with a
    warning naming ``path``)."""
    shape = param.shape
    axes = _rule_axes(param, rules)
    if fsdp:
        axes = _fsdp_axes(axes, shape, mesh)
    for i, axis in enumerate(axes):
        n = _axis_size(mesh, axis)
        if n == 1:
            axes[i] = None
        elif shape[i] % n:
            warnings.warn(f"{path}: dimension {i} of size {shape[i]} is not divisible by mesh axis {axis!r} "
                          f"of size {n}; it stays replicated", stacklevel=3)
            axes[i] = None
    while axes and axes[-1] is None:
        axes.pop()
    return PartitionSpec(*axes)


def param_specs(config: Config, mesh: Mesh, *, rules: Mapping | None = None, fsdp: bool = False) -> dict:
    """The PartitionSpec of every param on ``mesh``, as a tree shaped like the weights."""
    rules = MODEL_RULES if rules is None else rules
    if not isinstance(rules, Mapping):
        raise TypeError(f"rules must map logical axis names to mesh axes (like MODEL_RULES), got {type(rules).__name__}")
    return map_with_path(param_description(config), lambda path, param: leaf_spec(path, param, mesh, rules, fsdp))


def shard_params(params: Mapping, mesh: Mesh, config: Config | None = None, *, rules=None,
                 fsdp: bool = False) -> dict:
    """``params`` placed on ``mesh`` by the rules (see the module doc), still carrying their config.

    rules: logical axis name -> mesh axis; default ``MODEL_RULES``.
    fsdp: also split the largest remaining axis of every big tensor over "data"."""
    check_mesh(mesh)
    weights, config = unpack(params, config)
    specs = flatten(param_specs(config, mesh, rules=rules, fsdp=fsdp))
    leaves = flatten(weights)
    if jax.process_count() > 1:  # one device's arrays cannot go to other processes' devices: via the host
        leaves = {path: np.asarray(leaf) for path, leaf in leaves.items()}
    placed = map_with_path(param_shapes(config),
                           lambda path, _: jax.device_put(leaves[path], NamedSharding(mesh, specs[path])))
    return {**placed, **beside_weights(params, lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec())))}


def beside_weights(params: Mapping, replicated) -> dict:
    """What params carry besides the weights: the static entries as they are, and the extra leaves
    (adapters, heads: small, with no logical axes) through ``replicated``."""
    out = {k: params[k] for k in STATIC_KEYS if k in params}
    if EXTRA_KEY in params:
        out[EXTRA_KEY] = jax.tree.map(replicated, params[EXTRA_KEY])
    return out


def shard_batch(x, mesh: Mesh):
    """A batch (an array or a tree of arrays, batch axis first) split over the mesh's "data" axis
    (replicated when the mesh has none)."""
    check_mesh(mesh)
    n = _axis_size(mesh, DATA)

    def put(a):
        if n > 1 and (not getattr(a, "ndim", 0) or a.shape[0] % n):
            raise ValueError(f"a batch of shape {getattr(a, 'shape', None)} cannot be split over the mesh's "
                             f"'data' axis of size {n}: its first dimension must be a multiple of {n}")
        return jax.device_put(a, NamedSharding(mesh, PartitionSpec(DATA) if n > 1 else PartitionSpec()))
    return jax.tree.map(put, x)


# ---- FSDP inside a program: gather each "data"-split weight where it is used ----

def _names(entry) -> tuple:
    """A PartitionSpec entry (None, an axis name, or a tuple of them) as a tuple of names."""
    return () if entry is None else entry if isinstance(entry, tuple) else (entry,)


def _without(entry, axes: set):
    kept = tuple(a for a in _names(entry) if a not in axes)
    return None if not kept else kept[0] if len(kept) == 1 else kept


def weight_gathers(weights, split: NamedSharding | None) -> tuple | None:
    """What FSDP must gather in a program whose batch is split as ``split`` (``model.batch_split``
    of the inputs): (leaf index in ``jax.tree.leaves(weights)``, the leaf's sharding with the
    batch's mesh axes dropped) for every weight split over one of those axes; None when there is
    none, the batch is not split, or the weights are traced (their shardings are unknown).

    Without the gather the partitioner may keep a "data"-split weight in place and move the
    activations instead (it all-gathered the whole batch's activations of a forward pass), so
    the batch would no longer stay split. The result is hashable: a jit static argument."""
    if split is None or not len(split.spec):
        return None
    batch_axes = set(_names(split.spec[0]))
    found = []
    for i, leaf in enumerate(jax.tree.leaves(weights)):
        s = None if isinstance(leaf, jax.core.Tracer) else getattr(leaf, "sharding", None)
        if isinstance(s, NamedSharding) and any(set(_names(e)) & batch_axes for e in s.spec):
            found.append((i, NamedSharding(s.mesh, PartitionSpec(*(_without(e, batch_axes) for e in s.spec)))))
    return tuple(found) or None


def gather_weights(weights, gathers: tuple | None):
    """Inside a jitted program: ``weights`` with each leaf that ``weight_gathers`` listed constrained
    to its gathered sharding (whole along the batch's axes), so each device computes with the
    whole weight and its own rows of the batch. None changes nothing."""
    if not gathers:
        return weights
    leaves, tree = jax.tree.flatten(weights)
    for i, sharding in gathers:
        leaves[i] = jax.lax.with_sharding_constraint(leaves[i], sharding)
    return jax.tree.unflatten(tree, leaves)


# ---- the batch's split, applied to arrays built inside a program ----

def batch_split(x) -> NamedSharding | None:
    """How a concrete array's leading (batch) axis is split over a mesh: a NamedSharding with only
    that axis given (``constrain_rows`` applies it to other arrays); None for a tracer, a batch
    that is not split, or a sharding that names no mesh axes."""
    sharding = None if isinstance(x, jax.core.Tracer) else getattr(x, "sharding", None)
    if not isinstance(sharding, NamedSharding) or not len(sharding.spec) or sharding.spec[0] is None:
        return None
    return NamedSharding(sharding.mesh, PartitionSpec(sharding.spec[0]))


def constrain_rows(x: jax.Array, split: NamedSharding | None) -> jax.Array:
    """Split x's leading axis as ``split`` says, its other axes left to the partitioner."""
    if split is None:
        return x
    spec = PartitionSpec(split.spec[0], *(PartitionSpec.UNCONSTRAINED,) * (x.ndim - 1))
    return jax.lax.with_sharding_constraint(x, NamedSharding(split.mesh, spec))


# ---- meshes named on a command line: --mesh data=N,model=M ----

def parse_mesh(text: str) -> dict[str, int]:
    """"data=N,model=M" (either may be left out; order free) -> {"data": N, "model": M}, each a
    positive int; ValueError naming what is wrong."""
    sizes: dict[str, int] = {}
    for part in text.split(","):
        name, eq, value = part.strip().partition("=")
        if not eq:
            raise ValueError(f"mesh {text!r}: {part.strip()!r} is not NAME=SIZE (write e.g. data=4,model=2)")
        if name not in (DATA, MODEL):
            raise ValueError(f"mesh {text!r}: unknown axis {name!r}; the axes are {DATA!r} and {MODEL!r}")
        if name in sizes:
            raise ValueError(f"mesh {text!r}: axis {name!r} is given twice")
        if not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"mesh {text!r}: size of {name!r} must be a positive integer, got {value!r}")
        sizes[name] = int(value)
    return sizes


def make_mesh(sizes: Mapping[str, int], devices=None) -> Mesh:
    """An Auto-axis mesh ("data" then "model") over ``devices`` (default: every process's), whose
    sizes must multiply to the device count. Devices are ordered process by process, so that
    under several processes each holds a contiguous block of the "data" axis (its share of the
    batch) when the "model" axis fits within one process's devices."""
    devices = sorted(jax.devices() if devices is None else devices, key=lambda d: (d.process_index, d.id))
    names = tuple(n for n in (DATA, MODEL) if n in sizes)
    shape = tuple(sizes[n] for n in names)
    total = 1
    for n in shape:
        total *= n
    if total != len(devices):
        given = ",".join(f"{n}={sizes[n]}" for n in names)
        raise ValueError(f"mesh {given} has {total} devices, but JAX sees {len(devices)} "
                         f"({jax.default_backend()}): the sizes must multiply to {len(devices)}")
    return Mesh(np.array(devices).reshape(shape), names, axis_types=(AxisType.Auto,) * len(names))


def host_share(mesh: Mesh, batch: int) -> tuple[int, int]:
    """(index, count): this process holds rows index*batch/count .. (index+1)*batch/count of a
    batch split over the mesh's "data" axis (its devices' rows), so it reads only those inputs
    and hands them to ``jax.make_array_from_process_local_data``. (0, 1) on one process. Raises
    when this process's rows are not one contiguous block (the mesh's devices are not ordered
    process by process: build it with ``make_mesh``)."""
    sharding = NamedSharding(mesh, PartitionSpec(DATA) if DATA in mesh.shape else PartitionSpec())
    rows = sorted({(s[0].start or 0, batch if s[0].stop is None else s[0].stop)
                   for s in sharding.addressable_devices_indices_map((batch,)).values()})
    lo, hi = rows[0][0], rows[-1][1]
    if any(a != b for (_, b), (a, _) in zip(rows, rows[1:])) or batch % (hi - lo) or lo % (hi - lo):
        raise ValueError(f"process {jax.process_index()} holds rows {rows} of a batch of {batch}: not one "
                         "contiguous share; build the mesh with purevedec.sharding.make_mesh")
    return lo // (hi - lo), batch // (hi - lo)
