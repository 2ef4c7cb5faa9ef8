"""The TrOCR text decoder (fairseq/BART style) with cross-attention to the image.

Parameter tree (``params``)::

    embed    [V, D]          token embeddings; also the output projection when tie_word_embeddings
    pos      [Tmax + 2, D]   learned positions only (HF's offset of 2: position p reads row p + 2)
    ln_embed {"scale", "bias"}  only with layernorm_embedding
    blocks   [ {attn{q,k,v,o}, ln1, cross{q,k,v,o}, ln_cross, mlp{fc, out}, ln2} ] * L
    lm_head  [V, D]          the output projection (no bias) when not tied

Unlike GPT-2 the blocks are post-norm (residual add, then norm) and there is no final norm.
Cross-attention keys/values read the encoder width C (``cross_attention_hidden_size``), so
``cross.k``/``cross.v`` are [D, C]. With ``use_learned_position_embeddings: false`` positions are
fairseq's sinusoids, computed here rather than stored (transformers does not save them either):
sin then cos halves, numbered from ``pad_token_id + 1``, and pad tokens take the all-zero row
``pad_token_id``. Every layer norm uses nn.LayerNorm's default eps, 1e-5 (TrOCR sets none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .. import validate as v
from ..attention import shared_kv_attention
from ..config_fields import ACTIVATION_NAMES, parse_fields, set_field
from ..decoder_cache import DecoderCache, advance, attend_self, guard_overflow, step_mask, valid_tokens
from ..errors import ConfigError
from ..hf_rules import Rule, linear_rules, norm_rules
from ..layers import (activation, causal_mask, dense, dropout, layer_norm, layer_outputs, merge_heads, rows_product,
                      site_key, split_heads)
from ..param_spec import EMBED, HEADS, MLP, POSITIONS, VOCAB, Param, dense as dense_param, norm
from .family import DecoderFamily

LAYER_NORM_EPS = 1e-5
LEARNED_OFFSET = 2  # BART's learned position table starts two rows in


@dataclass(frozen=True)
class TrOCRConfig:
    """transformers' TrOCRConfig fields that change the math (defaults: trocr-base's decoder).

    The generic names the rest of the package reads (``n_embd``, ``n_layer``, ``n_head``,
    ``n_positions``, ``initializer_range``) are properties over TrOCR's own."""
    vocab_size: int = 50265
    """Vocabulary size V."""
    d_model: int = 1024
    """Width D of the decoder."""
    decoder_layers: int = 12
    """Transformer layers L."""
    decoder_attention_heads: int = 16
    """Attention heads H per layer."""
    decoder_ffn_dim: int = 4096
    """Width of the MLP's hidden layer."""
    activation_function: str = "gelu"
    """The MLP's activation, by transformers' ``ACT2FN`` name."""
    max_position_embeddings: int = 512
    """The longest decoder sequence (rows of the position table, plus the offset of learned ones)."""
    dropout: float = 0.1
    """Dropout on the embeddings and residual branches (only with a ``key``)."""
    attention_dropout: float = 0.0
    """Dropout on the attention weights (only with a ``key``)."""
    activation_dropout: float = 0.0
    """Dropout after the MLP's activation (only with a ``key``)."""
    decoder_layerdrop: float = 0.0
    """Probability of skipping a whole layer in training (LayerDrop; only with a ``key``)."""
    init_std: float = 0.02
    """Standard deviation of ``init_params``' normal draws."""
    scale_embedding: bool = False
    """Multiply the token embeddings by sqrt(d_model)."""
    use_learned_position_embeddings: bool = True
    """Learned positions (else fairseq's sinusoids, computed, not stored)."""
    layernorm_embedding: bool = True
    """A layer norm after the embeddings."""
    tie_word_embeddings: bool = True
    """The output projection is the token embedding itself (no ``lm_head`` param) when True."""
    cross_attention_hidden_size: int | None = None
    """The encoder width cross-attention K/V read; None means ``d_model`` (a projection joins them)."""
    bos_token_id: int | None = 0
    """Beginning-of-sequence id."""
    eos_token_id: int | tuple[int, ...] | None = 2
    """End-of-sequence id, or a tuple of them."""
    pad_token_id: int | None = 1
    """Padding id (sinusoidal positions count from it)."""
    model_type: str = "trocr"
    """transformers' model_type: "trocr"."""

    def __post_init__(self):
        w = "decoder"
        for name in ("vocab_size", "d_model", "decoder_layers", "decoder_attention_heads", "decoder_ffn_dim",
                     "max_position_embeddings"):
            v.positive_int(getattr(self, name), f"{w}.{name}")
        if self.d_model % self.decoder_attention_heads:
            raise ConfigError(f"{w}.d_model={self.d_model} is not a multiple of "
                              f"decoder_attention_heads={self.decoder_attention_heads}")
        v.one_of(self.activation_function, f"{w}.activation_function", ACTIVATION_NAMES)
        for name in ("dropout", "attention_dropout", "activation_dropout", "decoder_layerdrop"):
            set_field(self, name, v.probability(getattr(self, name), f"{w}.{name}"))
        for name in ("scale_embedding", "use_learned_position_embeddings", "layernorm_embedding",
                     "tie_word_embeddings"):
            v.flag(getattr(self, name), f"{w}.{name}")
        if self.cross_attention_hidden_size is not None:
            v.positive_int(self.cross_attention_hidden_size, f"{w}.cross_attention_hidden_size")
        set_field(self, "init_std", v.number(self.init_std, f"{w}.init_std", low=0.0))
        v.token_id(self.bos_token_id, f"{w}.bos_token_id")
        v.token_id(self.pad_token_id, f"{w}.pad_token_id")
        if not self.use_learned_position_embeddings:
            if self.pad_token_id is None:
                raise ConfigError(f"{w}.use_learned_position_embeddings=false needs pad_token_id: sinusoidal "
                                  "positions are counted from the pad id")
            if self.d_model < 4:
                raise ConfigError(f"{w}.d_model={self.d_model} is too small for sinusoidal positions (needs >= 4)")
        eos = v.token_ids(self.eos_token_id, f"{w}.eos_token_id")
        set_field(self, "eos_token_id", eos[0] if eos and len(eos) == 1 else eos)

    n_embd = property(lambda self: self.d_model)
    n_layer = property(lambda self: self.decoder_layers)
    n_head = property(lambda self: self.decoder_attention_heads)
    n_inner = property(lambda self: self.decoder_ffn_dim)
    initializer_range = property(lambda self: self.init_std)
    n_positions = property(lambda self: self.max_position_embeddings, doc=(
        "Decoder tokens the position embeddings cover. transformers regrows the sinusoidal table "
        "for a longer uncached forward, but its cached decoding indexes past the table and fails, "
        "so both kinds stop here."))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.decoder_attention_heads

    @property
    def cross_width(self) -> int:
        return self.cross_attention_hidden_size or self.d_model


