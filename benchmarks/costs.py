"""Work per workload: encoder FLOPs per image and the bytes and FLOPs of one decode step. Divided
by the machine's limits (machine.py) they give each result's lower bound.

Every count comes from purevedec's own programs traced on abstract params (``abstract_params``:
shapes only, nothing allocated, a fraction of a second at full size), so the bounds hold for
every registered encoder and decoder family with no formula per architecture here:

- encoder FLOPs: ``purevedec.flops`` of ``encode`` on the batch (the projection included);
- decode-step bytes: every decoder weight the step's program reads (``elements_read``: a weight
  it never touches, such as the cross-attention K/V kernels that run once per image in
  ``init_cache``, counts nothing; a table it only indexes counts one row; a tied head counts
  whole), plus each image's cross K/V and each row's self K/V at the cached length, sized from
  the cache ``init_cache`` lays out;
- decode-step FLOPs: ``purevedec.flops`` of ``step`` over the given rows and cached length.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import purevedec as pv
from purevedec.config import Config
from purevedec.costs import elements_read
from purevedec.params import abstract_params


def _pixels(config: Config, images: int) -> jax.ShapeDtypeStruct:
    e = config.encoder
    return jax.ShapeDtypeStruct((images, e.num_channels, *e.image_size), jnp.float32)


def _ids(rows: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((rows, 1), jnp.int32)


def _cache(config: Config, images: int, rows_per_image: int, max_len: int):
    """The abstract cache ``init_cache`` returns for ``images`` images of ``rows_per_image`` rows."""
    params = abstract_params(config)
    enc = jax.eval_shape(lambda p, x: pv.encode(p, x), params, _pixels(config, images))
    return jax.eval_shape(lambda p, e: pv.init_cache(p, e, max_len=max_len, rows_per_image=rows_per_image),
                          params, enc)


def _step(params, cache, ids):
    return pv.step(params, cache, ids, donate=False)


@functools.lru_cache(maxsize=64)
def encoder_flops(config: Config, images: int = 1) -> float:
    """FLOPs of ``images`` images through ``encode`` (the states the decoder reads, projection
    included; the cross-attention K/V, computed once per image in ``init_cache``, are left out).
    Counted at the batch itself: some work is once per batch, not per image (Swin's is not
    exactly linear in the batch)."""
    return float(pv.flops(lambda p, x: pv.encode(p, x), abstract_params(config), _pixels(config, images)))


@functools.lru_cache(maxsize=64)
def _step_elements(config: Config) -> tuple[int, int, int]:
    """(decoder weights one step reads, cross K/V elements per image, self K/V elements per row
    and cached token). The cache is linear in images, rows and length (``DecoderCache``: cross
    K/V [B,H,S,K] per layer, self K/V [R,H,Tmax,K]), so one image, one row and one slot size it."""
    cache = _cache(config, 1, 1, 1)
    weights = sum(jax.tree.leaves(elements_read(_step, abstract_params(config), cache, _ids(1))[0]))
    cross = sum(x.size for x in jax.tree.leaves(cache.cross_kv))
    self_kv = sum(x.size for x in jax.tree.leaves(cache.self_kv))
    return weights, cross, self_kv


def decode_bytes(config: Config, images: int, rows_per_image: int, cached: int, itemsize: int = 4) -> float:
    """Bytes one decode step reads at the least: the decoder weights its program reads (a table it
    indexes, one row; weights it never uses, such as the cross K/V kernels, nothing), each
    image's cross-attention K/V once (shared by its rows), and each row's self-attention cache of
    ``cached`` tokens."""
    weights, cross, self_kv = _step_elements(config)
    return float(weights + images * cross + images * rows_per_image * cached * self_kv) * itemsize


@functools.lru_cache(maxsize=256)
def decode_flops(config: Config, images: int, rows_per_image: int, cached: int) -> float:
    """FLOPs of one decode step of images x rows_per_image rows, each new token attending over
    ``cached`` earlier ones and itself (a cache of ``cached`` + 1 slots). At a few dozen rows
    this, not the bytes, bounds a step on a CPU (fp32 peak / bandwidth is only ~10 FLOP per byte)."""
    rows = images * rows_per_image
    cache = _cache(config, images, rows_per_image, cached + 1)
    return float(pv.flops(_step, abstract_params(config), cache, _ids(rows)))


def bounds(cells: list[dict], config: Config, limits: dict, tokens: int) -> None:
    """Each speed cell's lower bound (``bound_s``, of which ``bound_encoder_s`` the encoder's;
    ``bound_token_ms`` for generation), in place:
    the encoder's FLOPs at the dtype's peak, plus per token the larger of the bytes a step reads
    over the read bandwidth and its FLOPs at the peak (a half-full self cache)."""
    for c in cells:
        bf16 = c["dtype"] == "bfloat16"
        item = 2 if bf16 else 4
        peak = limits["matmul_flops_bf16" if bf16 else "matmul_flops"]
        c["bound_s"] = c["bound_encoder_s"] = encoder_flops(config, c["batch"]) / peak
        if c["workload"] != "encoder":
            beams = 1 if c["workload"] == "greedy" else int(c["workload"].split("-")[1])
            step = max(decode_bytes(config, c["batch"], beams, tokens // 2, item) / limits["read_bytes_per_s"],
                       decode_flops(config, c["batch"], beams, tokens // 2) / peak)
            c["bound_token_ms"] = step * 1e3
            c["bound_s"] += tokens * step
