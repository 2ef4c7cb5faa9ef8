"""The parameter tree: its one description (``param_shapes``), random init, and validation.

Params are a plain nested dict of arrays (lists for per-layer blocks) that also carries its
config at ``params["config"]`` (and, once loaded from a checkpoint, its generation defaults at
``params["generation_config"]``): both are leafless static pytree nodes, invisible to
``jax.tree.map``, ``grad``, optimizers and sharding. Everything else that needs the tree's layout
(the loader, validation, sharding rules) derives it from ``param_shapes``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from . import beit, deit, gpt2, trocr, vit
from .config import Config
from .errors import ParamsError

ENCODERS = {"vit": vit, "deit": deit, "beit": beit}
DECODERS = {"gpt2": gpt2, "trocr": trocr}
# Keys of a params dict that hold static descriptions, not weights.
STATIC_KEYS = ("config", "generation_config")


def encoder_module(config: Config):
    return ENCODERS[config.encoder.model_type]


def decoder_module(config: Config):
    return DECODERS[config.decoder.model_type]


def param_shapes(config: Config) -> dict:
    """Nested dict of shape tuples (lists for per-layer blocks), mirroring the weights tree."""
    shapes = {"encoder": encoder_module(config).param_shapes(config.encoder),
              "decoder": decoder_module(config).param_shapes(config.decoder)}
    if config.has_projection:
        shapes["proj"] = {"w": (config.decoder.n_embd, config.encoder.hidden_size),
                          "b": (config.decoder.n_embd,)}
    return shapes


def is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def flatten(tree, prefix: str = "") -> dict[str, object]:
    """{"decoder.blocks.0.attn.q.w": leaf, ...}: the dotted paths used in messages and checks
    (the static config entries are not leaves and are left out)."""
    if isinstance(tree, Mapping):
        items = ((k, v) for k, v in tree.items() if not (prefix == "" and k in STATIC_KEYS))
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    out = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def map_with_path(tree, fn, prefix: str = ""):
    """Rebuild a shapes-style tree (dicts and lists) with ``fn(dotted path, leaf)`` at each leaf."""
    if isinstance(tree, dict):
        return {k: map_with_path(v, fn, f"{prefix}.{k}" if prefix else k) for k, v in tree.items()}
    if isinstance(tree, list):
        return [map_with_path(v, fn, f"{prefix}.{i}") for i, v in enumerate(tree)]
    return fn(prefix, tree)


def _init_rule(path: str, config: Config) -> tuple[str, float]:
    """transformers' init of one leaf as (kind, value): normal(0, initializer_range) weights and
    embeddings, zero biases, unit norms, truncated-normal ViT/DeiT cls/pos, zero BEiT tokens,
    positions and relative biases, BEiT's layer scales at layer_scale_init_value, and GPT-2's
    residual projections scaled by 1/sqrt(2 * n_layer)."""
    part = path.split(".")
    leaf, section = part[-1], part[0]
    std = config.encoder.initializer_range if section == "encoder" else config.decoder.initializer_range
    if leaf == "scale":
        return "ones", 1.0
    if leaf in ("b", "bias", "rel_bias", "dist") or (section == "encoder" and config.encoder.model_type == "beit"
                                                      and leaf in ("cls", "pos")):
        return "zeros", 0.0
    if leaf in ("ls1", "ls2"):
        return "full", config.encoder.layer_scale_init_value
    if section == "encoder" and leaf in ("cls", "pos"):
        return "truncated", std
    if section == "decoder" and config.decoder.model_type == "gpt2" and part[-2] in ("o", "out"):
        std = std / math.sqrt(2 * config.decoder.n_layer)
    return "normal", std


# One jitted draw per kind for the whole tree: a draw per leaf compiled a random kernel per
# shape (~30 s for a tiny model on a busy 2-core CPU, against ~2 s for two draws).
_normal = jax.jit(lambda key, n: jax.random.normal(key, (n,)), static_argnums=1)
# transformers' trunc_normal_ cuts at absolute values +-2, i.e. +-2/std standard deviations.
_truncated = jax.jit(lambda key, n, cut: jax.random.truncated_normal(key, -cut, cut, (n,)), static_argnums=1)


def init_params(config: Config, key, dtype=jnp.float32) -> dict:
    """Random parameters laid out as ``param_shapes(config)``, carrying ``config``; same key, same params."""
    if not isinstance(config, Config):
        raise TypeError(f"init_params(config, key): config must be a purevedec.Config, got {type(config).__name__}")
    shapes = param_shapes(config)
    rules = {path: _init_rule(path, config) for path in flatten(shapes)}
    offsets, sizes = {}, {"normal": 0, "truncated": 0}
    for path, shape in flatten(shapes).items():
        kind = rules[path][0]
        if kind in sizes:
            offsets[path] = sizes[kind]
            sizes[kind] += math.prod(shape)
    k_normal, k_truncated = jax.random.split(key)
    draws = {"normal": _normal(k_normal, sizes["normal"]),
             "truncated": _truncated(k_truncated, sizes["truncated"], 2.0 / config.encoder.initializer_range)}
    # Concrete draws are cut into leaves with numpy (no kernel compiled per shape); traced ones
    # (under jit or eval_shape) with jax.
    xp = jnp if isinstance(draws["normal"], jax.core.Tracer) else np
    draws = {k: xp.asarray(v) for k, v in draws.items()}

    def leaf(path, shape):
        kind, std = rules[path]
        if kind in ("ones", "zeros"):
            return jnp.asarray(getattr(xp, kind)(shape, dtype))
        if kind == "full":
            return jnp.asarray(xp.full(shape, std, dtype))
        start = offsets[path]
        return jnp.asarray((std * draws[kind][start:start + math.prod(shape)].reshape(shape)).astype(dtype))
    return {**map_with_path(shapes, leaf), "config": config}


def _describe(x) -> str:
    return type(x).__name__ if not hasattr(x, "shape") else f"{type(x).__name__}{list(x.shape)}"


def _mismatch(want, have, path: str) -> str | None:
    """The first difference between the expected shapes tree and a weights tree, in words."""
    where = path or "params"
    if isinstance(want, dict):
        if not isinstance(have, Mapping):
            return f"{where} is {_describe(have)}, expected a dict with keys {sorted(want)}"
        missing, extra = sorted(set(want) - set(have)), sorted(map(str, set(have) - set(want)))
        if missing or extra:
            return f"{where}: missing {missing[:5]}, unexpected {extra[:5]}"
        return next((m for k in want if (m := _mismatch(want[k], have[k], f"{path}.{k}" if path else k))), None)
    if isinstance(want, list):
        if not isinstance(have, (list, tuple)):
            hint = (" (a checkpointer restored the list of layers as a dict: pass "
                    f"[blocks[str(i)] for i in range({len(want)})])") if isinstance(have, Mapping) else ""
            return f"{where} is {_describe(have)}, expected a list of {len(want)} layers{hint}"
        if len(have) != len(want):
            return f"{where} has {len(have)} layers, the config has {len(want)}"
        return next((m for i, (w, h) in enumerate(zip(want, have)) if (m := _mismatch(w, h, f"{path}.{i}"))), None)
    shape, dtype = getattr(have, "shape", None), getattr(have, "dtype", None)
    if shape is None or dtype is None:
        return f"{where} is {_describe(have)}, expected an array of shape {list(want)}"
    if tuple(shape) != want:
        return f"{where} has shape {list(shape)}, the config needs {list(want)}"
    if not jnp.issubdtype(dtype, jnp.floating):
        return f"{where} has dtype {dtype}, expected a floating-point dtype"
    return None


_CHECKED: set = set()  # (config, tree structure, leaf shapes and dtypes) already found valid


def check_params(params: Mapping, config: Config | None = None) -> None:
    """Raise ``ParamsError`` naming the first leaf whose presence, container, shape or dtype
    differs from what ``config`` (default: ``params["config"]``) describes. Cheap after the
    first call for a given tree structure, shapes and config (the result is cached)."""
    config = _config_of(params, config)
    weights = {k: v for k, v in params.items() if k not in STATIC_KEYS}
    leaves, treedef = jax.tree.flatten(weights)
    signature = (config, treedef, tuple((tuple(np.shape(x)), str(getattr(x, "dtype", type(x)))) for x in leaves))
    if signature in _CHECKED:
        return
    problem = _mismatch(param_shapes(config), weights, "")
    if problem:
        raise ParamsError(f"params do not match the config: {problem}")
    _CHECKED.add(signature)


def _config_of(params: Any, config: Config | None) -> Config:
    if not isinstance(params, Mapping):
        raise ParamsError(f"params must be the dict load()/init_params() return, got {type(params).__name__}")
    config = config if config is not None else params.get("config")
    if config is None:
        raise ParamsError("params carry no config (params['config']) and none was passed: pass config=..., "
                          "or build params with purevedec.load / init_params, which attach it")
    if not isinstance(config, Config):
        raise ParamsError(f"config must be a purevedec.Config, got {type(config).__name__}")
    return config


def unpack(params: Mapping, config: Config | None = None) -> tuple[dict, Config]:
    """(weights without the static entries, config): an explicit ``config`` wins over the one
    the params carry. The weights are validated against the config (see ``check_params``)."""
    config = _config_of(params, config)
    check_params(params, config)
    return {k: v for k, v in params.items() if k not in STATIC_KEYS}, config
