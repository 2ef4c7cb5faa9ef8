"""Checks of the model functions' inputs, in Python before anything is traced: shapes and dtypes
always, values too when the arrays are concrete rather than tracers. Each raises ``ValueError``
naming the argument and what it should be."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .config import Config


def is_concrete(x) -> bool:
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
    if not is_concrete(x) or not x.size:
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


def check_positions(position_ids, ids, config: Config) -> None:
    check_mask(position_ids, ids, "position_ids")
    found = None if position_ids is None else _value_range(position_ids)
    if found and (found[0] < 0 or found[1] >= config.decoder.n_positions):
        raise ValueError(f"position_ids hold values in [{found[0]}, {found[1]}], outside the decoder's position "
                         f"table [0, {config.decoder.n_positions})")


def check_mask(mask, ids, name: str) -> None:
    if mask is not None and tuple(np.shape(mask)) != tuple(ids.shape):
        raise ValueError(f"{name} has shape {tuple(np.shape(mask))}, expected the ids' shape {tuple(ids.shape)}")


def check_rows(images: int, rows: int, what: str) -> None:
    """Decoder rows come in equal groups per image, image-major (several captions per image)."""
    if images == 0 or rows % images:
        raise ValueError(f"{what} has {rows} rows, which is not a multiple of the {images} images: rows "
                         "r*k..r*k+k-1 belong to image r (k captions per image)")


def check_enc(enc, config: Config) -> None:
    if getattr(enc, "ndim", None) != 3 or enc.shape[-1] != config.cross_width:
        raise ValueError(f"enc must be [B,S,{config.cross_width}] (encode()'s output), "
                         f"got {getattr(enc, 'shape', None)}")
