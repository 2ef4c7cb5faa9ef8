"""The ViT image encoder: patchify, [CLS] + position embeddings, pre-norm blocks, final norm.

Parameter tree (``params``)::

    patch  {"w": [D, C*P*P], "b": [D]}    the stride-P convolution as one matmul over patches
    cls    [D]
    pos    [1 + N, D]                       N = patches at the configured image size
    blocks [ {ln1, attn{q,k,v,o}, ln2, mlp{fc, out}} ] * L
    ln_f   {"scale": [D], "bias": [D]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .. import validate as v
from ..attention import attention
from ..config_fields import ACTIVATION_NAMES, parse_fields, set_field
from ..errors import ConfigError
from ..hf_rules import Rule, linear_rules, norm_rules
from ..layers import activation, dense, dropout, layer_norm, layer_outputs, merge_heads, site_key, split_heads
from ..param_spec import EMBED, HEADS, MLP, PATCH, POSITIONS, Param, dense as dense_param, norm
from .family import EncoderFamily


@dataclass(frozen=True)
class ViTConfig:
    """transformers' ViTConfig fields that change the math (defaults: ViT-B/16 at 224)."""
    hidden_size: int = 768
    """Width D_enc of the encoder's tokens."""
    num_hidden_layers: int = 12
    """Transformer layers L_enc."""
    num_attention_heads: int = 12
    """Attention heads H per layer."""
    head_dim: int | None = None
    """Width K of one head; None (the default) means ``hidden_size // num_attention_heads``."""
    intermediate_size: int = 3072
    """Width of the MLP's hidden layer."""
    hidden_act: str = "gelu"
    """The MLP's activation, by transformers' ``ACT2FN`` name."""
    layer_norm_eps: float = 1e-12
    """Epsilon of every layer norm."""
    image_size: tuple[int, int] = (224, 224)
    """(height, width) in pixels of the images the position table was trained for; an int means a square."""
    patch_size: tuple[int, int] = (16, 16)
    """(height, width) of a patch; an int means a square. S = patches + 1 ([CLS]) tokens."""
    num_channels: int = 3
    """Channels C of the input pixels."""
    qkv_bias: bool = True
    """Whether the query, key and value projections have biases."""
    hidden_dropout_prob: float = 0.0
    """Dropout after the embeddings, attention output and MLP (only with a ``key``)."""
    attention_probs_dropout_prob: float = 0.0
    """Dropout on the attention weights (only with a ``key``)."""
    initializer_range: float = 0.02
    """Standard deviation of ``init_params``' truncated-normal draws."""
    model_type: str = "vit"
    """transformers' model_type: "vit" ("deit", "beit" for the subclasses)."""

    def __post_init__(self):
        w = "encoder"
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_channels"):
            v.positive_int(getattr(self, name), f"{w}.{name}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(f"{w}.hidden_size={self.hidden_size} is not a multiple of "
                                  f"num_attention_heads={self.num_attention_heads}")
            set_field(self, "head_dim", self.hidden_size // self.num_attention_heads)
        v.positive_int(self.head_dim, f"{w}.head_dim")
        v.one_of(self.hidden_act, f"{w}.hidden_act", ACTIVATION_NAMES)
        set_field(self, "layer_norm_eps", v.number(self.layer_norm_eps, f"{w}.layer_norm_eps", low=0.0, low_open=True))
        set_field(self, "image_size", v.pair(self.image_size, f"{w}.image_size"))
        set_field(self, "patch_size", v.pair(self.patch_size, f"{w}.patch_size"))
        if any(p > s for p, s in zip(self.patch_size, self.image_size)):
            raise ConfigError(f"{w}.patch_size={self.patch_size} is larger than image_size={self.image_size}")
        v.flag(self.qkv_bias, f"{w}.qkv_bias")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            set_field(self, name, v.probability(getattr(self, name), f"{w}.{name}"))
        set_field(self, "initializer_range", v.number(self.initializer_range, f"{w}.initializer_range", low=0.0))

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along height and width at the configured image size."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


INERT = frozenset({"encoder_stride", "pooler_output_size", "pooler_act"})


def parse(d: Mapping, where: str = "encoder", cls=ViTConfig, inert: frozenset = INERT) -> ViTConfig:
    v.one_of(d.get("pooler_act", "tanh"), f"{where}.pooler_act", ACTIVATION_NAMES)  # unused, still checked
    return parse_fields(cls, d, where, inert)


def layer_params(cfg: ViTConfig, qv_bias: bool, key_bias: bool) -> dict:
    """One pre-norm layer: attention (query/value and key biases as told) and the MLP."""
    d, hk, f, std = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.intermediate_size, cfg.initializer_range
    attn = {n: dense_param(hk, d, (HEADS, EMBED), std, bias) for n, bias in
            (("q", qv_bias), ("k", key_bias), ("v", qv_bias))}
    attn["o"] = dense_param(d, hk, (EMBED, HEADS), std)
    return {"ln1": norm(d), "attn": attn, "ln2": norm(d),
            "mlp": {"fc": dense_param(f, d, (MLP, EMBED), std), "out": dense_param(d, f, (EMBED, MLP), std)}}


def patch_params(cfg: ViTConfig) -> dict:
    """The patch convolution as a [D, C*P*P] dense layer."""
    patch_in = cfg.num_channels * cfg.patch_size[0] * cfg.patch_size[1]
    return dense_param(cfg.hidden_size, patch_in, (EMBED, PATCH), cfg.initializer_range)


def params(cfg: ViTConfig, special: int = 1) -> dict:
    """ViT's description; ``special`` leading tokens share the position table with the patches."""
    d, std = cfg.hidden_size, cfg.initializer_range
    return {
        "patch": patch_params(cfg),
        "cls": Param((d,), (EMBED,), "truncated", std),
        "pos": Param((special + cfg.num_patches, d), (POSITIONS, EMBED), "truncated", std),
        "blocks": [layer_params(cfg, cfg.qkv_bias, cfg.qkv_bias)] * cfg.num_hidden_layers,
        "ln_f": norm(d),
    }


def patchify(pixels: jax.Array, patch: tuple[int, int]) -> jax.Array:
    """[B,C,H,W] -> [B, (H/P)*(W/P), C*P*P] in the (C, P, P) order of a Conv2d kernel.
    Trailing rows/columns that do not fill a patch are dropped, as a stride-P conv does."""
    b, c, h, w = pixels.shape
    gh, gw = h // patch[0], w // patch[1]
    x = pixels[:, :, : gh * patch[0], : gw * patch[1]]
    x = x.reshape(b, c, gh, patch[0], gw, patch[1]).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, gh * gw, c * patch[0] * patch[1])


