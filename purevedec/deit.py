"""The DeiT image encoder: ViT with a distillation token after [CLS].

Parameter tree (``param_shapes``): ViT's, plus ``dist`` [D], with ``pos`` [2 + N, D] (the class
and distillation tokens, then the patches). The layers and the final norm are ViT's own; the
decoder reads all 2 + N states, as transformers' VisionEncoderDecoder does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import vit
from .config import DeiTConfig
from .layers import dense, dropout, layer_norm, site_key

SPECIAL_TOKENS = 2  # [CLS], distillation


def param_shapes(cfg: DeiTConfig) -> dict:
    shapes = vit.param_shapes(cfg)
    shapes["dist"] = (cfg.hidden_size,)
    shapes["pos"] = (SPECIAL_TOKENS + cfg.num_patches, cfg.hidden_size)
    return shapes


def embed(p: dict, pixels: jax.Array, cfg: DeiTConfig, *, interpolate_pos_encoding: bool, dtype,
          key=None) -> jax.Array:
    """[B,C,H,W] -> [B,2+N,D]"""
    if pixels.ndim != 4:
        raise ValueError(f"pixels must be [B,C,H,W], got shape {pixels.shape}")
    b, c, h, w = pixels.shape
    if c != cfg.num_channels:
        raise ValueError("Make sure that the channel dimension of the pixel values match with the one set "
                         f"in the configuration. Expected {cfg.num_channels} but got {c}.")
    pos = vit.position_embeddings(p, cfg, h, w, interpolate_pos_encoding, special=SPECIAL_TOKENS)
    x = dense(p["patch"], vit.patchify(pixels, cfg.patch_size), dtype)
    tokens = jnp.stack([p["cls"], p["dist"]]).astype(dtype)
    x = jnp.concatenate([jnp.broadcast_to(tokens, (b, SPECIAL_TOKENS, cfg.hidden_size)), x], axis=1)
    return dropout(x + pos.astype(dtype), cfg.hidden_dropout_prob, key)


def apply(p: dict, pixels: jax.Array, cfg: DeiTConfig, *, interpolate_pos_encoding: bool = False,
          dtype=jnp.float32, key=None, remat: bool = False) -> dict:
    """Same outputs as ``vit.apply`` with S = 2 + N (``remat`` as there)."""
    x = embed(p, pixels, cfg, interpolate_pos_encoding=interpolate_pos_encoding, dtype=dtype, key=site_key(key, 0))
    layer = lambda bp, x, key: vit.block(bp, x, cfg, dtype, key=key)  # noqa: E731
    layer = jax.checkpoint(layer) if remat else layer
    hidden, attns = [x], []
    for i, bp in enumerate(p["blocks"]):
        x, weights = layer(bp, x, site_key(key, 1, i))
        hidden.append(x)
        attns.append(weights)
    last = layer_norm(p["ln_f"], x, cfg.layer_norm_eps)
    return {"last_hidden_state": last, "hidden_states": tuple(hidden), "attentions": tuple(attns)}
