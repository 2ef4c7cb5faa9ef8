"""The ViT image encoder: patchify, [CLS] + position embeddings, pre-norm blocks, final norm.

Parameter tree (``param_shapes``)::

    patch  {"w": [D, C*P*P], "b": [D]}    the stride-P convolution as one matmul over patches
    cls    [D]
    pos    [1 + N, D]                       N = patches at the configured image size
    blocks [ {ln1, attn{q,k,v,o}, ln2, mlp{fc, out}} ] * L
    ln_f   {"scale": [D], "bias": [D]}
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .config import ViTConfig
from .attention import attention
from .layers import (activation, dense, dense_shape, dropout, layer_norm, layer_outputs,
                     merge_heads, norm_shape, site_key, split_heads)


def param_shapes(cfg: ViTConfig) -> dict:
    d, hk, f = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.intermediate_size
    patch_in = cfg.num_channels * cfg.patch_size[0] * cfg.patch_size[1]
    block = {
        "ln1": norm_shape(d),
        "attn": {"q": dense_shape(hk, d, cfg.qkv_bias), "k": dense_shape(hk, d, cfg.qkv_bias),
                 "v": dense_shape(hk, d, cfg.qkv_bias), "o": dense_shape(d, hk)},
        "ln2": norm_shape(d),
        "mlp": {"fc": dense_shape(f, d), "out": dense_shape(d, f)},
    }
    return {
        "patch": dense_shape(d, patch_in),
        "cls": (d,),
        "pos": (1 + cfg.num_patches, d),
        "blocks": [block] * cfg.num_hidden_layers,
        "ln_f": norm_shape(d),
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
