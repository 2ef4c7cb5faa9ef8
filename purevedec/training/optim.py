"""The optimizer: AdamW with biases and layer norms excluded from weight decay, gradient clipping,
linear warmup then linear or cosine decay, and frozen parts of the model (needs optax, the
``train`` extra).

Which leaves decay and which are frozen is decided from their path in the params tree
(``encoder.blocks.0.attn.q.b``): names describe the math, so a bias is a leaf named ``b`` or
``bias`` and a layer norm's gain is ``scale``, in every model file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from .. import validate as v
from ..errors import ConfigError
from ..models import decoder_family
from ..params import unpack

try:
    import optax
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("purevedec's training step needs optax: pip install 'purevedec[train]'") from e

SCHEDULES = ("linear", "cosine", "constant")
NO_DECAY_LEAVES = frozenset({"b", "bias", "scale"})  # biases and layer-norm gains (the Flax example's rule)


@dataclass(frozen=True)
class TrainConfig:
    """Everything the optimizer and the train step need (hashable: a jit static argument)."""
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0
    total_steps: int = 1000            # optimizer steps the decay runs over (to 0 at the end)
    schedule: str = "linear"           # linear | cosine | constant (after warmup)
    max_grad_norm: float | None = 1.0  # global-norm clipping; None turns it off
    accumulation_steps: int = 1        # micro-batches per optimizer step (the batch is split in as many)
    label_smoothing: float = 0.0
    dtype: str = "float32"             # compute dtype; params stay float32 (master weights)
    remat: bool = False                # recompute each layer in the backward pass (less memory)
    freeze_encoder: bool = False       # the image encoder's params never change (the projection still trains)
    freeze_embeddings: bool = False    # the decoder's token and position tables never change (its family's embedding_leaves)

    def __post_init__(self):
        for name in ("learning_rate", "weight_decay", "eps"):
            v.number(getattr(self, name), name, low=0.0)
        for name in ("b1", "b2"):
            v.number(getattr(self, name), name, low=0.0, high=1.0)
        v.positive_int(self.total_steps, "total_steps")
        v.positive_int(self.accumulation_steps, "accumulation_steps")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or not (
                0 <= self.warmup_steps <= self.total_steps):
            raise ConfigError(f"warmup_steps={self.warmup_steps!r} must be an int in [0, total_steps={self.total_steps}]")
        v.one_of(self.schedule, "schedule", SCHEDULES)
        if self.max_grad_norm is not None:
            v.number(self.max_grad_norm, "max_grad_norm", low=0.0, low_open=True)
        v.probability(self.label_smoothing, "label_smoothing")
        v.one_of(self.dtype, "dtype", ("float32", "bfloat16", "float16"))
        for name in ("remat", "freeze_encoder", "freeze_embeddings"):
            v.flag(getattr(self, name), name)

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def learning_rate_schedule(cfg: TrainConfig):
    """step -> learning rate: linear warmup from 0 over warmup_steps, then constant, or a linear
    or cosine decay to 0 at total_steps."""
    warm = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps) if cfg.warmup_steps else None
    rest = cfg.total_steps - cfg.warmup_steps
    if cfg.schedule == "constant" or rest == 0:
        after = optax.constant_schedule(cfg.learning_rate)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.learning_rate, 0.0, rest)
    else:
        after = optax.cosine_decay_schedule(cfg.learning_rate, rest)
    return after if warm is None else optax.join_schedules([warm, after], [cfg.warmup_steps])


def path_names(path) -> tuple[str, ...]:
    """A jax key path as plain strings: ("decoder", "blocks", "0", "attn", "qkv", "w")."""
    return tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def decays(names: tuple[str, ...]) -> bool:
    return names[-1] not in NO_DECAY_LEAVES


def embedding_paths(params) -> frozenset[tuple[str, str]]:
    """("decoder", leaf) of the decoder's token and position tables, as its family names them
    (the token table is also the LM head when tied)."""
    _, config = unpack(params)
    return frozenset(("decoder", leaf) for leaf in decoder_family(config.decoder).embedding_leaves)


def is_frozen(names: tuple[str, ...], cfg: TrainConfig, embeddings: frozenset = frozenset()) -> bool:
    return (cfg.freeze_encoder and names[0] == "encoder") or (cfg.freeze_embeddings and names[:2] in embeddings)


def frozen_flags(params, cfg: TrainConfig) -> dict:
    """A tree like ``params`` with True at each leaf ``cfg`` freezes."""
    embeddings = embedding_paths(params) if cfg.freeze_embeddings else frozenset()
    return leaf_flags(params, lambda n: is_frozen(n, cfg, embeddings))


def leaf_flags(params, rule) -> dict:
    """A tree like ``params`` with ``rule(path names)`` at each leaf (static entries stay as they are)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: rule(path_names(path)), params)


def make_optimizer(cfg: TrainConfig) -> "optax.GradientTransformation":
    """clip by global norm -> AdamW (decoupled weight decay on all but biases and norms) with the
    schedule; frozen leaves get zero updates (and no optimizer moments)."""
    parts = [optax.clip_by_global_norm(cfg.max_grad_norm)] if cfg.max_grad_norm is not None else []
    parts.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=lambda p: leaf_flags(p, decays)))
    train = optax.chain(*parts)
    if not (cfg.freeze_encoder or cfg.freeze_embeddings):
        return train
    labels = lambda p: jax.tree.map(lambda f: "frozen" if f else "train", frozen_flags(p, cfg))  # noqa: E731
    return optax.multi_transform({"train": train, "frozen": optax.set_to_zero()}, labels)
