"""Beam search (and beam sampling) as one ``lax.while_loop``, following transformers' beam
search step for step: top continuations over beams x vocab, finished hypotheses merged into a
kept set of num_beams, transformers' early-stop heuristic. Beams reorder only the
self-attention cache; cross-attention K/V stay once per image."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from ..decoder_cache import ROW_FIELDS, DecoderCache
from .keys import gumbel
from .plan import Plan
from .processors import Knobs, process
from .sample_loop import step_if
from .topk import top_k

NEG = -1.0e9  # transformers' "impossible" beam score


class BeamState(NamedTuple):
    """The loop state; B images, N beams, Lmax = max_length, G = Lmax - prompt length."""
    cur: jax.Array                   # int32: the column the next token goes to
    go: jax.Array                    # bool: whether another iteration runs
    logits: jax.Array                # [B*N,V] float32: the model's logits for column cur
    cache: DecoderCache              # decoder cache of the running beams (columns < cur)
    cross: jax.Array                 # [B*N,layers,H,S]: cross-attention of column cur's query
    running_tokens: jax.Array        # [B,N,Lmax] int32: the running (unfinished) beams
    running_scores: jax.Array        # [B,N] float32: their summed log-probs
    running_logprobs: jax.Array      # [B,N,G]: their per-token log-probs
    running_model: jax.Array         # [B,N,G]: their per-token log-probs under the model's own logits
    running_cross: Optional[jax.Array]  # [B,N,G,layers,H,S]: their per-token cross-attention (when asked)
    done_tokens: jax.Array           # [B,N,Lmax]: the best finished hypotheses so far
    done_scores: jax.Array           # [B,N]: their length-penalised scores (NEG where none)
    done_mask: jax.Array             # [B,N] bool: which slots hold a finished hypothesis
    done_logprobs: jax.Array         # [B,N,G]
    done_model: jax.Array            # [B,N,G]
    done_cross: Optional[jax.Array]  # [B,N,G,layers,H,S]
    done_lengths: jax.Array          # [B,N] int32: generated tokens of each finished hypothesis
    improving: jax.Array             # [B,1] bool: whether a running beam can still beat the finished ones


def _gather(x, idx):
    """x [B,N,...] rows picked per image by idx [B,M] -> [B,M,...]"""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


class Candidates(NamedTuple):
    """The top continuations of one step (M = max(2, 1 + #eos) * N per image)."""
    scores: jax.Array       # [B,M] summed log-probs
    source: jax.Array       # [B,M] the beam each continues
    tokens: jax.Array       # [B,M,Lmax] with the new token at column cur
    logprobs: jax.Array     # [B,M,G]
    model: jax.Array        # [B,M,G] under the model's own logits
    cross: Optional[jax.Array]
    ends: jax.Array         # [B,M] bool: the continuation ends here (EOS or max_length)


def _candidates(s: BeamState, scores, model_lp, key, plan: Plan, b: int, nb: int, end) -> Candidates:
    """Top continuations over all beams x vocab, as transformers' _get_top_k_continuations;
    ``end``: the max_length of these images (static in generate, a slot's own in the engine)."""
    pr = plan.processing
    v = scores.shape[-1]
    keep = max(2, 1 + len(pr.eos)) * nb
    acc = (scores.reshape(b, nb, v) + s.running_scores[:, :, None]).reshape(b, nb * v)
    if plan.mode == "beam_sample":  # sampling without replacement = top-k of Gumbel-perturbed scores
        g = gumbel(key, acc.shape, s.cur, s.cur - pr.prompt_len)
        idx = top_k(jnp.where(jnp.isfinite(acc), acc + g, -jnp.inf), keep)[1]
        top = jnp.take_along_axis(acc, idx, -1)
        order = jnp.argsort(-top, axis=-1, stable=True)
        top, idx = jnp.take_along_axis(top, order, -1), jnp.take_along_axis(idx, order, -1)
    else:
        top, idx = top_k(acc, keep)
    src, tok = idx // v, (idx % v).astype(jnp.int32)
    token_lp = jnp.take_along_axis(scores.reshape(b, nb * v), idx, -1)  # this step's (processed) log-prob
    model_lp = jnp.take_along_axis(model_lp.reshape(b, nb * v), idx, -1)
    i = s.cur - pr.prompt_len
    cross = None
    if plan.cross_attentions:
        now = _gather(s.cross.reshape((b, nb) + s.cross.shape[1:]), src)
        cross = _gather(s.running_cross, src).at[:, :, i].set(now)
    return Candidates(
        scores=top, source=src, tokens=_gather(s.running_tokens, src).at[:, :, s.cur].set(tok),
        logprobs=_gather(s.running_logprobs, src).at[:, :, i].set(token_lp),
        model=_gather(s.running_model, src).at[:, :, i].set(model_lp), cross=cross,
        ends=(s.cur + 1 >= end) | jnp.isin(tok, jnp.array(pr.eos or (-1,))))


def _merge_finished(s: BeamState, c: Candidates, knobs: Knobs, plan: Plan, nb: int) -> dict:
    """Merge newly finished hypotheses into the kept ones (transformers' _update_finished_beams)."""
    pr = plan.processing
    finished = c.ends & (jnp.arange(c.scores.shape[1]) < nb)[None, :]
    score = c.scores / ((s.cur + 1 - pr.prompt_len).astype(jnp.float32) ** knobs.length_penalty)
    full = jnp.all(s.done_mask, -1, keepdims=True) & (plan.early_stopping is True)
    score = score + full * NEG + (~s.improving) * NEG + (~finished) * NEG
    cat = lambda a, x: jnp.concatenate([a, x], axis=1)  # noqa: E731
    pick = top_k(cat(s.done_scores, score), nb)[1]
    new_len = jnp.broadcast_to(s.cur + 1 - pr.prompt_len, finished.shape)
    return dict(done_tokens=_gather(cat(s.done_tokens, c.tokens), pick),
                done_scores=_gather(cat(s.done_scores, score), pick),
                done_mask=_gather(cat(s.done_mask, finished), pick),
                done_logprobs=_gather(cat(s.done_logprobs, c.logprobs), pick),
                done_model=_gather(cat(s.done_model, c.model), pick),
                done_lengths=_gather(cat(s.done_lengths, new_len), pick),
                done_cross=_gather(cat(s.done_cross, c.cross), pick) if plan.cross_attentions else None)


def _still_improving(s: BeamState, knobs: Knobs, plan: Plan, end):
    """transformers' _check_early_stop_heuristic, after cur was advanced (``end``: max_length)."""
    pr = plan.processing
    generated = (s.cur - pr.prompt_len).astype(jnp.float32)
    if plan.early_stopping == "never":
        best_len = jnp.where(knobs.length_penalty > 0.0, jnp.asarray(end - pr.prompt_len, jnp.float32), generated)
    else:
        best_len = generated
    best_running = s.running_scores[:, :1] / best_len ** knobs.length_penalty
    worst_done = jnp.where(s.done_mask, jnp.min(s.done_scores, axis=1, keepdims=True), NEG)
    return s.improving & jnp.any(best_running > worst_done, axis=-1, keepdims=True)


def beam_state(cache, logits, cross, tokens, *, plan: Plan) -> BeamState:
    """The loop state before the first generated token (the prompt already fed to ``cache``)."""
    pr = plan.processing
    nb = plan.num_beams
    b = tokens.shape[0] // nb
    gen_len = pr.max_length - pr.prompt_len
    running = tokens.reshape(b, nb, -1)
    no_cross = jnp.zeros((b, nb, gen_len) + cross.shape[1:], jnp.float32) if plan.cross_attentions else None
    return BeamState(
        cur=jnp.int32(pr.prompt_len), go=jnp.bool_(True), logits=logits, cache=cache, cross=cross,
        running_tokens=running, running_scores=jnp.zeros((b, nb)).at[:, 1:].set(NEG),
        running_logprobs=jnp.zeros((b, nb, gen_len)), running_model=jnp.zeros((b, nb, gen_len)), running_cross=no_cross,
        done_tokens=running, done_scores=jnp.full((b, nb), NEG), done_mask=jnp.zeros((b, nb), bool),
        done_logprobs=jnp.zeros((b, nb, gen_len)), done_model=jnp.zeros((b, nb, gen_len)), done_cross=no_cross,
        done_lengths=jnp.zeros((b, nb), jnp.int32), improving=jnp.ones((b, 1), bool))


def beam_step(weights, s: BeamState, ignore_len, key, knobs: Knobs, end, *, config, plan: Plan, dtype) -> BeamState:
    """One iteration of the loop: the next token of every beam. ``end`` is the images' max_length:
    ``generate`` passes the static one, the slot engine each input's own (traced), so both run
    this one body."""
    pr = plan.processing
    nb = plan.num_beams
    b = s.running_tokens.shape[0]
    flat = s.running_tokens.reshape(b * nb, -1)
    model_lp = jax.nn.log_softmax(s.logits, axis=-1)
    scores = process(pr, knobs, model_lp, flat, s.cur, ignore_len, max_length=end)
    c = _candidates(s, scores, model_lp, key, plan, b, nb, end)
    alive_scores = c.scores + c.ends * NEG
    nxt = top_k(alive_scores, nb)[1]
    s = s._replace(running_tokens=_gather(c.tokens, nxt), running_scores=_gather(alive_scores, nxt),
                   running_logprobs=_gather(c.logprobs, nxt), running_model=_gather(c.model, nxt),
                   running_cross=_gather(c.cross, nxt) if plan.cross_attentions else None,
                   **_merge_finished(s, c, knobs, plan, nb))
    origin = _gather(c.source, nxt)  # [B,N]: the beam each new beam continues, within its image
    # Each beam takes its origin's self-attention cache, key mask and position offset, reordered
    # within each image (a gather batched over images), so a batch split over devices stays
    # split; cross K/V stay once per image.
    reorder = lambda a: _gather(a.reshape(b, nb, *a.shape[1:]), origin).reshape(a.shape)  # noqa: E731
    cache = s.cache._replace(**{n: jax.tree.map(reorder, getattr(s.cache, n)) for n in ROW_FIELDS})
    s = s._replace(cur=s.cur + 1)
    s = s._replace(improving=_still_improving(s, knobs, plan, end))
    go = (jnp.any(s.improving) & ~(jnp.all(s.done_mask) & (plan.early_stopping is True))
          & ~jnp.all(c.ends) & (s.cur < end))
    last = s.running_tokens.reshape(b * nb, -1)[:, s.cur - 1][:, None]
    logits, cache, cross = step_if(weights, cache, last, go, s.logits, s.cross, config, dtype)
    return s._replace(go=go, logits=logits, cache=cache, cross=cross)


def run_beam(weights, state: BeamState, ignore_len, key, knobs: Knobs, *, config, plan: Plan, dtype,
             limit: int | None = None) -> BeamState:
    """Run the loop until it ends (``state.go`` false) or column ``limit`` is reached (a cache
    of ``limit`` columns holds every token written before that)."""
    pr = plan.processing
    stop = pr.max_length if limit is None else min(limit, pr.max_length)

    def body(s: BeamState) -> BeamState:
        return beam_step(weights, s, ignore_len, key, knobs, pr.max_length, config=config, plan=plan, dtype=dtype)

    return jax.lax.while_loop(lambda s: s.go & (s.cur < stop), body, state)


def beam_results(s: BeamState, plan: Plan):
    """(tokens [B*K,Lmax], lengths [B*K], logprobs [B*K,G], scores [B*K], cross maps): the
    K = num_return_sequences best finished hypotheses of each image, best first."""
    b = s.running_tokens.shape[0]
    keep = plan.num_return_sequences
    flat = lambda a: None if a is None else a[:, :keep].reshape((b * keep,) + a.shape[2:])  # noqa: E731
    return (flat(s.done_tokens), flat(s.done_lengths) + plan.processing.prompt_len, flat(s.done_logprobs),
            flat(s.done_scores), flat(s.done_cross), flat(s.done_model))


def beam_loop(weights, cache, logits, cross, tokens, ignore_len, key, knobs: Knobs, *, config, plan: Plan, dtype):
    """Returns (tokens [B*K,Lmax], lengths [B*K], logprobs [B*K,G], scores [B*K], cross maps,
    model_logprobs [B*K,G]), the K = num_return_sequences best finished hypotheses of each image, best first."""
    state = beam_state(cache, logits, cross, tokens, plan=plan)
    return beam_results(run_beam(weights, state, ignore_len, key, knobs, config=config, plan=plan, dtype=dtype),
                        plan)
