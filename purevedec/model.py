"""Composition: encode -> (projection) -> decode, and the public model functions.

Every public function takes ``params`` first and ``config`` as an optional argument: by
default the config the params carry (``params["config"]``), an explicit one wins (to change
dropout rates, say). They validate params and inputs in Python (shapes always, values too
when the arrays are concrete rather than tracers), then call one jitted function whose static
arguments are the config, dtype and output flags: each combination compiles once.

Input checks live in ``inputs``, the unjitted passes in ``passes``, encoder chunking in
``encoder_chunks``, cached decoding (``init_cache``, ``step``) in ``decoding``.

Return types follow one rule: ``forward`` returns the logits array and ``encode`` the states
array, unless ``output_hidden_states`` or ``output_attentions`` is set (static Python flags),
in which case they return an ``Output`` / ``EncoderOutput``. Nothing else changes the type.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from .config import Config
from .encoder_chunks import encoder_chunk, encoder_states
from .inputs import check_enc, check_ids, check_mask, check_pixels, check_positions, check_rows, compute_dtype
from .layers import site_key
from .length_buckets import bucket_length, pad_columns, trim_decoder_output
from .params import unpack
from .passes import decode_pass, encode_pass, layer_kv
from .sharding import batch_split, gather_weights, weight_gathers


class EncoderOutput(NamedTuple):
    """What ``encode`` returns when hidden states or attentions are asked for."""
    hidden: jax.Array
    """[B,S,D_dec] float32: what the decoder reads (after the projection)."""
    last_hidden_state: jax.Array
    """[B,S,D_enc] float32: the encoder's own output (before the projection)."""
    hidden_states: Optional[tuple] = None
    """The embeddings and each layer's output, [B,S,D_enc] each (L_enc + 1 arrays), when asked."""
    attentions: Optional[tuple] = None
    """Each layer's attention weights [B,H,S,S] (L_enc arrays), when asked."""


class Output(NamedTuple):
    """What ``forward`` returns when hidden states or attentions are asked for (transformers' names)."""
    logits: jax.Array
    """[B,T,V] float32 next-token logits (B decoder rows)."""
    encoder_last_hidden_state: jax.Array
    """[B_img,S,D_enc]: the encoder's output before the projection."""
    encoder_hidden_states: Optional[tuple] = None
    """L_enc + 1 arrays [B_img,S,D_enc] (embeddings, then each layer), when asked."""
    encoder_attentions: Optional[tuple] = None
    """L_enc arrays [B_img,H,S,S] of attention weights, when asked."""
    decoder_hidden_states: Optional[tuple] = None
    """L_dec + 1 arrays [B,T,D] (the last after the final norm), when asked."""
    decoder_attentions: Optional[tuple] = None
    """L_dec arrays [B,H,T,T] of self-attention weights, when asked."""
    cross_attentions: Optional[tuple] = None
    """L_dec arrays [B,H,T,S] of cross-attention weights over the image tokens, when asked."""


_STATIC = ("config", "interpolate_pos_encoding", "dtype", "output_hidden_states", "output_attentions")


def cross_kv(params, enc: jax.Array, config: Config | None = None, *, dtype=jnp.float32) -> list:
    """Per decoder layer, the cross-attention (K, V) [B,H,S,K] the decoder reads from ``enc``."""
    weights, config = unpack(params, config)
    check_enc(enc, config)
    return layer_kv(weights, enc, config, compute_dtype(dtype))


@partial(jax.jit, static_argnames=_STATIC + ("chunk", "gathers", "remat"))
def _encode_jit(weights, pixels, key, *, config, interpolate_pos_encoding, dtype, output_hidden_states,
                output_attentions, chunk, gathers=None, remat=False):
    weights = gather_weights(weights, gathers)
    extras = output_hidden_states or output_attentions
    if not extras and key is None and not remat:
        return encoder_states(weights, pixels, config, interpolate_pos_encoding, dtype, chunk)
    hidden, out = encode_pass(weights, pixels, config, interpolate_pos_encoding, dtype, key, remat)
    if not extras:
        return hidden
    return EncoderOutput(hidden, out["last_hidden_state"],
                         out["hidden_states"] if output_hidden_states else None,
                         out["attentions"] if output_attentions else None)


