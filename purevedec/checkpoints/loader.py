"""Checkpoint files -> named tensors -> params, strictly.

Every tensor in the file must match a rule of ``hf_names`` or be a known non-parameter; every
param must be filled exactly once with the shape ``param_shapes`` gives. Anything else raises
``CheckpointError`` naming the file and the tensor. Tensors are converted one at a time, so
loading holds at most one extra copy of a tensor beyond the params being built.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
import warnings
from typing import Iterable, Iterator

import jax.numpy as jnp
import numpy as np

from ..config import Config
from ..errors import CheckpointError
from ..models import decoder_family, encoder_family
from ..params import EXTRA_KEY, flatten, map_with_path, param_shapes, with_statics
from . import names as hf_names
from .config_files import load_config, load_generation_config
from .extra_file import read_extra
from .formats import FORMATS, Format, pick_format
from .bundled import bundled_dir, is_bundled_name
from .hub import snapshot_dir
from .jsonfile import file_kind, read_json_object


def _convert(name: str, array: np.ndarray, paths: tuple[str, ...], rule: hf_names.Rule,
             shapes: dict, where: str, config: Config) -> list[np.ndarray]:
    want = [shapes.get(p) for p in paths]
    if None in want:
        raise CheckpointError(f"{where}: tensor {name} does not fit the config (no param {paths[want.index(None)]}; "
                              "is the layer count in config.json right?)")
    if rule.kind == "reshape":
        # The exact HF shape, not only the element count: a same-size tensor in another layout
        # (a transposed position table, an HWIO patch kernel) would reshape into wrong values.
        hf = hf_names.hf_shape(rule, config)
        if tuple(array.shape) != hf:
            raise CheckpointError(f"{where}: tensor {name} has shape {list(array.shape)}, the config needs "
                                  f"{list(hf)} (for {paths[0]} {list(want[0])})")
        return [array.reshape(want[0])]
    try:
        parts = hf_names.TRANSFORMS[rule.kind][0](array) if array.ndim else [array]
    except (ValueError, IndexError):  # np.split of an odd length, a missing axis: a wrong shape
        parts = []
    got = [tuple(p.shape) for p in parts]
    if len(parts) != len(paths) or got != [tuple(w) for w in want]:
        raise CheckpointError(f"{where}: tensor {name} has shape {list(array.shape)}, which does not give "
                              f"{', '.join(f'{p} {list(w)}' for p, w in zip(paths, want))}")
    return parts


def _finite(array) -> bool:
    """No NaN or infinite value in ``array`` (a host or device array)."""
    if not jnp.issubdtype(array.dtype, jnp.inexact):
        return True
    if isinstance(array, np.ndarray):
        with np.errstate(all="ignore"):  # one fast pass: a NaN or an infinity makes the sum non-finite
            if np.isfinite(np.sum(array)):
                return True
    return bool(jnp.isfinite(array).all())  # exact (also when a float16 sum merely overflowed)


def _check_finite(name: str, part: np.ndarray, value, where: str, allow: bool) -> None:
    """A NaN or infinite weight makes every output NaN (an empty caption, a NaN loss): refused,
    naming the tensor, unless ``allow`` (then a warning). After a cast to another dtype the cast
    value is checked too: a float32 value past float16's range becomes infinite."""
    cast = value.dtype != part.dtype
    if _finite(part) and (not cast or _finite(value)):
        return
    checked = value if cast else part
    bad = int(checked.size - jnp.isfinite(checked).sum())
    message = (f"{where}: tensor {name} holds {bad} NaN or infinite value{'' if bad == 1 else 's'}"
               f"{f' after the cast to {value.dtype}' if cast and _finite(part) else ''}")
    if not allow:
        raise CheckpointError(f"{message}; load(..., allow_nonfinite=True) loads it anyway")
    warnings.warn(message, UserWarning, stacklevel=4)


