"""The BEiT image encoder: pre-norm ViT layers with relative position biases and layer scale.

Parameter tree (``params``)::

    patch    {"w": [D, C*P*P], "b": [D]}
    cls      [D]
    pos      [1 + N, D]        only with use_absolute_position_embeddings
    rel_bias [R, H]            the shared relative bias table, only with use_shared_relative_position_bias
    blocks   [ {ln1, attn{q, k (no bias), v, o}, rel_bias [R, H] (use_relative_position_bias),
                ls1 [D], ls2 [D] (layer scale, when layer_scale_init_value > 0), ln2, mlp{fc, out}} ] * L
    ln_f     {"scale", "bias"} only without use_mean_pooling

R = (2*Gh - 1) * (2*Gw - 1) + 3 rows: one per patch offset (dy, dx), then [CLS]->patch,
patch->[CLS] and [CLS]->[CLS]. With mean pooling transformers moves the final norm into the
pooler, which VisionEncoderDecoder never runs, so the decoder reads the last layer's raw output.
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
from ..config_fields import set_field
from ..errors import ConfigError
from ..hf_rules import Rule
from ..layers import activation, dense, dropout, layer_norm, layer_outputs, merge_heads, site_key, split_heads
from ..param_spec import EMBED, POSITIONS, Param, norm
from . import vit
from .family import EncoderFamily, config_json


@dataclass(frozen=True)
class BeitConfig(vit.ViTConfig):
    """BEiT: a ViT without key bias (queries and values keep theirs, ``qkv_bias`` is unused),
    with layer scale, relative position biases (per layer and/or shared) and optional absolute
    positions; with mean pooling the final norm moves to the pooler, so the states the decoder
    reads are the last layer's output unnormalised."""
    use_absolute_position_embeddings: bool = False
    """Add a learned [1 + N, D] position table to the tokens."""
    use_relative_position_bias: bool = False
    """Each layer adds its own relative position bias table to its attention scores."""
    use_shared_relative_position_bias: bool = False
    """One relative position bias table shared by every layer."""
    layer_scale_init_value: float = 0.1
    """Initial value of the per-channel layer scales (0: no layer scale)."""
    use_mean_pooling: bool = True
    """Mean-pool for the pooler, which moves the final norm there (the decoder reads unnormalised states)."""
    drop_path_rate: float = 0.1
    """Stochastic depth of the last layer (linear from 0 over the layers; only with a ``key``)."""
    model_type: str = "beit"
    """transformers' model_type: "beit"."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("use_absolute_position_embeddings", "use_relative_position_bias",
                     "use_shared_relative_position_bias", "use_mean_pooling"):
            v.flag(getattr(self, name), f"encoder.{name}")
        set_field(self, "layer_scale_init_value",
             v.number(self.layer_scale_init_value, "encoder.layer_scale_init_value", low=0.0))
        set_field(self, "drop_path_rate", v.probability(self.drop_path_rate, "encoder.drop_path_rate"))

    @property
    def num_relative_distance(self) -> int:
        """Rows of a relative position bias table: every (dy, dx) between patches, plus 3 for [CLS]."""
        gh, gw = self.grid
        return (2 * gh - 1) * (2 * gw - 1) + 3


# BEiT keys for its segmentation/backbone/masked-image heads, which an image-to-text model never builds.
INERT = vit.INERT | frozenset({
    "vocab_size", "use_mask_token", "out_indices", "out_features", "stage_names", "pool_scales",
    "use_auxiliary_head", "auxiliary_loss_weight", "auxiliary_channels", "auxiliary_num_convs",
    "auxiliary_concat_input", "semantic_loss_ignore_index", "add_fpn", "reshape_hidden_states",
})


def parse(d: Mapping, where: str = "encoder") -> BeitConfig:
    # BEiT has no qkv_bias option (its key projection never has a bias); refuse rather than ignore one.
    if "qkv_bias" in d:
        raise ConfigError(f"{where}.qkv_bias is not a BEiT option (BEiT's key projection has no bias, "
                          "its query and value projections always do)")
    return vit.parse(d, where, BeitConfig, INERT)


def params(cfg: BeitConfig) -> dict:
    """BEiT's description: zero [CLS], positions and relative bias tables, layer scales at
    ``layer_scale_init_value``."""
    d, heads = cfg.hidden_size, cfg.num_attention_heads
    table = Param((cfg.num_relative_distance, heads), (None, None), "zeros")
    block = vit.layer_params(cfg, True, False)
    if cfg.use_relative_position_bias:
        block["rel_bias"] = table
    if cfg.layer_scale_init_value > 0:
        block["ls1"] = block["ls2"] = Param((d,), (EMBED,), "full", cfg.layer_scale_init_value)
    tree = {"patch": vit.patch_params(cfg), "cls": Param((d,), (EMBED,), "zeros"),
            "blocks": [block] * cfg.num_hidden_layers}
    if cfg.use_absolute_position_embeddings:
        tree["pos"] = Param((1 + cfg.num_patches, d), (POSITIONS, EMBED), "zeros")
    if cfg.use_shared_relative_position_bias:
        tree["rel_bias"] = table
    if not cfg.use_mean_pooling:
        tree["ln_f"] = norm(d)
    return tree


@functools.lru_cache(maxsize=16)
def relative_position_index(grid: tuple[int, int]) -> np.ndarray:
    """[1+N, 1+N] row of the bias table for each (query, key) pair: patch pairs by their offset
    (dy + Gh - 1) * (2Gw - 1) + (dx + Gw - 1); then the three [CLS] rows, as BEiT numbers them."""
    gh, gw = grid
    coords = np.stack(np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")).reshape(2, -1)  # [2,N]
    rel = coords[:, :, None] - coords[:, None, :]  # [2,N,N]
    patch_index = (rel[0] + gh - 1) * (2 * gw - 1) + (rel[1] + gw - 1)
    distances = (2 * gh - 1) * (2 * gw - 1) + 3
    index = np.zeros((gh * gw + 1,) * 2, np.int32)
    index[1:, 1:] = patch_index
    index[0, :] = distances - 3  # [CLS] -> token
    index[:, 0] = distances - 2  # token -> [CLS]
    index[0, 0] = distances - 1  # [CLS] -> [CLS]
    return index


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] matrix of torch's bilinear resize along one axis (align_corners=False:
    source coordinate (i + 0.5) * n_in / n_out - 0.5, clamped at 0; the last tap repeats at the edge)."""
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(int(np.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        m[i, lo] += 1.0 - frac
        m[i, hi] += frac
    return m.astype(np.float32)


def bias_table(table: jax.Array, cfg: BeitConfig, grid: tuple[int, int]) -> jax.Array:
    """The [R',H] table for a patch grid, as transformers builds it on every call: the patch-offset
    rows are resized bilinearly from the configured grid's (2Gh-1) x (2Gw-1) offsets to the
    grid's, the three [CLS] rows kept. transformers reads the stored rows as a [2Gw-1, 2Gh-1]
    image (width first), so the resize is an identity only for a square configured grid at its
    own size; a non-square one is resampled even at its own size, and so it is here."""
    (oh, ow), (gh, gw) = cfg.grid, grid
    if oh == ow and (gh, gw) == (oh, ow):
        return table
    sub = table[:-3].reshape(2 * ow - 1, 2 * oh - 1, -1).astype(jnp.float32)
    rows = jnp.asarray(bilinear_matrix(2 * ow - 1, 2 * gh - 1))
    cols = jnp.asarray(bilinear_matrix(2 * oh - 1, 2 * gw - 1))
    resized = jnp.einsum("yh,hwd,xw->yxd", rows, sub, cols, precision="highest")  # [2gh-1, 2gw-1, H]
    return jnp.concatenate([resized.reshape(-1, table.shape[1]).astype(table.dtype), table[-3:]], axis=0)


def relative_bias(table: jax.Array, cfg: BeitConfig, grid: tuple[int, int]) -> jax.Array:
    """[R,H] table -> the [1,H,S,S] bias added to the attention scores of an image of this patch grid."""
    index = relative_position_index(grid)
    table = bias_table(table, cfg, grid)
    return jnp.take(table, jnp.asarray(index.reshape(-1)), axis=0).reshape(*index.shape, -1).transpose(2, 0, 1)[None]


def embed(p: dict, pixels: jax.Array, cfg: BeitConfig, *, interpolate_pos_encoding: bool, dtype,
          key=None) -> jax.Array:
    """[B,C,H,W] -> [B,1+N,D]. ``interpolate_pos_encoding`` changes nothing: transformers' BEiT
    resizes its absolute positions (and relative biases, ``bias_table``) whenever the size differs."""
    x = vit.patch_tokens(p, pixels, cfg, [p["cls"]], dtype)
    if cfg.use_absolute_position_embeddings:
        x = x + vit.position_embeddings(p, cfg, *pixels.shape[2:], True).astype(dtype)
    return dropout(x, cfg.hidden_dropout_prob, key)


def drop_path(x: jax.Array, rate: float, key) -> jax.Array:
    """Stochastic depth: each sample's residual branch is dropped whole (training only)."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def block(p: dict, x: jax.Array, shared_bias, cfg: BeitConfig, grid: tuple[int, int], path_rate: float, dtype,
          key=None):
    """One BEiT layer over an image of this patch grid. [B,S,D] -> ([B,S,D], attention weights [B,H,S,S])"""
    bias = shared_bias
    if "rel_bias" in p:
        own = relative_bias(p["rel_bias"], cfg, grid)
        bias = own if bias is None else bias + own
    h = layer_norm(p["ln1"], x, cfg.layer_norm_eps)
    q, k, v = (split_heads(dense(p["attn"][n], h, dtype), cfg.num_attention_heads) for n in "qkv")
    out, weights = attention(q, k, v, None, cfg.head_dim ** -0.5, dropout_rate=cfg.attention_probs_dropout_prob,
                             key=site_key(key, 0), bias=bias)
    h = dropout(dense(p["attn"]["o"], merge_heads(out), dtype), cfg.hidden_dropout_prob, site_key(key, 1))
    if "ls1" in p:
        h = h * p["ls1"].astype(dtype)
    x = x + drop_path(h, path_rate, site_key(key, 2))
    h = layer_norm(p["ln2"], x, cfg.layer_norm_eps)
    h = dense(p["mlp"]["out"], activation(cfg.hidden_act, dense(p["mlp"]["fc"], h, dtype)), dtype)
    h = dropout(h, cfg.hidden_dropout_prob, site_key(key, 3))
    if "ls2" in p:
        h = h * p["ls2"].astype(dtype)
    return x + drop_path(h, path_rate, site_key(key, 4)), weights


def apply(p: dict, pixels: jax.Array, cfg: BeitConfig, *, interpolate_pos_encoding: bool = False,
          dtype=jnp.float32, key=None, remat: bool = False) -> dict:
    """Same outputs as ``vit.apply`` (``remat`` as there); ``last_hidden_state`` is unnormalised
    with mean pooling."""
    x = embed(p, pixels, cfg, interpolate_pos_encoding=interpolate_pos_encoding, dtype=dtype, key=site_key(key, 0))
    grid = (pixels.shape[2] // cfg.patch_size[0], pixels.shape[3] // cfg.patch_size[1])
    shared = relative_bias(p["rel_bias"], cfg, grid) if cfg.use_shared_relative_position_bias else None
    layers = cfg.num_hidden_layers
    hidden, attns = [x], []
    for i, bp in enumerate(p["blocks"]):
        rate = cfg.drop_path_rate * i / max(layers - 1, 1)  # transformers' linear stochastic-depth schedule
        layer = functools.partial(block, cfg=cfg, grid=grid, path_rate=rate, dtype=dtype)
        x, weights = layer_outputs(lambda bp, x, bias, k: layer(bp, x, bias, key=k), bp, x, shared,
                                   constants=(site_key(key, 1, i),), remat=remat)
        hidden.append(x)
        attns.append(weights)
    last = x if cfg.use_mean_pooling else layer_norm(p["ln_f"], x, cfg.layer_norm_eps)
    return {"last_hidden_state": last, "hidden_states": tuple(hidden), "attentions": tuple(attns)}


def hf_rules(cfg: BeitConfig) -> list[Rule]:
    """BEiT: no key bias, layer scale (lambda_1/2), relative bias tables per layer and/or shared;
    absolute positions and the final norm only when the config has them."""
    enc = vit.ENC
    rules = vit.embedding_rules() + vit.layer_rules(frozenset(vit.LINEARS) - {"attention.attention.key"})
    table = "relative_position_bias.relative_position_bias_table"
    if cfg.use_absolute_position_embeddings:
        rules.append(vit.POSITIONS_RULE)
    if cfg.use_relative_position_bias:
        rules.append(Rule(f"{enc}attention.attention.{table}", ("encoder.blocks.{i}.rel_bias",)))
    if cfg.use_shared_relative_position_bias:
        rules.append(Rule(f"encoder.encoder.{table}", ("encoder.rel_bias",)))
    if cfg.layer_scale_init_value > 0:
        rules += [Rule(f"{enc}lambda_1", ("encoder.blocks.{i}.ls1",)), Rule(f"{enc}lambda_2", ("encoder.blocks.{i}.ls2",))]
    return rules if cfg.use_mean_pooling else rules + vit.FINAL_NORM


def placeholders(cfg: BeitConfig, pooler_size: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """BeitModel's mean-pooling norm (pooler output only), written as its initial values' shapes."""
    d = cfg.hidden_size
    return [(f"encoder.pooler.layernorm.{a}", (d,)) for a in ("weight", "bias")] if cfg.use_mean_pooling else []


def to_json(cfg: BeitConfig) -> dict:
    d = config_json(cfg)
    d.pop("qkv_bias")  # not a BEiT option (its key projection never has a bias)
    return d


FAMILY = EncoderFamily(
    model_type="beit", config_class=BeitConfig, parse=parse, params=params, apply=apply, hf_rules=hf_rules,
    layers_field="num_hidden_layers", special_tokens=1, hf_shapes=vit.hf_shapes,
    ignored=(r"^encoder\.pooler\.layernorm\.(weight|bias)$",  # the mean-pooling norm (pooler output only)
             r"^encoder\.encoder\.(layer\.\d+\.attention\.attention\.)?relative_position_bias\."
             r"relative_position_index$"),
    placeholders=placeholders, to_json=to_json,
    standalone=(("classifier.", None), ("pooler.", None), ("beit.pooler.", None), ("beit.", "encoder."),
                ("", "encoder.")))
