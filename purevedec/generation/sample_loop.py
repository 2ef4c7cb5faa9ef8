"""Greedy search and sampling as one ``lax.while_loop``: one token per row per iteration until
every row has produced EOS or the buffer is full."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from ..decoder_cache import DecoderCache
from ..decoding import cache_step
from ..scoring import token_logprobs
from .keys import categorical
from .plan import Plan
from .processors import Knobs, process
from .score_stop import ScoreStop, new_score_stop, push_score


class SampleState(NamedTuple):
    """The loop state; R rows (images x samples), Lmax = max_length, G = Lmax - prompt length."""
    tokens: jax.Array               # [R,Lmax] int32: the prompt, then generated tokens, plan.pad after EOS
    cur: jax.Array                  # int32: the column the next token goes to
    live: jax.Array                 # [R] bool: rows that have not produced EOS yet
    lengths: jax.Array              # [R] int32: tokens in each row so far, prompt and EOS included
    logits: jax.Array               # [R,V] float32: the model's logits for column cur
    cache: DecoderCache             # the decoder cache holding columns < cur
    logprobs: jax.Array             # [R,G] float32: each generated token's log-prob after processing; 0 after EOS
    model_logprobs: jax.Array       # [R,G] float32: the same tokens' log-probs under the model's own logits
    cross: jax.Array                # [R,layers,H,S] float32: the cross-attention of column cur's query
    cross_maps: Optional[jax.Array]  # [R,G,layers,H,S]: ``cross`` of every generated token (when asked)
    score_stop: Optional[ScoreStop] = None  # [R,...]: Nougat's stopping rule's state per row (when on)


def last_cross(cross_ws) -> jax.Array:
    """Per-layer weights [R,H,t,S] -> the last query's, stacked [R,layers,H,S]."""
    return jnp.stack([w[:, :, -1] for w in cross_ws], axis=1)


def step_if(weights, cache, ids, go, logits, cross, config, dtype):
    """Run the decoder on ``ids`` only when the loop will continue (the last token needs no logits)."""
    def run(_):
        out, new_cache, cross_ws = cache_step(weights, cache, ids, config, None, dtype)
        return out[:, -1].astype(jnp.float32), new_cache, last_cross(cross_ws).astype(cross.dtype)
    return jax.lax.cond(go, run, lambda _: (logits, cache, cross), None)


def sample_state(cache, logits, cross, tokens, *, plan: Plan) -> SampleState:
    """The loop state before the first generated token (the prompt already fed to ``cache``)."""
    pr = plan.processing
    rows = tokens.shape[0]
    gen_len = pr.max_length - pr.prompt_len
    return SampleState(
        tokens=tokens, cur=jnp.int32(pr.prompt_len), live=jnp.ones(rows, bool),
        lengths=jnp.full(rows, pr.prompt_len, jnp.int32), logits=logits, cache=cache,
        logprobs=jnp.zeros((rows, gen_len), jnp.float32), model_logprobs=jnp.zeros((rows, gen_len), jnp.float32),
        cross=cross,
        cross_maps=jnp.zeros((rows, gen_len) + cross.shape[1:], jnp.float32) if plan.cross_attentions else None,
        score_stop=None if plan.score_stop is None else jax.tree.map(
            lambda a: jnp.broadcast_to(a, (rows,) + a.shape), new_score_stop(plan.score_stop[1])))


def sample_done(s: SampleState, plan: Plan):
    """Whether the loop has ended: every row produced EOS, or the buffer is full."""
    return (s.cur >= plan.processing.max_length) | ~jnp.any(s.live)


def run_sample(weights, state: SampleState, ignore_len, key, knobs: Knobs, *, config, plan: Plan, dtype,
               limit: int | None = None) -> SampleState:
    """Run the loop until it ends or column ``limit`` is reached (a cache of ``limit`` columns
    holds every token written before that)."""
    pr = plan.processing
    stop = pr.max_length if limit is None else min(limit, pr.max_length)
    eos = jnp.array(pr.eos or (-1,))

    def body(s: SampleState) -> SampleState:
        scores = process(pr, knobs, s.logits, s.tokens, s.cur, ignore_len)
        if plan.mode == "sample":
            tok = categorical(key, scores, s.cur, s.cur - pr.prompt_len)
        else:
            tok = jnp.argmax(scores, axis=-1)
        lp = jnp.take_along_axis(jax.nn.log_softmax(scores, axis=-1), tok[:, None], -1)[:, 0]
        model_lp = token_logprobs(s.logits, tok)
        tok = tok.astype(jnp.int32)
        written = jnp.where(s.live, tok, plan.pad)
        i = s.cur - pr.prompt_len
        cross_maps = s.cross_maps
        if plan.cross_attentions:
            cross_maps = cross_maps.at[:, i].set(jnp.where(s.live[:, None, None, None], s.cross, 0.0))
        live = s.live & ~jnp.isin(tok, eos)
        score_stop = s.score_stop
        if plan.score_stop is not None:   # each row ends where the rule would end it decoded alone
            score_stop = jax.vmap(push_score, in_axes=(0, 0, None))(score_stop, jnp.max(scores, -1),
                                                                     plan.score_stop[0])
            live &= ~score_stop.stopped
        cur = s.cur + 1
        go = (cur < pr.max_length) & jnp.any(live)
        # Finished rows feed token 0, not the pad id, which may lie outside the vocabulary (GPT-2's
        # 50256 in a small model); their logits are never used.
        logits, cache, cross = step_if(weights, s.cache, jnp.where(s.live, tok, 0)[:, None], go, s.logits, s.cross,
                                       config, dtype)
        return SampleState(
            tokens=jax.lax.dynamic_update_slice(s.tokens, written[:, None], (0, s.cur)), cur=cur, live=live,
            lengths=s.lengths + s.live.astype(jnp.int32), logits=logits, cache=cache,
            logprobs=jax.lax.dynamic_update_slice(s.logprobs, jnp.where(s.live, lp, 0.0)[:, None], (0, i)),
            model_logprobs=jax.lax.dynamic_update_slice(s.model_logprobs, jnp.where(s.live, model_lp, 0.0)[:, None],
                                                        (0, i)),
            cross=cross, cross_maps=cross_maps, score_stop=score_stop)

    return jax.lax.while_loop(lambda s: (s.cur < stop) & jnp.any(s.live), body, state)


def sample_results(s: SampleState):
    """(tokens [R,Lmax], lengths [R], logprobs [R,G], scores [R] (summed logprobs), cross_maps,
    model_logprobs [R,G])."""
    return s.tokens, s.lengths, s.logprobs, jnp.sum(s.logprobs, -1), s.cross_maps, s.model_logprobs


def sample_loop(weights, cache, logits, cross, tokens, ignore_len, key, knobs: Knobs, *, config, plan: Plan, dtype):
    """Returns (tokens [R,Lmax], lengths [R], logprobs [R,G], scores [R] (summed logprobs), cross_maps,
    model_logprobs [R,G])."""
    state = sample_state(cache, logits, cross, tokens, plan=plan)
    return sample_results(run_sample(weights, state, ignore_len, key, knobs, config=config, plan=plan, dtype=dtype))