def build_params(tensors: Iterable[tuple[str, np.ndarray]], config: Config, *, dtype=None,
                 where: str = "checkpoint", defaults: dict | None = None, allow_nonfinite: bool = False) -> dict:
    """Map (HF name, array) pairs onto the params tree, checking every name and shape, and that
    every value is finite (``allow_nonfinite``: a warning instead of an error).

    ``defaults`` (flat path -> array) fills params the tensors may lack (freshly initialised
    layers when composing pretrained parts); any other missing param is an error."""
    shapes = flatten(param_shapes(config))
    rules = hf_names.rules_for(config)
    flat: dict[str, object] = {}
    for name, array in tensors:
        if hf_names.is_ignored(name, config):
            continue
        found = hf_names.match(name, rules)
        if found is None:
            raise CheckpointError(f"{where}: unexpected tensor {name} {list(np.shape(array))}: no "
                                  f"{config.encoder.model_type}/{config.decoder.model_type} parameter has that name")
        rule, paths = found
        for path, part in zip(paths, _convert(name, np.asarray(array), paths, rule, shapes, where, config)):
            if path in flat:
                raise CheckpointError(f"{where}: tensor {name} appears more than once")
            flat[path] = jnp.asarray(part, dtype=dtype or part.dtype)
            _check_finite(name, part, flat[path], where, allow_nonfinite)
    for path, value in (defaults or {}).items():
        flat.setdefault(path, value)
    missing = [p for p in shapes if p not in flat]
    if missing:
        raise CheckpointError(f"{where}: missing tensors for {len(missing)} params, e.g. "
                              f"{', '.join(_hf_name_of(p, config) for p in missing[:5])}")
    return with_statics(map_with_path(param_shapes(config), lambda path, _: flat[path]), config)


def _hf_name_of(path: str, config: Config) -> str:
    """The HF tensor name that fills a param path (for error messages)."""
    for rule in hf_names.rules_for(config):
        for template in rule.ours:
            m = hf_names.template_regex(template).match(path)
            if m:
                return rule.hf.replace("{i}", m.group(1)) if m.groups() else rule.hf
    return path


def _shards(path: str, index: str) -> list[str]:
    """The shard files an index names, checked to exist beside it."""
    weight_map = read_json_object(index, CheckpointError).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: no weight_map object (tensor name -> shard file)")
    if not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: weight_map values must be shard file names")
    names = sorted(set(weight_map.values()))
    for name in names:
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise CheckpointError(f"{index}: shard name {name!r:.100} is not a plain file name")
        if not os.path.isfile(os.path.join(path, name)):
            raise CheckpointError(f"{index} names shard {name}, which is not in {path}")
    return [os.path.join(path, n) for n in names]


def weight_files(path: str) -> tuple[Format, list[str]]:
    """The preferred weights format in directory ``path`` and its files (shards in order)."""
    files = os.listdir(path)
    fmt = pick_format(files)
    if fmt is None:
        raise CheckpointError(f"{path}: no weights file; looked for {', '.join(f.single for f in FORMATS)} "
                              f"or their sharded index (files: {sorted(files)})")
    found = [os.path.join(path, fmt.single)] if fmt.single in files else _shards(path, os.path.join(path, fmt.index))
    for file in found:  # a FIFO would block the reader, a device never end
        mode = os.stat(file).st_mode
        if not stat.S_ISREG(mode):
            raise CheckpointError(f"{file} is {file_kind(mode)}, not a weights file")
    return fmt, found


