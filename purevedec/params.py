"""The parameter tree: its one description (``param_shapes``), random init, and validation.

Everything else that needs the tree's layout (the loader's checks, ``jax.eval_shape`` tests,
sharding later) derives it from ``param_shapes``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from . import gpt2, vit
from .config import Config

ENCODERS = {"vit": vit}
DECODERS = {"gpt2": gpt2}


def encoder_module(config: Config):
    return ENCODERS[config.encoder.model_type]


def decoder_module(config: Config):
    return DECODERS[config.decoder.model_type]


def param_shapes(config: Config) -> dict:
    """Nested dict of shape tuples (lists for per-layer blocks), mirroring the params tree."""
    shapes = {"encoder": encoder_module(config).param_shapes(config.encoder),
              "decoder": decoder_module(config).param_shapes(config.decoder)}
    if config.has_projection:
        shapes["proj"] = {"w": (config.decoder.n_embd, config.encoder.hidden_size),
                          "b": (config.decoder.n_embd,)}
    return shapes


def is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def flatten(tree, prefix: str = "") -> dict[str, object]:
    """{"decoder.blocks.0.attn.q.w": leaf, ...}: the dotted paths used in messages and checks."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    out = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _init_leaf(path: str, shape: tuple, config: Config, key, dtype):
    """transformers' init: normal(0, initializer_range) weights and embeddings, zero biases,
    unit norms, truncated-normal ViT cls/pos, and GPT-2's residual projections scaled by
    1/sqrt(2 * n_layer)."""
    part = path.split(".")
    leaf, section = part[-1], part[0]
    std = config.encoder.initializer_range if section == "encoder" else config.decoder.initializer_range
    if leaf == "scale":
        return jnp.ones(shape, dtype)
    if leaf in ("b", "bias"):
        return jnp.zeros(shape, dtype)
    if section == "encoder" and leaf in ("cls", "pos"):
        return (std * jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape)).astype(dtype)
    if section == "decoder" and part[-2] in ("o", "out"):
        std = std / math.sqrt(2 * config.decoder.n_layer)
    return (std * jax.random.normal(key, shape)).astype(dtype)


def init_params(config: Config, key, dtype=jnp.float32) -> dict:
    """Random parameters laid out as ``param_shapes(config)``; same key, same params."""
    shapes = param_shapes(config)
    flat = flatten(shapes)
    keys = dict(zip(flat, jax.random.split(key, len(flat))))
    return _map_with_path(shapes, lambda path, shape: _init_leaf(path, shape, config, keys[path], dtype))


def _map_with_path(tree, fn, prefix: str = ""):
    if isinstance(tree, dict):
        return {k: _map_with_path(v, fn, f"{prefix}.{k}" if prefix else k) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_map_with_path(v, fn, f"{prefix}.{i}") for i, v in enumerate(tree)]
    return fn(prefix, tree)


def check_params(params: dict, config: Config) -> None:
    """Raise ValueError naming the first param whose presence or shape differs from the config."""
    want = flatten(param_shapes(config))
    have = flatten(params)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
        raise ValueError(f"params do not match the config: missing {missing[:5]}, unexpected {extra[:5]}")
    for path, shape in want.items():
        got = tuple(getattr(have[path], "shape", ()))
        if got != shape:
            raise ValueError(f"param {path} has shape {got}, the config needs {shape}")
