"""The GPT-2 text decoder with cross-attention to the image.

Parameter tree (``param_shapes``)::

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

from functools import partial

import jax
import jax.numpy as jnp

from .config import GPT2Config
from .attention import attention
from .layers import (activation, causal_mask, dense, dense_shape, dropout, layer_norm, layer_outputs,
                     merge_heads, norm_shape, rows_product, site_key, split_heads)


def param_shapes(cfg: GPT2Config) -> dict:
    d = cfg.n_embd
    attn = {"qkv": dense_shape(3 * d, d), "o": dense_shape(d, d)}
    cross = {n: dense_shape(d, d) for n in ("q", "k", "v", "o")}
    block = {"ln1": norm_shape(d), "attn": attn, "ln_cross": norm_shape(d), "cross": cross,
             "ln2": norm_shape(d), "mlp": {"fc": dense_shape(cfg.n_inner, d), "out": dense_shape(d, cfg.n_inner)}}
    shapes = {"wte": (cfg.vocab_size, d), "wpe": (cfg.n_positions, d),
              "blocks": [block] * cfg.n_layer, "ln_f": norm_shape(d)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head"] = (cfg.vocab_size, d)
    return shapes


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
    k, v = kv
    b, heads = k.shape[0], k.shape[1]
    q = split_heads(dense(bp["cross"]["q"], h, dtype), cfg.n_head)  # [B*R,H,T,K]
    rows, t = q.shape[0], q.shape[2]
    per_image = rows // b
    fold = lambda x: x.reshape(b, per_image, heads, t, -1).swapaxes(1, 2).reshape(b, heads, per_image * t, -1)  # noqa: E731
    unfold = lambda x: x.reshape(b, heads, per_image, t, -1).swapaxes(1, 2).reshape(rows, heads, t, -1)  # noqa: E731
    out, weights = attention(fold(q), k, v, None, attn_scale(cfg, layer), upcast=cfg.reorder_and_upcast_attn,
                             dropout_rate=cfg.attn_pdrop, key=key)
    return dense(bp["cross"]["o"], merge_heads(unfold(out)), dtype), unfold(weights)


def self_qkv(bp: dict, h: jax.Array, cfg: GPT2Config, dtype):
    """[B,T,D] -> q, k, v each [B,H,T,K]"""
    return tuple(split_heads(t, cfg.n_head) for t in jnp.split(dense(bp["attn"]["qkv"], h, dtype), 3, axis=-1))


def block(bp: dict, x: jax.Array, kv_cross, self_mask, cfg: GPT2Config, layer: int, dtype, *,
          cache=None, pos=None, key=None):
    """One GPT-2 layer. x [B,T,D]; self_mask bool [B,1,T,U].

    With ``cache`` ({"k","v"} [B,H,Tmax,K]) the new keys/values are written at ``pos`` and the
    queries attend over the whole buffer (incremental decoding); without, over x's own tokens.
    Returns (x, self weights [B,H,T,U], cross weights [B,H,T,S], the updated cache or None)."""
    h = layer_norm(bp["ln1"], x, cfg.layer_norm_epsilon)
    q, k, v = self_qkv(bp, h, cfg, dtype)
    if cache is not None:
        cache = {n: jax.lax.dynamic_update_slice(cache[n], t.astype(cache[n].dtype), (0, 0, pos, 0))
                 for n, t in (("k", k), ("v", v))}
        k, v = cache["k"], cache["v"]
    out, self_w = attention(q, k, v, self_mask, attn_scale(cfg, layer), upcast=cfg.reorder_and_upcast_attn,
                            dropout_rate=cfg.attn_pdrop, key=site_key(key, 0))
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


def init_self_cache(cfg: GPT2Config, rows: int, max_len: int, dtype) -> list:
    """Per layer, zeroed self-attention K/V buffers [R,H,Tmax,K] (heads first, as attention reads them)."""
    shape = (rows, cfg.n_head, max_len, cfg.head_dim)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.n_layer)]


def token_positions(cache: dict, valid, t: int, shifted: bool) -> tuple[jax.Array, jax.Array]:
    """(position ids [R,t], the updated cache["offset"] [R]) of ``t`` new tokens, ``valid`` [R,t]
    marking the real ones (None: all are).

    Per row by default: a real token's position is the number of real tokens before it in its
    row (buffer index minus the padding so far, kept in cache["offset"]), so a left-padded row
    continues exactly as it would alone. ``shifted`` keeps buffer indices and leaves the offsets
    alone, as transformers numbers a left-padded decoder_input_ids (padding shifts the row).
    Padding itself sits at position 0 (it is hidden; a negative index would embed as NaN)."""
    buffer_pos = cache["pos"] + jnp.arange(t)  # [t]
    if shifted or valid is None:  # no new padding: the offsets stay
        return buffer_pos[None, :] - cache["offset"][:, None], cache["offset"]
    padding = cache["offset"][:, None] + jnp.cumsum(~valid, axis=1, dtype=jnp.int32)  # [R,t] padding up to each token
    return jnp.where(valid, buffer_pos - padding, 0), padding[:, -1]


def apply_cached(p: dict, cache: dict, ids: jax.Array, cfg: GPT2Config, *, attention_mask=None,
                 shifted: bool = False, dtype=jnp.float32):
    """Decode ``ids`` [R,t] after the ``cache["pos"]`` tokens already in the cache.

    New K/V are written at pos..pos+t-1; queries attend causally to every cached position the
    key mask marks valid (padding of a ragged prompt stays hidden). Positions count per row
    from its first real token unless ``shifted`` (``token_positions``). Writing past the buffer
    (possible only under jit) makes the logits NaN rather than overwrite the last slot.
    Returns (logits [R,t,V] float32, new cache, cross-attention weights per layer [R,H,t,S])."""
    r, t = ids.shape
    pos = cache["pos"]
    max_len = cache["mask"].shape[1]
    valid = jnp.ones((r, t), bool) if attention_mask is None else attention_mask != 0
    key_mask = jax.lax.dynamic_update_slice(cache["mask"], valid, (0, pos))  # [R,Tmax]
    causal = jnp.arange(max_len)[None, :] <= (pos + jnp.arange(t))[:, None]  # [t,Tmax]
    mask = causal[None, None] & key_mask[:, None, None, :]  # [R,1,t,Tmax]
    position_ids, offset = token_positions(cache, None if attention_mask is None else valid, t, shifted)
    x = embed(p, ids, position_ids, cfg, dtype)
    new_self, cross_ws = [], []
    for i, bp in enumerate(p["blocks"]):
        x, _, cross_w, layer = block(bp, x, cache["cross"][i], mask, cfg, i, dtype, cache=cache["self"][i], pos=pos)
        new_self.append(layer)
        cross_ws.append(cross_w)
    logits = lm_head(p, layer_norm(p["ln_f"], x, cfg.layer_norm_epsilon), cfg, dtype)
    logits = jnp.where(pos + t <= max_len, logits, jnp.nan)
    return logits, {**cache, "self": new_self, "mask": key_mask, "offset": offset, "pos": pos + t}, cross_ws