INERT = frozenset({"classifier_dropout"})
# transformers' TrOCRConfig.attribute_map.
ALIASES = {"hidden_size": "d_model", "num_attention_heads": "decoder_attention_heads",
           "num_hidden_layers": "decoder_layers"}


def parse(d: Mapping, where: str = "decoder") -> TrOCRConfig:
    """TrOCR always has cross-attention inside VisionEncoderDecoder (TrOCRForCausalLM sets
    is_decoder), whatever add_cross_attention says."""
    return parse_fields(TrOCRConfig, d, where, INERT, ALIASES)


def params(cfg: TrOCRConfig) -> dict:
    """TrOCR's description: N(0, init_std) kernels and tables, cross K/V reading width C."""
    d, c, f, std = cfg.d_model, cfg.cross_width, cfg.decoder_ffn_dim, cfg.init_std
    block = {"attn": {n: dense_param(d, d, (HEADS, EMBED), std) for n in ("q", "k", "v")}, "ln1": norm(d),
             "cross": {"q": dense_param(d, d, (HEADS, EMBED), std), "k": dense_param(d, c, (HEADS, EMBED), std),
                       "v": dense_param(d, c, (HEADS, EMBED), std)},
             "ln_cross": norm(d),
             "mlp": {"fc": dense_param(f, d, (MLP, EMBED), std), "out": dense_param(d, f, (EMBED, MLP), std)},
             "ln2": norm(d)}
    block["attn"]["o"] = block["cross"]["o"] = dense_param(d, d, (EMBED, HEADS), std)
    tree = {"embed": Param((cfg.vocab_size, d), (VOCAB, EMBED), "normal", std), "blocks": [block] * cfg.decoder_layers}
    if cfg.use_learned_position_embeddings:
        tree["pos"] = Param((cfg.max_position_embeddings + LEARNED_OFFSET, d), (POSITIONS, EMBED), "normal", std)
    if cfg.layernorm_embedding:
        tree["ln_embed"] = norm(d)
    if not cfg.tie_word_embeddings:
        tree["lm_head"] = Param((cfg.vocab_size, d), (VOCAB, EMBED), "normal", std)
    return tree


