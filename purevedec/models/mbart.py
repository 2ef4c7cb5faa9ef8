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

from dataclasses import dataclass
from typing import Mapping

import jax
import jax.numpy as jnp

from ..config_fields import field_names, fields, warn_unknown
from ..decoder_cache import DecoderCache, advance, attend_self, guard_overflow, step_mask, valid_tokens
from ..errors import ConfigError
from ..hf_rules import Rule, linear_rules, norm_rules
from ..layers import activation, dense, dropout, layer_norm, merge_heads, site_key, split_heads
from ..param_spec import norm
from . import trocr
from .family import DecoderFamily, config_json
from .trocr import LAYER_NORM_EPS, TrOCRConfig, cross_attention, embed, layer_cross_kv, lm_head


@dataclass(frozen=True)
class MBartConfig(TrOCRConfig):
    """transformers' MBartConfig / BartConfig decoder fields (defaults: mbart-large's decoder).
    TrOCR's fields with learned positions and the embedding norm fixed on, ``max_position_embeddings``
    defaulting to 1024; ``model_type`` ("mbart" or "bart") picks mBART's pre-norm layers and final
    norm or BART's post-norm layers."""
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


@dataclass(frozen=True)
class BartConfig(MBartConfig):
    """BART's decoder: MBartConfig's fields, post-norm layers and no final norm (``model_type`` "bart")."""
    model_type: str = "bart"


# Encoder-side and task-head keys of an (m)BART config that a decoder never reads.
_INERT = frozenset({"encoder_layers", "encoder_ffn_dim", "encoder_attention_heads", "encoder_layerdrop",
                    "classifier_dropout", "num_hidden_layers", "num_attention_heads", "add_bias_logits",
                    "add_final_layer_norm", "normalize_before", "normalize_embedding", "static_position_embeddings",
                    "extra_pos_embeddings", "gradient_checkpointing"})


# TrOCR's options that are fixed here: a config.json naming them is not an (m)BART one.
_FIXED = frozenset({"use_learned_position_embeddings", "layernorm_embedding"})


def parse_mbart(d: Mapping, where: str = "decoder") -> MBartConfig:
    """An ``mbart`` / ``bart`` decoder config dict -> MBartConfig (``hidden_size`` is d_model's alias)."""
    fixed = sorted(_FIXED & set(d))
    if fixed:
        raise ConfigError(f"{where}: {fixed} are TrOCR options; an {d.get('model_type')} decoder always has "
                          "learned positions and an embedding norm")
    aliases, cls = {"hidden_size": "d_model"}, BartConfig if d.get("model_type") == "bart" else MBartConfig
    warn_unknown(d, field_names(cls) | _INERT | frozenset(aliases), where)
    return cls(**fields(cls, d, where, aliases))


def params(cfg: MBartConfig) -> dict:
    """TrOCR's description (learned positions, embedding norm) plus mBART's final norm."""
    tree = trocr.params(cfg)
    if cfg.pre_norm:
        tree["ln_f"] = norm(cfg.d_model)
    return tree



def pre_norm_block(bp: dict, x: jax.Array, kv_cross, self_mask, cfg: MBartConfig, dtype, *, cache=None, pos=None,
                   key=None):
    """One pre-norm mBART layer: x = x + sublayer(norm(x)) for self-attention, cross-attention and the
    MLP. Arguments and results as trocr.block."""
    heads = cfg.decoder_attention_heads
    h = layer_norm(bp["ln1"], x, LAYER_NORM_EPS)
    q, k, v = (split_heads(dense(bp["attn"][n], h, dtype), heads) for n in ("q", "k", "v"))
    out, self_w, cache = attend_self(q, k, v, self_mask, cfg.head_dim ** -0.5, cache=cache, pos=pos,
                                     dropout_rate=cfg.attention_dropout, key=site_key(key, 0))
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
    hidden, self_ws, cross_ws = trocr.layer_stack(p, ids, kv_cross, cfg, block, attention_mask=attention_mask,
                                                  dtype=dtype, key=key, remat=remat)
    x = final_norm(p, hidden[-1])
    # transformers reports the last layer's output after the final norm
    return {"logits": lm_head(p, x, cfg, dtype), "hidden_states": (*hidden[:-1], x), "attentions": self_ws,
            "cross_attentions": cross_ws}


def apply_cached(p: dict, cache: DecoderCache, ids: jax.Array, cfg: MBartConfig, *, attention_mask=None,
                 shifted: bool = False, dtype=jnp.float32):
    """Decode ``ids`` [R,t] after the ``cache.pos`` tokens already cached, as trocr.apply_cached
    (positions continue from the cache length). Returns (logits [R,t,V], new cache, cross weights)."""
    t = ids.shape[1]
    mask, key_mask = step_mask(cache, valid_tokens(ids, attention_mask))
    x = embed(p, ids, cache.pos, cfg, dtype)
    new_self, cross_ws = [], []
    for i, bp in enumerate(p["blocks"]):
        x, _, cross_w, layer = block(bp, x, cache.cross_kv[i], mask, cfg, dtype, cache=cache.self_kv[i], pos=cache.pos)
        new_self.append(layer)
        cross_ws.append(cross_w)
    logits = guard_overflow(lm_head(p, final_norm(p, x), cfg, dtype), cache, t)
    return logits, advance(cache, new_self, key_mask, t), cross_ws


HF = "decoder.model.decoder."


def hf_rules(cfg: MBartConfig) -> list[Rule]:
    """(m)BART causal LMs keep PyTorch Linear layouts: every tensor is a copy; a tied head has none."""
    layer, blk = HF + "layers.{i}.", "decoder.blocks.{i}."
    rules = [Rule(f"{HF}embed_tokens.weight", ("decoder.embed",)), Rule(f"{HF}embed_positions.weight", ("decoder.pos",)),
             Rule("decoder.lm_head.weight", ("decoder.lm_head",))]
    rules += norm_rules(f"{HF}layernorm_embedding", "decoder.ln_embed")
    for hf, ours in trocr.LINEARS.items():
        rules += linear_rules(f"{layer}{hf}", f"{blk}{ours}")
    for hf, ours in trocr.NORMS.items():
        rules += norm_rules(f"{layer}{hf}", f"{blk}{ours}")
    return rules + (norm_rules(f"{HF}layer_norm", "decoder.ln_f") if cfg.pre_norm else [])


def to_json(cfg: MBartConfig) -> dict:
    d = config_json(cfg)
    for name in _FIXED:
        d.pop(name)
    return d


def check_cross_width(cross: int, cfg: MBartConfig) -> None:
    if cross != cfg.d_model:
        raise ConfigError(f"decoder.cross_attention_hidden_size={cross} differs from d_model={cfg.d_model}: "
                          f"{cfg.model_type}'s cross-attention only reads states of width d_model")


def _family(config_class: type) -> DecoderFamily:
    return DecoderFamily(
        model_type=config_class.model_type, config_class=config_class, parse=parse_mbart, params=params, apply=apply,
        cross_kv=layer_cross_kv, apply_cached=apply_cached, hf_rules=hf_rules, layers_field="decoder_layers",
        embedding_leaves=("embed", "pos"), tied_head="decoder.lm_head.weight",
        # MBartForCausalLM / BartForCausalLM ("model.decoder.*", "lm_head.weight").
        standalone=(("model.decoder.", "decoder.model.decoder."), ("lm_head.", "decoder.lm_head."),
                    ("", "decoder.model.decoder.")),
        to_json=to_json, check_cross_width=check_cross_width, default_metrics="cer,wer")


FAMILY = _family(MBartConfig)
BART_FAMILY = _family(BartConfig)
