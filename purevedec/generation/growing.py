"""Generation over a self-attention cache that grows with the text: ``generate_growing``.

``generate`` sizes the cache to ``max_length`` up front, so every decode step attends over the
whole buffer, the columns not yet written included (masked), and a 4,096-token budget costs
4,096 columns at token 10. Here the cache starts at ``bucket_start`` columns and doubles as
the text reaches its end (up to ``max_length``): a step at column n reads fewer than 2n
columns, and the buffers follow the tokens generated. Each bucket size compiles once (one
loop segment per size); between segments the host reads one flag (whether the loop ended),
so a batch whose rows all end early never allocates the larger buckets.

The loop itself is ``generate``'s (the same state, body and processors), run until it ends or
fills its bucket; masked columns weigh exactly zero in attention, so the tokens are those of
``generate`` on the same inputs.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from ..backend_tuning import decode_jit
from ..decoder_cache import DecoderCache
from ..sharding import gather_weights
from .beam_loop import BeamState
from .sample_loop import sample_done
from .search import GenerateOutput, GenerationResult, as_result, loop_functions, prefill, prepare, trimmed

BUCKET_START = 32  # columns of the first bucket; the sizes double from there


def bucket_sizes(prompt_len: int, max_length: int, start: int = BUCKET_START) -> tuple[int, ...]:
    """The cache sizes a generation passes through: powers of two times ``start`` that leave
    room for at least one generated token, then ``max_length``."""
    if isinstance(start, bool) or not isinstance(start, int) or start < 1:
        raise ValueError(f"bucket_start={start!r} must be a positive int")
    sizes, n = [], start
    while n < max_length:
        if n > prompt_len:
            sizes.append(n)
        n *= 2
    return (*sizes, max_length)


def grow_cache(cache: DecoderCache, columns: int) -> DecoderCache:
    """The decoder cache with room for ``columns`` tokens: its self-attention K/V [...,T,K] and
    key mask [...,T] zero-padded along T (the new columns are unwritten and masked). Leading
    axes may be stacked (the slots of continuous batching)."""
    def pad(a, axis):
        extra = columns - a.shape[axis]
        if extra < 0:
            raise ValueError(f"cannot shrink a cache of {a.shape[axis]} columns to {columns}")
        return jnp.pad(a, [(0, extra if i == a.ndim + axis else 0) for i in range(a.ndim)])
    return cache._replace(self_kv=jax.tree.map(lambda a: pad(a, -2), cache.self_kv), mask=pad(cache.mask, -1))


def cache_columns(cache: DecoderCache) -> int:
    return cache.mask.shape[-1]


def _finished(state, plan):
    return ~state.go if isinstance(state, BeamState) else sample_done(state, plan)


@partial(jax.jit, static_argnames=("config", "plan", "dtype", "interpolate_pos_encoding", "shifted", "chunk",
                                   "split", "gathers", "capacity"))
def _start(weights, pixels, prompt, prompt_mask, key, *, config, plan, dtype, interpolate_pos_encoding, shifted,
           chunk, split, gathers, capacity):
    weights = gather_weights(weights, gathers)
    return prefill(weights, pixels, prompt, prompt_mask, key, config=config, plan=plan, dtype=dtype,
                   interpolate_pos_encoding=interpolate_pos_encoding, shifted=shifted, chunk=chunk, split=split,
                   capacity=capacity)


@partial(decode_jit, static_argnames=("config", "plan", "dtype", "gathers"), donate_argnames=("state",))
def _segment(weights, state, ignore_len, key, knobs, *, config, plan, dtype, gathers):
    """Run the loop until it ends or fills the cache's bucket; also whether it ended."""
    weights = gather_weights(weights, gathers)
    run, _ = loop_functions(plan)
    state = run(weights, state, ignore_len, key, knobs, config=config, plan=plan, dtype=dtype,
                limit=cache_columns(state.cache))
    return state, _finished(state, plan)


@partial(jax.jit, static_argnames=("columns",))
def _grow(state, *, columns):
    return state._replace(cache=grow_cache(state.cache, columns))


@partial(jax.jit, static_argnames=("plan",))
def _results(state, *, plan) -> GenerationResult:
    return as_result(*loop_functions(plan)[1](state))


def generate_growing(params, pixels, config=None, *, bucket_start: int = BUCKET_START, **kwargs) -> GenerateOutput:
    """``generate`` (same arguments, same output) with a self-attention cache that starts at
    ``bucket_start`` columns and doubles as the text grows, up to max_length."""
    arrays, statics = prepare(params, pixels, config, **kwargs)
    weights, pixels, prompt, prompt_mask, ignore_len, key, knobs = arrays
    plan = statics["plan"]
    sizes = bucket_sizes(plan.processing.prompt_len, plan.processing.max_length, bucket_start)
    state, key = _start(weights, pixels, prompt, prompt_mask, key, capacity=sizes[0], **statics)
    loop_statics = {k: statics[k] for k in ("config", "plan", "dtype", "gathers")}
    for i, columns in enumerate(sizes):
        if i:
            state = _grow(state, columns=columns)
        state, finished = _segment(weights, state, ignore_len, key, knobs, **loop_statics)
        if bool(finished):
            break
    return trimmed(_results(state, plan=plan))
