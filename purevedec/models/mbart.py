"""The mBART and BART text decoders (Donut's and Nougat's), with cross-attention to the image.

Parameter tree (``param_shapes``)::

    embed    [V, D]          token embeddings (times sqrt(D) with scale_embedding); the output
                             projection too when tie_word_embeddings
    pos      [Tmax + 2, D]   learned positions (BART's offset of 2: position p reads row p + 2)
    ln_embed {"scale", "bias"}  the norm after the embeddings (always present in both)
    blocks   [ {attn{q,k,v,o}, ln1, cross{q,k,v,o}, ln_cross, mlp{fc, out}, ln2} ] * L
    ln_f     {"scale", "bias"}  mBART only: the decoder's final norm
    lm_head  [V, D]          the output projection (no bias) when not tied

Both are TrOCR's decoder with learned positions and the embedding norm (BART is exactly that:
post-norm layers, no final norm), so embedding, cross-attention K/V, the output projection and
the cache buffers are TrOCR's functions. mBART differs in its layers, which are pre-norm
(x = x + sublayer(norm(x))), and in the final norm after the last one. Every norm uses
nn.LayerNorm's default eps, 1e-5. Cross-attention keys/values are [D, D]: transformers' mBART and
BART attention projects the encoder states from width D, so the model needs a projection
(``enc_to_dec_proj``) whenever the encoder's width differs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

import jax
import jax.numpy as jnp

from .. import trocr
from ..attention import attention
from ..config import TrOCRConfig, _warn_unknown
from ..errors import ConfigError
from ..layers import (activation, causal_mask, dense, dropout, layer_norm, layer_outputs, merge_heads,
                      norm_shape, site_key, split_heads)
from ..trocr import LAYER_NORM_EPS, cross_attention, embed, init_self_cache, layer_cross_kv, lm_head  # noqa: F401


@dataclass(frozen=True)
class MBartConfig(TrOCRConfig):
    """transformers' MBartConfig / BartConfig decoder fields (defaults: mbart-large's decoder).
    TrOCR's fields with learned positions and the embedding norm fixed on; ``model_type`` picks
    mBART's pre-norm layers and final norm or BART's post-norm layers."""
    max_position_embeddings: int = 1024
    model_type: str = "mbart"

    def __post_init__(self):
        super().__post_init__()
        w = "decoder"
        if self.model_type not in ("mbart", "bart"):
            raise ConfigError(f"{w}.model_type={self.model_type!r:.40} is not an mBART/BART decoder")
        if not (self.use_learned_position_embeddings and self.layernorm_embedding):
            raise ConfigError(f"{w}: {self.model_type} always has learned positions and an embedding norm "
                              "(use_learned_position_embeddings and layernorm_embedding are TrOCR options)")
        if self.cross_attention_hidden_size not in (None, self.d_model):
            raise ConfigError(f"{w}.cross_attention_hidden_size={self.cross_attention_hidden_size} differs from "
                              f"d_model={self.d_model}: {self.model_type}'s cross-attention only reads states "
                              "of width d_model (transformers cannot run it either)")

    @property
    def pre_norm(self) -> bool:
        """mBART normalises each sublayer's input and the last layer's output; BART each residual sum."""
        return self.model_type == "mbart"


# Encoder-side and task-head keys of an (m)BART config that a decoder never reads.
_INERT = frozenset({"encoder_layers", "encoder_ffn_dim", "encoder_attention_heads", "encoder_layerdrop",
                    "classifier_dropout", "num_hidden_layers", "num_attention_heads", "add_bias_logits",
                    "add_final_layer_norm", "normalize_before", "normalize_embedding", "static_position_embeddings",
                    "extra_pos_embeddings", "gradient_checkpointing"})


def parse_mbart(d: Mapping, where: str = "decoder") -> MBartConfig:
    """An ``mbart`` / ``bart`` decoder config dict -> MBartConfig (``hidden_size`` is d_model's alias)."""
    d = dict(d)
    if "hidden_size" in d:
        if "d_model" in d and d["d_model"] != d["hidden_size"]:
            raise ConfigError(f"{where}: hidden_size={d['hidden_size']!r:.40} contradicts d_model={d['d_model']!r:.40}")
        d["d_model"] = d.pop("hidden_size")
    names = {f.name for f in dataclasses.fields(MBartConfig)} - {"use_learned_position_embeddings", "layernorm_embedding"}
    _warn_unknown(d, frozenset(names) | _INERT, where)
    return MBartConfig(**{k: val for k, val in d.items() if k in names})


def param_shapes(cfg: MBartConfig) -> dict:
    shapes = trocr.param_shapes(cfg)
    if cfg.pre_norm:
        shapes["ln_f"] = norm_shape(cfg.d_model)
    return shapes


def pre_norm_block(bp: dict, x: jax.Array, kv_cross, self_mask, cfg: MBartConfig, dtype, *, cache=None, pos=None,
                   key=None):
    """One pre-norm mBART layer: x = x + sublayer(norm(x)) for self-attention, cross-attention and the
    MLP. Arguments and results as trocr.block."""
    heads = cfg.decoder_attention_heads
    h = layer_norm(bp["ln1"], x, LAYER_NORM_EPS)
    q, k, v = (split_heads(dense(bp["attn"][n], h, dtype), heads) for n in ("q", "k", "v"))
    if cache is not None:
        cache = {n: jax.lax.dynamic_update_slice(cache[n], t.astype(cache[n].dtype), (0, 0, pos, 0))
                 for n, t in (("k", k), ("v", v))}
        k, v = cache["k"], cache["v"]
    out, self_w = attention(q, k, v, self_mask, cfg.head_dim ** -0.5, dropout_rate=cfg.attention_dropout,
                            key=site_key(key, 0))
    x = x + dropout(dense(bp["attn"]["o"], merge_heads(out), dtype), cfg.dropout, site_key(key, 1))
    out, cross_w = cross_attention(bp, layer_norm(bp["ln_cross"], x, LAYER_NORM_EPS), kv_cross, cfg, dtype,
                                   key=site_key(key, 2))
    x = x + dropout(out, cfg.dropout, site_key(key, 3))
    h = activation(cfg.activation_function, dense(bp["mlp"]["fc"], layer_norm(bp["ln2"], x, LAYER_NORM_EPS), dtype))
    h = dense(bp["mlp"]["out"], dropout(h, cfg.activation_dropout, site_key(key, 4)), dtype)
    return x + dropout(h, cfg.dropout, site_key(key, 5)), self_w, cross_w, cache


def block(bp: dict, x: jax.Array, kv_cross, self_mask, cfg: MBartConfig, dtype, *, cache=None, pos=None, key=None):
    layer = pre_norm_block if cfg.pre_norm else trocr.block
    return layer(bp, x, kv_cross, self_mask, cfg, dtype, cache=cache, pos=pos, key=key)


def final_norm(p: dict, x: jax.Array) -> jax.Array:
    return layer_norm(p["ln_f"], x, LAYER_NORM_EPS) if "ln_f" in p else x


def apply(p: dict, ids: jax.Array, kv_cross: list, cfg: MBartConfig, *, attention_mask=None,
          position_ids=None, dtype=jnp.float32, key=None, remat: bool = False) -> dict:
    """Teacher-forced decoder pass, as trocr.apply; the last hidden state is after mBART's final norm.
    Positions are always 0..T-1 (transformers' mBART/BART decoders take no position ids from
    VisionEncoderDecoder), so ``position_ids`` is refused rather than ignored."""
    if position_ids is not None:
        raise ValueError(f"position_ids are not accepted by an {cfg.model_type} decoder: it numbers positions "
                         "0..T-1 itself")
    b, t = ids.shape
    x = embed(p, ids, 0, cfg, dtype, key=site_key(key, 0))
    mask = causal_mask(t, attention_mask, b)
    hidden, self_ws, cross_ws = [x], [], []
    for i, bp in enumerate(p["blocks"]):
        y, self_w, cross_w, _ = layer_outputs(lambda bp, x, kv, mask, k: block(bp, x, kv, mask, cfg, dtype, key=k),
                                              bp, x, kv_cross[i], constants=(mask, site_key(key, 1, i)), remat=remat,
                                              side_outputs=3)
        x = jnp.where(trocr._layer_dropped(cfg, site_key(key, 2, i)), x, y)
        hidden.append(x)
        self_ws.append(self_w)
        cross_ws.append(cross_w)
    x = final_norm(p, x)
    hidden[-1] = x  # transformers reports the last layer's output after the final norm
    return {"logits": lm_head(p, x, cfg, dtype), "hidden_states": tuple(hidden), "attentions": tuple(self_ws),
            "cross_attentions": tuple(cross_ws)}


def apply_cached(p: dict, cache: dict, ids: jax.Array, cfg: MBartConfig, *, attention_mask=None,
                 shifted: bool = False, dtype=jnp.float32):
    """Decode ``ids`` [R,t] after the ``cache["pos"]`` tokens already cached, as trocr.apply_cached
    (positions continue from the cache length). Returns (logits [R,t,V], new cache, cross weights)."""
    r, t = ids.shape
    pos = cache["pos"]
    max_len = cache["mask"].shape[1]
    valid = jnp.ones((r, t), bool) if attention_mask is None else attention_mask != 0
    key_mask = jax.lax.dynamic_update_slice(cache["mask"], valid, (0, pos))  # [R,Tmax]
    causal = jnp.arange(max_len)[None, :] <= (pos + jnp.arange(t))[:, None]  # [t,Tmax]
    mask = causal[None, None] & key_mask[:, None, None, :]  # [R,1,t,Tmax]
    x = embed(p, ids, pos, cfg, dtype)
    new_self, cross_ws = [], []
    for i, bp in enumerate(p["blocks"]):
        x, _, cross_w, layer = block(bp, x, cache["cross"][i], mask, cfg, dtype, cache=cache["self"][i], pos=pos)
        new_self.append(layer)
        cross_ws.append(cross_w)
    logits = jnp.where(pos + t <= max_len, lm_head(p, final_norm(p, x), cfg, dtype), jnp.nan)
    return logits, {**cache, "self": new_self, "mask": key_mask, "pos": pos + t}, cross_ws


_LINEARS = {f"{hf}_attn.{p}_proj": f"{ours}.{q}" for hf, ours in (("self", "attn"), ("encoder", "cross"))
            for p, q in (("q", "q"), ("k", "k"), ("v", "v"), ("out", "o"))}
_LINEARS.update({"fc1": "mlp.fc", "fc2": "mlp.out"})
_NORMS = {"self_attn_layer_norm": "ln1", "encoder_attn_layer_norm": "ln_cross", "final_layer_norm": "ln2"}
_NORM_LEAVES = {"weight": "scale", "bias": "bias"}


def tensor_names(cfg: MBartConfig) -> list[tuple[str, str]]:
    """Every saved tensor of an (m)BART causal LM as (HF name under the decoder, our path under the
    decoder); all are plain copies (PyTorch Linear layouts). A tied LM head has no tensor of its own."""
    top = "model.decoder."
    names = [(f"{top}embed_tokens.weight", "embed"), (f"{top}embed_positions.weight", "pos")]
    names += [(f"{top}layernorm_embedding.{a}", f"ln_embed.{b}") for a, b in _NORM_LEAVES.items()]
    for i in range(cfg.decoder_layers):
        for hf, ours in _LINEARS.items():
            names += [(f"{top}layers.{i}.{hf}.weight", f"blocks.{i}.{ours}.w"),
                      (f"{top}layers.{i}.{hf}.bias", f"blocks.{i}.{ours}.b")]
        for hf, ours in _NORMS.items():
            names += [(f"{top}layers.{i}.{hf}.{a}", f"blocks.{i}.{ours}.{b}") for a, b in _NORM_LEAVES.items()]
    if cfg.pre_norm:
        names += [(f"{top}layer_norm.{a}", f"ln_f.{b}") for a, b in _NORM_LEAVES.items()]
    if not cfg.tie_word_embeddings:
        names.append(("lm_head.weight", "lm_head"))
    return names
