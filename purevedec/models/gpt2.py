"""The GPT-2 text decoder with cross-attention to the image.

Parameter tree (``params``)::

    wte    [V, D]   token embeddings; also the LM head when tie_word_embeddings
    wpe    [Tmax, D]
    blocks [ {ln1, attn{qkv,o}, ln_cross, cross{q,k,v,o}, ln2, mlp{fc, out}} ] * L
    ln_f   {"scale": [D], "bias": [D]}
    lm_head [V, D]  only when the head is not tied

Kernels are in the [d_out, d_in] layout (HF's Conv1D [d_in, d_out] is transposed at load time).
The self-attention keeps HF's fused q|k|v projection as one [3D, D] kernel: one matmul per
decode step instead of three (~10% of a batch-1 step on the CPU this was measured on). The
cross-attention's K/V are computed once per image, so they stay split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Mapping

import jax
import jax.numpy as jnp

from .. import validate as v
from ..attention import shared_kv_attention
from ..config_fields import ACTIVATION_NAMES, parse_fields, set_field
from ..decoder_cache import (DecoderCache, advance, attend_self, guard_overflow, step_mask, token_positions,
                             valid_tokens)
from ..errors import ConfigError
from ..hf_rules import Rule, linear_rules, norm_rules
from ..layers import (activation, causal_mask, dense, dropout, layer_norm, layer_outputs, merge_heads, rows_product,
                      site_key, split_heads)
from ..param_spec import EMBED, HEADS, MLP, POSITIONS, VOCAB, Param, dense as dense_param, norm
from .family import DecoderFamily


@dataclass(frozen=True)
class GPT2Config:
    """transformers' GPT2Config fields that change the math (defaults: GPT-2 124M)."""
    vocab_size: int = 50257
    """Vocabulary size V."""
    n_positions: int = 1024
    """Rows of the learned position table: the longest decoder sequence."""
    n_embd: int = 768
    """Width D of the decoder."""
    n_layer: int = 12
    """Transformer layers L."""
    n_head: int = 12
    """Attention heads H per layer (head width K = n_embd // n_head)."""
    n_inner: int | None = None
    """Width of the MLP's hidden layer; None (the default) means ``4 * n_embd``."""
    activation_function: str = "gelu_new"
    """The MLP's activation, by transformers' ``ACT2FN`` name."""
    layer_norm_epsilon: float = 1e-5
    """Epsilon of every layer norm."""
    scale_attn_weights: bool = True
    """Divide attention scores by sqrt(K)."""
    scale_attn_by_inverse_layer_idx: bool = False
    """Also divide the scores of layer i by i + 1."""
    reorder_and_upcast_attn: bool = False
    """transformers' float32 attention option (the scores are float32 here anyway)."""
    tie_word_embeddings: bool = True
    """The LM head is ``wte`` itself (no ``lm_head`` param) when True."""
    resid_pdrop: float = 0.1
    """Dropout on residual branches (only with a ``key``)."""
    embd_pdrop: float = 0.1
    """Dropout on the embeddings (only with a ``key``)."""
    attn_pdrop: float = 0.1
    """Dropout on the attention weights (only with a ``key``)."""
    initializer_range: float = 0.02
    """Standard deviation of ``init_params``' normal draws."""
    bos_token_id: int | None = 50256
    """Beginning-of-sequence id (GPT-2's 50256)."""
    eos_token_id: int | tuple[int, ...] | None = 50256
    """End-of-sequence id, or a tuple of them."""
    pad_token_id: int | None = None
    """Padding id, or None."""
    model_type: str = "gpt2"
    """transformers' model_type: "gpt2"."""

    def __post_init__(self):
        w = "decoder"
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            v.positive_int(getattr(self, name), f"{w}.{name}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"{w}.n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")
        set_field(self, "n_inner", 4 * self.n_embd if self.n_inner is None else v.positive_int(self.n_inner, f"{w}.n_inner"))
        v.one_of(self.activation_function, f"{w}.activation_function", ACTIVATION_NAMES)
        set_field(self, "layer_norm_epsilon",
             v.number(self.layer_norm_epsilon, f"{w}.layer_norm_epsilon", low=0.0, low_open=True))
        for name in ("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                     "tie_word_embeddings"):
            v.flag(getattr(self, name), f"{w}.{name}")
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            set_field(self, name, v.probability(getattr(self, name), f"{w}.{name}"))
        set_field(self, "initializer_range", v.number(self.initializer_range, f"{w}.initializer_range", low=0.0))
        v.token_id(self.bos_token_id, f"{w}.bos_token_id")
        v.token_id(self.pad_token_id, f"{w}.pad_token_id")
        eos = v.token_ids(self.eos_token_id, f"{w}.eos_token_id")
        set_field(self, "eos_token_id", eos[0] if eos and len(eos) == 1 else eos)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def cross_attention_hidden_size(self) -> int | None:
        return None  # GPT-2's cross-attention always reads width n_embd


INERT = frozenset({
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
    "summary_first_dropout", "n_ctx",
})
# transformers' GPT2Config.attribute_map: the generic names are aliases of the n_* ones.
ALIASES = {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
           "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"}


def parse(d: Mapping, where: str = "decoder") -> GPT2Config:
    if not v.flag(d.get("add_cross_attention", False), f"{where}.add_cross_attention"):
        raise ConfigError(f"{where}.add_cross_attention is false: a GPT-2 decoder needs cross-attention "
                          "layers to read the image (transformers refuses it the same way)")
    if d.get("pruned_heads"):
        raise ConfigError(f"{where}.pruned_heads={d['pruned_heads']!r:.80} is not supported")
    return parse_fields(GPT2Config, d, where, INERT, ALIASES)


def check_cross_width(cross: int, cfg: GPT2Config) -> None:
    if cross != cfg.n_embd:
        # With the size given transformers adds no projection, and GPT-2's cross-attention only
        # reads inputs of width n_embd, so such a model cannot run anywhere.
        raise ConfigError(
            f"decoder.cross_attention_hidden_size={cross} differs from decoder.n_embd={cfg.n_embd}: "
            "GPT-2 cross-attention only accepts encoder states of width n_embd")


def params(cfg: GPT2Config) -> dict:
    """GPT-2's description: N(0, initializer_range) everywhere, the residual projections (attention
    and MLP outputs) scaled by 1/sqrt(2 * n_layer) as transformers initialises them."""
    d, f, std = cfg.n_embd, cfg.n_inner, cfg.initializer_range
    out_std = std / math.sqrt(2 * cfg.n_layer)
    attn = {"qkv": dense_param(3 * d, d, (HEADS, EMBED), std), "o": dense_param(d, d, (EMBED, HEADS), out_std)}
    cross = {n: dense_param(d, d, (HEADS, EMBED), std) for n in ("q", "k", "v")}
    cross["o"] = dense_param(d, d, (EMBED, HEADS), out_std)
    block = {"ln1": norm(d), "attn": attn, "ln_cross": norm(d), "cross": cross, "ln2": norm(d),
             "mlp": {"fc": dense_param(f, d, (MLP, EMBED), std), "out": dense_param(d, f, (EMBED, MLP), out_std)}}
    tree = {"wte": Param((cfg.vocab_size, d), (VOCAB, EMBED), "normal", std),
            "wpe": Param((cfg.n_positions, d), (POSITIONS, EMBED), "normal", std),
            "blocks": [block] * cfg.n_layer, "ln_f": norm(d)}
    if not cfg.tie_word_embeddings:
        tree["lm_head"] = Param((cfg.vocab_size, d), (VOCAB, EMBED), "normal", std)
    return tree


def attn_scale(cfg: GPT2Config, layer: int) -> float:
    """GPT-2's score scale: 1/sqrt(K) if scale_attn_weights, further 1/(layer+1) if
    scale_attn_by_inverse_layer_idx (both self- and cross-attention)."""
    scale = cfg.head_dim ** -0.5 if cfg.scale_attn_weights else 1.0
    if cfg.scale_attn_by_inverse_layer_idx:
        scale /= float(layer + 1)
    return scale


def embed(p: dict, ids: jax.Array, position_ids: jax.Array, cfg: GPT2Config, dtype, key=None):
    """ids, position_ids [B,T] -> [B,T,D]. An id or position outside its table (possible only
    under jit, where values cannot be checked first) embeds as NaN, so the rows it reaches
    come out NaN instead of silently reading another row (JAX wraps negative indices and
    clamps large ones): -100, transformers' ignore index, never becomes token V-100."""
    x = jnp.take(p["wte"], ids, axis=0).astype(dtype) + jnp.take(p["wpe"], position_ids, axis=0).astype(dtype)
    valid = (ids >= 0) & (ids < cfg.vocab_size) & (position_ids >= 0) & (position_ids < cfg.n_positions)
    x = jnp.where(valid[..., None], x, jnp.nan)
    return dropout(x, cfg.embd_pdrop, key)


def layer_cross_kv(bp: dict, enc: jax.Array, cfg: GPT2Config, dtype) -> tuple[jax.Array, jax.Array]:
    """One layer's cross-attention keys and values from the encoder states. [B,S,D] -> 2 x [B,H,S,K]"""
    return tuple(split_heads(dense(bp["cross"][n], enc, dtype), cfg.n_head) for n in ("k", "v"))


def cross_attention(bp: dict, h: jax.Array, kv, cfg: GPT2Config, layer: int, dtype, key=None):
    """Queries [B*R,T,D] over shared K/V [B,H,S,K]: R rows (beams, samples) per image read the
    same keys, folded into the query axis so K/V are never copied per row."""
    q = split_heads(dense(bp["cross"]["q"], h, dtype), cfg.n_head)  # [B*R,H,T,K]
    out, weights = shared_kv_attention(q, *kv, attn_scale(cfg, layer), upcast=cfg.reorder_and_upcast_attn,
                                       dropout_rate=cfg.attn_pdrop, key=key)
    return dense(bp["cross"]["o"], merge_heads(out), dtype), weights


def self_qkv(bp: dict, h: jax.Array, cfg: GPT2Config, dtype):
    """[B,T,D] -> q, k, v each [B,H,T,K]"""
    return tuple(split_heads(t, cfg.n_head) for t in jnp.split(dense(bp["attn"]["qkv"], h, dtype), 3, axis=-1))


def block(bp: dict, x: jax.Array, kv_cross, self_mask, cfg: GPT2Config, layer: int, dtype, *,
          cache=None, pos=None, key=None):
    """One GPT-2 layer. x [B,T,D]; self_mask bool [B,1,T,U].

    With ``cache`` (this layer's (keys, values) [B,H,Tmax,K]) the new ones are written at ``pos`` and the
    queries attend over the whole buffer (incremental decoding); without, over x's own tokens.
    Returns (x, self weights [B,H,T,U], cross weights [B,H,T,S], the updated cache or None)."""
    h = layer_norm(bp["ln1"], x, cfg.layer_norm_epsilon)
    q, k, v = self_qkv(bp, h, cfg, dtype)
    out, self_w, cache = attend_self(q, k, v, self_mask, attn_scale(cfg, layer), cache=cache, pos=pos,
                                     upcast=cfg.reorder_and_upcast_attn, dropout_rate=cfg.attn_pdrop,
                                     key=site_key(key, 0))
    x = x + dropout(dense(bp["attn"]["o"], merge_heads(out), dtype), cfg.resid_pdrop, site_key(key, 1))
    h = layer_norm(bp["ln_cross"], x, cfg.layer_norm_epsilon)
    out, cross_w = cross_attention(bp, h, kv_cross, cfg, layer, dtype, key=site_key(key, 2))
    x = x + dropout(out, cfg.resid_pdrop, site_key(key, 3))
    h = layer_norm(bp["ln2"], x, cfg.layer_norm_epsilon)
    h = dense(bp["mlp"]["out"], activation(cfg.activation_function, dense(bp["mlp"]["fc"], h, dtype)), dtype)
    return x + dropout(h, cfg.resid_pdrop, site_key(key, 4)), self_w, cross_w, cache


def lm_head(p: dict, h: jax.Array, cfg: GPT2Config, dtype) -> jax.Array:
    """[B,T,D] -> float32 logits [B,T,V]; the head is wte itself when tied."""
    w = p["wte"] if cfg.tie_word_embeddings else p["lm_head"]
    return rows_product(h.astype(dtype), w.astype(dtype))


def apply(p: dict, ids: jax.Array, kv_cross: list, cfg: GPT2Config, *, attention_mask=None,
           position_ids=None, dtype=jnp.float32, key=None, remat: bool = False) -> dict:
    """Teacher-forced decoder pass. ids [B,T] -> {"logits": [B,T,V], "hidden_states": the
    embeddings and each layer's output, the last one after ln_f (as transformers returns them),
    "attentions", "cross_attentions"}. ``remat`` recomputes each layer's activations in the
    backward pass (layers.checkpointed) instead of storing them: same outputs, less memory."""
    b, t = ids.shape
    if position_ids is None:
        position_ids = jnp.broadcast_to(jnp.arange(t), (b, t))  # transformers' default: 0..T-1
    x = embed(p, ids, position_ids, cfg, dtype, key=site_key(key, 0))
    mask = causal_mask(t, attention_mask, b)
    hidden, self_ws, cross_ws = [x], [], []
    for i, bp in enumerate(p["blocks"]):
        layer = partial(block, cfg=cfg, layer=i, dtype=dtype)
        x, self_w, cross_w, _ = layer_outputs(lambda bp, x, kv, mask, k: layer(bp, x, kv, mask, key=k), bp, x,
                                              kv_cross[i], constants=(mask, site_key(key, 1, i)), remat=remat,
                                              side_outputs=3)
        hidden.append(x)
        self_ws.append(self_w)
        cross_ws.append(cross_w)
    hidden[-1] = layer_norm(p["ln_f"], x, cfg.layer_norm_epsilon)
    return {"logits": lm_head(p, hidden[-1], cfg, dtype), "hidden_states": tuple(hidden), "attentions": tuple(self_ws),
            "cross_attentions": tuple(cross_ws)}


def apply_cached(p: dict, cache: DecoderCache, ids: jax.Array, cfg: GPT2Config, *, attention_mask=None,
                 shifted: bool = False, dtype=jnp.float32):
    """Decode ``ids`` [R,t] after the ``cache.pos`` tokens already in the cache.

    New K/V are written at pos..pos+t-1; queries attend causally to every cached position the
    key mask marks valid (padding of a ragged prompt stays hidden). Positions count per row
    from its first real token unless ``shifted`` (``decoder_cache.token_positions``). Writing past
    the buffer (possible only under jit) makes the logits NaN rather than overwrite the last slot.
    Returns (logits [R,t,V] float32, new cache, cross-attention weights per layer [R,H,t,S])."""
    t = ids.shape[1]
    valid = valid_tokens(ids, attention_mask)
    mask, key_mask = step_mask(cache, valid)
    position_ids, offset = token_positions(cache, None if attention_mask is None else valid, t, shifted)
    x = embed(p, ids, position_ids, cfg, dtype)
    new_self, cross_ws = [], []
    for i, bp in enumerate(p["blocks"]):
        x, _, cross_w, layer = block(bp, x, cache.cross_kv[i], mask, cfg, i, dtype, cache=cache.self_kv[i],
                                     pos=cache.pos)
        new_self.append(layer)
        cross_ws.append(cross_w)
    logits = lm_head(p, layer_norm(p["ln_f"], x, cfg.layer_norm_epsilon), cfg, dtype)
    return guard_overflow(logits, cache, t), advance(cache, new_self, key_mask, t, offset), cross_ws


# ---- Hugging Face names ----

def hf_rules(cfg: GPT2Config) -> list[Rule]:
    """GPT-2's Conv1D kernels are [d_in, d_out] (transposed on load); cross-attention's fused
    c_attn holds K and V (split in two)."""
    hf, blk = "decoder.transformer.h.{i}.", "decoder.blocks.{i}."
    kv = tuple(f"{blk}cross.{n}" for n in "kv")
    rules = [Rule("decoder.transformer.wte.weight", ("decoder.wte",)),
             Rule("decoder.transformer.wpe.weight", ("decoder.wpe",)),
             Rule("decoder.lm_head.weight", ("decoder.lm_head",)),
             Rule(f"{hf}crossattention.c_attn.weight", tuple(p + ".w" for p in kv), "conv1d_kv"),
             Rule(f"{hf}crossattention.c_attn.bias", tuple(p + ".b" for p in kv), "split2")]
    for name, ours in (("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.o"), ("crossattention.q_attn", "cross.q"),
                       ("crossattention.c_proj", "cross.o"), ("mlp.c_fc", "mlp.fc"), ("mlp.c_proj", "mlp.out")):
        rules += linear_rules(f"{hf}{name}", f"{blk}{ours}", "conv1d")
    for name, ours in (("ln_1", "ln1"), ("ln_cross_attn", "ln_cross"), ("ln_2", "ln2")):
        rules += norm_rules(f"{hf}{name}", f"{blk}{ours}")
    return rules + norm_rules("decoder.transformer.ln_f", "decoder.ln_f")


FAMILY = DecoderFamily(
    model_type="gpt2", config_class=GPT2Config, parse=parse, params=params, apply=apply, cross_kv=layer_cross_kv,
    apply_cached=apply_cached, hf_rules=hf_rules, layers_field="n_layer", embedding_leaves=("wte", "wpe"),
    tied_head="decoder.lm_head.weight",
    # The causal-mask buffers older transformers saved.
    ignored=(r"^decoder\.transformer\.h\.\d+\.(attn|crossattention)\.(bias|masked_bias)$",),
    # GPT2LMHeadModel ("transformer.*", "lm_head.weight") or GPT2Model ("h.*", "wte.weight", ...).
    standalone=(("transformer.", "decoder.transformer."), ("lm_head.", "decoder.lm_head."),
                ("", "decoder.transformer.")),
    check_cross_width=check_cross_width, default_metrics="bleu,cider")