def sinusoidal_table(rows: int, dim: int, pad: int) -> np.ndarray:
    """fairseq's [rows, dim] sinusoid table: frequencies exp(-i * ln(10^4) / (dim/2 - 1)), the
    sin half then the cos half, a zero column for odd dim, row ``pad`` zero. The angles are
    rounded to float32 as torch computes them, then sin/cos taken in float64."""
    half = dim // 2
    freq = np.exp(np.arange(half, dtype=np.float32) * np.float32(-math.log(10000) / (half - 1)))
    angle = (np.arange(rows, dtype=np.float32)[:, None] * freq[None, :]).astype(np.float64)
    table = np.concatenate([np.sin(angle), np.cos(angle)], axis=1)
    if dim % 2:
        table = np.concatenate([table, np.zeros((rows, 1))], axis=1)
    table[pad] = 0.0
    return table.astype(np.float32)


def position_rows(ids: jax.Array, start, cfg: TrOCRConfig) -> jax.Array:
    """The position-table row of each token of ``ids`` [B,T] that follows ``start`` cached tokens.

    Learned: start + t + 2. Sinusoidal (fairseq's make_positions): pad tokens read row pad; the
    others pad + start + their count of non-pad tokens so far within ``ids`` (transformers counts
    within the new chunk and adds the cache length, so a decode step equals the full pass when
    no pad token precedes it)."""
    b, t = ids.shape
    if cfg.use_learned_position_embeddings:
        return jnp.broadcast_to(start + jnp.arange(t) + LEARNED_OFFSET, (b, t))
    pad = cfg.pad_token_id
    real = (ids != pad).astype(jnp.int32)
    return (jnp.cumsum(real, axis=1) + start) * real + pad


def position_table(p: dict, cfg: TrOCRConfig) -> jax.Array:
    if cfg.use_learned_position_embeddings:
        return p["pos"]
    pad = cfg.pad_token_id
    return jnp.asarray(sinusoidal_table(cfg.max_position_embeddings + pad + 1, cfg.d_model, pad))


def embed(p: dict, ids: jax.Array, start, cfg: TrOCRConfig, dtype, key=None) -> jax.Array:
    """ids [B,T] after ``start`` cached tokens -> [B,T,D]: scaled token embedding + position,
    then the optional embedding norm and dropout. An id or position outside its table (possible
    only under jit) embeds as NaN rather than reading another row."""
    scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
    table = position_table(p, cfg)
    rows = position_rows(ids, start, cfg)
    x = jnp.take(p["embed"], ids, axis=0).astype(dtype) * jnp.asarray(scale, dtype)
    x = x + jnp.take(table, rows, axis=0).astype(dtype)
    valid = (ids >= 0) & (ids < cfg.vocab_size) & (rows < table.shape[0])
    x = jnp.where(valid[..., None], x, jnp.nan)
    if cfg.layernorm_embedding:
        x = layer_norm(p["ln_embed"], x, LAYER_NORM_EPS)
    return dropout(x, cfg.dropout, key)


def layer_cross_kv(bp: dict, enc: jax.Array, cfg: TrOCRConfig, dtype) -> tuple[jax.Array, jax.Array]:
    """One layer's cross-attention keys and values. enc [B,S,C] -> 2 x [B,H,S,K]"""
    return tuple(split_heads(dense(bp["cross"][n], enc, dtype), cfg.decoder_attention_heads) for n in ("k", "v"))


def cross_attention(bp: dict, h: jax.Array, kv, cfg: TrOCRConfig, dtype, key=None):
    """Queries [B*R,T,D] over shared K/V [B,H,S,K] (R rows per image folded into the query axis,
    so K/V are never copied per beam or sample). Returns ([B*R,T,D], weights [B*R,H,T,S])."""
    q = split_heads(dense(bp["cross"]["q"], h, dtype), kv[0].shape[1])  # [B*R,H,T,K]
    out, weights = shared_kv_attention(q, *kv, cfg.head_dim ** -0.5, dropout_rate=cfg.attention_dropout, key=key)
    return dense(bp["cross"]["o"], merge_heads(out), dtype), weights


