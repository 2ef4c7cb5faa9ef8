"""The parameter tree: its one description (``param_description``), random init, and validation.

Params are a plain nested dict of arrays (lists for per-layer blocks) that also carries its
config at ``params["config"]`` and its generation defaults at ``params["generation_config"]`` (the
checkpoint's after ``load``, those the config implies after ``init_params``, so that both return
trees of one structure): both are leafless static pytree nodes, invisible to
``jax.tree.map``, ``grad``, optimizers and sharding. Everything else that needs the tree's layout
(the loader, validation, sharding, freezing) derives it from ``param_description``: each family's
``params`` (shape, logical axes, initializer of every leaf; see ``param_spec``) under "encoder" and
"decoder", and the projection between them when the widths differ.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .config import Config
from .errors import ParamsError
from .generation_config import GenerationConfig, implied_defaults
from .models import decoder_family, encoder_family
from .param_spec import EMBED, Param, dense, shapes

# Keys of a params dict that hold static descriptions, not weights.
STATIC_KEYS = ("config", "generation_config")
# The slot for the user's own leaves beside the model's (adapters, heads, probes): ordinary leaves
# (jit, grad and optimizers see them), validated only as arrays, ignored by the model functions,
# and written by ``save`` to a file of their own (see ``checkpoints.extra_file``).
EXTRA_KEY = "extra"
# Top-level keys that are not the model's weights.
NON_WEIGHT_KEYS = (*STATIC_KEYS, EXTRA_KEY)


def with_statics(weights: dict, config: Config, generation_config: GenerationConfig | None = None) -> dict:
    """``weights`` plus the static entries every params tree carries: the config and the generation
    defaults (``generation_config``, else those ``config`` implies, marked so that a config edited
    later brings its own)."""
    return {**weights, "config": config, "generation_config": generation_config or implied_defaults(config)}


def param_description(config: Config) -> dict:
    """Nested dict of ``Param`` (shape, logical axes, initializer; lists for per-layer blocks),
    mirroring the weights tree."""
    tree = {"encoder": encoder_family(config.encoder).params(config.encoder),
            "decoder": decoder_family(config.decoder).params(config.decoder)}
    if config.has_projection:  # transformers' enc_to_dec_proj, drawn like the decoder's own kernels
        tree["proj"] = dense(config.decoder.n_embd, config.encoder.hidden_size, (EMBED, EMBED),
                             config.decoder.initializer_range)
    return tree


def param_shapes(config: Config) -> dict:
    """Nested dict of shape tuples (lists for per-layer blocks), mirroring the weights tree."""
    return shapes(param_description(config))


def abstract_params(config: Config, dtype=jnp.float32) -> dict:
    """The params tree of ``config`` with a ``jax.ShapeDtypeStruct`` at each leaf: traceable like
    real params (``jax.make_jaxpr``, ``jax.eval_shape``, ``flops``) with nothing allocated, so a
    full-size model's costs are counted in a fraction of a second."""
    leaves = map_with_path(param_shapes(config), lambda path, shape: jax.ShapeDtypeStruct(shape, dtype))
    return with_statics(leaves, config)


def is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def flatten(tree, prefix: str = "") -> dict[str, object]:
    """{"decoder.blocks.0.attn.q.w": leaf, ...}: the dotted paths used in messages and checks
    (the static config entries and the extra leaves are not the model's and are left out)."""
    if isinstance(tree, Mapping):
        items = ((k, v) for k, v in tree.items() if not (prefix == "" and k in NON_WEIGHT_KEYS))
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


# One jitted draw per kind for the whole tree: a draw per leaf compiled a random kernel per
# shape (~30 s for a tiny model on a busy 2-core CPU, against ~2 s for two draws).
_normal = jax.jit(lambda key, n: jax.random.normal(key, (n,)), static_argnums=1)
# transformers' trunc_normal_ cuts at absolute values +-2, i.e. +-2/std standard deviations.
_truncated = jax.jit(lambda key, n, cut: jax.random.truncated_normal(key, -cut, cut, (n,)), static_argnums=1)


