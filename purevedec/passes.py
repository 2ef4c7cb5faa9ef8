"""The unjitted composition the public functions and generation build on: encode -> (projection),
the cross-attention K/V of every decoder layer, and the teacher-forced decoder pass."""

from __future__ import annotations

import jax

from .config import Config
from .layers import dense
from .models import decoder_family, encoder_family


def encode_pass(weights, pixels, config, interpolate_pos_encoding, dtype, key, remat=False):
    """pixels [B,C,H,W] -> (the states the decoder reads [B,S,D] (after any projection), the
    encoder's own outputs dict)."""
    out = encoder_family(config.encoder).apply(weights["encoder"], pixels, config.encoder,
                                               interpolate_pos_encoding=interpolate_pos_encoding, dtype=dtype,
                                               key=key, remat=remat)
    hidden = out["last_hidden_state"]
    if config.has_projection:
        hidden = dense(weights["proj"], hidden, dtype)
    return hidden, out


def layer_kv(weights, enc: jax.Array, config: Config, dtype) -> list:
    """Per decoder layer, cross-attention (K, V) [B,H,S,K] from the (projected) encoder states."""
    kv = decoder_family(config.decoder).cross_kv
    return [kv(bp, enc, config.decoder, dtype) for bp in weights["decoder"]["blocks"]]


def decode_pass(weights, ids, enc, config, attention_mask, position_ids, dtype, key, remat=False):
    """ids [R,T] over encoder states [B,S,D] -> the decoder family's outputs dict (logits [R,T,V], ...)."""
    dec = decoder_family(config.decoder)
    return dec.apply(weights["decoder"], ids, layer_kv(weights, enc, config, dtype), config.decoder,
                     attention_mask=attention_mask, position_ids=position_ids, dtype=dtype, key=key, remat=remat)