def block(bp: dict, x: jax.Array, kv_cross, self_mask, cfg: TrOCRConfig, dtype, *, cache=None, pos=None, key=None):
    """One post-norm TrOCR layer: x = norm(x + sublayer(x)) for self-attention, cross-attention
    and the MLP. x [B,T,D]; self_mask bool [B,1,T,U]; ``cache``: this layer's (keys, values), as in gpt2.block.
    Returns (x, self weights [B,H,T,U], cross weights [B,H,T,S], the updated cache or None)."""
    heads = cfg.decoder_attention_heads
    q, k, v = (split_heads(dense(bp["attn"][n], x, dtype), heads) for n in ("q", "k", "v"))
    out, self_w, cache = attend_self(q, k, v, self_mask, cfg.head_dim ** -0.5, cache=cache, pos=pos,
                                     dropout_rate=cfg.attention_dropout, key=site_key(key, 0))
    out = dropout(dense(bp["attn"]["o"], merge_heads(out), dtype), cfg.dropout, site_key(key, 1))
    x = layer_norm(bp["ln1"], x + out, LAYER_NORM_EPS)
    out, cross_w = cross_attention(bp, x, kv_cross, cfg, dtype, key=site_key(key, 2))
    x = layer_norm(bp["ln_cross"], x + dropout(out, cfg.dropout, site_key(key, 3)), LAYER_NORM_EPS)
    h = activation(cfg.activation_function, dense(bp["mlp"]["fc"], x, dtype))
    h = dense(bp["mlp"]["out"], dropout(h, cfg.activation_dropout, site_key(key, 4)), dtype)
    x = layer_norm(bp["ln2"], x + dropout(h, cfg.dropout, site_key(key, 5)), LAYER_NORM_EPS)
    return x, self_w, cross_w, cache


def lm_head(p: dict, h: jax.Array, cfg: TrOCRConfig, dtype) -> jax.Array:
    """[B,T,D] -> float32 logits [B,T,V]: the bias-free output projection (the unscaled token
    embedding itself when tied)."""
    w = p["embed"] if cfg.tie_word_embeddings else p["lm_head"]
    return rows_product(h.astype(dtype), w.astype(dtype))


def _layer_dropped(cfg: TrOCRConfig, key) -> jax.Array | bool:
    """LayerDrop (training only): the whole layer is skipped with probability decoder_layerdrop."""
    if key is None or cfg.decoder_layerdrop == 0.0:
        return False
    return jax.random.bernoulli(key, cfg.decoder_layerdrop)


def apply(p: dict, ids: jax.Array, kv_cross: list, cfg: TrOCRConfig, *, attention_mask=None,
          position_ids=None, dtype=jnp.float32, key=None, remat: bool = False) -> dict:
    """Teacher-forced decoder pass. ids [B,T] -> {"logits": [B,T,V], "hidden_states": the
    embedding output and each layer's output, "attentions", "cross_attentions"}.

    TrOCR numbers positions itself (transformers' TrOCR decoder takes no position ids), so
    ``position_ids`` is refused rather than ignored."""
    if position_ids is not None:
        raise ValueError("position_ids are not accepted by a TrOCR decoder: it numbers positions itself "
                         "(learned: 0..T-1; sinusoidal: counted over the non-pad tokens)")
    hidden, self_ws, cross_ws = layer_stack(p, ids, kv_cross, cfg, block, attention_mask=attention_mask, dtype=dtype,
                                            key=key, remat=remat)
    return {"logits": lm_head(p, hidden[-1], cfg, dtype), "hidden_states": hidden, "attentions": self_ws,
            "cross_attentions": cross_ws}


