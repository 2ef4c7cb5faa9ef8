"""BERT-style text decoders with cross-attention: ``bert`` (BertLMHeadModel), ``roberta``
(RobertaForCausalLM) and ``bert-generation`` (BertGenerationDecoder), as VisionEncoderDecoder
runs them (kha-white/manga-ocr-base is ViT + a character-level BERT decoder); their configs and
parser are in ``bert_config.py``.

Parameter tree (``params``)::

    embed    [V, D]          token embeddings; also the output projection when tie_word_embeddings
    pos      [P, D]          learned absolute positions (P = max_position_embeddings)
    types    [Y, D]          token-type embeddings; a decoder only ever reads row 0 (not bert-generation)
    ln_embed {"scale", "bias"}
    blocks   [ {attn{q,k,v,o}, ln1, cross{q,k,v,o}, ln_cross, mlp{fc, out}, ln2} ] * L
    head     {"dense", "ln"} the prediction-head transform (not bert-generation)
    bias     [V]             the output projection's bias when tied (HF ties ``decoder.bias`` to it)
    lm_head  {"w": [V, D], "b": [V]}  the output projection when not tied (``bias`` is then unused
                             by transformers too, and kept only so that a saved model round-trips)

Every layer is post-norm (residual add, then norm), every norm uses ``layer_norm_eps``. The
cross-attention's key/value projections read width D (BertCrossAttention's are
Linear(hidden_size, ...)): VisionEncoderDecoder projects a wider or narrower encoder to D.
The head transform is dense -> activation -> norm, the activation being ``hidden_act`` for BERT
and always exact gelu for RoBERTa (RobertaLMHead hard-codes it); bert-generation has none.

Positions: BERT and bert-generation number tokens 0, 1, 2, ... (continuing from the cache).
RoBERTa numbers them as fairseq does: pad tokens read row ``pad_token_id``, the others
``pad_token_id + 1 +`` their count of non-pad tokens in the chunk plus the cached length (so
the table holds P - pad - 1 usable positions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..attention import shared_kv_attention
from ..decoder_cache import DecoderCache, advance, attend_self, guard_overflow, step_mask, token_positions, valid_tokens
from ..hf_rules import Rule, linear_rules, norm_rules
from ..layers import (activation, causal_mask, dense, dropout, layer_norm, layer_outputs, merge_heads, rows_product,
                      site_key, split_heads)
from ..param_spec import EMBED, HEADS, MLP, POSITIONS, VOCAB, Param, dense as dense_param, norm
from .bert_config import CONFIG_CLASSES, BertConfig, parse_bert
from .family import DecoderFamily, config_json


def params(cfg: BertConfig) -> dict:
    """The description: N(0, initializer_range) kernels and tables, zero biases (the vocabulary
    bias included), unit norms, as transformers initialises them."""
    d, f, std = cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range
    attn = {n: dense_param(d, d, (HEADS, EMBED), std) for n in ("q", "k", "v")}
    attn["o"] = dense_param(d, d, (EMBED, HEADS), std)
    block = {"attn": attn, "ln1": norm(d), "cross": dict(attn), "ln_cross": norm(d),
             "mlp": {"fc": dense_param(f, d, (MLP, EMBED), std), "out": dense_param(d, f, (EMBED, MLP), std)},
             "ln2": norm(d)}
    tree = {"embed": Param((cfg.vocab_size, d), (VOCAB, EMBED), "normal", std),
            "pos": Param((cfg.max_position_embeddings, d), (POSITIONS, EMBED), "normal", std),
            "ln_embed": norm(d), "blocks": [block] * cfg.num_hidden_layers,
            "bias": Param((cfg.vocab_size,), (VOCAB,), "zeros")}
    if cfg.type_vocab_size:
        tree["types"] = Param((cfg.type_vocab_size, d), (None, EMBED), "normal", std)
    if cfg.has_head_transform:
        tree["head"] = {"dense": dense_param(d, d, (EMBED, EMBED), std), "ln": norm(d)}
    if not cfg.tie_word_embeddings:
        tree["lm_head"] = dense_param(cfg.vocab_size, d, (VOCAB, EMBED), std)
    return tree


# HF module names inside the decoder: the base model's prefix, and where the output head lives.
_BASE = {"bert": "bert.", "roberta": "roberta.", "bert-generation": "bert."}
_HEAD = {"bert": "cls.predictions.", "roberta": "lm_head.", "bert-generation": "lm_head."}
_TRANSFORM = {"bert": ("transform.dense", "transform.LayerNorm"), "roberta": ("dense", "layer_norm")}
_LAYER_LINEARS = {"attention.self.query": "attn.q", "attention.self.key": "attn.k", "attention.self.value": "attn.v",
                  "attention.output.dense": "attn.o", "crossattention.self.query": "cross.q",
                  "crossattention.self.key": "cross.k", "crossattention.self.value": "cross.v",
                  "crossattention.output.dense": "cross.o", "intermediate.dense": "mlp.fc", "output.dense": "mlp.out"}
_LAYER_NORMS = {"attention.output.LayerNorm": "ln1", "crossattention.output.LayerNorm": "ln_cross",
                "output.LayerNorm": "ln2"}


def hf_rules(cfg: BertConfig) -> list[Rule]:
    """Every tensor is a plain copy (PyTorch Linear layouts). The tied output projection and its
    bias have no rule (``tied_copies``)."""
    base, head = f"decoder.{_BASE[cfg.model_type]}", f"decoder.{_HEAD[cfg.model_type]}"
    emb, layer, blk = f"{base}embeddings.", f"{base}encoder.layer.{{i}}.", "decoder.blocks.{i}."
    rules = [Rule(f"{emb}word_embeddings.weight", ("decoder.embed",)),
             Rule(f"{emb}position_embeddings.weight", ("decoder.pos",)), Rule(f"{head}bias", ("decoder.bias",)),
             *norm_rules(f"{emb}LayerNorm", "decoder.ln_embed")]
    if cfg.type_vocab_size:
        rules.append(Rule(f"{emb}token_type_embeddings.weight", ("decoder.types",)))
    for hf, ours in _LAYER_LINEARS.items():
        rules += linear_rules(f"{layer}{hf}", f"{blk}{ours}")
    for hf, ours in _LAYER_NORMS.items():
        rules += norm_rules(f"{layer}{hf}", f"{blk}{ours}")
    if cfg.has_head_transform:
        dense_name, norm_name = _TRANSFORM[cfg.model_type]
        rules += linear_rules(f"{head}{dense_name}", "decoder.head.dense")
        rules += norm_rules(f"{head}{norm_name}", "decoder.head.ln")
    if not cfg.tie_word_embeddings:
        rules += linear_rules(f"{head}decoder", "decoder.lm_head")
    return rules


def position_rows(ids: jax.Array, start, cfg: BertConfig) -> jax.Array:
    """The position-table row of each token of ``ids`` [B,T] after ``start`` cached tokens
    (``start`` may be [B,1] for per-row counts). BERT: start + t. RoBERTa (transformers'
    create_position_ids_from_input_ids): pad tokens read row pad, the others pad + start + their
    count of non-pad tokens so far in ``ids``."""
    b, t = ids.shape
    if cfg.model_type != "roberta":
        return jnp.broadcast_to(start + jnp.arange(t), (b, t))
    pad = cfg.pad_token_id
    real = (ids != pad).astype(jnp.int32)
    return (jnp.cumsum(real, axis=1) + start) * real + pad


def _padding_row(p_table: jax.Array, rows: jax.Array, pad) -> jax.Array:
    """Rows of a table with padding_idx=pad: torch gives the pad row no gradient, so neither do we."""
    x = jnp.take(p_table, rows, axis=0)
    if pad is None:
        return x
    return jnp.where((rows == pad)[..., None], jax.lax.stop_gradient(x), x)


def embed(p: dict, ids: jax.Array, rows: jax.Array, cfg: BertConfig, dtype, key=None) -> jax.Array:
    """ids, position rows [B,T] -> [B,T,D]: token + token type 0 + position, normed, dropped out.
    An id or position outside its table (possible only under jit) embeds as NaN rather than
    reading another row."""
    pad = cfg.pad_token_id
    x = _padding_row(p["embed"], ids, pad).astype(jnp.float32)
    if cfg.type_vocab_size:
        x = x + p["types"][0].astype(jnp.float32)
    x = x + _padding_row(p["pos"], rows, pad if cfg.model_type == "roberta" else None).astype(jnp.float32)
    valid = (ids >= 0) & (ids < cfg.vocab_size) & (rows >= 0) & (rows < cfg.max_position_embeddings)
    x = jnp.where(valid[..., None], x, jnp.nan)
    x = layer_norm(p["ln_embed"], x, cfg.layer_norm_eps).astype(dtype)
    return dropout(x, cfg.hidden_dropout_prob, key)


def layer_cross_kv(bp: dict, enc: jax.Array, cfg: BertConfig, dtype) -> tuple[jax.Array, jax.Array]:
    """One layer's cross-attention keys and values. enc [B,S,D] -> 2 x [B,H,S,K]"""
    return tuple(split_heads(dense(bp["cross"][n], enc, dtype), cfg.num_attention_heads) for n in ("k", "v"))


