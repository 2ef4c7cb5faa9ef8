"""The machine's own limits, measured in the benchmark's process: peak matmul FLOP/s (fp32 and
bf16) and memory read bandwidth. Every speed result is reported as a fraction of the bound
they give.

A limit is the best any library here reaches (XLA or PyTorch): a bound one library beats is
not a bound. On CPUs with bf16 matrix units (AMX, AVX512-BF16) the bf16 peak is several times
the fp32 one, so bf16 results are held to their own peak."""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp


def _best(fn, repeats: int) -> float:
    t = time.perf_counter()
    fn()  # compile and warm up
    if time.perf_counter() - t > 5.0:
        # A path with no fast kernel (torch bf16 without AVX512-BF16/AMX ran a 2048^3 product at
        # well under 1 GFLOP/s here): one timed call is enough to show it is not the bound.
        repeats = 1
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _xla_matmul(n: int, dtype, repeats: int) -> float:
    a = jnp.ones((n, n), dtype)
    mm = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    return 2 * n ** 3 / _best(lambda: mm(a, a).block_until_ready(), repeats)


def _torch_matmul(n: int, dtype: str, repeats: int) -> float:
    try:
        import torch
    except ImportError:
        return 0.0
    a = torch.ones((n, n), dtype=getattr(torch, dtype))
    with torch.no_grad():
        return 2 * n ** 3 / _best(lambda: torch.mm(a, a), repeats)


def matmul_flops(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> dict:
    """FLOP/s of one n x n x n matmul (the shape vendors quote peaks with), per library."""
    return {"xla": _xla_matmul(n, jnp.dtype(dtype), repeats), "torch": _torch_matmul(n, dtype, repeats)}


def read_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s of an XLA sum over a buffer far larger than the caches: a pure streaming read,
    the access pattern of a decode step reading its weights."""
    x = jnp.ones((megabytes * 2 ** 20 // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    return x.nbytes / _best(lambda: total(x).block_until_ready(), repeats)


def measure(tiny: bool = False) -> dict:
    n, mb = (512, 64) if tiny else (2048, 512)
    fp32, bf16 = matmul_flops(n, "float32"), matmul_flops(n, "bfloat16")
    return {"matmul_flops": max(fp32.values()), "matmul_flops_bf16": max(bf16.values()),
            "matmul_flops_by_library": {"float32": fp32, "bfloat16": bf16},
            "read_bytes_per_s": read_bandwidth(mb),
            "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count()}