def _cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """PyTorch's bicubic convolution coefficients (Keys, a = -0.75) for the 4 taps around t."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] matrix of torch's bicubic resize (align_corners=False, edge-clamped taps)."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = scale * (i + 0.5) - 0.5  # no clamp at 0: torch does not clamp for cubic
        base = int(np.floor(src))
        for tap, wgt in zip(range(base - 1, base + 3), _cubic_weights(src - base)):
            m[i, min(max(tap, 0), n_in - 1)] += wgt
    return m.astype(np.float32)


def position_embeddings(p: dict, cfg: ViTConfig, height: int, width: int, interpolate: bool, special: int = 1):
    """[special+N', D] position table for an image of this size (bicubic-resized when asked);
    the first ``special`` rows (class and distillation tokens) are never resized."""
    gh, gw = height // cfg.patch_size[0], width // cfg.patch_size[1]
    if not interpolate:
        if (height, width) != cfg.image_size:
            raise ValueError(f"Input image size ({height}*{width}) doesn't match model "
                             f"({cfg.image_size[0]}*{cfg.image_size[1]}); pass "
                             "interpolate_pos_encoding=True to resize the position embeddings")
        return p["pos"]
    if gh * gw == cfg.num_patches and height == width:
        return p["pos"]  # transformers skips the resize in exactly this case
    oh, ow = cfg.grid
    table = p["pos"][special:].reshape(oh, ow, -1).astype(jnp.float32)
    rows, cols = jnp.asarray(bicubic_matrix(oh, gh)), jnp.asarray(bicubic_matrix(ow, gw))
    # Bicubic resize is separable: rows, then columns.  [oh,ow,D] -> [gh,gw,D]
    resized = jnp.einsum("yh,hwd,xw->yxd", rows, table, cols, precision="highest")
    resized = resized.reshape(gh * gw, -1).astype(p["pos"].dtype)
    return jnp.concatenate([p["pos"][:special], resized], axis=0)


def patch_tokens(p: dict, pixels: jax.Array, cfg: ViTConfig, special: list[jax.Array], dtype) -> jax.Array:
    """[B,C,H,W] -> [B, len(special) + N, D]: the ``special`` token vectors ([D] each: [CLS], DeiT's
    distillation token), then each patch through the stride-P convolution (one matmul). Positions
    are the caller's (ViT, DeiT and BEiT add them differently)."""
    if pixels.ndim != 4:
        raise ValueError(f"pixels must be [B,C,H,W], got shape {pixels.shape}")
    b, c = pixels.shape[:2]
    if c != cfg.num_channels:
        raise ValueError("Make sure that the channel dimension of the pixel values match with the one set "
                         f"in the configuration. Expected {cfg.num_channels} but got {c}.")
    x = dense(p["patch"], patchify(pixels, cfg.patch_size), dtype)  # [B,N,D]
    tokens = jnp.broadcast_to(jnp.stack(special).astype(dtype), (b, len(special), cfg.hidden_size))
    return jnp.concatenate([tokens, x], axis=1)


def embed(p: dict, pixels: jax.Array, cfg: ViTConfig, *, interpolate_pos_encoding: bool, dtype,
          key=None) -> jax.Array:
    """[B,C,H,W] -> [B,1+N,D]"""
    x = patch_tokens(p, pixels, cfg, [p["cls"]], dtype)
    pos = position_embeddings(p, cfg, *pixels.shape[2:], interpolate_pos_encoding)
    return dropout(x + pos.astype(dtype), cfg.hidden_dropout_prob, key)


def block(p: dict, x: jax.Array, cfg: ViTConfig, dtype, key=None):
    """One pre-norm ViT layer. [B,S,D] -> ([B,S,D], attention weights [B,H,S,S])"""
    h = layer_norm(p["ln1"], x, cfg.layer_norm_eps)
    heads = cfg.num_attention_heads
    q, k, v = (split_heads(dense(p["attn"][n], h, dtype), heads) for n in "qkv")
    out, weights = attention(q, k, v, None, cfg.head_dim ** -0.5,
                             dropout_rate=cfg.attention_probs_dropout_prob, key=site_key(key, 0))
    x = x + dropout(dense(p["attn"]["o"], merge_heads(out), dtype), cfg.hidden_dropout_prob, site_key(key, 1))
    h = layer_norm(p["ln2"], x, cfg.layer_norm_eps)
    h = dense(p["mlp"]["out"], activation(cfg.hidden_act, dense(p["mlp"]["fc"], h, dtype)), dtype)
    return x + dropout(h, cfg.hidden_dropout_prob, site_key(key, 2)), weights


def apply(p: dict, pixels: jax.Array, cfg: ViTConfig, *, interpolate_pos_encoding: bool = False,
           dtype=jnp.float32, key=None, remat: bool = False) -> dict:
    """Returns {"last_hidden_state": [B,S,D] (after the final norm),
    "hidden_states": embeddings + each layer's output (before the final norm),
    "attentions": each layer's [B,H,S,S]}.
    ``remat`` recomputes each layer's activations in the backward pass (layers.checkpointed) instead
    of storing them: same outputs, less memory for training."""
    x = embed(p, pixels, cfg, interpolate_pos_encoding=interpolate_pos_encoding, dtype=dtype,
              key=site_key(key, 0))
    return encode_tokens(p, x, cfg, dtype=dtype, key=key, remat=remat)


def encode_tokens(p: dict, x: jax.Array, cfg: ViTConfig, *, dtype, key=None, remat: bool = False) -> dict:
    """The ViT layers and final norm over embedded tokens x [B,S,D] (ViT's or DeiT's); ``apply``'s outputs."""
    hidden, attns = [x], []
    for i, bp in enumerate(p["blocks"]):
        x, weights = layer_outputs(lambda bp, x, k: block(bp, x, cfg, dtype, key=k), bp, x,
                                   constants=(site_key(key, 1, i),), remat=remat)
        hidden.append(x)
        attns.append(weights)
    last = layer_norm(p["ln_f"], x, cfg.layer_norm_eps)
    return {"last_hidden_state": last, "hidden_states": tuple(hidden), "attentions": tuple(attns)}


# ---- Hugging Face names ----

ENC = "encoder.encoder.layer.{i}."
LINEARS = {"attention.attention.query": "attn.q", "attention.attention.key": "attn.k",
           "attention.attention.value": "attn.v", "attention.output.dense": "attn.o",
           "intermediate.dense": "mlp.fc", "output.dense": "mlp.out"}
FINAL_NORM = norm_rules("encoder.layernorm", "encoder.ln_f")
POSITIONS_RULE = Rule("encoder.embeddings.position_embeddings", ("encoder.pos",), "reshape")


def layer_rules(biased: frozenset | None = None) -> list[Rule]:
    """The per-layer rules ViT, DeiT and BEiT share; ``biased`` limits which linears have a bias."""
    rules = []
    for hf, ours in LINEARS.items():
        rules += linear_rules(f"{ENC}{hf}", f"encoder.blocks.{{i}}.{ours}", bias=biased is None or hf in biased)
    return rules + norm_rules(f"{ENC}layernorm_before", "encoder.blocks.{i}.ln1") + \
        norm_rules(f"{ENC}layernorm_after", "encoder.blocks.{i}.ln2")


def embedding_rules() -> list[Rule]:
    return [Rule("encoder.embeddings.cls_token", ("encoder.cls",), "reshape"),
            Rule("encoder.embeddings.patch_embeddings.projection.weight", ("encoder.patch.w",), "reshape"),
            Rule("encoder.embeddings.patch_embeddings.projection.bias", ("encoder.patch.b",))]


def hf_rules(cfg: ViTConfig) -> list[Rule]:
    return embedding_rules() + [POSITIONS_RULE] + layer_rules() + FINAL_NORM


def hf_shapes(cfg: ViTConfig, special: int = 1) -> dict[str, tuple]:
    """The HF shapes of the "reshape" tensors: cls [1,1,D], positions [1,special+N,D], the patch
    conv [D,C,P,P] (our params store them flattened)."""
    d = cfg.hidden_size
    return {"encoder.embeddings.cls_token": (1, 1, d),
            "encoder.embeddings.distillation_token": (1, 1, d),
            "encoder.embeddings.position_embeddings": (1, special + cfg.num_patches, d),
            "encoder.embeddings.patch_embeddings.projection.weight": (d, cfg.num_channels, *cfg.patch_size)}


def placeholders(cfg: ViTConfig, pooler_size: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """The pooler ViTModel builds but VisionEncoderDecoder never runs, written as zeros."""
    d = cfg.hidden_size
    return [("encoder.pooler.dense.weight", (pooler_size or d, d)), ("encoder.pooler.dense.bias", (pooler_size or d,))]


POOLER = r"^encoder\.pooler\.dense\.(weight|bias)$"
PROCESSORS = frozenset({"ViTImageProcessor", "ViTImageProcessorPil", "ViTImageProcessorFast", "ViTFeatureExtractor"})

FAMILY = EncoderFamily(
    model_type="vit", config_class=ViTConfig, parse=parse, params=params, apply=apply, hf_rules=hf_rules,
    layers_field="num_hidden_layers", special_tokens=1, hf_shapes=hf_shapes, ignored=(POOLER,),
    placeholders=placeholders,
    # ViTModel ("embeddings.*") or ViTForImageClassification ("vit.*" plus a classifier we drop).
    standalone=(("classifier.", None), ("vit.", "encoder."), ("", "encoder.")),
    image_processors=PROCESSORS)