def encode(params, pixels, config: Config | None = None, *, interpolate_pos_encoding: bool = False,
           dtype=jnp.float32, output_hidden_states: bool = False, output_attentions: bool = False, key=None,
           remat: bool = False):
    """Image -> the states the decoder reads. pixels [B,C,H,W] -> [B,S,D] (after projection),
    or an ``EncoderOutput`` when hidden states or attentions are asked for.
    ``key`` turns on dropout (training); None is inference. ``remat`` recomputes each layer in the
    backward pass instead of keeping its activations (less memory for grad; reverse mode only;
    per-layer hidden states and attentions then come back None)."""
    weights, config = unpack(params, config)
    check_pixels(pixels, config)
    return _encode_jit(weights, pixels, key, config=config, interpolate_pos_encoding=interpolate_pos_encoding,
                       dtype=compute_dtype(dtype), output_hidden_states=bool(output_hidden_states),
                       output_attentions=bool(output_attentions), chunk=encoder_chunk(pixels),
                       gathers=weight_gathers(weights, batch_split(pixels)), remat=bool(remat))


@partial(jax.jit, static_argnames=("config", "dtype", "remat"))
def _decode_jit(weights, ids, enc, attention_mask, position_ids, key, *, config, dtype, remat=False):
    return decode_pass(weights, ids, enc, config, attention_mask, position_ids, dtype, key, remat)["logits"]


def decode(params, ids, enc, config: Config | None = None, *, attention_mask=None, position_ids=None,
           dtype=jnp.float32, key=None, remat: bool = False):
    """Teacher-forced decoder over given encoder states. ids [B*k,T], enc [B,S,D] -> logits [B*k,T,V]
    (k caption rows per image, image-major). ``remat`` as in ``encode``."""
    weights, config = unpack(params, config)
    check_ids(ids, config)
    check_mask(attention_mask, ids, "attention_mask")
    check_positions(position_ids, ids, config)
    check_enc(enc, config)
    check_rows(enc.shape[0], ids.shape[0], "ids")
    return _decode_jit(weights, ids, enc, attention_mask, position_ids, key, config=config,
                       dtype=compute_dtype(dtype), remat=bool(remat))


@partial(jax.jit, static_argnames=_STATIC + ("gathers", "remat"))
def _forward_jit(weights, pixels, ids, attention_mask, position_ids, key, *, config, interpolate_pos_encoding,
                 dtype, output_hidden_states, output_attentions, gathers=None, remat=False):
    weights = gather_weights(weights, gathers)
    enc, enc_out = encode_pass(weights, pixels, config, interpolate_pos_encoding, dtype, site_key(key, 0), remat)
    dec_out = decode_pass(weights, ids, enc, config, attention_mask, position_ids, dtype, site_key(key, 1), remat)
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


def forward(params, pixels, ids, config: Config | None = None, *, attention_mask=None, position_ids=None,
            interpolate_pos_encoding: bool = False, dtype=jnp.float32, output_hidden_states: bool = False,
            output_attentions: bool = False, key=None, remat: bool = False, pad_to_multiple_of: int | None = None):
    """Teacher-forced logits, like ``VisionEncoderDecoderModel(pixel_values, decoder_input_ids)``.

    pixels [B,C,H,W] float, ids [B*k,T] int (k caption rows per image, image-major: each image
    is encoded once), attention_mask [B*k,T] (1 = token, 0 = padding), position_ids [B*k,T]
    (default 0..T-1, as transformers). Returns float32 logits [B*k,T,V], or an ``Output`` with
    hidden states / attention weights when asked. ``dtype`` is the compute dtype (params are
    cast to it); ``key`` turns on dropout for training; ``remat`` as in ``encode``.
    ``pad_to_multiple_of=m`` runs the decoder at T rounded up to a multiple of m and returns the
    first T positions: the same values, one compiled program for every T in a bucket (see
    ``length_buckets``).

    Token ids and positions are range-checked when concrete. Under ``jax.jit`` they cannot be:
    an id outside [0, V) or a position outside the table makes that row's logits NaN (never a
    silent read of another row).
    """
    weights, config = unpack(params, config)
    check_pixels(pixels, config)
    check_ids(ids, config)
    check_rows(pixels.shape[0], ids.shape[0], "ids")
    check_mask(attention_mask, ids, "attention_mask")
    check_positions(position_ids, ids, config)
    length = ids.shape[1]
    padded = bucket_length(length, pad_to_multiple_of, config.decoder.n_positions)
    out = _forward_jit(weights, pixels, pad_columns(ids, padded, 0), pad_columns(attention_mask, padded, 0),
                       pad_columns(position_ids, padded, 0), key, config=config,
                       interpolate_pos_encoding=bool(interpolate_pos_encoding), dtype=compute_dtype(dtype),
                       output_hidden_states=bool(output_hidden_states), output_attentions=bool(output_attentions),
                       gathers=weight_gathers(weights, batch_split(pixels)), remat=bool(remat))
    return out if padded == length else trim_decoder_output(out, length)


