"""The Swin image encoder (transformers' ``swin`` and Donut's ``donut-swin``): shifted-window attention.

Parameter tree (``param_shapes``)::

    patch     {"w": [D0, C*P*P], "b": [D0]}   the stride-P convolution as one matmul over patches
    ln_embed  {"scale", "bias"}                the norm after the patch embedding
    pos       [N, D0]                          only with use_absolute_embeddings (``swin`` only)
    stages    [ {"blocks": [ {ln1, attn{q,k,v,o}, rel_bias [(2W-1)^2, H_i], ln2, mlp{fc, out}} ] * depth_i,
                 "merge": {"ln": norm [4 D_i], "w": {"w": [2 D_i, 4 D_i]}}   (every stage but the last)} ]
    ln_f      {"scale", "bias"}                ``swin`` only: Donut's Swin has no final norm

Stage i has width D_i = embed_dim * 2^i; the decoder reads the last stage's tokens, width
``hidden_size`` = embed_dim * 2^(stages - 1). Each block attends within W x W windows of the
token grid (W = window_size), odd blocks after a cyclic shift of W // 2 with the wrapped-around
regions kept apart by a -100 additive mask; every window adds a relative position bias looked up
from its block's table. A grid that is not a multiple of W is padded with zero tokens after the
block's first norm, and those padded tokens are attended to (transformers does not mask them).
When the grid's shorter side is at most W, transformers drops the shift; when it is shorter than
W its bias table no longer fits the window and it fails, so such inputs are refused here. Patch merging pads an odd
grid by a zero row/column, joins each 2x2 neighbourhood ((0,0), (1,0), (0,1), (1,1)), then norms and reduces (no bias).
Norms of the embedding and of patch merging use nn.LayerNorm's default eps 1e-5; the blocks'
and the final one use ``layer_norm_eps``. transformers' module clamps its window in place, so a
layer that once saw a small grid keeps no shift afterwards; here each call decides from its own grid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .. import validate as v
from ..attention import attention
from ..config_fields import ACTIVATION_NAMES, field_names, fields, set_field as _set, warn_unknown
from ..errors import ConfigError
from ..hf_rules import Rule, linear_rules, norm_rules
from ..layers import activation, dense, dropout, layer_norm, layer_outputs, merge_heads, site_key, split_heads
from ..param_spec import EMBED, HEADS, MLP, PATCH, POSITIONS, Param, dense as dense_param, norm
from .beit import drop_path
from .family import EncoderFamily
from .vit import bicubic_matrix, patchify

TORCH_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default: the embedding and patch-merging norms set none
SHIFT_MASK = -100.0  # transformers' additive score for a key in another region of a shifted window
MAX_STAGES = 8  # real Swins have 4; a bound keeps a hostile config's 2^stages widths small


@dataclass(frozen=True)
class SwinConfig:
    """transformers' SwinConfig / DonutSwinConfig fields that change the math (defaults: swin-tiny):
    ``image_size`` and ``patch_size`` (height, width) pairs (an int: a square), ``num_channels``,
    ``embed_dim`` (stage 0's width), ``depths`` and ``num_heads`` (blocks and heads per stage),
    ``window_size``, ``mlp_ratio`` (MLP width over the stage's, truncated), ``qkv_bias``, the training-only
    ``hidden_dropout_prob``, ``attention_probs_dropout_prob`` and ``drop_path_rate``, ``hidden_act`` (an
    ACT2FN name), ``use_absolute_embeddings`` (``swin`` only), ``initializer_range``, ``layer_norm_eps``
    (the blocks' and the final norm's) and ``model_type`` ("swin" or "donut-swin")."""
    image_size: tuple[int, int] = (224, 224)
    patch_size: tuple[int, int] = (4, 4)
    num_channels: int = 3
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.1
    hidden_act: str = "gelu"
    use_absolute_embeddings: bool = False
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    model_type: str = "swin"

    def __post_init__(self):
        w = "encoder"
        v.one_of(self.model_type, f"{w}.model_type", ("swin", "donut-swin"))
        _set(self, "image_size", v.pair(self.image_size, f"{w}.image_size"))
        _set(self, "patch_size", v.pair(self.patch_size, f"{w}.patch_size"))
        for name in ("num_channels", "embed_dim", "window_size"):
            v.positive_int(getattr(self, name), f"{w}.{name}")
        for name in ("depths", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not value:
                raise ConfigError(f"{w}.{name} must be a non-empty list of positive ints, got {value!r:.80}")
            _set(self, name, tuple(v.positive_int(x, f"{w}.{name}") for x in value))
        if len(self.depths) > MAX_STAGES:
            raise ConfigError(f"{w}.depths has {len(self.depths)} stages; at most {MAX_STAGES} are supported "
                              "(each stage doubles the width)")
        if len(self.depths) != len(self.num_heads):
            raise ConfigError(f"{w}.depths has {len(self.depths)} stages but num_heads has {len(self.num_heads)}")
        for i, heads in enumerate(self.num_heads):
            if self.stage_width(i) % heads:
                raise ConfigError(f"{w}.num_heads[{i}]={heads} does not divide stage {i}'s width "
                                  f"{self.stage_width(i)} (embed_dim * 2^{i})")
        _set(self, "mlp_ratio", v.number(self.mlp_ratio, f"{w}.mlp_ratio", low=0.0, low_open=True))
        if any(int(self.mlp_ratio * self.stage_width(i)) < 1 for i in range(len(self.depths))):
            raise ConfigError(f"{w}.mlp_ratio={self.mlp_ratio} leaves an MLP with no hidden units")
        for name in ("qkv_bias", "use_absolute_embeddings"):
            v.flag(getattr(self, name), f"{w}.{name}")
        if self.use_absolute_embeddings and self.model_type == "donut-swin":
            raise ConfigError(f"{w}.use_absolute_embeddings=true is not supported for donut-swin: transformers' "
                              "DonutSwin table has num_patches + 1 rows and cannot be added to its patch tokens")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            _set(self, name, v.probability(getattr(self, name), f"{w}.{name}"))
        v.one_of(self.hidden_act, f"{w}.hidden_act", ACTIVATION_NAMES)
        _set(self, "layer_norm_eps", v.number(self.layer_norm_eps, f"{w}.layer_norm_eps", low=0.0, low_open=True))
        _set(self, "initializer_range", v.number(self.initializer_range, f"{w}.initializer_range", low=0.0))

    def stage_width(self, i: int) -> int:
        return self.embed_dim * 2 ** i

    def mlp_width(self, i: int) -> int:
        return int(self.mlp_ratio * self.stage_width(i))  # transformers truncates, as int() does

    @property
    def hidden_size(self) -> int:
        """Width of the tokens the decoder reads (the last stage's)."""
        return self.stage_width(len(self.depths) - 1)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class DonutSwinConfig(SwinConfig):
    __doc__ = "Donut's Swin (no final norm). " + SwinConfig.__doc__
    model_type: str = "donut-swin"


# Keys of a Swin config.json that an image-to-text model never reads (backbone and masked-image heads).
_INERT = frozenset({"encoder_stride", "out_features", "out_indices", "stage_names", "num_layers", "hidden_size",
                    "path_norm"})
_ALIASES = {"num_attention_heads": "num_heads"}


def parse_swin(d: Mapping, where: str = "encoder") -> SwinConfig:
    """A ``swin`` / ``donut-swin`` config dict -> SwinConfig; derived keys must agree with the fields."""
    cls = DonutSwinConfig if d.get("model_type") == "donut-swin" else SwinConfig
    warn_unknown(d, field_names(cls) | _INERT | frozenset(_ALIASES), where)
    cfg = cls(**fields(cls, d, where, _ALIASES))
    for key, value in (("hidden_size", cfg.hidden_size), ("num_layers", len(cfg.depths))):
        if key in d and d[key] != value:
            raise ConfigError(f"{where}.{key}={d[key]!r:.40} disagrees with depths/embed_dim (expected {value})")
    return cfg


def params(cfg: SwinConfig) -> dict:
    """Swin's description: N(0, initializer_range) kernels, zero relative bias tables and positions."""
    std, n_rel, tree_stages = cfg.initializer_range, (2 * cfg.window_size - 1) ** 2, []
    for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
        d, f = cfg.stage_width(i), cfg.mlp_width(i)
        attn = {n: dense_param(d, d, (HEADS, EMBED), std, cfg.qkv_bias) for n in "qkv"}
        attn["o"] = dense_param(d, d, (EMBED, HEADS), std)
        block = {"ln1": norm(d), "attn": attn, "rel_bias": Param((n_rel, heads), (None, None), "zeros"),
                 "ln2": norm(d), "mlp": {"fc": dense_param(f, d, (MLP, EMBED), std), "out": dense_param(d, f, (EMBED, MLP), std)}}
        stage = {"blocks": [block] * depth}
        if i < len(cfg.depths) - 1:
            stage["merge"] = {"ln": norm(4 * d), "w": dense_param(2 * d, 4 * d, (EMBED, None), std, bias=False)}
        tree_stages.append(stage)
    patch_in = cfg.num_channels * cfg.patch_size[0] * cfg.patch_size[1]
    tree = {"patch": dense_param(cfg.embed_dim, patch_in, (EMBED, PATCH), std), "ln_embed": norm(cfg.embed_dim),
            "stages": tree_stages}
    if cfg.use_absolute_embeddings:
        tree["pos"] = Param((cfg.num_patches, cfg.embed_dim), (POSITIONS, EMBED), "zeros")
    if cfg.model_type == "swin":
        tree["ln_f"] = norm(cfg.hidden_size)
    return tree



def check_grid(grid: tuple[int, int], cfg: SwinConfig, stage: int) -> None:
    """Refuse a stage grid shorter than the window: transformers shrinks the window to it, and its
    bias table, sized for the configured window, then no longer fits (it fails with a shape error)."""
    if min(grid) < cfg.window_size:
        raise ValueError(f"the image is too small for this Swin: stage {stage}'s token grid {grid[0]}x{grid[1]} "
                         f"is shorter than window_size={cfg.window_size} (transformers cannot run it either); "
                         f"use images of at least {cfg.window_size * 2 ** stage} patches a side")


def window_and_shift(grid: tuple[int, int], block_index: int, cfg: SwinConfig) -> tuple[int, int]:
    """(window, shift) of a block on this grid: odd blocks shift by W // 2, unless the grid's shorter
    side is no longer than the window (then nothing is shifted)."""
    shift = cfg.window_size // 2 if block_index % 2 else 0
    return cfg.window_size, 0 if min(grid) <= cfg.window_size else shift


def partition(x: jax.Array, window: int) -> jax.Array:
    """[B,Hp,Wp,D] -> [B, nW, W*W, D]: windows row-major over the grid, tokens row-major in a window."""
    b, h, w, d = x.shape
    x = x.reshape(b, h // window, window, w // window, window, d).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // window) * (w // window), window * window, d)


def unpartition(x: jax.Array, window: int, height: int, width: int) -> jax.Array:
    """[B, nW, W*W, D] -> [B,Hp,Wp,D], inverse of ``partition``."""
    b, d = x.shape[0], x.shape[-1]
    x = x.reshape(b, height // window, width // window, window, window, d).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, d)


@functools.lru_cache(maxsize=16)
def relative_position_index(window: int) -> np.ndarray:
    """[T,T] row of the bias table for each (query, key) pair of a window: (dy + W-1) * (2W-1) + dx + W-1."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :]  # [2,T,T]
    return ((rel[0] + window - 1) * (2 * window - 1) + rel[1] + window - 1).astype(np.int32)


@functools.lru_cache(maxsize=64)
def shift_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """[nW,T,T] additive mask of a shifted window over a padded Hp x Wp grid: after the cyclic shift the
    last W and last ``shift`` rows (columns) come from different parts of the image, three regions per
    axis; a key in another region than the query gets SHIFT_MASK."""
    def regions(n):
        idx = np.arange(n)
        return (idx >= n - window).astype(np.int32) + (idx >= n - shift)
    labels = regions(height)[:, None] * 3 + regions(width)[None, :]
    labels = partition(labels[None, :, :, None], window)[0, :, :, 0]  # [nW,T]
    return np.where(labels[:, None, :] != labels[:, :, None], SHIFT_MASK, 0.0).astype(np.float32)


def window_bias(table: jax.Array, window: int, padded: tuple[int, int], shift: int) -> jax.Array:
    """The float32 bias added to each window's scores: [1,H,T,T] unshifted, [nW,H,T,T] with the shift mask."""
    index = relative_position_index(window)
    bias = jnp.take(table.astype(jnp.float32), jnp.asarray(index.reshape(-1)), axis=0)
    bias = bias.reshape(*index.shape, -1).transpose(2, 0, 1)[None]  # [1,H,T,T]
    if shift:
        bias = bias + jnp.asarray(shift_mask(*padded, window, shift))[:, None]
    return bias


def window_attention(p: dict, windows: jax.Array, bias: jax.Array, heads: int, cfg: SwinConfig, dtype,
                     key=None):
    """Attention within each window. windows [B,nW,T,D], bias [1|nW,H,T,T] -> ([B,nW,T,D], weights [B*nW,H,T,T]).

    Windows join the batch axis when every window shares one bias, the heads axis when each has its own
    (so the [nW,H,T,T] bias is read by every image without a copy per image)."""
    b, nw, t, d = windows.shape
    q, k, v = (split_heads(dense(p[n], windows, dtype), heads) for n in "qkv")  # [B,nW,H,T,K]
    folded = (b * nw, heads) if bias.shape[0] == 1 else (b, nw * heads)
    fold = lambda z: z.reshape(*folded, *z.shape[-2:])  # noqa: E731
    bias = bias if bias.shape[0] == 1 else bias.reshape(1, nw * heads, t, t)
    out, weights = attention(fold(q), fold(k), fold(v), None, (d // heads) ** -0.5,
                             dropout_rate=cfg.attention_probs_dropout_prob, key=key, bias=bias)
    out = merge_heads(out.reshape(b, nw, heads, t, -1))  # [B,nW,T,D]
    return dense(p["o"], out, dtype), weights.reshape(b * nw, heads, t, t)


def block(p: dict, x: jax.Array, grid: tuple[int, int], block_index: int, heads: int, cfg: SwinConfig,
          path_rate: float, dtype, key=None):
    """One pre-norm Swin block over a grid of tokens. x [B,h*w,D] -> ([B,h*w,D], weights [B*nW,H,T,T])"""
    b, _, d = x.shape
    (h, w), (window, shift) = grid, window_and_shift(grid, block_index, cfg)
    hp, wp = -(-h // window) * window, -(-w // window) * window
    y = layer_norm(p["ln1"], x, cfg.layer_norm_eps).reshape(b, h, w, d)
    y = jnp.pad(y, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))  # zero tokens, attended to as transformers does
    if shift:
        y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
    bias = window_bias(p["rel_bias"], window, (hp, wp), shift)
    y, weights = window_attention(p["attn"], partition(y, window), bias, heads, cfg, dtype, key=site_key(key, 0))
    y = unpartition(y, window, hp, wp)
    if shift:
        y = jnp.roll(y, (shift, shift), axis=(1, 2))
    y = y[:, :h, :w].reshape(b, h * w, d)
    x = x + drop_path(dropout(y, cfg.hidden_dropout_prob, site_key(key, 1)), path_rate, site_key(key, 2))
    y = layer_norm(p["ln2"], x, cfg.layer_norm_eps)
    y = dense(p["mlp"]["out"], activation(cfg.hidden_act, dense(p["mlp"]["fc"], y, dtype)), dtype)
    return x + dropout(y, cfg.hidden_dropout_prob, site_key(key, 3)), weights  # no drop path here (transformers)


def merge(p: dict, x: jax.Array, grid: tuple[int, int], dtype) -> jax.Array:
    """Patch merging: [B,h*w,D] -> [B,ceil(h/2)*ceil(w/2),2D], an odd side padded with zero tokens."""
    b, _, d = x.shape
    h, w = grid
    x = jnp.pad(x.reshape(b, h, w, d), ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    x = layer_norm(p["ln"], x.reshape(b, -1, 4 * d), TORCH_LAYER_NORM_EPS)
    return dense(p["w"], x, dtype)


def position_table(p: dict, cfg: SwinConfig, pixels_hw: tuple[int, int], grid: tuple[int, int],
                   interpolate: bool) -> jax.Array:
    """[N', D0] absolute positions for this token grid (bicubic-resized from the square table when asked)."""
    if grid == cfg.grid and (not interpolate or pixels_hw[0] == pixels_hw[1]):
        return p["pos"]  # transformers skips the resize when the count matches and the image is square
    side = int(round(cfg.num_patches ** 0.5))
    if not interpolate or side * side != cfg.num_patches or any(
            s // q != g for s, q, g in zip(pixels_hw, cfg.patch_size, grid)):
        raise ValueError(f"Input image size ({pixels_hw[0]}*{pixels_hw[1]}) gives a {grid[0]}x{grid[1]} patch grid, "
                         f"but the position table covers {cfg.grid[0]}x{cfg.grid[1]}; pass interpolate_pos_encoding="
                         "True (square tables, sizes that are multiples of the patch) to resize it")
    table = p["pos"].reshape(side, side, -1).astype(jnp.float32)
    rows, cols = jnp.asarray(bicubic_matrix(side, grid[0])), jnp.asarray(bicubic_matrix(side, grid[1]))
    resized = jnp.einsum("yh,hwd,xw->yxd", rows, table, cols, precision="highest")
    return resized.reshape(grid[0] * grid[1], -1).astype(p["pos"].dtype)


def embed(p: dict, pixels: jax.Array, cfg: SwinConfig, *, interpolate_pos_encoding: bool, dtype, key=None):
    """[B,C,H,W] -> ([B,N,D0], token grid): pixels padded with zeros to whole patches, the stride-P
    convolution as one matmul, its norm, absolute positions where configured."""
    if pixels.ndim != 4:
        raise ValueError(f"pixels must be [B,C,H,W], got shape {pixels.shape}")
    b, c, height, width = pixels.shape
    if c != cfg.num_channels:
        raise ValueError("Make sure that the channel dimension of the pixel values match with the one set "
                         f"in the configuration. Expected {cfg.num_channels} but got {c}.")
    ph, pw = cfg.patch_size
    pixels = jnp.pad(pixels, ((0, 0), (0, 0), (0, -height % ph), (0, -width % pw)))
    grid = (pixels.shape[2] // ph, pixels.shape[3] // pw)
    x = layer_norm(p["ln_embed"], dense(p["patch"], patchify(pixels, cfg.patch_size), dtype), TORCH_LAYER_NORM_EPS)
    if cfg.use_absolute_embeddings:
        x = x + position_table(p, cfg, (height, width), grid, interpolate_pos_encoding).astype(dtype)
    return dropout(x, cfg.hidden_dropout_prob, key), grid


def apply(p: dict, pixels: jax.Array, cfg: SwinConfig, *, interpolate_pos_encoding: bool = False,
          dtype=jnp.float32, key=None, remat: bool = False) -> dict:
    """Returns {"last_hidden_state": [B,S,D] (the last stage's tokens, after ``swin``'s final norm),
    "hidden_states": the embeddings and each stage's output (after its patch merging),
    "attentions": each stage's last block's weights [B*nW,H,T,T]}. ``remat`` as in vit.apply."""
    x, grid = embed(p, pixels, cfg, interpolate_pos_encoding=interpolate_pos_encoding, dtype=dtype,
                    key=site_key(key, 0))
    total, index = sum(cfg.depths), 0
    hidden, attns = [x], []
    for i, stage in enumerate(p["stages"]):
        check_grid(grid, cfg, i)
        for j, bp in enumerate(stage["blocks"]):
            rate = cfg.drop_path_rate * index / max(total - 1, 1)  # transformers' linear stochastic-depth schedule
            layer = functools.partial(block, grid=grid, block_index=j, heads=cfg.num_heads[i], cfg=cfg,
                                      path_rate=rate, dtype=dtype)
            x, weights = layer_outputs(lambda bp, x, k: layer(bp, x, key=k), bp, x,
                                       constants=(site_key(key, 1, index),), remat=remat)
            index += 1
        if "merge" in stage:
            x = merge(stage["merge"], x, grid, dtype)
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
        hidden.append(x)
        attns.append(weights)
    last = layer_norm(p["ln_f"], x, cfg.layer_norm_eps) if "ln_f" in p else x
    return {"last_hidden_state": last, "hidden_states": tuple(hidden), "attentions": tuple(attns)}


# Our block leaves by their HF module names (the names both transformers classes save under).
_PROCESSOR_KINDS = ("ImageProcessor", "ImageProcessorPil", "ImageProcessorFast", "FeatureExtractor")
_BLOCK_LINEARS = {"attention.self.query": "attn.q", "attention.self.key": "attn.k", "attention.self.value": "attn.v",
                  "attention.output.dense": "attn.o", "intermediate.dense": "mlp.fc", "output.dense": "mlp.out"}


def hf_rules(cfg: SwinConfig) -> list[Rule]:
    """One concrete rule per tensor (Swin numbers stages and blocks); the patch convolution and the positions
    are "reshape"d. Each block's ``relative_position_index`` buffer in Donut's files is ignored (rebuilt)."""
    emb = "encoder.embeddings."
    rules = linear_rules(f"{emb}patch_embeddings.projection", "encoder.patch") + norm_rules(f"{emb}norm", "encoder.ln_embed")
    rules[0] = Rule(rules[0].hf, rules[0].ours, "reshape")
    if cfg.use_absolute_embeddings:
        rules.append(Rule(f"{emb}position_embeddings", ("encoder.pos",), "reshape"))
    for i, depth in enumerate(cfg.depths):
        for j in range(depth):
            hf, ours = f"encoder.encoder.layers.{i}.blocks.{j}.", f"encoder.stages.{i}.blocks.{j}."
            for module, leaf in _BLOCK_LINEARS.items():
                biased = cfg.qkv_bias or not module.startswith("attention.self.")
                rules += linear_rules(f"{hf}{module}", f"{ours}{leaf}", bias=biased)
            rules += norm_rules(f"{hf}layernorm_before", f"{ours}ln1") + norm_rules(f"{hf}layernorm_after", f"{ours}ln2")
            rules.append(Rule(f"{hf}attention.self.relative_position_bias_table", (f"{ours}rel_bias",)))
        if i < len(cfg.depths) - 1:
            hf, ours = f"encoder.encoder.layers.{i}.downsample.", f"encoder.stages.{i}.merge."
            rules += linear_rules(f"{hf}reduction", f"{ours}w", bias=False) + norm_rules(f"{hf}norm", f"{ours}ln")
    return rules + (norm_rules("encoder.layernorm", "encoder.ln_f") if cfg.model_type == "swin" else [])


def hf_shapes(cfg: SwinConfig) -> dict[str, tuple]:
    """The HF shapes of the "reshape" tensors: the patch conv [D0,C,P,P], positions [1,N,D0]."""
    return {"encoder.embeddings.patch_embeddings.projection.weight": (cfg.embed_dim, cfg.num_channels, *cfg.patch_size),
            "encoder.embeddings.position_embeddings": (1, cfg.num_patches, cfg.embed_dim)}


def _family(config_class: type) -> EncoderFamily:
    return EncoderFamily(
        model_type=config_class.model_type, config_class=config_class, parse=parse_swin, params=params, apply=apply,
        hf_rules=hf_rules, layers_field="depths", special_tokens=0, hf_shapes=hf_shapes,
        prompt_replaces_start=config_class.model_type == "donut-swin",
        ignored=(r"^encoder\.encoder\.layers\.\d+\.blocks\.\d+\.attention\.self\.relative_position_index$",),
        # SwinModel / DonutSwinModel ("embeddings.*") or an image classifier ("swin.*" plus a head we drop).
        standalone=(("classifier.", None), ("swin.", "encoder."), ("donut.", "encoder."), ("", "encoder.")),
        image_pipelines={f"{n}{k}": n.lower() for n in ("Donut", "Nougat") for k in _PROCESSOR_KINDS},
        page_defaults={"nougat": {"markdown": True, "stop_score_variance": True}})  # Nougat writes Markdown pages


FAMILY = _family(SwinConfig)
DONUT_FAMILY = _family(DonutSwinConfig)