def cross_attention(bp: dict, h: jax.Array, kv, cfg: BertConfig, dtype, key=None):
    """Queries [B*R,T,D] over shared K/V [B,H,S,K] (the R rows of an image folded into the
    query axis, so K/V are never copied per beam or sample). Returns ([B*R,T,D], [B*R,H,T,S])."""
    q = split_heads(dense(bp["cross"]["q"], h, dtype), kv[0].shape[1])  # [B*R,H,T,K]
    out, weights = shared_kv_attention(q, *kv, cfg.head_dim ** -0.5, dropout_rate=cfg.attention_probs_dropout_prob,
                                       key=key)
    return dense(bp["cross"]["o"], merge_heads(out), dtype), weights


def block(bp: dict, x: jax.Array, kv_cross, self_mask, cfg: BertConfig, dtype, *, cache=None, pos=None, key=None):
    """One post-norm BertLayer: x = norm(x + dropout(sublayer(x))) for causal self-attention,
    cross-attention and the MLP. x [B,T,D]; self_mask bool [B,1,T,U]; with ``cache``
    (this layer's keys, values [B,H,Tmax,K]) the new K/V are written at ``pos``, queries read the buffer.
    Returns (x, self weights [B,H,T,U], cross weights [B,H,T,S], the updated cache or None)."""
    heads, drop = cfg.num_attention_heads, cfg.hidden_dropout_prob
    q, k, v_ = (split_heads(dense(bp["attn"][n], x, dtype), heads) for n in ("q", "k", "v"))
    out, self_w, cache = attend_self(q, k, v_, self_mask, cfg.head_dim ** -0.5, cache=cache, pos=pos,
                                     dropout_rate=cfg.attention_probs_dropout_prob, key=site_key(key, 0))
    out = dropout(dense(bp["attn"]["o"], merge_heads(out), dtype), drop, site_key(key, 1))
    x = layer_norm(bp["ln1"], x + out, cfg.layer_norm_eps)
    out, cross_w = cross_attention(bp, x, kv_cross, cfg, dtype, key=site_key(key, 2))
    x = layer_norm(bp["ln_cross"], x + dropout(out, drop, site_key(key, 3)), cfg.layer_norm_eps)
    h = dense(bp["mlp"]["out"], activation(cfg.hidden_act, dense(bp["mlp"]["fc"], x, dtype)), dtype)
    x = layer_norm(bp["ln2"], x + dropout(h, drop, site_key(key, 4)), cfg.layer_norm_eps)
    return x, self_w, cross_w, cache


