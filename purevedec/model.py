"""Composition: encode -> (projection) -> decode, and the public ``forward``.

The public functions validate their inputs in Python (shapes always; token values too when
they are concrete arrays rather than tracers), then call one jitted function. Config, dtype
and the output flags are static: each combination compiles once.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .config import Config
from .layers import dense, site_key
from .params import decoder_module, encoder_module


class EncoderOutput(NamedTuple):
    hidden: jax.Array                     # [B,S,D_dec]: what the decoder reads (after projection)
    last_hidden_state: jax.Array          # [B,S,D_enc]: the encoder's own output (before projection)
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


class Output(NamedTuple):
    logits: jax.Array                     # [B,T,V] float32
    encoder_last_hidden_state: jax.Array
    encoder_hidden_states: Optional[tuple] = None
    encoder_attentions: Optional[tuple] = None
    decoder_hidden_states: Optional[tuple] = None
    decoder_attentions: Optional[tuple] = None
    cross_attentions: Optional[tuple] = None


_STATIC = ("config", "interpolate_pos_encoding", "dtype", "output_hidden_states", "output_attentions")


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_pixels(pixels, config: Config) -> None:
    if getattr(pixels, "ndim", None) != 4:
        raise ValueError(f"pixels must be a [B,C,H,W] array, got shape {getattr(pixels, 'shape', None)}")
    if not jnp.issubdtype(pixels.dtype, jnp.floating):
        raise ValueError(f"pixels must be floating point (HF image processor output), got {pixels.dtype}")


def check_ids(ids, config: Config, name: str = "ids", offset: int = 0) -> None:
    """Shape, dtype and (when concrete) range checks for decoder token ids [B,T]."""
    if getattr(ids, "ndim", None) != 2:
        raise ValueError(f"{name} must be a [B,T] array of token ids, got shape {getattr(ids, 'shape', None)}")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"{name} must be integer token ids, got dtype {ids.dtype}")
    dec = config.decoder
    if offset + ids.shape[1] > dec.n_positions:
        raise ValueError(f"{name} reach position {offset + ids.shape[1]}, beyond the decoder's "
                         f"n_positions={dec.n_positions}")
    if _is_concrete(ids) and ids.size:
        lo, hi = int(np.min(np.asarray(ids))), int(np.max(np.asarray(ids)))
        if lo < 0 or hi >= dec.vocab_size:
            raise ValueError(f"{name} hold token ids in [{lo}, {hi}], outside the vocabulary [0, {dec.vocab_size})")


def _check_mask(mask, ids, name: str) -> None:
    if mask is not None and tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected the ids' shape {tuple(ids.shape)}")


def _check_batch(pixels, ids) -> None:
    if pixels.shape[0] != ids.shape[0]:
        raise ValueError("The inputs of encoder and decoder should have the same batch size, but got "
                         f"{pixels.shape[0]} for encoder and {ids.shape[0]} for decoder.")


def _encode(params, pixels, config, interpolate_pos_encoding, dtype, key):
    out = encoder_module(config).encode(params["encoder"], pixels, config.encoder,
                                        interpolate_pos_encoding=interpolate_pos_encoding, dtype=dtype, key=key)
    hidden = out["last_hidden_state"]
    if config.has_projection:
        hidden = dense(params["proj"], hidden, dtype)
    return hidden, out


# Images per encoder chunk when only the final states are needed. A large batch's activations
# outgrow the CPU caches: on a 2-core AVX-512 machine, 32 images ran ~10% (fp32) and ~30% (bf16)
# faster as 4 chunks of 8 than as one batch (chunks of 4 were as fast at 32 images, but 8 images
# in two chunks of 4 ran 20% slower in bf16 than in one). It also caps big batches' activation memory.
ENCODER_CHUNK = 8


def encoder_states(params, pixels, config, interpolate_pos_encoding, dtype) -> jax.Array:
    """pixels [B,C,H,W] -> the (projected) states [B,S,D], ENCODER_CHUNK images at a time
    (one compiled chunk under lax.map; a smaller remainder chunk after it)."""
    def run(x):
        return _encode(params, x, config, interpolate_pos_encoding, dtype, None)[0]
    b = pixels.shape[0]
    if b <= ENCODER_CHUNK:
        return run(pixels)
    whole = b - b % ENCODER_CHUNK
    chunks = pixels[:whole].reshape(whole // ENCODER_CHUNK, ENCODER_CHUNK, *pixels.shape[1:])
    out = jax.lax.map(run, chunks)
    out = out.reshape(whole, *out.shape[2:])
    return out if whole == b else jnp.concatenate([out, run(pixels[whole:])])


def cross_kv(params, enc: jax.Array, config: Config, dtype) -> list:
    """Per layer, cross-attention (K, V) [B,H,S,K] from the (projected) encoder states."""
    dec = decoder_module(config)
    return [dec.cross_kv(bp, enc, config.decoder, dtype) for bp in params["decoder"]["blocks"]]


@partial(jax.jit, static_argnames=_STATIC)
def _encode_jit(params, pixels, key, *, config, interpolate_pos_encoding, dtype, output_hidden_states,
                output_attentions):
    extras = output_hidden_states or output_attentions
    if not extras and key is None:
        return encoder_states(params, pixels, config, interpolate_pos_encoding, dtype)
    hidden, out = _encode(params, pixels, config, interpolate_pos_encoding, dtype, key)
    if not extras:
        return hidden
    return EncoderOutput(hidden, out["last_hidden_state"],
                         out["hidden_states"] if output_hidden_states else None,
                         out["attentions"] if output_attentions else None)


def encode(params, pixels, config: Config, *, interpolate_pos_encoding: bool = False, dtype=jnp.float32,
           output_hidden_states: bool = False, output_attentions: bool = False, key=None):
    """Image -> the states the decoder reads. pixels [B,C,H,W] -> [B,S,D] (after projection),
    or an ``EncoderOutput`` when hidden states or attentions are asked for.
    ``key`` turns on dropout (training); None is inference."""
    check_pixels(pixels, config)
    return _encode_jit(params, pixels, key, config=config, interpolate_pos_encoding=interpolate_pos_encoding,
                       dtype=jnp.dtype(dtype), output_hidden_states=output_hidden_states,
                       output_attentions=output_attentions)


def _decode(params, ids, enc, config, attention_mask, position_ids, dtype, key):
    dec = decoder_module(config)
    return dec.decode(params["decoder"], ids, cross_kv(params, enc, config, dtype), config.decoder,
                      attention_mask=attention_mask, position_ids=position_ids, dtype=dtype, key=key)


@partial(jax.jit, static_argnames=("config", "dtype"))
def _decode_jit(params, ids, enc, attention_mask, position_ids, key, *, config, dtype):
    return _decode(params, ids, enc, config, attention_mask, position_ids, dtype, key)["logits"]


def decode(params, ids, enc, config: Config, *, attention_mask=None, position_ids=None, dtype=jnp.float32,
           key=None):
    """Teacher-forced decoder over given encoder states. ids [B,T], enc [B,S,D] -> logits [B,T,V]."""
    check_ids(ids, config)
    _check_mask(attention_mask, ids, "attention_mask")
    _check_mask(position_ids, ids, "position_ids")
    if enc.ndim != 3 or enc.shape[-1] != config.decoder.n_embd:
        raise ValueError(f"enc must be [B,S,{config.decoder.n_embd}] (encode()'s output), got {enc.shape}")
    if ids.shape[0] % enc.shape[0]:
        raise ValueError(f"ids batch {ids.shape[0]} is not a multiple of the encoder batch {enc.shape[0]}")
    return _decode_jit(params, ids, enc, attention_mask, position_ids, key, config=config, dtype=jnp.dtype(dtype))


@partial(jax.jit, static_argnames=_STATIC)
def _forward_jit(params, pixels, ids, attention_mask, position_ids, key, *, config, interpolate_pos_encoding,
                 dtype, output_hidden_states, output_attentions):
    enc, enc_out = _encode(params, pixels, config, interpolate_pos_encoding, dtype, site_key(key, 0))
    dec_out = _decode(params, ids, enc, config, attention_mask, position_ids, dtype, site_key(key, 1))
    if not (output_hidden_states or output_attentions):
        return dec_out["logits"]
    hid, att = output_hidden_states, output_attentions
    return Output(
        logits=dec_out["logits"], encoder_last_hidden_state=enc_out["last_hidden_state"],
        encoder_hidden_states=enc_out["hidden_states"] if hid else None,
        encoder_attentions=enc_out["attentions"] if att else None,
        decoder_hidden_states=dec_out["hidden_states"] if hid else None,
        decoder_attentions=dec_out["attentions"] if att else None,
        cross_attentions=dec_out["cross_attentions"] if att else None,
    )


def forward(params, pixels, ids, config: Config, *, attention_mask=None, position_ids=None,
            interpolate_pos_encoding: bool = False, dtype=jnp.float32, output_hidden_states: bool = False,
            output_attentions: bool = False, key=None):
    """Teacher-forced logits, like ``VisionEncoderDecoderModel(pixel_values, decoder_input_ids)``.

    pixels [B,C,H,W] float, ids [B,T] int, attention_mask [B,T] (1 = token, 0 = padding),
    position_ids [B,T] (default 0..T-1, as transformers). Returns float32 logits [B,T,V], or an
    ``Output`` with hidden states / attention weights when asked. ``dtype`` is the compute
    dtype (params are cast to it); ``key`` turns on dropout for training.
    """
    check_pixels(pixels, config)
    check_ids(ids, config)
    _check_batch(pixels, ids)
    _check_mask(attention_mask, ids, "attention_mask")
    _check_mask(position_ids, ids, "position_ids")
    return _forward_jit(params, pixels, ids, attention_mask, position_ids, key, config=config,
                        interpolate_pos_encoding=interpolate_pos_encoding, dtype=jnp.dtype(dtype),
                        output_hidden_states=output_hidden_states, output_attentions=output_attentions)


@partial(jax.jit, static_argnames=("config", "max_len", "rows_per_image", "dtype"))
def _init_cache_jit(params, enc, *, config, max_len, rows_per_image, dtype):
    rows = enc.shape[0] * rows_per_image
    return {
        "cross": cross_kv(params, enc, config, dtype),  # [B,H,S,K] per layer, once per image
        "self": decoder_module(config).init_self_cache(config.decoder, rows, max_len, dtype),
        "mask": jnp.zeros((rows, max_len), bool),  # which cached positions hold real tokens
        "pos": jnp.zeros((), jnp.int32),  # next write index
    }


def init_cache(params, enc, config: Config, max_len: int, *, rows_per_image: int = 1, dtype=jnp.float32):
    """A decoding cache for ``max_len`` decoder tokens. Cross-attention K/V are computed here,
    once per image; ``rows_per_image`` decoder rows (beams, samples) share them, image-major
    (row r reads image r // rows_per_image)."""
    if enc.ndim != 3 or enc.shape[-1] != config.decoder.n_embd:
        raise ValueError(f"enc must be [B,S,{config.decoder.n_embd}] (encode()'s output), got {enc.shape}")
    if not 0 < max_len <= config.decoder.n_positions:
        raise ValueError(f"max_len={max_len} must be in [1, n_positions={config.decoder.n_positions}]")
    return _init_cache_jit(params, enc, config=config, max_len=int(max_len), rows_per_image=int(rows_per_image),
                           dtype=jnp.dtype(dtype))


def cache_step(params, cache, ids, config: Config, attention_mask=None, dtype=jnp.float32):
    """The unjitted core of ``step``, for use inside other jitted code (generate); also returns
    the per-layer cross-attention weights."""
    return decoder_module(config).step(params["decoder"], cache, ids, config.decoder,
                                       attention_mask=attention_mask, dtype=dtype)


@partial(jax.jit, static_argnames=("config", "dtype"), donate_argnames=("cache",))
def _step_jit(params, cache, ids, attention_mask, *, config, dtype):
    logits, cache, _ = cache_step(params, cache, ids, config, attention_mask, dtype)
    return logits, cache


def step(params, cache, ids, config: Config, *, attention_mask=None, dtype=jnp.float32):
    """Feed ``ids`` [R,t] (a prompt, or one token) to the cached decoder: (logits [R,t,V], cache).
    ``attention_mask`` [R,t] marks padding inside a ragged, left-padded prompt. The input cache
    is donated (its buffers are reused), so keep using the returned one."""
    check_ids(ids, config)
    _check_mask(attention_mask, ids, "attention_mask")
    rows, max_len = cache["mask"].shape
    if ids.shape[0] != rows:
        raise ValueError(f"ids have {ids.shape[0]} rows, the cache holds {rows}")
    if _is_concrete(cache["pos"]) and int(cache["pos"]) + ids.shape[1] > max_len:
        raise ValueError(f"cache is full: {int(cache['pos'])} + {ids.shape[1]} tokens > max_len={max_len}")
    return _step_jit(params, cache, ids, attention_mask, config=config, dtype=jnp.dtype(dtype))
