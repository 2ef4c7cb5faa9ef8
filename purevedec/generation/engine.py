"""Continuous batching: many inputs through a fixed number of decoding slots.

``generate_many`` / ``stream`` take N images (or their encoder states) with a token budget and
a key per input. A fixed number of slots each hold one input (its cross K/V and its own
self-attention cache); every compiled call advances all slots by several tokens; when a slot's
input ends (EOS or budget) the host takes its tokens and the next input's encoder states take
its place. A batch therefore never computes for finished rows while long ones run, and the
outputs come back in input order as soon as every earlier input has ended.

Each input's tokens are those of ``generate`` on that input alone with
``max_new_tokens=budget`` (and, when sampling, ``key=keys[i][None]``, the per-image key form):
the slots are stepped with ``vmap`` over one-row states (``slots.py``). The self-attention
caches of the slots grow in buckets (``growing.py``) up to the longest budget.

Greedy search, sampling, beam search and beam sampling are supported. With num_beams = N a
slot holds one input's beam group (``beam_slots.py``): its N beams and kept hypotheses, a
self-attention cache of N rows reordered within the slot, its cross K/V once; each input's
hypotheses are those of ``generate`` on that input alone with its budget.
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import Iterable, Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..backend_tuning import decode_jit
from ..config import Config
from ..model import compute_dtype, encode
from ..params import unpack
from .growing import BUCKET_START, bucket_sizes, grow_cache
from ..generation_config import defaults_of
from .options import with_options
from .plan import make_plan, special_ids
from .processors import Knobs
from .beam_slots import BeamSlot, Hypothesis, beam_advance, beam_fill, beam_running, host_results, hypotheses
from .slots import advance, advance_all, fill, put, running
from .score_stop import check_rule as check_score_rule
from .draft_policy import DraftPolicy
from .speculative import advance_speculative
from .stopping import check_rule

STEPS_PER_CALL = 8  # tokens per slot per compiled call: one host round trip per this many steps
AUTO_DRAFT = 4      # draft tokens of speculate="auto" (the long benchmark's setting; docs/perf-notes.md)


class Decoded(NamedTuple):
    """One input's output."""
    index: int
    """Its position among the inputs."""
    sequence: np.ndarray
    """[L] int32: the start token, the generated tokens, EOS when reached (generate's row, trimmed)."""
    token_logprobs: np.ndarray
    """[L-1] float32: log-prob of each generated token after the logits processors."""
    steps: int
    """Decoder steps it took (L-1 without speculation; fewer when drafts were accepted)."""
    top_scores: Optional[np.ndarray] = None
    """[L-1] float32: per generated token, the highest processed score of the step that chose it,
    what Nougat's stopping rule reads (``score_stop.py``); the same when speculating. None for beams."""
    beams: Optional[tuple[Hypothesis, ...]] = None
    """Beam search only: the num_return_sequences best hypotheses (sequence, token log-probs, beam
    score), best first, as ``generate`` returns that input's rows; ``sequence`` and
    ``token_logprobs`` are the first's, ``steps`` the beam steps run."""
    drafted: int = 0
    """Draft tokens its speculative steps checked; L-1 - steps of them were accepted."""


def _beams(plan) -> bool:
    return plan.mode.startswith("beam")


def _fill(weights, enc, prompt, end, key, *, plan, score_window, **statics):
    """One input's slot: a beam slot (``beam_slots.py``) or a one-row one (``slots.py``)."""
    if _beams(plan):  # score_window is None: stop_score_variance is refused with beams
        return beam_fill(weights, enc, prompt, end, key, plan=plan, **statics)
    return fill(weights, enc, prompt, end, key, plan=plan, score_window=score_window, **statics)


@partial(jax.jit, static_argnames=("config", "plan", "columns", "dtype", "slots", "score_window"))
def _empty(weights, enc, prompt, *, config, plan, columns, dtype, slots, score_window):
    """``slots`` idle slots (end = prompt length: nothing to generate) of ``columns`` columns."""
    one = _fill(weights, enc[:1], prompt, plan.processing.prompt_len, jax.random.key(0)[None], config=config,
                plan=plan, columns=columns, dtype=dtype, score_window=score_window)
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (slots,) + a.shape), one)


