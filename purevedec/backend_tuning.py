"""Which speed tricks run on which backend, chosen here and nowhere else.

Every trick below was measured on XLA:CPU (the numbers are in docs/perf-notes.md) and none
changes what is computed. On GPU and TPU the plain math runs unless a measurement there says
otherwise: a trick that helps one compiler's kernel choice can hurt another's.

The choice is made when a function is traced (``current()`` reads ``jax.default_backend()``),
never at import, so importing purevedec does not start a backend (``jax.distributed.initialize``
must come first on several hosts).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax


@dataclass(frozen=True)
class Tuning:
    """The tricks one backend runs."""
    pad_low_precision_rows: bool
    """Pad a low-precision weight product of a few rows to ``layers.MIN_LOW_PRECISION_ROWS`` (XLA:CPU
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
    tie_remat_cotangent: bool
    """Tie a rematerialised layer's recomputation to its output's cotangent (XLA:CPU otherwise
    schedules every recomputation at the start of the backward pass, saving no memory)."""


CPU = Tuning(pad_low_precision_rows=True, transposed_few_rows=True, pad_single_query=True, grouped_attention=True,
             tie_remat_cotangent=True)
PLAIN = Tuning(pad_low_precision_rows=False, transposed_few_rows=False, pad_single_query=False,
               grouped_attention=False, tie_remat_cotangent=False)
# Backend name (jax.default_backend()) -> its tricks; a backend not listed runs the plain math.
BACKENDS = {"cpu": CPU, "gpu": PLAIN, "tpu": PLAIN}


def current() -> Tuning:
    """The tricks of the backend programs are being traced for."""
    return BACKENDS.get(jax.default_backend(), PLAIN)
