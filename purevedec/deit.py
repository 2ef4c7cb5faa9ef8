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
from .layers import dropout, site_key

SPECIAL_TOKENS = 2  # [CLS], distillation


def param_shapes(cfg: DeiTConfig) -> dict:
    shapes = vit.param_shapes(cfg)
    shapes["dist"] = (cfg.hidden_size,)
    shapes["pos"] = (SPECIAL_TOKENS + cfg.num_patches, cfg.hidden_size)
    return shapes


def embed(p: dict, pixels: jax.Array, cfg: DeiTConfig, *, interpolate_pos_encoding: bool, dtype,
          key=None) -> jax.Array:
    """[B,C,H,W] -> [B,2+N,D]"""
    x = vit.patch_tokens(p, pixels, cfg, [p["cls"], p["dist"]], dtype)
    pos = vit.position_embeddings(p, cfg, *pixels.shape[2:], interpolate_pos_encoding, special=SPECIAL_TOKENS)
    return dropout(x + pos.astype(dtype), cfg.hidden_dropout_prob, key)


def apply(p: dict, pixels: jax.Array, cfg: DeiTConfig, *, interpolate_pos_encoding: bool = False,
          dtype=jnp.float32, key=None, remat: bool = False) -> dict:
    """Same outputs as ``vit.apply`` with S = 2 + N (``remat`` as there)."""
    x = embed(p, pixels, cfg, interpolate_pos_encoding=interpolate_pos_encoding, dtype=dtype, key=site_key(key, 0))
    return vit.encode_tokens(p, x, cfg, dtype=dtype, key=key, remat=remat)