@partial(decode_jit, static_argnames=("config", "plan", "columns", "dtype", "score_window"), donate_argnames=("slots",))
def _insert(weights, slots, index, enc, prompt, end, key, *, config, plan, columns, dtype, score_window):
    one = _fill(weights, enc, prompt, end, key, config=config, plan=plan, columns=columns, dtype=dtype,
                score_window=score_window)
    return put(slots, index, one)


@partial(decode_jit, static_argnames=("config", "plan", "dtype", "steps", "speculate", "ngram", "repeats",
                                   "score_stop"), donate_argnames=("slots",))
def _advance(weights, slots, knobs, score_threshold, *, config, plan, dtype, steps, speculate, ngram, repeats,
             score_stop):
    """``score_threshold`` is traced (one program for every threshold); ``score_stop`` says whether
    the rule is on."""
    if _beams(plan):
        return advance_all(weights, slots, knobs, steps, config=config, plan=plan, dtype=dtype, step=beam_advance,
                           alive=beam_running)
    rules = dict(repeats=repeats, score_threshold=score_threshold if score_stop else None)
    step = partial(advance_speculative, n=ngram, k=speculate, **rules) if speculate else partial(advance, **rules)
    return advance_all(weights, slots, knobs, steps, config=config, plan=plan, dtype=dtype, step=step)


@partial(jax.jit, static_argnames=("columns",))
def _grow(slots, *, columns):
    if isinstance(slots, BeamSlot):
        return slots._replace(state=slots.state._replace(cache=grow_cache(slots.state.cache, columns)))
    return slots._replace(cache=grow_cache(slots.cache, columns))


def _status(slots):
    """(each slot's next column, whether it still generates), on the host."""
    if isinstance(slots, BeamSlot):
        return jax.device_get((slots.state.cur, jax.vmap(beam_running)(slots)))
    return jax.device_get((slots.cur, jax.vmap(running)(slots)))


def _outputs(pool, ended: list, owner: list, cur, plan) -> dict:
    """input index -> ``Decoded`` of the ``ended`` slots. One transfer, sliced on the host:
    slicing on the device compiled a program per length."""
    if not ended:
        return {}
    if isinstance(pool, BeamSlot):
        host = host_results(pool)
        beams = {j: hypotheses(host, j, plan) for j in ended}
        return {owner[j]: Decoded(owner[j], beams[j][0].sequence, beams[j][0].token_logprobs,
                                  int(cur[j]) - plan.processing.prompt_len, None, beams[j]) for j in ended}
    tokens, logprobs, tops, steps, drafted = (np.array(a) for a in jax.device_get(
        (pool.tokens, pool.logprobs, pool.top_scores, pool.steps, pool.drafted)))
    return {owner[j]: Decoded(owner[j], tokens[j, 0, :cur[j]], logprobs[j, 0, :cur[j] - 1], int(steps[j]),
                              tops[j, 0, :cur[j] - 1], drafted=int(drafted[j])) for j in ended}


def _budgets(budgets, n: int, default: int) -> list[int]:
    if budgets is None:
        return [default] * n
    budgets = [int(b) for b in budgets]
    if len(budgets) != n or any(b < 1 for b in budgets):
        raise ValueError(f"budgets must hold one positive token count per input ({n}), got {budgets[:8]}...")
    return budgets


def _row_keys(keys, n: int, sample: bool, beams: bool):
    """One row key [1] per input, as ``generate`` derives it from a per-image key (beam sampling
    draws from the image's key itself, sampling from its row's)."""
    if not sample:
        return [jax.random.key(0)[None]] * n
    if keys is None:
        raise ValueError("do_sample=True draws random numbers: pass keys (one per input, e.g. "
                         f"jax.random.split(jax.random.key(seed), {n}))")
    keys = keys if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(keys)
    if keys.shape != (n,):
        raise ValueError(f"keys has shape {keys.shape}: pass one key per input ({n})")
    rows = keys if beams else jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    return [rows[i:i + 1] for i in range(n)]


def _encoder_states(params, pixels, config, chunk: int, dtype) -> Iterator[jax.Array]:
    """[1,S,D] encoder states per input, ``chunk`` images encoded at a time (the last padded)."""
    for start in range(0, len(pixels), chunk):
        part = np.asarray(pixels[start:start + chunk], np.float32)
        n = len(part)
        if n < chunk:
            part = np.concatenate([part, np.zeros((chunk - n,) + part.shape[1:], part.dtype)])
        enc = encode(params, part, config, dtype=dtype)  # dispatched now, used as slots free
        for i in range(n):
            yield enc[i:i + 1]