def _draw_pools(description: dict) -> tuple[dict, dict]:
    """Where each random leaf's values start in its pool, and each pool's size: one pool of
    standard normals, one of truncated normals per truncation (transformers cuts at +-2 absolute,
    so at +-2/std standard deviations), laid out in the tree's order."""
    offsets, sizes = {}, {("normal", None): 0}
    for path, param in flatten(description).items():
        if param.init in ("normal", "truncated"):
            pool = ("normal", None) if param.init == "normal" else ("truncated", param.scale)
            offsets[path] = (pool, sizes.get(pool, 0))
            sizes[pool] = sizes.get(pool, 0) + math.prod(param.shape)
    return offsets, sizes


def init_params(config: Config, key, dtype=jnp.float32, *, generation_config: GenerationConfig | None = None) -> dict:
    """Random parameters laid out as ``param_shapes(config)``, drawn as each family's description
    says (transformers' initializers), carrying ``config`` and ``generation_config`` (default: the
    defaults the config implies), so that ``init_params(load_config(d), key,
    generation_config=load_generation_config(d))`` has the structure of ``load(d)``'s params; same
    key, same params."""
    if not isinstance(config, Config):
        raise TypeError(f"init_params(config, key): config must be a purevedec.Config, got {type(config).__name__}")
    if generation_config is not None and not isinstance(generation_config, GenerationConfig):
        raise TypeError(f"init_params(generation_config=...) must be a purevedec.GenerationConfig or None, "
                        f"got {type(generation_config).__name__}")
    description = param_description(config)
    offsets, sizes = _draw_pools(description)
    k_normal, k_truncated = jax.random.split(key)
    truncations = [pool for pool in sizes if pool[0] == "truncated"]
    draws = {("normal", None): _normal(k_normal, sizes[("normal", None)])}
    for i, pool in enumerate(truncations):
        k = k_truncated if len(truncations) == 1 else jax.random.fold_in(k_truncated, i)
        draws[pool] = _truncated(k, sizes[pool], 2.0 / pool[1])
    # Concrete draws are cut into leaves with numpy (no kernel compiled per shape); traced ones
    # (under jit or eval_shape) with jax.
    xp = jnp if isinstance(draws[("normal", None)], jax.core.Tracer) else np
    draws = {k: xp.asarray(v) for k, v in draws.items()}

    def leaf(path, param: Param):
        if param.init in ("ones", "zeros"):
            return jnp.asarray(getattr(xp, param.init)(param.shape, dtype))
        if param.init == "full":
            return jnp.asarray(xp.full(param.shape, param.scale, dtype))
        pool, start = offsets[path]
        values = draws[pool][start:start + math.prod(param.shape)].reshape(param.shape)
        return jnp.asarray((param.scale * values).astype(dtype))
    return with_statics(map_with_path(description, leaf), config, generation_config)


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
    differs from what ``config`` (default: ``params["config"]``) describes, or an extra leaf
    (``params["extra"]``) that is not an array. Cheap after the first call for a given tree
    structure, shapes and config (the result is cached)."""
    config = _config_of(params, config)
    _check_extra(params.get(EXTRA_KEY))
    weights = weights_of(params)
    leaves, treedef = jax.tree.flatten(weights)
    signature = (config, treedef, tuple((tuple(np.shape(x)), str(getattr(x, "dtype", type(x)))) for x in leaves))
    if signature in _CHECKED:
        return
    problem = _mismatch(param_shapes(config), weights, "")
    if problem:
        raise ParamsError(f"params do not match the config: {problem}")
    _CHECKED.add(signature)


def _check_extra(extra) -> None:
    """The extra slot is a dict holding any pytree (dicts, lists, tuples) whose leaves are arrays."""
    if extra is None:
        return
    if not isinstance(extra, dict):
        raise ParamsError(f"params['{EXTRA_KEY}'] is {_describe(extra)}: the extra slot is a dict "
                          "(of arrays, or of dicts and lists of them)")
    for path, leaf in jax.tree_util.tree_flatten_with_path(extra)[0]:
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            raise ParamsError(f"params['{EXTRA_KEY}']{jax.tree_util.keystr(path)} is {_describe(leaf)}: "
                              "the extra slot holds arrays only (adapters, heads)")


def weights_of(params: Mapping) -> dict:
    """The model's weights: ``params`` without the static entries and the extra leaves."""
    return {k: v for k, v in params.items() if k not in NON_WEIGHT_KEYS}


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
    """(the model's weights, without the static entries and the extra leaves; config): an explicit
    ``config`` wins over the one the params carry. The weights are validated against the config
    (see ``check_params``)."""
    config = _config_of(params, config)
    check_params(params, config)
    return weights_of(params), config
