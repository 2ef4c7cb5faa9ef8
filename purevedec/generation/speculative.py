"""Speculative greedy decoding with drafts from the text itself (prompt lookup), for one slot.

Documents repeat themselves (table rows, LaTeX, boilerplate): when the last ``n`` tokens occurred
before, the tokens that followed them then are a good guess of what follows now. One step
feeds the next token and a ``k``-token draft to the decoder at once (one pass over the weights
for k + 1 tokens) and keeps the longest draft prefix that greedy decoding itself would have
produced, plus the token greedy picks after it: the output is greedy's, token for token, and a
step yields 1 to k + 1 tokens. The cache columns of rejected draft tokens are unmarked (their
K/V are overwritten later); the write position moves past the accepted ones only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..decoding import cache_step
from .plan import Plan
from .processors import Knobs, process
from .score_stop import push_score
from .slots import Slot, running
from .stopping import repeating_tail


def ngram_draft(tokens, cur, n: int, k: int):
    """tokens [L] of which columns < cur are real -> (draft [k] int32, its usable length): the
    ``k`` tokens that followed the latest earlier occurrence of the last ``n`` tokens (length 0
    when they did not occur before; shorter when the occurrence ends near ``cur``)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    length = tokens.shape[0]
    padded = jnp.concatenate([tokens, jnp.zeros(k, tokens.dtype)])
    tail = jax.lax.dynamic_slice(padded, (jnp.maximum(cur - n, 0),), (n,))
    starts = jnp.arange(length - n + 1)
    windows = jnp.stack([tokens[j:j + length - n + 1] for j in range(n)], -1)  # [W,n]
    match = jnp.all(windows == tail, -1) & (starts + n < cur) & (cur >= n)
    at = jnp.max(jnp.where(match, starts, -1)) + n  # the column after the latest occurrence
    draft = jax.lax.dynamic_slice(padded, (jnp.maximum(at, 0),), (k,))
    return draft.astype(jnp.int32), jnp.where(jnp.any(match), jnp.clip(cur - at, 0, k), 0)


def _greedy(pr, knobs, logits, tokens, column, end):
    """Greedy's token for ``column``, its log-prob and the top processed score (``advance``'s
    ``top_scores``), from logits [1,V] and the buffer [1,L]; ``end``: the slot's own max_length
    (where forced_eos_token_id forces EOS)."""
    scores = process(pr, knobs, logits, tokens, column, jnp.zeros(1, jnp.int32), max_length=end)
    tok = jnp.argmax(scores, axis=-1)
    lp = jnp.take_along_axis(jax.nn.log_softmax(scores, -1), tok[:, None], -1)[:, 0]
    return tok.astype(jnp.int32), lp, jnp.max(scores, axis=-1)


def _stop_rules(s: Slot, placed, tops, emitted, prompt_len: int, repeats, score_threshold):
    """The engine's stopping rules over a step's emitted tokens, one token at a time as plain
    steps apply them: (emitted, cut after the first token that ends the row; whether a rule
    ended it; the score rule's state after the tokens kept). ``placed`` [1,L]: the buffer with
    the step's tokens in place; ``tops`` [k+1]: each token's top processed score."""
    ended, state = jnp.bool_(False), s.score_stop
    for j in range(tops.shape[0]):
        take = (j < emitted) & ~ended
        column = s.cur + j + 1
        hit = jnp.bool_(False)
        if repeats is not None:
            hit |= repeating_tail(placed[0], column, column - prompt_len, *repeats)
        if score_threshold is not None:
            pushed = push_score(state, tops[j], score_threshold)
            state = jax.tree.map(lambda new, old: jnp.where(take, new, old), pushed, state)
            hit |= pushed.stopped
        emitted = jnp.where(take & hit, j + 1, emitted)
        ended |= take & hit
    return emitted, ended, state


