"""Logits processors as pure functions on fixed shapes, applied inside the decoding loop.

Each takes scores [R,V] (logits for greedy/sampling, log-probs for beam search, as in
transformers), the token buffer [R,Lmax] of which the first ``cur`` columns are real, and
returns new scores. ``process`` applies them in transformers' order.

Which processors run is static (``Processing``, hashed by jit); the plain numbers
temperature, top_p and repetition_penalty are traced (``Knobs``), so a sweep over their values
compiles once. Sizes stay static because they set array shapes or loop bounds: top_k (the size
of a top-k selection), n-gram size, bad words, lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .topk import top_k as rows_top_k

NEG_INF = -jnp.inf


@dataclass(frozen=True)
class Processing:
    """The static description of which processors run, resolved from the generation options."""
    prompt_len: int
    max_length: int
    eos: tuple[int, ...] = ()
    repetition_penalty: bool = False   # whether the penalty runs; its value is Knobs.repetition_penalty
    no_repeat_ngram_size: int = 0
    bad_single: tuple[int, ...] = ()
    bad_multi: tuple[tuple[int, ...], ...] = ()
    min_length: int = 0
    min_new_tokens: int = 0
    forced_bos_token_id: int | None = None
    forced_eos_token_id: tuple[int, ...] | None = None
    sample: bool = False
    temperature: bool = False          # whether logits are divided by Knobs.temperature
    top_k: int = 0
    top_p: bool = False                # whether the nucleus filter runs with Knobs.top_p
    min_tokens_to_keep: int = 1


class Knobs(NamedTuple):
    """The traced values of the numeric options (float32 scalars)."""
    temperature: jax.Array
    top_p: jax.Array
    repetition_penalty: jax.Array
    length_penalty: jax.Array


def _present(tokens, where, vocab: int):
    """bool [R,V]: True at (r, tokens[r, j]) wherever where[r, j] (column V absorbs the rest)."""
    r = tokens.shape[0]
    hit = jnp.zeros((r, vocab + 1), bool).at[jnp.arange(r)[:, None], jnp.where(where, tokens, vocab)].set(True)
    return hit[:, :vocab]


def _ban(scores, tokens, where):
    """Set scores[r, tokens[r, j]] = -inf wherever where[r, j]."""
    return jnp.where(_present(tokens, where, scores.shape[1]), NEG_INF, scores)


def repetition_penalty(scores, tokens, cur, penalty, ignore_len):
    """Tokens already in the sequence: negative scores * penalty, positive / penalty.
    Positions before ``ignore_len`` (left padding of a prompt) do not count."""
    pos = jnp.arange(tokens.shape[1])[None, :]
    hit = _present(tokens, (pos < cur) & (pos >= ignore_len[:, None]), scores.shape[1])
    return jnp.where(hit, jnp.where(scores < 0, scores * penalty, scores / penalty), scores)


def _last(tokens, cur, n):
    """The last n real tokens [R,n] (ending at column cur-1)."""
    return jax.lax.dynamic_slice_in_dim(tokens, jnp.maximum(cur - n, 0), n, axis=1)


def no_repeat_ngram(scores, tokens, cur, n):
    """Ban every token that would complete an n-gram already present in the sequence."""
    lmax = tokens.shape[1]
    if n == 1:  # every token already present is a repeated 1-gram
        return _ban(scores, tokens, jnp.arange(lmax)[None, :] < cur)
    if n > lmax:
        return scores
    starts = jnp.arange(lmax - n + 1)
    windows = jnp.stack([tokens[:, j:j + lmax - n + 1] for j in range(n - 1)], -1)  # [R,W,n-1]
    follow = tokens[:, n - 1:]  # token after each window [R,W]
    match = jnp.all(windows == _last(tokens, cur, n - 1)[:, None, :], axis=-1)
    match = match & (starts[None, :] + n - 1 < cur) & (cur + 1 >= n)
    return _ban(scores, follow, match)


def bad_words(scores, tokens, cur, single, multi):
    """Single-token bad words are always banned; a longer one bans its last token after its prefix."""
    if single:
        scores = scores.at[:, jnp.array(single)].set(NEG_INF)
    for seq in multi:
        prefix = jnp.array(seq[:-1])
        hit = jnp.all(_last(tokens, cur, len(prefix)) == prefix, axis=-1) & (cur >= len(prefix))
        scores = scores.at[:, seq[-1]].set(jnp.where(hit, NEG_INF, scores[:, seq[-1]]))
    return scores


def _only(scores, ids, when):
    """Where ``when``: every score -inf except ``ids``, which get 0."""
    forced = jnp.full_like(scores, NEG_INF).at[:, jnp.array(ids)].set(0.0)
    return jnp.where(when, forced, scores)


def _no_eos(scores, eos, when):
    return scores.at[:, jnp.array(eos)].set(jnp.where(when, NEG_INF, scores[:, jnp.array(eos)]))


def top_k(scores, k):
    k = min(k, scores.shape[-1])
    kth = rows_top_k(scores, k)[0][:, -1:]
    return jnp.where(scores < kth, NEG_INF, scores)


def top_p(scores, p, keep):
    """Nucleus filter: drop the low tail whose cumulative probability is <= 1 - p."""
    order = jnp.argsort(scores, axis=-1)  # ascending, like transformers
    sorted_scores = jnp.take_along_axis(scores, order, -1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_scores, axis=-1), axis=-1)
    drop = (cum <= 1 - p).at[:, -keep:].set(False)
    drop = jnp.zeros_like(drop).at[jnp.arange(drop.shape[0])[:, None], order].set(drop)
    return jnp.where(drop, NEG_INF, scores)


def process(pr: Processing, knobs: Knobs, scores, tokens, cur, ignore_len, max_length=None):
    """All configured processors, in the order transformers' generate applies them. ``max_length``:
    the row's own, where it differs from ``pr.max_length`` (the slot engine: a budget per input)."""
    if pr.repetition_penalty:
        scores = repetition_penalty(scores, tokens, cur, knobs.repetition_penalty, ignore_len)
    if pr.no_repeat_ngram_size > 0:
        scores = no_repeat_ngram(scores, tokens, cur, pr.no_repeat_ngram_size)
    if pr.bad_single or pr.bad_multi:
        scores = bad_words(scores, tokens, cur, pr.bad_single, pr.bad_multi)
    if pr.min_length > 0 and pr.eos:
        scores = _no_eos(scores, pr.eos, cur < pr.min_length)
    if pr.min_new_tokens > 0 and pr.eos:
        scores = _no_eos(scores, pr.eos, cur - pr.prompt_len < pr.min_new_tokens)
    if pr.forced_bos_token_id is not None:
        scores = _only(scores, (pr.forced_bos_token_id,), cur == 1)
    if pr.forced_eos_token_id is not None:
        last = pr.max_length - 1 if max_length is None else max_length - 1
        scores = _only(scores, pr.forced_eos_token_id, cur == last)
    if pr.sample:
        if pr.temperature:
            scores = scores / knobs.temperature
        if pr.top_k:
            scores = top_k(scores, max(pr.top_k, pr.min_tokens_to_keep))
        if pr.top_p:
            # transformers skips the filter at top_p = 1.0; a traced 1.0 must leave scores untouched too
            scores = jnp.where(knobs.top_p < 1.0, top_p(scores, knobs.top_p, pr.min_tokens_to_keep), scores)
    return scores
