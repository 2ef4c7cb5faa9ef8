"""The machine's own limits, measured in the benchmark's process: peak fp32 matmul FLOP/s and
memory read bandwidth. Every speed result is reported as a fraction of the bound they give."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def _best(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 FLOP/s of one XLA n x n x n matmul (the shape vendors quote peaks with)."""
    a = jnp.ones((n, n), jnp.float32)
    return 2 * n ** 3 / _best(jax.jit(jnp.matmul), a, a, repeats=repeats)


def read_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s of an XLA sum over a buffer far larger than the caches: a pure streaming read,
    the access pattern of a decode step reading its weights."""
    x = jnp.ones((megabytes * 2 ** 20 // 4,), jnp.float32)
    return x.nbytes / _best(jax.jit(jnp.sum), x, repeats=repeats)


def measure(tiny: bool = False) -> dict:
    n, mb = (512, 64) if tiny else (2048, 512)
    return {"matmul_flops": matmul_flops(n), "read_bytes_per_s": read_bandwidth(mb),
            "devices": [str(d) for d in jax.devices()], "cpu_count": __import__("os").cpu_count()}