def stream(params, pixels, config: Config | None = None, *, budgets: Iterable[int] | None = None, keys=None,
           slots: int = 8, steps_per_call: int = STEPS_PER_CALL, bucket_start: int = BUCKET_START,
           speculate: int | str | DraftPolicy = "auto", ngram: int = 3, stop_repeats=None, stop_score_variance=None,
           dtype=jnp.float32,
           **options) -> Iterator[Decoded]:
    """Decode every image of ``pixels`` ([N,C,H,W], or a sequence of [C,H,W]) through ``slots``
    slots; yields ``Decoded`` in input order. ``budgets``: max_new_tokens per input (default:
    the options' max_new_tokens, else 20). ``keys``: [N] keys when sampling. Other options as
    ``generate`` (greedy, sampling, beam search and beam sampling; prompts are refused;
    num_return_sequences up to num_beams with beams, 1 otherwise; forced_eos_token_id forces EOS
    at each input's own last column, as generate with its budget). With num_beams = N a slot
    holds one input's N beams and each ``Decoded`` carries its returned hypotheses in ``beams``
    (best first); ``keys`` then feed beam sampling as generate's per-image keys.
    ``speculate`` > 0 (greedy only): each step also checks a draft of that many tokens that
    followed the latest earlier occurrence of the last ``ngram`` tokens (``speculative.py``);
    the tokens stay greedy's. "auto" (the default): drafts of 4 under greedy search (not with
    sampling or beams), each call drafting or not as measures faster (``draft_policy.py``; a
    ``DraftPolicy`` of one's own is taken as well); 0: never. ``stop_repeats`` = (max_period,
    repeats) ends an input whose text ends with a block of at most max_period tokens repeated
    that many times (``stopping.py``; not with beams). ``stop_score_variance`` = True, or
    (threshold, window), ends an input where Nougat's reference implementation ends a page read alone: once the
    variance of the variance of its top scores has stayed low (``score_stop.py``; True: the
    reference's 0.015 and 200; not with beams). Both rules judge drafted tokens one by one, as
    plain steps do."""
    weights, config = unpack(params, config)
    dtype = compute_dtype(dtype)
    gen = with_options(defaults_of(params, config), options)
    n = len(pixels)
    budgets = _budgets(budgets, n, gen.max_new_tokens or 20)
    repeats, score_rule = check_rule(stop_repeats), check_score_rule(stop_score_variance)
    policy, speculate = _drafting(speculate, gen)
    _check_beams(gen, speculate, repeats, score_rule)
    _check_speculation(speculate, ngram, gen)
    threshold, window = score_rule or (None, None)
    score_threshold = jnp.float32(0.0 if threshold is None else threshold)
    plan = make_plan(with_options(gen, {"max_new_tokens": max(budgets), "max_length": None}), config, 1, False)
    start = special_ids(gen)[0]
    knobs = Knobs(*(jnp.asarray(getattr(gen, k), jnp.float32) for k in Knobs._fields))
    row_keys = _row_keys(keys, n, plan.processing.sample, _beams(plan))
    positions = config.decoder.n_positions
    sizes = bucket_sizes(1, min(plan.processing.max_length + _room(speculate), positions), bucket_start)
    statics = dict(config=config, plan=plan, dtype=dtype)
    fills = dict(statics, score_window=window)
    encs = _encoder_states(params, pixels, config, slots, dtype)
    first = next(encs, None)
    if first is None:
        return
    columns = sizes[0]
    prompt = jnp.full((1, 1), start, jnp.int32)
    pool = _empty(weights, first, prompt, columns=columns, slots=slots, **fills)
    waiting, owner, done, next_out = deque(range(n)), [None] * slots, {}, 0
    encs = _chain(first, encs)
    cur = np.zeros(slots, np.int32)
    while waiting or any(o is not None for o in owner):
        for j in range(slots):
            if owner[j] is None and waiting:
                i = waiting.popleft()
                pool = _insert(weights, pool, j, next(encs), prompt, 1 + budgets[i], row_keys[i], columns=columns,
                               **fills)
                owner[j], cur[j] = i, 1
        want = policy.choose(_steps_left(budgets, waiting, owner, cur, slots)) if policy else speculate
        drafts = _drafts_within(positions, want, steps_per_call,
                                max(cur[j] for j in range(slots) if owner[j] is not None))
        reach = steps_per_call * (1 + drafts)
        need = max(min(cur[j] + reach, 1 + budgets[owner[j]]) + _room(drafts) for j in range(slots)
                   if owner[j] is not None)
        while columns < need:
            columns = sizes[sizes.index(columns) + 1]
            pool = _grow(pool, columns=columns)
        before, started = cur.copy(), policy.start() if policy else 0.0
        pool = _advance(weights, pool, knobs, score_threshold, steps=steps_per_call, speculate=drafts, ngram=ngram,
                        repeats=repeats, score_stop=threshold is not None, **statics)
        cur, live = (np.array(a) for a in _status(pool))
        if policy:
            policy.record(drafts, columns, int(np.sum(cur - before)), started)
        ended = [j for j in range(slots) if owner[j] is not None and not live[j]]
        done.update(_outputs(pool, ended, owner, cur, plan))
        for j in ended:
            owner[j] = None
        while next_out in done:
            yield done.pop(next_out)
            next_out += 1