def read_tensors(fmt: Format, files: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Every (HF name, array) of ``weight_files``' result, one at a time."""
    for file in files:
        yield from fmt.reader(file)


# The fewest bytes any weights format spends on one tensor besides its values (its name alone is
# longer): with one byte per value, a floor on the file size a config needs.
_BYTES_PER_TENSOR = 8


def _layer_counts(sub, family) -> tuple[int, ...]:
    """A config's layer count, or its count per stage when its family counts layers per stage (Swin's depths)."""
    n = getattr(sub, family.layers_field)
    return tuple(n) if isinstance(n, tuple) else (n,)


def _with_layers(sub, family, counts: tuple[int, ...]):
    """``sub`` with these layer counts (one, or one per stage)."""
    one = isinstance(getattr(sub, family.layers_field), int)
    return dataclasses.replace(sub, **{family.layers_field: counts[0] if one else tuple(counts)})


def _size(config: Config, skip: re.Pattern | None) -> tuple[int, int]:
    """(values, tensors) of the params a config describes, leaving out paths ``skip`` matches."""
    shapes = [s for p, s in flatten(param_shapes(config)).items() if not (skip and skip.match(p))]
    return sum(math.prod(s) for s in shapes), len(shapes)


def needed_size(config: Config, skip: re.Pattern | None = None) -> tuple[int, int]:
    """(values, tensors) the config's params hold, computed from versions of it with 1 layer (per
    stage) and with 2 in one stack (or stage) at a time, so that a config claiming 10^8 layers costs
    nothing to check."""
    parts = {}
    for part in ("encoder", "decoder"):
        sub = getattr(config, part)
        family = encoder_family(sub) if part == "encoder" else decoder_family(sub)
        counts = _layer_counts(sub, family)
        parts[part] = (family, counts, _with_layers(sub, family, (1,) * len(counts)))
    small = {part: one for part, (_, _, one) in parts.items()}
    base = _size(dataclasses.replace(config, **small), skip)
    total = list(base)
    for part, (family, counts, one) in parts.items():
        for i, n in enumerate(counts):
            two = _with_layers(one, family, tuple(2 if j == i else 1 for j in range(len(counts))))
            grown = _size(dataclasses.replace(config, **{**small, part: two}), skip)
            total = [t + (n - 1) * (g - b) for t, g, b in zip(total, grown, base)]
    return tuple(total)


def check_fits(config: Config, files: list[str], where: str, skip: re.Pattern | None = None) -> None:
    """Refuse a config whose params (those ``skip`` does not match: the ones to read from ``files``)
    cannot be in ``files`` (at least one byte per value and a few per tensor), before anything
    proportional to its sizes or layer counts is built."""
    values, tensors = needed_size(config, skip)
    have = sum(os.path.getsize(f) for f in files)
    if values + _BYTES_PER_TENSOR * tensors > have:
        raise CheckpointError(
            f"{where}: config.json describes {values} parameter values in {tensors} tensors "
            f"({config.encoder.model_type} and {config.decoder.model_type} layers, widths and vocabulary), "
            f"more than the {have} bytes of weights on disk can hold: is config.json for these weights?")


def load_dir(path: str, *, dtype=None, allow_nonfinite: bool = False) -> tuple[dict, Config]:
    """Load ``(params, config)`` from a local checkpoint directory (any supported format); the
    params carry the config and the checkpoint's generation defaults."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} is not a checkpoint directory")
    config = load_config(path)
    generation = load_generation_config(path)
    fmt, files = weight_files(path)
    where = files[0] if len(files) == 1 else os.path.join(path, fmt.index)
    check_fits(config, files, where)
    params = build_params(read_tensors(fmt, files), config, dtype=dtype and jnp.dtype(dtype), where=where,
                          allow_nonfinite=allow_nonfinite)
    extra = read_extra(path)  # adapters or heads a save wrote beside the weights
    return {**params, "generation_config": generation, **({EXTRA_KEY: extra} if extra is not None else {})}, config


def local_dir(name_or_path: str | os.PathLike, *, revision: str | None = None,
              cache_dir: str | None = None) -> str:
    """A local checkpoint directory: a bundled model's folder (``purevedec:<name>``), the path
    itself, or the snapshot of a Hub repo id."""
    path = os.fspath(name_or_path)
    if is_bundled_name(path):
        return bundled_dir(path)
    if os.path.isdir(path):
        return path
    return snapshot_dir(path, revision=revision, cache_dir=cache_dir)


def load(name_or_path: str | os.PathLike, *, revision: str | None = None, dtype=None,
         cache_dir: str | None = None, allow_nonfinite: bool = False) -> tuple[dict, Config]:
    """Load ``(params, config)`` from a local checkpoint directory or a Hugging Face Hub repo id.

    Weights are read in the first format present of safetensors (one file or sharded),
    PyTorch .bin (read without torch) and Flax msgpack. ``dtype`` casts the parameters while
    loading (default: as stored). The params carry the config (``params["config"]``) and the
    checkpoint's generation defaults (``params["generation_config"]``), so
    ``forward(params, pixels, ids)`` and ``generate(params, pixels)`` need nothing else.
    A NaN or infinite weight (also one that overflows ``dtype``) is a CheckpointError naming
    the tensor; ``allow_nonfinite=True`` loads it with a warning."""
    return load_dir(local_dir(name_or_path, revision=revision, cache_dir=cache_dir), dtype=dtype,
                    allow_nonfinite=allow_nonfinite)