def lm_head(p: dict, h: jax.Array, cfg: BertConfig, dtype) -> jax.Array:
    """[B,T,D] -> float32 logits [B,T,V]: the head transform (dense, activation, norm; RoBERTa's
    activation is always exact gelu), then the output projection: the token embedding and
    ``bias`` when tied, else ``lm_head``'s own weight and bias."""
    if cfg.has_head_transform:
        act = "gelu" if cfg.model_type == "roberta" else cfg.hidden_act
        h = layer_norm(p["head"]["ln"], activation(act, dense(p["head"]["dense"], h, dtype)), cfg.layer_norm_eps)
    w, b = (p["embed"], p["bias"]) if cfg.tie_word_embeddings else (p["lm_head"]["w"], p["lm_head"]["b"])
    return rows_product(h.astype(dtype), w.astype(dtype)) + b.astype(dtype).astype(jnp.float32)


def apply(p: dict, ids: jax.Array, kv_cross: list, cfg: BertConfig, *, attention_mask=None,
          position_ids=None, dtype=jnp.float32, key=None, remat: bool = False) -> dict:
    """Teacher-forced decoder pass. ids [B,T] -> {"logits": [B,T,V], "hidden_states": the
    embedding output and each layer's output, "attentions", "cross_attentions"}.
    ``position_ids`` [B,T] are rows of the position table, as transformers takes them (default:
    ``position_rows``)."""
    b, t = ids.shape
    rows = position_rows(ids, 0, cfg) if position_ids is None else position_ids
    x = embed(p, ids, rows, cfg, dtype, key=site_key(key, 0))
    mask = causal_mask(t, attention_mask, b)
    hidden, self_ws, cross_ws = [x], [], []
    for i, bp in enumerate(p["blocks"]):
        x, self_w, cross_w, _ = layer_outputs(lambda bp, x, kv, mask, k: block(bp, x, kv, mask, cfg, dtype, key=k),
                                              bp, x, kv_cross[i], constants=(mask, site_key(key, 1, i)), remat=remat,
                                              side_outputs=3)
        hidden.append(x)
        self_ws.append(self_w)
        cross_ws.append(cross_w)
    return {"logits": lm_head(p, x, cfg, dtype), "hidden_states": tuple(hidden), "attentions": tuple(self_ws),
            "cross_attentions": tuple(cross_ws)}


