"""Beam slots of continuous batching: one slot holds one input's beam group.

A beam slot is the state ``generate`` keeps for one input decoded alone with num_beams = N: a
batch-of-one ``BeamState`` (N running beams, the kept finished hypotheses, a self-attention
cache of N rows and the input's cross K/V once) plus the input's own end column. The slots are
stacked on a leading axis and stepped with ``jax.vmap`` of ``beam_step``, the body of
``generate``'s beam loop, given the slot's end where ``generate`` gives its static max_length:
a slot's beams, their cache reorder and its early stop are that input's alone. A slot whose
search has ended (``go`` false) keeps its state until the host reads its hypotheses and puts
the next input in its place.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .beam_loop import BeamState, beam_step
from .plan import Plan
from .processors import Knobs
from .search import first_state


class BeamSlot(NamedTuple):
    """One slot (under ``vmap``; stacked, every field gains a leading [S] axis)."""
    state: BeamState   # one image's beam search: running_tokens [1,N,Lmax], cache of N rows
    end: jax.Array     # int32: this input's max_length (prompt + its budget)
    key: jax.Array     # [1] typed key: the input's own key (beam sampling), as generate's per-image form


class Hypothesis(NamedTuple):
    """One returned hypothesis of a beam search (host arrays)."""
    sequence: np.ndarray
    """[L] int32: the start token, the generated tokens, EOS when reached."""
    token_logprobs: np.ndarray
    """[L-1] float32: log-prob of each generated token after the logits processors."""
    score: float
    """Its length-penalised beam score (``generate``'s ``scores``)."""


def beam_running(s: BeamSlot):
    """Whether the slot's beam search goes on (``go`` is false once it ended, or for an idle slot)."""
    return s.state.go & (s.state.cur < s.end)


def beam_fill(weights, enc, prompt, end, key, *, config, plan: Plan, columns: int, dtype) -> BeamSlot:
    """A slot for one input: enc [1,S,D], prompt [1,P] (fed once per beam, as generate lays it
    out), its max_length ``end``, its key [1]; the cache has ``columns`` columns."""
    state = first_state(weights, enc, jnp.repeat(prompt, plan.num_beams, axis=0), None, config=config, plan=plan,
                        dtype=dtype, capacity=columns)
    end = jnp.asarray(end, jnp.int32)
    return BeamSlot(state=state._replace(go=state.cur < end), end=end, key=key)


def beam_advance(weights, s: BeamSlot, knobs: Knobs, *, config, plan: Plan, dtype) -> BeamSlot:
    """One step of the slot's beam search, ``generate``'s loop body for this one image; a slot
    that has ended keeps its state (the step is computed under vmap anyway, then dropped)."""
    ignore_len = jnp.zeros(plan.num_beams, jnp.int32)  # the prompt is the start token: no padding
    new = beam_step(weights, s.state, ignore_len, s.key, knobs, s.end, config=config, plan=plan, dtype=dtype)
    go = beam_running(s)
    return s._replace(state=jax.tree.map(lambda a, b: jnp.where(go, a, b), new, s.state))


def host_results(slots: BeamSlot) -> tuple:
    """What ``hypotheses`` reads, for every slot in one transfer (sliced on the host)."""
    st = slots.state
    return tuple(np.array(a) for a in jax.device_get((st.done_tokens, st.done_lengths, st.done_logprobs,
                                                      st.done_scores, st.cur)))


def hypotheses(host: tuple, j: int, plan: Plan) -> tuple[Hypothesis, ...]:
    """Slot ``j``'s num_return_sequences best finished hypotheses, best first (``beam_results``'
    rows for its image), each trimmed to its own length."""
    tokens, lengths, logprobs, scores, _ = host
    p = plan.processing.prompt_len
    out = []
    for k in range(plan.num_return_sequences):
        n = int(lengths[j, 0, k])
        out.append(Hypothesis(tokens[j, 0, k, :p + n], logprobs[j, 0, k, :n], float(scores[j, 0, k])))
    return tuple(out)
