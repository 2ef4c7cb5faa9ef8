"""Checkpoint files -> named tensors -> params, strictly.

Every tensor in the file must match a rule of ``hf_names`` or be a known non-parameter; every
param must be filled exactly once with the shape ``param_shapes`` gives. Anything else raises
``CheckpointError`` naming the file and the tensor. Tensors are converted one at a time, so
loading holds at most one extra copy of a tensor beyond the params being built.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Iterator

import jax.numpy as jnp
import numpy as np

from . import hf_names
from .config import Config, load_config
from .errors import CheckpointError
from .params import _map_with_path, flatten, param_shapes


def _convert(name: str, array: np.ndarray, paths: tuple[str, ...], rule: hf_names.Rule,
             shapes: dict, where: str) -> list[np.ndarray]:
    want = [shapes.get(p) for p in paths]
    if None in want:
        raise CheckpointError(f"{where}: tensor {name} does not fit the config (no param {paths[want.index(None)]}; "
                              "is the layer count in config.json right?)")
    if rule.kind == "reshape":
        if array.size != int(np.prod(want[0])):
            raise CheckpointError(f"{where}: tensor {name} has shape {list(array.shape)}, the config needs "
                                  f"{int(np.prod(want[0]))} values for {paths[0]} {list(want[0])}")
        return [array.reshape(want[0])]
    parts = hf_names.TRANSFORMS[rule.kind][0](array) if array.ndim else [array]
    got = [tuple(p.shape) for p in parts]
    if len(parts) != len(paths) or got != [tuple(w) for w in want]:
        raise CheckpointError(f"{where}: tensor {name} has shape {list(array.shape)}, which does not give "
                              f"{', '.join(f'{p} {list(w)}' for p, w in zip(paths, want))}")
    return parts


def build_params(tensors: Iterable[tuple[str, np.ndarray]], config: Config, *, dtype=None,
                 where: str = "checkpoint") -> dict:
    """Map (HF name, array) pairs onto the params tree, checking every name and shape."""
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
        for path, part in zip(paths, _convert(name, np.asarray(array), paths, rule, shapes, where)):
            if path in flat:
                raise CheckpointError(f"{where}: tensor {name} appears more than once")
            flat[path] = jnp.asarray(part, dtype=dtype or part.dtype)
    missing = [p for p in shapes if p not in flat]
    if missing:
        raise CheckpointError(f"{where}: missing tensors for {len(missing)} params, e.g. "
                              f"{', '.join(_hf_name_of(p, config) for p in missing[:5])}")
    return _map_with_path(param_shapes(config), lambda path, _: flat[path])


def _hf_name_of(path: str, config: Config) -> str:
    """The HF tensor name that fills a param path (for error messages)."""
    for rule in hf_names.rules_for(config):
        for template in rule.ours:
            m = re.fullmatch(re.escape(template).replace(r"\{i\}", r"(\d+)"), path)
            if m:
                return rule.hf.replace("{i}", m.group(1)) if m.groups() else rule.hf
    return path


def read_safetensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="numpy") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def load(path: str | os.PathLike, *, dtype=None) -> tuple[dict, Config]:
    """Load ``(params, config)`` from a local checkpoint directory holding config.json and
    model.safetensors. ``dtype`` casts the parameters while loading (default: as stored)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} is not a checkpoint directory")
    config = load_config(path)
    weights = os.path.join(path, "model.safetensors")
    if not os.path.exists(weights):
        raise CheckpointError(f"{path}: no model.safetensors (files: {sorted(os.listdir(path))})")
    params = build_params(read_safetensors(weights), config, dtype=dtype and jnp.dtype(dtype), where=weights)
    return params, config
