"""The slots of continuous batching: S independent one-input decoding states, stepped together.

Each slot is the state ``generate`` keeps for one input decoded alone (a batch of one row): its
token buffer, its own decoder cache (cross K/V of its image, self K/V, write position) and its
own end column. The slots are stacked on a leading axis and stepped with ``jax.vmap``, so a
slot's arithmetic is that row's alone whatever the other slots hold or where they are: the
write position, positions and key folds are per slot. A slot that has ended (EOS or budget)
keeps its state until the host takes its tokens and puts the next input in its place
(``insert``); stepping it changes nothing.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from ..decoder_cache import DecoderCache
from ..decoding import cache_step, new_cache
from ..layers import slots_as_rows
from .keys import categorical
from .plan import Plan
from .processors import Knobs, process
from .score_stop import ScoreStop, new_score_stop, push_score
from .stopping import repeating_tail


class Slot(NamedTuple):
    """One slot (under ``vmap``; stacked, every field gains a leading [S] axis). Lmax = the
    engine's longest sequence, G = Lmax - prompt length, T = cache columns."""
    tokens: jax.Array    # [1,Lmax] int32: the prompt, the generated tokens, plan.pad after the end
    cur: jax.Array       # int32: the column the next token goes to
    end: jax.Array       # int32: this input's max_length (prompt + its budget)
    live: jax.Array      # [1] bool: no EOS yet (and an input is in the slot)
    logits: jax.Array    # [1,V] float32: the model's logits for column cur
    logprobs: jax.Array  # [1,G] float32: each generated token's log-prob after processing
    top_scores: jax.Array  # [1,G] float32: each generated token's step's highest processed score
    key: jax.Array       # [1] typed key: the input's row key (sampling)
    steps: jax.Array     # int32: decoder steps run for this input (fewer than its tokens when speculating)
    drafted: jax.Array   # int32: draft tokens offered to its speculative steps (accepted: tokens - steps)
    cache: DecoderCache  # the input's decoder cache: cross K/V [1,H,S,K], self K/V [1,H,T,K], mask, pos
    score_stop: Optional[ScoreStop] = None  # Nougat's stopping rule's state, when it is on (score_stop.py)


def running(s: Slot):
    """Whether the slot still generates: an input that has not ended."""
    return s.live[0] & (s.cur < s.end)


def fill(weights, enc, prompt, end, key, *, config, plan: Plan, columns: int, dtype,
         score_window: Optional[int] = None) -> Slot:
    """A slot for one input: enc [1,S,D] (encoder states), prompt [1,P], its max_length ``end``,
    its row key [1]; the prompt is fed to a cache of ``columns`` columns. ``score_window``: the
    window of Nougat's stopping rule, when it is on."""
    cache = new_cache(weights, enc, config, columns, 1, dtype)
    logits, cache, _ = cache_step(weights, cache, prompt, config, None, dtype)
    pr = plan.processing
    tokens = jnp.full((1, pr.max_length), plan.pad, jnp.int32).at[:, :prompt.shape[1]].set(prompt)
    generated = jnp.zeros((1, pr.max_length - pr.prompt_len), jnp.float32)
    return Slot(tokens=tokens, cur=jnp.int32(pr.prompt_len), end=jnp.asarray(end, jnp.int32),
                live=jnp.ones(1, bool), logits=logits[:, -1].astype(jnp.float32), logprobs=generated,
                top_scores=generated, key=key, steps=jnp.int32(0), drafted=jnp.int32(0), cache=cache,
                score_stop=None if score_window is None else new_score_stop(score_window))


def advance(weights, s: Slot, knobs: Knobs, *, config, plan: Plan, dtype, repeats=None,
            score_threshold: Optional[float] = None) -> Slot:
    """One token for one slot, exactly as ``generate``'s loop body for a batch of one row; with
    ``repeats`` = (max_period, times), the row also ends on a repeating tail (``stopping.py``);
    with ``score_threshold`` (and the slot's ``score_stop`` state), it also ends when Nougat's
    rule says stop after this token (``score_stop.py``)."""
    pr = plan.processing
    active = running(s)
    scores = process(pr, knobs, s.logits, s.tokens, s.cur, jnp.zeros(1, jnp.int32), max_length=s.end)
    if plan.mode == "sample":
        tok = categorical(s.key, scores, s.cur, s.cur - pr.prompt_len)
    else:
        tok = jnp.argmax(scores, axis=-1)
    lp = jnp.take_along_axis(jax.nn.log_softmax(scores, axis=-1), tok[:, None], -1)[:, 0]
    tok = tok.astype(jnp.int32)
    live = s.live & ~(active & jnp.isin(tok, jnp.array(pr.eos or (-1,))))
    cur = s.cur + active.astype(jnp.int32)
    tokens = jnp.where(active, jax.lax.dynamic_update_slice(s.tokens, tok[:, None], (0, s.cur)), s.tokens)
    if repeats is not None:
        live &= ~(active & repeating_tail(tokens[0], cur, cur - pr.prompt_len, *repeats))
    top = jnp.max(scores, axis=-1)   # [1]
    score_stop = s.score_stop
    if score_threshold is not None:
        # an ended slot's state is never read again (the next input gets a fresh one): no guard
        score_stop = push_score(score_stop, top[0], score_threshold)
        live &= ~(active & score_stop.stopped)
    go = active & live[0] & (cur < s.end)
    logits, cache, _ = cache_step(weights, s.cache, jnp.where(go, tok, 0)[:, None], config, None, dtype)
    # The step always runs under vmap; a slot that does not go keeps its position and key mask, so
    # the K/V it wrote sit in a masked column that its next token (or the next input) overwrites.
    keep = {n: jnp.where(go, getattr(cache, n), getattr(s.cache, n)) for n in ("mask", "offset", "pos")}
    i = s.cur - pr.prompt_len
    return s._replace(
        tokens=tokens, score_stop=score_stop,
        logprobs=jnp.where(active, jax.lax.dynamic_update_slice(s.logprobs, lp[:, None], (0, i)), s.logprobs),
        top_scores=jnp.where(active, jax.lax.dynamic_update_slice(s.top_scores, top[:, None], (0, i)), s.top_scores),
        cur=cur, live=live, logits=jnp.where(go, logits[:, -1].astype(jnp.float32), s.logits),
        steps=s.steps + active.astype(jnp.int32), cache=cache._replace(**keep))


def advance_all(weights, slots, knobs: Knobs, steps: int, *, config, plan: Plan, dtype, step=None, alive=None):
    """``steps`` decoder steps for every slot (fewer when every slot has ended); ``step`` is the
    one-slot step (default ``advance``, one token), ``alive`` whether a slot still generates
    (default ``running``; the beam slots have their own, ``beam_slots.py``)."""
    step, alive = step or advance, alive or running

    def one(s):
        with slots_as_rows():  # the slots' weight products as one product of all their rows
            return jax.vmap(lambda s: step(weights, s, knobs, config=config, plan=plan, dtype=dtype))(s)

    def body(carry):
        i, s = carry
        return i + 1, one(s)
    return jax.lax.while_loop(lambda c: (c[0] < steps) & jnp.any(jax.vmap(alive)(c[1])), body,
                              (jnp.int32(0), slots))[1]


def put(slots: Slot, index, slot: Slot) -> Slot:
    """``slots`` with slot ``index`` replaced."""
    return jax.tree.map(lambda all_, one: jax.lax.dynamic_update_index_in_dim(all_, one, index, 0), slots, slot)