def layer_stack(p: dict, ids: jax.Array, kv_cross: list, cfg, layer, *, attention_mask, dtype, key, remat: bool):
    """Embeddings, then every ``layer(bp, x, kv, mask, cfg, dtype, key=...)`` with LayerDrop:
    (the embedding output and each layer's output, self weights, cross weights), as tuples.
    Shared by the fairseq-style decoders (TrOCR, mBART/BART), which differ only in their layer."""
    b, t = ids.shape
    x = embed(p, ids, 0, cfg, dtype, key=site_key(key, 0))
    mask = causal_mask(t, attention_mask, b)
    hidden, self_ws, cross_ws = [x], [], []
    for i, bp in enumerate(p["blocks"]):
        y, self_w, cross_w, _ = layer_outputs(lambda bp, x, kv, mask, k: layer(bp, x, kv, mask, cfg, dtype, key=k),
                                              bp, x, kv_cross[i], constants=(mask, site_key(key, 1, i)), remat=remat,
                                              side_outputs=3)
        x = jnp.where(_layer_dropped(cfg, site_key(key, 2, i)), x, y)
        hidden.append(x)
        self_ws.append(self_w)
        cross_ws.append(cross_w)
    return tuple(hidden), tuple(self_ws), tuple(cross_ws)


def apply_cached(p: dict, cache: DecoderCache, ids: jax.Array, cfg: TrOCRConfig, *, attention_mask=None,
                 shifted: bool = False, dtype=jnp.float32):
    """Decode ``ids`` [R,t] after the ``cache.pos`` tokens already cached (the contract of
    ``family.py``'s decoder protocol). Positions continue from the cache length, as transformers
    counts them, whatever ``shifted`` says (it is GPT-2's per-row option; TrOCR rows are not
    re-numbered after left padding). Returns (logits [R,t,V] float32, new cache, cross-attention
    weights per layer)."""
    t = ids.shape[1]
    mask, key_mask = step_mask(cache, valid_tokens(ids, attention_mask))
    x = embed(p, ids, cache.pos, cfg, dtype)
    new_self, cross_ws = [], []
    for i, bp in enumerate(p["blocks"]):
        x, _, cross_w, layer = block(bp, x, cache.cross_kv[i], mask, cfg, dtype, cache=cache.self_kv[i], pos=cache.pos)
        new_self.append(layer)
        cross_ws.append(cross_w)
    return guard_overflow(lm_head(p, x, cfg, dtype), cache, t), advance(cache, new_self, key_mask, t), cross_ws


# ---- Hugging Face names ----

HF = "decoder.model.decoder."
LINEARS = {f"{hf}_attn.{p}_proj": f"{ours}.{q}" for hf, ours in (("self", "attn"), ("encoder", "cross"))
           for p, q in (("q", "q"), ("k", "k"), ("v", "v"), ("out", "o"))}
LINEARS.update({"fc1": "mlp.fc", "fc2": "mlp.out"})
NORMS = {"self_attn_layer_norm": "ln1", "encoder_attn_layer_norm": "ln_cross", "final_layer_norm": "ln2"}


def hf_rules(cfg: TrOCRConfig) -> list[Rule]:
    """TrOCR keeps PyTorch Linear layouts: every tensor is a copy. Sinusoidal positions have no tensor."""
    layer, blk = HF + "layers.{i}.", "decoder.blocks.{i}."
    rules = [Rule(f"{HF}embed_tokens.weight", ("decoder.embed",)),
             Rule("decoder.output_projection.weight", ("decoder.lm_head",))]
    if cfg.use_learned_position_embeddings:
        rules.append(Rule(f"{HF}embed_positions.weight", ("decoder.pos",)))
    if cfg.layernorm_embedding:
        rules += norm_rules(f"{HF}layernorm_embedding", "decoder.ln_embed")
    for hf, ours in LINEARS.items():
        rules += linear_rules(f"{layer}{hf}", f"{blk}{ours}")
    for hf, ours in NORMS.items():
        rules += norm_rules(f"{layer}{hf}", f"{blk}{ours}")
    return rules


FAMILY = DecoderFamily(
    model_type="trocr", config_class=TrOCRConfig, parse=parse, params=params, apply=apply, cross_kv=layer_cross_kv,
    apply_cached=apply_cached, hf_rules=hf_rules, layers_field="decoder_layers", embedding_leaves=("embed", "pos"),
    tied_head="decoder.output_projection.weight",
    ignored=(r"^decoder\.model\.decoder\.embed_positions\._float_tensor$",),  # old TrOCR's sinusoid device marker
    # TrOCRForCausalLM ("model.decoder.*", "output_projection.weight").
    standalone=(("model.decoder.", "decoder.model.decoder."), ("output_projection.", "decoder.output_projection."),
                ("", "decoder.model.decoder.")),
    default_metrics="cer,wer")