def _cached_rows(cache: DecoderCache, ids, valid, cfg: BertConfig, shifted: bool):
    """(position rows [R,t], the new offsets) for ``ids`` after the cached tokens. BERT: per row
    by default (left padding not counted, as GPT-2), buffer indices when ``shifted``. RoBERTa:
    transformers' count over non-pad ids plus the cache length, whatever ``shifted`` says."""
    if cfg.model_type == "roberta":
        return position_rows(ids, cache.pos, cfg), None
    return token_positions(cache, valid, ids.shape[1], shifted)


def apply_cached(p: dict, cache: DecoderCache, ids: jax.Array, cfg: BertConfig, *, attention_mask=None,
                 shifted: bool = False, dtype=jnp.float32):
    """Decode ``ids`` [R,t] after the ``cache.pos`` tokens already cached (the contract of
    ``family.py``'s decoder protocol). Returns (logits [R,t,V] float32, new cache,
    cross-attention weights per layer)."""
    t = ids.shape[1]
    valid = valid_tokens(ids, attention_mask)
    mask, key_mask = step_mask(cache, valid)
    rows, offset = _cached_rows(cache, ids, None if attention_mask is None else valid, cfg, shifted)
    x = embed(p, ids, rows, cfg, dtype)
    new_self, cross_ws = [], []
    for i, bp in enumerate(p["blocks"]):
        x, _, cross_w, layer = block(bp, x, cache.cross_kv[i], mask, cfg, dtype, cache=cache.self_kv[i], pos=cache.pos)
        new_self.append(layer)
        cross_ws.append(cross_w)
    return guard_overflow(lm_head(p, x, cfg, dtype), cache, t), advance(cache, new_self, key_mask, t, offset), cross_ws


def _family(model_type: str, standalone: tuple) -> DecoderFamily:
    head = f"decoder.{_HEAD[model_type]}decoder."
    return DecoderFamily(
        model_type=model_type, config_class=CONFIG_CLASSES[model_type], parse=parse_bert, params=params, apply=apply,
        cross_kv=layer_cross_kv, apply_cached=apply_cached, hf_rules=hf_rules, layers_field="num_hidden_layers",
        embedding_leaves=("embed", "pos") + (("types",) if CONFIG_CLASSES[model_type]().type_vocab_size else ()), tied_head=head + "weight", tied_copies=(head + "bias",),
        standalone=standalone, to_json=_to_json)


def _to_json(cfg: BertConfig) -> dict:
    d = config_json(cfg)
    if cfg.model_type == "bert-generation":
        del d["type_vocab_size"]  # not a BertGenerationConfig field
    return d


# BertLMHeadModel/BertForMaskedLM ("bert.*", "cls.*", maybe an NSP head and a pooler) or BertModel;
# RobertaForCausalLM/ForMaskedLM or RobertaModel; BertGenerationDecoder or BertGenerationEncoder.
FAMILIES = (
    _family("bert", (("cls.seq_relationship.", None), ("bert.pooler.", None), ("pooler.", None),
                     ("cls.", "decoder.cls."), ("bert.", "decoder.bert."), ("", "decoder.bert."))),
    _family("roberta", (("roberta.pooler.", None), ("pooler.", None), ("lm_head.", "decoder.lm_head."),
                        ("roberta.", "decoder.roberta."), ("", "decoder.roberta."))),
    _family("bert-generation", (("lm_head.", "decoder.lm_head."), ("bert.", "decoder.bert."),
                                ("", "decoder.bert."))),
)
