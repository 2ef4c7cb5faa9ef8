"""The TrOCR text decoder (fairseq/BART style) with cross-attention to the image.

Parameter tree (``param_shapes``)::

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

import jax
import jax.numpy as jnp
import numpy as np

from .config import TrOCRConfig
from .attention import attention
from .layers import (activation, causal_mask, dense, dense_shape, dropout, layer_norm, layer_outputs,
                     merge_heads, norm_shape, rows_product, site_key, split_heads)

LAYER_NORM_EPS = 1e-5
LEARNED_OFFSET = 2  # BART's learned position table starts two rows in


def param_shapes(cfg: TrOCRConfig) -> dict:
    d, c = cfg.d_model, cfg.cross_width
    block = {"attn": {n: dense_shape(d, d) for n in ("q", "k", "v", "o")}, "ln1": norm_shape(d),
             "cross": {"q": dense_shape(d, d), "k": dense_shape(d, c), "v": dense_shape(d, c), "o": dense_shape(d, d)},
             "ln_cross": norm_shape(d),
             "mlp": {"fc": dense_shape(cfg.decoder_ffn_dim, d), "out": dense_shape(d, cfg.decoder_ffn_dim)},
             "ln2": norm_shape(d)}
    shapes = {"embed": (cfg.vocab_size, d), "blocks": [block] * cfg.decoder_layers}
    if cfg.use_learned_position_embeddings:
        shapes["pos"] = (cfg.max_position_embeddings + LEARNED_OFFSET, d)
    if cfg.layernorm_embedding:
        shapes["ln_embed"] = norm_shape(d)
    if not cfg.tie_word_embeddings:
        shapes["lm_head"] = (cfg.vocab_size, d)
    return shapes


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
    k, v = kv
    b, heads = k.shape[0], k.shape[1]
    q = split_heads(dense(bp["cross"]["q"], h, dtype), heads)  # [B*R,H,T,K]
    rows, t = q.shape[0], q.shape[2]
    per_image = rows // b
    fold = lambda x: x.reshape(b, per_image, heads, t, -1).swapaxes(1, 2).reshape(b, heads, per_image * t, -1)  # noqa: E731
    unfold = lambda x: x.reshape(b, heads, per_image, t, -1).swapaxes(1, 2).reshape(rows, heads, t, -1)  # noqa: E731
    out, weights = attention(fold(q), k, v, None, cfg.head_dim ** -0.5, dropout_rate=cfg.attention_dropout, key=key)
    return dense(bp["cross"]["o"], merge_heads(unfold(out)), dtype), unfold(weights)


def block(bp: dict, x: jax.Array, kv_cross, self_mask, cfg: TrOCRConfig, dtype, *, cache=None, pos=None, key=None):
    """One post-norm TrOCR layer: x = norm(x + sublayer(x)) for self-attention, cross-attention
    and the MLP. x [B,T,D]; self_mask bool [B,1,T,U]; ``cache`` as in gpt2.block.
    Returns (x, self weights [B,H,T,U], cross weights [B,H,T,S], the updated cache or None)."""
    heads = cfg.decoder_attention_heads
    q, k, v = (split_heads(dense(bp["attn"][n], x, dtype), heads) for n in ("q", "k", "v"))
    if cache is not None:
        cache = {n: jax.lax.dynamic_update_slice(cache[n], t.astype(cache[n].dtype), (0, 0, pos, 0))
                 for n, t in (("k", k), ("v", v))}
        k, v = cache["k"], cache["v"]
    out, self_w = attention(q, k, v, self_mask, cfg.head_dim ** -0.5, dropout_rate=cfg.attention_dropout,
                            key=site_key(key, 0))
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
    b, t = ids.shape
    x = embed(p, ids, 0, cfg, dtype, key=site_key(key, 0))
    mask = causal_mask(t, attention_mask, b)
    hidden, self_ws, cross_ws = [x], [], []
    for i, bp in enumerate(p["blocks"]):
        y, self_w, cross_w, _ = layer_outputs(lambda bp, x, kv, mask, k: block(bp, x, kv, mask, cfg, dtype, key=k),
                                              bp, x, kv_cross[i], constants=(mask, site_key(key, 1, i)), remat=remat,
                                              side_outputs=3)
        x = jnp.where(_layer_dropped(cfg, site_key(key, 2, i)), x, y)
        hidden.append(x)
        self_ws.append(self_w)
        cross_ws.append(cross_w)
    return {"logits": lm_head(p, x, cfg, dtype), "hidden_states": tuple(hidden), "attentions": tuple(self_ws),
            "cross_attentions": tuple(cross_ws)}


def init_self_cache(cfg: TrOCRConfig, rows: int, max_len: int, dtype) -> list:
    """Per layer, zeroed self-attention K/V buffers [R,H,Tmax,K]."""
    shape = (rows, cfg.decoder_attention_heads, max_len, cfg.head_dim)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.decoder_layers)]


def apply_cached(p: dict, cache: dict, ids: jax.Array, cfg: TrOCRConfig, *, attention_mask=None,
                 shifted: bool = False, dtype=jnp.float32):
    """Decode ``ids`` [R,t] after the ``cache["pos"]`` tokens already cached (see gpt2.apply_cached
    for the cache contract). Positions continue from the cache length, as transformers counts
    them, whatever ``shifted`` says (it is GPT-2's per-row option; TrOCR rows are not re-numbered
    after left padding). Returns (logits [R,t,V] float32, new cache, cross-attention weights per layer)."""
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
    logits = jnp.where(pos + t <= max_len, lm_head(p, x, cfg, dtype), jnp.nan)
    return logits, {**cache, "self": new_self, "mask": key_mask, "pos": pos + t}, cross_ws
