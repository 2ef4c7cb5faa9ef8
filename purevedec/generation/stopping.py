"""Stopping rules checked inside the decoding loop (no host round trip per token).

A document model that loses its place repeats itself: the same table row, phrase or token,
until its budget runs out (Nougat's pages end this way when they fail). ``repeating_tail``
ends a row as soon as its generated text ends with one block of at most ``max_period``
tokens written ``repeats`` times in a row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def repeating_tail(tokens, cur, generated, max_period: int, repeats: int):
    """Whether the tokens before column ``cur`` of ``tokens`` [L] end with a block of p <=
    ``max_period`` tokens repeated ``repeats`` times, all of them among the ``generated`` last
    tokens (the prompt never counts)."""
    padded = jnp.concatenate([jnp.zeros(max_period * repeats, tokens.dtype), tokens])
    found = jnp.bool_(False)
    for period in range(1, max_period + 1):
        window = period * repeats
        tail = jax.lax.dynamic_slice(padded, (cur + max_period * repeats - window,), (window,))
        found |= jnp.all(tail[period:] == tail[:-period]) & (generated >= window)
    return found


def check_rule(rule) -> tuple[int, int] | None:
    """``stop_repeats`` as given to the engine: None, or (max_period >= 1, repeats >= 2)."""
    if rule is None:
        return None
    try:
        period, times = (int(x) for x in rule)
    except (TypeError, ValueError):
        raise ValueError(f"stop_repeats={rule!r} must be (max_period, repeats), e.g. (12, 4)") from None
    if period < 1 or times < 2:
        raise ValueError(f"stop_repeats={rule!r}: max_period must be >= 1 and repeats >= 2")
    return period, times
