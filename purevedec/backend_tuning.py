"""Which speed tricks run on which backend, chosen here and nowhere else.

Every trick below was measured on XLA:CPU (the numbers are in docs/perf-notes.md) and none
changes what is computed. On GPU and TPU the plain math runs unless a measurement there says
otherwise: a trick that helps one compiler's kernel choice can hurt another's.

The choice is made when a function is traced (``current()`` reads ``jax.default_backend()``),
never at import, so importing purevedec does not start a backend (``jax.distributed.initialize``
must come first on several hosts).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax

try:
    from jax._src import core as _jax_core
except ImportError:  # a JAX without it: decode programs compile without their options
    _jax_core = None


@dataclass(frozen=True)
class Tuning:
    """The tricks one backend runs."""
    pad_low_precision_rows: bool
    """Pad a low-precision weight product of a few rows to ``layers.min_low_precision_rows()`` (XLA:CPU
    sends one bf16 row to a slow matrix-vector path)."""
    transposed_few_rows: bool
    """Compute a float32 product of 2..``layers.MAX_TRANSPOSED_ROWS`` rows as (w @ x.T).T behind
    optimization barriers (XLA:CPU picks a faster kernel for the [o, m] result)."""
    pad_single_query: bool
    """Attend with one low-precision query row padded to two (XLA:CPU otherwise copies K and V to
    float32 every decode step)."""
    grouped_attention: bool
    """Attend long sequences a few heads at a time (``attention.heads_per_group``: XLA:CPU streams
    whole score tensors through memory)."""
    integer_cache_writes: bool
    """Write new keys and values into a bf16/fp16 cache as 16-bit integers (XLA:CPU widens a bf16
    ``dynamic_update_slice`` to float32 over the whole buffer: a read and write of it per step)."""
    tie_remat_cotangent: bool
    """Tie a rematerialised layer's recomputation to its output's cotangent (XLA:CPU otherwise
    schedules every recomputation at the start of the backward pass, saving no memory)."""


CPU = Tuning(pad_low_precision_rows=True, transposed_few_rows=True, pad_single_query=True, grouped_attention=True,
             integer_cache_writes=True, tie_remat_cotangent=True)
PLAIN = Tuning(pad_low_precision_rows=False, transposed_few_rows=False, pad_single_query=False,
               grouped_attention=False, integer_cache_writes=False, tie_remat_cotangent=False)
# Backend name (jax.default_backend()) -> its tricks; a backend not listed runs the plain math.
BACKENDS = {"cpu": CPU, "gpu": PLAIN, "tpu": PLAIN}


@functools.lru_cache(maxsize=None)
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 tiles (Linux's /proc/cpuinfo; False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:
        return False


def current() -> Tuning:
    """The tricks of the backend programs are being traced for."""
    return BACKENDS.get(jax.default_backend(), PLAIN)


DECODE_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}
"""Compiler options of the decoding programs (generate, the engine, step), and for a jit of
one's own around ``generate_core``, ``step`` or the engine: ``jax.jit(f, compiler_options=...)``.
With region analysis XLA:CPU's copy insertion lets a step write its keys and values into the
carried cache in place; without it each step copies each layer's whole cache
(docs/perf-notes.md). Other backends do not read xla_cpu_ options."""


def decode_jit(fn, **jit_kwargs):
    """``jax.jit(fn, **jit_kwargs)`` compiled with DECODE_COMPILER_OPTIONS when called at top level;
    traced inside another jit (``generate_core`` in a caller's program), where JAX refuses compiler
    options, the plain jit."""
    top = jax.jit(fn, compiler_options=DECODE_COMPILER_OPTIONS, **jit_kwargs)
    nested = jax.jit(fn, **jit_kwargs)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return (top if _at_top_level() else nested)(*args, **kwargs)

    call.lower = lambda *args, **kwargs: (top if _at_top_level() else nested).lower(*args, **kwargs)
    call._cache_size = lambda: top._cache_size() + nested._cache_size()  # programs compiled, as jit's
    return call


def _at_top_level() -> bool:
    """Whether no trace is under way (JAX has no public test: without its internal one, the
    plain program runs, slower but the same)."""
    clean = getattr(_jax_core, "trace_state_clean", None)
    return bool(clean and clean())
