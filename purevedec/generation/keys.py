"""Random keys of a generate call: one key for the whole batch, or one key per image.

One key draws every step's numbers for the whole batch at once (fold_in of the buffer column),
so a row's draws depend on the batch it is in. Per-image keys ([B] typed keys, or [B,2] raw
uint32 ones) give every row its own stream, folded with its sample index and the generated
step (not the buffer column, which moves with the prompt's padding): an image's output is then
the same whatever else is in the batch and however its prompt was padded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _is_typed(key) -> bool:
    return jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def batch_key(key, images: int):
    """``key`` checked: a single key as given, or per-image keys as a typed [B] key array."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    single_ndim = 0 if _is_typed(key) else 1
    if not _is_typed(key) and (key.dtype != jnp.uint32 or key.shape[-1:] != (2,)):
        raise ValueError(f"key must be jax.random.key(seed) (or a [B] array of them, one per image), got "
                         f"dtype {key.dtype} shape {key.shape}")
    if key.ndim == single_ndim:
        return key
    if key.ndim != single_ndim + 1 or key.shape[0] != images:
        raise ValueError(f"key has shape {key.shape}: pass one key, or one per image ({images} images), e.g. "
                         f"jax.random.split(jax.random.key(seed), {images})")
    return key if _is_typed(key) else jax.random.wrap_key_data(key)


def per_image(key) -> bool:
    """Whether ``key`` (as ``batch_key`` returns it) holds one key per image."""
    return _is_typed(key) and key.ndim == 1


def row_keys(keys, rows_per_image: int):
    """Per-image keys [B] -> per-row keys [B*k] (image-major), each folded with its sample index."""
    sample = jnp.tile(jnp.arange(rows_per_image), keys.shape[0])
    return jax.vmap(jax.random.fold_in)(jnp.repeat(keys, rows_per_image), sample)


def categorical(key, scores, column, generated):
    """One token per row from scores [R,V]: one draw for the batch at buffer ``column`` with a
    single key, else per-row keys [R] folded with the ``generated`` step."""
    if not per_image(key):
        return jax.random.categorical(jax.random.fold_in(key, column), scores, axis=-1)
    draw = lambda k, x: jax.random.categorical(jax.random.fold_in(k, generated), x)  # noqa: E731
    return jax.vmap(draw)(key, scores)


def gumbel(key, shape, column, generated):
    """Gumbel noise [B,M] for beam sampling: one draw for the batch with a single key, else one
    per image from its key [B] folded with the ``generated`` step."""
    if not per_image(key):
        return jax.random.gumbel(jax.random.fold_in(key, column), shape)
    return jax.vmap(lambda k: jax.random.gumbel(jax.random.fold_in(k, generated), shape[1:]))(key)