def advance_speculative(weights, s: Slot, knobs: Knobs, *, config, plan: Plan, dtype, n: int, k: int,
                        repeats=None, score_threshold=None) -> Slot:
    """1 to k + 1 greedy tokens for one slot (the cache needs room for k + 1 more columns);
    ``repeats`` and ``score_threshold`` as ``slots.advance``: the rules end the row after the
    same token as plain steps would."""
    pr = plan.processing
    eos = jnp.array(pr.eos or (-1,))
    active = running(s)
    width = s.tokens.shape[1]
    wide = jnp.pad(s.tokens, ((0, 0), (0, k + 1)))  # room for k + 1 tokens at any column
    first, first_lp, first_top = _greedy(pr, knobs, s.logits, s.tokens, s.cur, s.end)
    wide = jax.lax.dynamic_update_slice(wide, first[:, None], (0, s.cur))
    draft, usable = ngram_draft(wide[0], s.cur + 1, n, k)
    with_draft = jax.lax.dynamic_update_slice(wide, draft[None], (0, s.cur + 1))
    logits, cache, _ = cache_step(weights, s.cache, jnp.concatenate([first, draft])[None], config, None, dtype)
    picks, lps, tops = [first], [first_lp], [first_top]
    for j in range(k):  # greedy's choice after the first token and j draft tokens
        tok, lp, top = _greedy(pr, knobs, logits[:, j].astype(jnp.float32), with_draft, s.cur + 1 + j, s.end)
        picks.append(tok)
        lps.append(lp)
        tops.append(top)
    picks, lps, tops = jnp.concatenate(picks), jnp.concatenate(lps), jnp.concatenate(tops)  # [k+1]
    agree = (picks[1:] == draft) & (jnp.arange(k) < usable)
    accepted = jnp.sum(jnp.cumprod(agree.astype(jnp.int32)))
    # Emitted: picks[0..accepted]; cut at the first EOS and at the budget.
    is_eos = jnp.isin(picks, eos) & (jnp.arange(k + 1) <= accepted)
    stop_eos = jnp.argmax(is_eos)
    emitted = jnp.minimum(jnp.where(jnp.any(is_eos), stop_eos + 1, accepted + 1), s.end - s.cur)
    emitted = jnp.where(active, emitted, 0)
    placed = jax.lax.dynamic_update_slice(wide, picks[None], (0, s.cur))[:, :width]
    emitted, rule_end, score_stop = _stop_rules(s, placed, tops, emitted, pr.prompt_len, repeats, score_threshold)
    columns = jnp.arange(width)
    written = (columns >= s.cur) & (columns < s.cur + emitted)
    gen_cols = jnp.arange(s.logprobs.shape[1])
    i = s.cur - pr.prompt_len
    placed_lp, placed_top = (jax.lax.dynamic_update_slice(jnp.pad(old, ((0, 0), (0, k + 1))), new[None],
                                                          (0, i))[:, :old.shape[1]]
                             for old, new in ((s.logprobs, lps), (s.top_scores, tops)))
    emitted_cols = ((gen_cols >= i) & (gen_cols < i + emitted))[None]
    live = s.live & ~(jnp.any(is_eos & (jnp.arange(k + 1) < emitted))) & ~(active & rule_end)
    cur = s.cur + emitted
    pos = s.cache.pos + emitted
    new_cache = cache._replace(pos=pos, mask=cache.mask & (jnp.arange(cache.mask.shape[-1]) < pos))
    new_cache = new_cache._replace(**{n_: jnp.where(active, getattr(new_cache, n_), getattr(s.cache, n_))
                                      for n_ in ("mask", "offset", "pos")})
    nxt = jnp.take(logits[0], jnp.maximum(emitted - 1, 0), axis=0)[None].astype(jnp.float32)
    return s._replace(
        tokens=jnp.where(written[None], placed, s.tokens), score_stop=score_stop,
        logprobs=jnp.where(emitted_cols, placed_lp, s.logprobs),
        top_scores=jnp.where(emitted_cols, placed_top, s.top_scores),
        cur=cur, live=live, logits=jnp.where(active, nxt, s.logits), steps=s.steps + active.astype(jnp.int32),
        drafted=s.drafted + jnp.where(active, jnp.clip(s.end - s.cur - 1, 0, usable), 0), cache=new_cache)
