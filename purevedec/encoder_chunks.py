"""The encoder over a large batch in chunks of images (one compiled chunk in a loop), keeping a
batch split over devices split."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .passes import encode_pass


# Images per encoder chunk when only the final states are needed: a large batch's activations
# outgrow the CPU caches (docs/perf-notes.md), and chunks cap big batches' activation memory.
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
        return encode_pass(weights, x, config, interpolate_pos_encoding, dtype, None)[0]
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