def _drafting(speculate, gen) -> tuple[Optional[DraftPolicy], int]:
    """(the policy choosing each call's drafts, or None; the longest draft, checked below as
    given). "auto": a policy of ``AUTO_DRAFT`` tokens under greedy search, else no drafts; a
    policy: itself; an int: that many drafts on every call."""
    if isinstance(speculate, DraftPolicy):
        return speculate, speculate.k
    if speculate == "auto":
        greedy = not gen.do_sample and gen.num_beams == 1
        return (DraftPolicy(AUTO_DRAFT), AUTO_DRAFT) if greedy else (None, 0)
    if isinstance(speculate, bool) or not isinstance(speculate, int):
        raise ValueError(f"speculate={speculate!r}: pass a number of draft tokens (0: none), 'auto' or a "
                         "DraftPolicy")
    return None, speculate


def _check_beams(gen, speculate: int, repeats, score_rule) -> None:
    """Several sequences only from beams; none of the options that end or draft one row at a
    time with them (a beam group ends together, by transformers' rules)."""
    if gen.num_beams == 1:
        if gen.num_return_sequences != 1:
            raise ValueError(f"num_return_sequences={gen.num_return_sequences} without beams: the slot engine "
                             "samples one sequence per input (use num_beams >= it, or generate)")
        return
    conflicts = {"speculate": speculate and "drafts are checked against greedy search's tokens",
                 "stop_repeats": repeats and "it ends rows one by one, a beam group ends together",
                 "stop_score_variance": score_rule and "it ends rows one by one, a beam group ends together"}
    for option, why in conflicts.items():
        if why:
            raise ValueError(f"{option} cannot be combined with num_beams > 1: {why}")


def _check_speculation(speculate: int, ngram: int, gen) -> None:
    """A draft length and n-gram size that make sense, and greedy search (a draft is checked
    against greedy's choices: sampling has none to check against; beams are refused above)."""
    if not speculate:
        return
    if speculate < 0 or ngram < 1:
        raise ValueError(f"speculate={speculate}, ngram={ngram}: the draft length must be >= 0 and the n-gram "
                         "size >= 1")
    if gen.do_sample:
        raise ValueError("do_sample=True cannot be combined with speculate: drafts are checked against greedy "
                         "search's tokens")


def _drafts_within(positions: int, speculate: int, steps: int, cur: int) -> int:
    """``speculate``, or 0 for a call whose drafts could reach past the decoder's position table
    (``positions`` entries) from column ``cur``: a draft token there would embed as NaN, and the
    NaN keys and values would reach the real token's attention in the same step. Such a call
    decodes token by token; the tokens are the same, greedy's."""
    return speculate if cur + steps * (speculate + 1) + _room(speculate) <= positions else 0


def _steps_left(budgets, waiting, owner, cur, slots: int) -> int:
    """Decoder steps of work left per slot: the waiting inputs' budgets and the running ones'
    rest, over the slots."""
    running = sum(1 + budgets[i] - cur[j] for j, i in enumerate(owner) if i is not None)
    return (running + sum(budgets[i] for i in waiting)) // slots


def _room(drafts: int) -> int:
    """Cache columns a step may write past its current one: 1 + the draft when speculating."""
    return drafts + 1 if drafts else 0


def _chain(first, rest):
    yield first
    yield from rest


def generate_many(params, pixels, config: Config | None = None, **kwargs) -> list[Decoded]:
    """``stream``'s outputs as a list, in input order."""
    return list(stream(params, pixels, config, **kwargs))
