"""Composition: encode -> (projection) -> decode, and the public model functions.

Every public function takes ``params`` first and ``config`` as an optional argument: by
default the config the params carry (``params["config"]``), an explicit one wins (to change
dropout rates, say). They validate params and inputs in Python (shapes always, values too
when the arrays are concrete rather than tracers), then call one jitted function whose static
arguments are the config, dtype and output flags: each combination compiles once.

Return types follow one rule: ``forward`` returns the logits array and ``encode`` the states
array, unless ``output_hidden_states`` or ``output_attentions`` is set (static Python flags),
in which case they return an ``Output`` / ``EncoderOutput``. Nothing else changes the type.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from .config import Config
from .decoder_cache import DecoderCache, check_not_donated, init_cache as init_decoder_cache
from .layers import dense, site_key
from .models import decoder_family, encoder_family
from .params import unpack
from .sharding import gather_weights, weight_gathers


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


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def compute_dtype(dtype) -> jnp.dtype:
    """The compute dtype, refusing what is not floating point (an int dtype gives all-zero logits)."""
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype={dtype!r} is not a dtype; use jnp.float32, jnp.bfloat16 or jnp.float16") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"dtype={dt} is not a floating-point compute dtype; use float32, bfloat16 or float16")
    return dt


def check_pixels(pixels, config: Config) -> None:
    if getattr(pixels, "ndim", None) != 4:
        raise ValueError(f"pixels must be a [B,C,H,W] array, got shape {getattr(pixels, 'shape', None)}")
    if not jnp.issubdtype(pixels.dtype, jnp.floating):
        raise ValueError(f"pixels must be floating point (HF image processor output), got {pixels.dtype}")


def _value_range(x) -> tuple[int, int] | None:
    """(min, max) of a concrete integer array; None for a tracer or an empty array."""
    if not _is_concrete(x) or not x.size:
        return None
    x = np.asarray(x)
    return int(x.min()), int(x.max())


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
    found = _value_range(ids)
    if found and (found[0] < 0 or found[1] >= dec.vocab_size):
        raise ValueError(f"{name} hold token ids in [{found[0]}, {found[1]}], outside the vocabulary "
                         f"[0, {dec.vocab_size})")


def _check_positions(position_ids, ids, config: Config) -> None:
    _check_mask(position_ids, ids, "position_ids")
    found = None if position_ids is None else _value_range(position_ids)
    if found and (found[0] < 0 or found[1] >= config.decoder.n_positions):
        raise ValueError(f"position_ids hold values in [{found[0]}, {found[1]}], outside the decoder's position "
                         f"table [0, {config.decoder.n_positions})")


def _check_mask(mask, ids, name: str) -> None:
    if mask is not None and tuple(np.shape(mask)) != tuple(ids.shape):
        raise ValueError(f"{name} has shape {tuple(np.shape(mask))}, expected the ids' shape {tuple(ids.shape)}")


def _check_rows(images: int, rows: int, what: str) -> None:
    """Decoder rows come in equal groups per image, image-major (several captions per image)."""
    if images == 0 or rows % images:
        raise ValueError(f"{what} has {rows} rows, which is not a multiple of the {images} images: rows "
                         "r*k..r*k+k-1 belong to image r (k captions per image)")


def _check_enc(enc, config: Config) -> None:
    if getattr(enc, "ndim", None) != 3 or enc.shape[-1] != config.cross_width:
        raise ValueError(f"enc must be [B,S,{config.cross_width}] (encode()'s output), "
                         f"got {getattr(enc, 'shape', None)}")


def _encode(weights, pixels, config, interpolate_pos_encoding, dtype, key, remat=False):
    out = encoder_family(config.encoder).apply(weights["encoder"], pixels, config.encoder,
                                       interpolate_pos_encoding=interpolate_pos_encoding, dtype=dtype, key=key,
                                       remat=remat)
    hidden = out["last_hidden_state"]
    if config.has_projection:
        hidden = dense(weights["proj"], hidden, dtype)
    return hidden, out


# Images per encoder chunk when only the final states are needed. A large batch's activations
# outgrow the CPU caches: on a 2-core AVX-512 machine, 32 images ran ~10% (fp32) and ~30% (bf16)
# faster as 4 chunks of 8 than as one batch (chunks of 4 were as fast at 32 images, but 8 images
# in two chunks of 4 ran 20% slower in bf16 than in one). It also caps big batches' activation memory.
ENCODER_CHUNK = 8


def encoder_chunk(pixels) -> int | None:
    """Images per encoder chunk for this batch: ENCODER_CHUNK, or None (one pass) when the batch
    is split over a number of devices that does not divide ENCODER_CHUNK: a chunk could not then
    take the same number of images from every device, and chunking would gather the batch."""
    sharding = None if isinstance(pixels, jax.core.Tracer) else getattr(pixels, "sharding", None)
    if sharding is None or not pixels.shape[0]:
        return ENCODER_CHUNK
    shards = pixels.shape[0] // sharding.shard_shape(pixels.shape)[0]
    return ENCODER_CHUNK if ENCODER_CHUNK % shards == 0 else None


def encoder_states(weights, pixels, config, interpolate_pos_encoding, dtype, chunk: int | None):
    """pixels [B,C,H,W] -> the (projected) states [B,S,D], ``chunk`` images at a time (one
    compiled chunk in a loop, then a smaller remainder chunk; None: one pass).

    The chunks are strided so that a batch sharded over devices stays sharded: with
    G = gcd(B, chunk), the batch is viewed as G rows of B/G consecutive images, and chunk j takes
    images j*k..j*k+k-1 (k = chunk/G) of every row. A batch split over d devices, d dividing
    both B and chunk, keeps each row on one device, so every chunk takes chunk/d images from
    each device and nothing moves between them (looping over a plain [B/chunk, chunk] reshape
    puts the split axis on the sequential one, which gathers the whole batch). On one
    device the chunk sizes are those of consecutive chunks: B//chunk of ``chunk``, one of B%chunk."""
    def run(x):
        return _encode(weights, x, config, interpolate_pos_encoding, dtype, None)[0]
    b = pixels.shape[0]
    if chunk is None or b <= chunk:
        return run(pixels)
    g = math.gcd(b, chunk)
    k = chunk // g                    # images per row in one chunk
    n, r = divmod(b // g, k)          # whole chunks, images per row left over
    rows = pixels.reshape(g, b // g, *pixels.shape[1:])  # [G,B/G,C,H,W]
    one = jax.eval_shape(run, jax.ShapeDtypeStruct((chunk, *pixels.shape[1:]), pixels.dtype))  # [chunk,S,D]

    def step(j, out):  # chunk j: k images of every row, written back in place (no transposed copies)
        x = jax.lax.dynamic_slice_in_dim(rows, j * k, k, axis=1)  # [G,k,C,H,W]
        y = run(x.reshape(chunk, *x.shape[2:])).reshape(g, k, *one.shape[1:])
        return jax.lax.dynamic_update_slice_in_dim(out, y, j * k, axis=1)

    out = jax.lax.fori_loop(0, n, step, jnp.zeros((g, b // g, *one.shape[1:]), one.dtype))  # [G,B/G,S,D]
    if r:
        rest = run(rows[:, n * k:].reshape(g * r, *pixels.shape[1:]))
        out = out.at[:, n * k:].set(rest.reshape(g, r, *rest.shape[1:]))
    return out.reshape(b, *out.shape[2:])


def layer_kv(weights, enc: jax.Array, config: Config, dtype) -> list:
    """Per decoder layer, cross-attention (K, V) [B,H,S,K] from the (projected) encoder states."""
    kv = decoder_family(config.decoder).cross_kv
    return [kv(bp, enc, config.decoder, dtype) for bp in weights["decoder"]["blocks"]]


def cross_kv(params, enc: jax.Array, config: Config | None = None, *, dtype=jnp.float32) -> list:
    """Per decoder layer, the cross-attention (K, V) [B,H,S,K] the decoder reads from ``enc``."""
    weights, config = unpack(params, config)
    _check_enc(enc, config)
    return layer_kv(weights, enc, config, compute_dtype(dtype))


@partial(jax.jit, static_argnames=_STATIC + ("chunk", "gathers"))
def _encode_jit(weights, pixels, key, *, config, interpolate_pos_encoding, dtype, output_hidden_states,
                output_attentions, chunk, gathers=None):
    weights = gather_weights(weights, gathers)
    extras = output_hidden_states or output_attentions
    if not extras and key is None:
        return encoder_states(weights, pixels, config, interpolate_pos_encoding, dtype, chunk)
    hidden, out = _encode(weights, pixels, config, interpolate_pos_encoding, dtype, key)
    if not extras:
        return hidden
    return EncoderOutput(hidden, out["last_hidden_state"],
                         out["hidden_states"] if output_hidden_states else None,
                         out["attentions"] if output_attentions else None)


def encode(params, pixels, config: Config | None = None, *, interpolate_pos_encoding: bool = False,
           dtype=jnp.float32, output_hidden_states: bool = False, output_attentions: bool = False, key=None):
    """Image -> the states the decoder reads. pixels [B,C,H,W] -> [B,S,D] (after projection),
    or an ``EncoderOutput`` when hidden states or attentions are asked for.
    ``key`` turns on dropout (training); None is inference."""
    weights, config = unpack(params, config)
    check_pixels(pixels, config)
    return _encode_jit(weights, pixels, key, config=config, interpolate_pos_encoding=interpolate_pos_encoding,
                       dtype=compute_dtype(dtype), output_hidden_states=bool(output_hidden_states),
                       output_attentions=bool(output_attentions), chunk=encoder_chunk(pixels),
                       gathers=weight_gathers(weights, batch_split(pixels)))


def _decode(weights, ids, enc, config, attention_mask, position_ids, dtype, key, remat=False):
    return decoder_family(config.decoder).apply(weights["decoder"], ids, layer_kv(weights, enc, config, dtype), config.decoder,
                                        attention_mask=attention_mask, position_ids=position_ids, dtype=dtype,
                                        key=key, remat=remat)


@partial(jax.jit, static_argnames=("config", "dtype"))
def _decode_jit(weights, ids, enc, attention_mask, position_ids, key, *, config, dtype):
    return _decode(weights, ids, enc, config, attention_mask, position_ids, dtype, key)["logits"]


def decode(params, ids, enc, config: Config | None = None, *, attention_mask=None, position_ids=None,
           dtype=jnp.float32, key=None):
    """Teacher-forced decoder over given encoder states. ids [B*k,T], enc [B,S,D] -> logits [B*k,T,V]
    (k caption rows per image, image-major)."""
    weights, config = unpack(params, config)
    check_ids(ids, config)
    _check_mask(attention_mask, ids, "attention_mask")
    _check_positions(position_ids, ids, config)
    _check_enc(enc, config)
    _check_rows(enc.shape[0], ids.shape[0], "ids")
    return _decode_jit(weights, ids, enc, attention_mask, position_ids, key, config=config,
                       dtype=compute_dtype(dtype))


@partial(jax.jit, static_argnames=_STATIC + ("gathers",))
def _forward_jit(weights, pixels, ids, attention_mask, position_ids, key, *, config, interpolate_pos_encoding,
                 dtype, output_hidden_states, output_attentions, gathers=None):
    weights = gather_weights(weights, gathers)
    enc, enc_out = _encode(weights, pixels, config, interpolate_pos_encoding, dtype, site_key(key, 0))
    dec_out = _decode(weights, ids, enc, config, attention_mask, position_ids, dtype, site_key(key, 1))
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
            output_attentions: bool = False, key=None):
    """Teacher-forced logits, like ``VisionEncoderDecoderModel(pixel_values, decoder_input_ids)``.

    pixels [B,C,H,W] float, ids [B*k,T] int (k caption rows per image, image-major: each image
    is encoded once), attention_mask [B*k,T] (1 = token, 0 = padding), position_ids [B*k,T]
    (default 0..T-1, as transformers). Returns float32 logits [B*k,T,V], or an ``Output`` with
    hidden states / attention weights when asked. ``dtype`` is the compute dtype (params are
    cast to it); ``key`` turns on dropout for training.

    Token ids and positions are range-checked when concrete. Under ``jax.jit`` they cannot be:
    an id outside [0, V) or a position outside the table makes that row's logits NaN (never a
    silent read of another row).
    """
    weights, config = unpack(params, config)
    check_pixels(pixels, config)
    check_ids(ids, config)
    _check_rows(pixels.shape[0], ids.shape[0], "ids")
    _check_mask(attention_mask, ids, "attention_mask")
    _check_positions(position_ids, ids, config)
    return _forward_jit(weights, pixels, ids, attention_mask, position_ids, key, config=config,
                        interpolate_pos_encoding=bool(interpolate_pos_encoding), dtype=compute_dtype(dtype),
                        output_hidden_states=bool(output_hidden_states), output_attentions=bool(output_attentions),
                        gathers=weight_gathers(weights, batch_split(pixels)))


def batch_split(x) -> NamedSharding | None:
    """How a concrete array's leading (batch) axis is split over a mesh: a NamedSharding with only
    that axis given (``constrain_rows`` applies it to other arrays); None for a tracer, a batch
    that is not split, or a sharding that names no mesh axes."""
    sharding = None if isinstance(x, jax.core.Tracer) else getattr(x, "sharding", None)
    if not isinstance(sharding, NamedSharding) or not len(sharding.spec) or sharding.spec[0] is None:
        return None
    return NamedSharding(sharding.mesh, PartitionSpec(sharding.spec[0]))


def constrain_rows(x: jax.Array, split: NamedSharding | None) -> jax.Array:
    """Split x's leading axis as ``split`` says, its other axes left to the partitioner."""
    if split is None:
        return x
    spec = PartitionSpec(split.spec[0], *(PartitionSpec.UNCONSTRAINED,) * (x.ndim - 1))
    return jax.lax.with_sharding_constraint(x, NamedSharding(split.mesh, spec))


def new_cache(weights, enc, config: Config, max_len: int, rows_per_image: int, dtype,
              split: NamedSharding | None = None) -> DecoderCache:
    """The decoding cache (traceable): cross K/V from ``enc`` once per image, empty self K/V.

    The empty buffers depend on no input, so nothing tells the partitioner how to place them: when
    the images are split over devices (``split``, from ``batch_split``), their rows are split the
    same way (rows are image-major, so each device keeps the rows of its own images); without it a
    jitted ``init_cache`` returns them whole on every device."""
    return init_decoder_cache(config.decoder, layer_kv(weights, enc, config, dtype), enc.shape[0] * rows_per_image,
                              max_len, dtype, lambda a: constrain_rows(a, split))


@partial(jax.jit, static_argnames=("config", "max_len", "rows_per_image", "dtype", "split"))
def _init_cache_jit(weights, enc, *, config, max_len, rows_per_image, dtype, split):
    return new_cache(weights, enc, config, max_len, rows_per_image, dtype, split)


def init_cache(params, enc, config: Config | None = None, max_len: int = None, *, rows_per_image: int = 1,
               dtype=jnp.float32):
    """A decoding cache for ``max_len`` decoder tokens. Cross-attention K/V are computed here,
    once per image; ``rows_per_image`` decoder rows (beams, samples) share them, image-major
    (row r reads image r // rows_per_image). Returns a ``DecoderCache`` (its fields: self and cross
    K/V per layer, key mask, per-row offset, position); ``cache.offset`` [R] counts each row's
    padding so far: the attention mask of a left-padded prompt sets it in ``step``."""
    weights, config = unpack(params, config)
    _check_enc(enc, config)
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or \
            not 0 < max_len <= config.decoder.n_positions:
        raise ValueError(f"max_len={max_len!r} must be an int in [1, n_positions={config.decoder.n_positions}]")
    if isinstance(rows_per_image, bool) or not isinstance(rows_per_image, (int, np.integer)) or rows_per_image < 1:
        raise ValueError(f"rows_per_image={rows_per_image!r} must be a positive int")
    return _init_cache_jit(weights, enc, config=config, max_len=int(max_len), rows_per_image=int(rows_per_image),
                           dtype=compute_dtype(dtype), split=batch_split(enc))


POSITIONS = ("per_row", "shifted")


def shifted_positions(positions: str) -> bool:
    """Check the ``positions`` option of step/generate: whether positions are transformers' shifted ones.

    "per_row" (default): a row's positions count from its first real token, so a left-padded
    row continues exactly as it would alone. "shifted": positions are buffer indices, so left
    padding shifts a row's positions, as transformers numbers a padded decoder_input_ids."""
    if not isinstance(positions, str) or positions not in POSITIONS:
        raise ValueError(f"positions={positions!r} must be one of {POSITIONS}: 'per_row' counts each row's "
                         "positions from its first real token, 'shifted' (transformers) from the buffer start")
    return positions == "shifted"


def cache_step(weights, cache, ids, config: Config, attention_mask=None, dtype=jnp.float32, *, shifted=False):
    """The unjitted core of ``step``, for use inside other jitted code (generate); also returns
    the per-layer cross-attention weights."""
    return decoder_family(config.decoder).apply_cached(weights["decoder"], cache, ids, config.decoder,
                                               attention_mask=attention_mask, shifted=shifted, dtype=dtype)


def _step(weights, cache, ids, attention_mask, *, config, dtype, shifted):
    logits, cache, _ = cache_step(weights, cache, ids, config, attention_mask, dtype, shifted=shifted)
    return logits, cache


_step_donating = jax.jit(_step, static_argnames=("config", "dtype", "shifted"), donate_argnames=("cache",))
_step_keeping = jax.jit(_step, static_argnames=("config", "dtype", "shifted"))


def step(params, cache, ids, config: Config | None = None, *, attention_mask=None, positions: str = "per_row",
         dtype=jnp.float32, donate: bool = True):
    """Feed ``ids`` [R,t] (a prompt, or one token) to the cached decoder: (logits [R,t,V], cache).
    ``attention_mask`` [R,t] marks padding inside a ragged, left-padded prompt (0 = padding).

    ``positions="per_row"`` (default): the padding is counted into ``cache.offset`` and each
    row's positions count from its first real token, in this step and every later one: each
    row's logits are those of the row alone. ``positions="shifted"`` numbers tokens by their
    buffer index, as transformers does for a left-padded decoder_input_ids (its batched output).
    Without padding both are the same (positions 0, 1, 2, ...).

    By default the input cache is donated (its buffers are reused), so keep using the returned
    one (stepping a donated cache again raises an error saying so). ``donate=False`` leaves it
    intact: branch a shared prefix into several continuations by stepping the same cache more than once. Past ``max_len`` a concrete cache raises; under jit
    the logits come back NaN (the write would otherwise overwrite the last slot)."""
    weights, config = unpack(params, config)
    check_ids(ids, config)
    _check_mask(attention_mask, ids, "attention_mask")
    shifted = shifted_positions(positions)
    if not isinstance(cache, DecoderCache):
        raise TypeError(f"cache must be the DecoderCache init_cache returns, got {type(cache).__name__}")
    check_not_donated(cache)
    rows, max_len = cache.mask.shape
    if ids.shape[0] != rows:
        raise ValueError(f"ids have {ids.shape[0]} rows, the cache holds {rows}")
    if _is_concrete(cache.pos) and int(cache.pos) + ids.shape[1] > max_len:
        raise ValueError(f"cache is full: {int(cache.pos)} + {ids.shape[1]} tokens > max_len={max_len}")
    run = _step_donating if donate else _step_keeping
    return run(weights, cache, ids, attention_mask, config=config, dtype=compute_dtype(dtype), shifted=shifted)
