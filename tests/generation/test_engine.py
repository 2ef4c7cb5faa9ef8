"""Continuous batching: every input's tokens are those of generate on that input alone, with
its own budget and key, whatever the number of slots and the order in which inputs end."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

import purevedec as pv
from purevedec.generation import draft_policy
from purevedec.generation.engine import generate_many, stream
from purevedec.generation.speculative import ngram_draft as ngram_draft_op
from conftest import make_reference, rand_pixels, save_reference
from ocr_models import make_ocr_reference

BUDGETS = [3, 12, 7, 18, 5]


@pytest.fixture(scope="module", params=["gpt2", "trocr"])
def model(request, tmp_path_factory):
    """(params, an EOS id that row 1 reaches after a while)."""
    path = tmp_path_factory.mktemp(request.param)
    ref = make_reference(init_scale=3.0, seed=3) if request.param == "gpt2" else make_ocr_reference(seed=5, scale=0.6)
    params, _ = pv.load(save_reference(ref, path))
    # Input 1 alone, EOS banned: the speculative and repetition tests' reference for it (one
    # program for both), whose column 8 is the same as a batch's row 1 (per-row positions).
    greedy = pv.generate(params, rand_pixels(5, seed=2)[1:2], max_new_tokens=BUDGETS[1],
                         min_new_tokens=max(BUDGETS)).sequences
    return params, int(greedy[0, 8])


@pytest.mark.parametrize("mode", ["greedy", "sample"])
def test_each_input_gets_its_alone_output(model, mode):
    """2 slots for 5 inputs, 3 steps per call, buckets from 4 columns: inputs end out of order,
    slots are refilled mid-flight and caches grow while other slots run."""
    params, eos = model
    px = rand_pixels(5, seed=2)
    kw = dict(eos_token_id=eos, **(dict(do_sample=True, top_k=20) if mode == "sample" else {}))
    keys = jax.random.split(jax.random.key(1), 5)
    outs = generate_many(params, px, budgets=BUDGETS, keys=keys, slots=2, steps_per_call=3, bucket_start=4, **kw)
    assert [o.index for o in outs] == list(range(5))
    lengths = []
    for o, budget in zip(outs, BUDGETS):
        alone = pv.generate(params, px[o.index:o.index + 1], max_new_tokens=budget, key=keys[o.index][None], **kw)
        np.testing.assert_array_equal(o.sequence, alone.sequences[0])
        np.testing.assert_allclose(o.token_logprobs, alone.token_logprobs[0], atol=1e-4)
        lengths.append(len(o.sequence))
    assert len(set(lengths)) > 2 and (mode == "sample" or max(lengths) > 8)  # ragged ends, long rows


def test_stream_yields_in_input_order_and_checks_arguments(model):
    params, _ = model
    px = rand_pixels(3, seed=4)
    first = next(stream(params, px, budgets=[2, 9, 1], slots=3))
    assert first.index == 0 and len(first.sequence) <= 3
    with pytest.raises(ValueError, match="budgets"):
        generate_many(params, px, budgets=[2, 0, 1])
    with pytest.raises(ValueError, match="keys"):
        generate_many(params, px, do_sample=True)
    with pytest.raises(ValueError, match="^num_return_sequences=2 without beams"):
        generate_many(params, px, do_sample=True, num_return_sequences=2, keys=jax.random.split(jax.random.key(0), 3))
    for option in (dict(speculate=2), dict(stop_repeats=(2, 3)), dict(stop_score_variance=True)):
        with pytest.raises(ValueError, match=f"^{next(iter(option))} cannot be combined with num_beams > 1: "):
            generate_many(params, px, num_beams=2, **option)


def test_ngram_draft_takes_what_followed_the_latest_occurrence():
    # jitted, as the engine runs it (run eagerly, each of its operations compiled a program)
    ngram_draft = jax.jit(ngram_draft_op, static_argnums=(2, 3))
    tokens = np.array([0, 5, 6, 7, 8, 5, 6, 9, 4, 5, 6, 0, 0, 0])
    draft, usable = ngram_draft(tokens, 11, 2, 3)  # last two tokens (5, 6) last seen at column 5
    assert draft.tolist()[:2] == [9, 4] and int(usable) == 3 and draft.tolist()[2] == 5
    draft, usable = ngram_draft(tokens, 9, 2, 3)  # (9, 4) never occurred before
    assert int(usable) == 0
    draft, usable = ngram_draft(np.array([3, 3, 3, 0, 0]), 3, 1, 4)  # the occurrence ends at column 2
    assert int(usable) == 1 and int(draft[0]) == 3


def test_speculative_greedy_equals_greedy_and_accepts_drafts(model):
    """Drafts from the text itself on repetitive outputs (EOS banned): greedy's tokens, fewer steps."""
    params, _ = model
    px = rand_pixels(5, seed=2)
    kw = dict(min_new_tokens=max(BUDGETS))
    outs = generate_many(params, px, budgets=BUDGETS, slots=2, steps_per_call=3, bucket_start=4, speculate=3,
                         ngram=1, **kw)
    for o, budget in zip(outs, BUDGETS):
        alone = pv.generate(params, px[o.index:o.index + 1], max_new_tokens=budget, **kw)
        np.testing.assert_array_equal(o.sequence, alone.sequences[0])
        np.testing.assert_allclose(o.token_logprobs, alone.token_logprobs[0], atol=1e-4)
        assert o.steps <= budget
        # accepted draft tokens (generated - steps) are among those offered
        assert 0 <= len(o.token_logprobs) - o.steps <= o.drafted
    assert sum(o.steps for o in outs) < sum(BUDGETS)  # some drafts were accepted
    assert sum(o.drafted for o in outs) > sum(BUDGETS) - sum(o.steps for o in outs)  # and some refused


def test_speculation_reports_greedys_top_scores(model):
    """Each step's top processed score (what Nougat's stopping rule reads) is the same whether the
    token came from a one-token step or from an accepted draft."""
    params, _ = model
    px = rand_pixels(5, seed=2)
    kw = dict(budgets=BUDGETS, slots=2, steps_per_call=3, bucket_start=4, min_new_tokens=max(BUDGETS))
    plain = generate_many(params, px, **kw)
    drafted = generate_many(params, px, speculate=3, ngram=1, **kw)
    assert sum(o.steps for o in drafted) < sum(BUDGETS)  # some tokens came from drafts
    for p, d in zip(plain, drafted):
        np.testing.assert_array_equal(d.sequence, p.sequence)
        assert d.top_scores.shape == p.top_scores.shape == (len(p.sequence) - 1,)
        np.testing.assert_allclose(d.top_scores, p.top_scores, atol=1e-4)


def test_speculation_refuses_sampling(model):
    params, _ = model
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="^do_sample=True cannot be combined with speculate: "):
        generate_many(params, rand_pixels(2, seed=2), speculate=2, do_sample=True, keys=keys)


def test_speculation_near_the_last_position_stays_greedy(model):
    """Budgets up to the decoder's last position: the drafts of the final steps would reach past
    its position table (embedded as NaN, which reached the real token's attention); those steps
    decode token by token and the tokens stay greedy's."""
    params, _ = model
    last = params["config"].decoder.n_positions - 1
    px = rand_pixels(2, seed=2)
    budgets = [last, last]
    kw = dict(min_new_tokens=last)
    outs = generate_many(params, px, budgets=budgets, slots=2, steps_per_call=2, bucket_start=4, speculate=3,
                         ngram=1, **kw)
    for o, budget in zip(outs, budgets):
        alone = pv.generate(params, px[o.index:o.index + 1], max_new_tokens=budget, **kw)
        np.testing.assert_array_equal(o.sequence, alone.sequences[0])
        assert np.all(np.isfinite(o.token_logprobs))


def _first_repeat_end(generated: list, max_period: int, repeats: int) -> int:
    """Tokens kept by the repetition rule: up to the first that completes a repeated block."""
    for end in range(1, len(generated) + 1):
        for p in range(1, max_period + 1):
            w = p * repeats
            if end >= w and all(generated[end - w + i] == generated[end - w + i + p] for i in range(w - p)):
                return end
    return len(generated)


def test_repetition_rule_ends_each_input_at_its_first_repeated_block(model):
    params, _ = model
    px = rand_pixels(5, seed=2)
    kw = dict(min_new_tokens=max(BUDGETS))
    outs = generate_many(params, px, budgets=BUDGETS, slots=2, steps_per_call=3, bucket_start=4,
                         stop_repeats=(2, 3), **kw)
    cut = 0
    for o, budget in zip(outs, BUDGETS):
        alone = list(pv.generate(params, px[o.index:o.index + 1], max_new_tokens=budget, **kw).sequences[0])
        keep = _first_repeat_end(alone[1:], 2, 3)
        assert o.sequence.tolist() == alone[:1 + keep]
        cut += keep < budget
    assert cut  # some input stopped early
    drafted = generate_many(params, px, budgets=BUDGETS, slots=2, steps_per_call=3, bucket_start=4,
                            stop_repeats=(2, 3), speculate=3, ngram=1, **kw)
    assert [d.sequence.tolist() for d in drafted] == [o.sequence.tolist() for o in outs]  # judged token by token
    with pytest.raises(ValueError, match="stop_repeats"):
        generate_many(params, px, stop_repeats=(2, 1))


def test_forced_eos_lands_on_each_inputs_own_last_column(model):
    """generate forces EOS at its max_length's last column: each input's, set by its budget."""
    params, _ = model
    px = rand_pixels(5, seed=2)
    kw = dict(forced_eos_token_id=7, min_new_tokens=max(BUDGETS))
    outs = generate_many(params, px, budgets=BUDGETS, slots=2, steps_per_call=3, bucket_start=4, **kw)
    for o, budget in zip(outs, BUDGETS):
        alone = pv.generate(params, px[o.index:o.index + 1], max_new_tokens=budget, **kw).sequences[0]
        assert o.sequence.tolist() == alone.tolist() and alone[-1] == 7 and len(alone) == 1 + budget
    # with drafts too: a draft that reaches an input's last column meets the forced EOS there
    drafted = generate_many(params, px, budgets=BUDGETS, slots=2, steps_per_call=3, bucket_start=4, speculate=3,
                            ngram=1, **kw)
    assert [o.sequence.tolist() for o in drafted] == [o.sequence.tolist() for o in outs]
    assert sum(o.steps for o in drafted) < sum(BUDGETS)


def assert_alone_beams(params, px, outs, budgets, keys=None, **kw):
    """Each input's hypotheses (sequence, token log-probs, beam score), best first, are the rows of
    generate on that input alone with its budget (and its key), each trimmed to its own length."""
    lengths = []
    for o, budget in zip(outs, budgets):
        alone = pv.generate(params, px[o.index:o.index + 1], max_new_tokens=budget,
                            key=None if keys is None else keys[o.index][None], **kw)
        assert len(o.beams) == kw.get("num_return_sequences", 1) and o.sequence is o.beams[0].sequence
        assert o.steps <= budget
        for k, h in enumerate(o.beams):
            n = len(h.sequence)
            np.testing.assert_array_equal(h.sequence, alone.sequences[k, :n])
            assert n == alone.sequences.shape[1] or h.sequence[-1] == kw["eos_token_id"]  # trimmed at its end
            np.testing.assert_allclose(h.token_logprobs, alone.token_logprobs[k, :n - 1], atol=1e-4)
            np.testing.assert_allclose(h.score, alone.scores[k], rtol=1e-5, atol=1e-5)
            lengths.append(n)
    return lengths


@pytest.mark.parametrize("mode", ["beams", "beam_sample"])
def test_each_beam_group_gets_its_alone_hypotheses(model, mode):
    """3 beams per slot, 2 slots for 5 (3) inputs of ragged budgets, 3 steps per call, buckets from 4
    columns: beam groups end (EOS, the early-stop heuristic or the budget) out of order while
    others run. Beams return 2 hypotheses under length_penalty 0.7 with early_stopping "never"
    (its heuristic reads each input's own budget); beam sampling stops early (True)."""
    params, eos = model
    n = 5 if mode == "beams" else 3   # beam sampling: fewer budgets, fewer programs to compile
    px, budgets = rand_pixels(5, seed=2)[:n], BUDGETS[:n]
    kw = (dict(num_beams=3, num_return_sequences=2, length_penalty=0.7, early_stopping="never") if mode == "beams"
          else dict(num_beams=3, do_sample=True, top_k=20, length_penalty=1.3, early_stopping=True))
    keys = jax.random.split(jax.random.key(1), n) if mode == "beam_sample" else None
    outs = generate_many(params, px, budgets=budgets, keys=keys, slots=2, steps_per_call=3, bucket_start=4,
                         eos_token_id=eos, **kw)
    assert [o.index for o in outs] == list(range(n))
    lengths = assert_alone_beams(params, px, outs, budgets, keys, eos_token_id=eos, **kw)
    assert len(set(lengths)) > 1 and (mode == "beam_sample" or (len(set(lengths)) > 2 and max(lengths) > 8))
    assert any(h.sequence[-1] == eos for o in outs for h in o.beams)  # some hypotheses end on EOS


def test_bert_decoder_beams_as_manga_ocr(tmp_path):
    """A BERT decoder under manga-ocr's beam options (4 beams, no-repeat 3-grams, length_penalty
    2, early_stopping True) through 2 slots: each input's hypothesis is generate's alone."""
    from bert_models import make_generation_reference
    make_generation_reference("bert").save_pretrained(tmp_path)
    params, _ = pv.load(tmp_path)
    px, budgets = rand_pixels(3, seed=9), [4, 11, 7]
    kw = dict(num_beams=4, no_repeat_ngram_size=3, length_penalty=2.0, early_stopping=True, eos_token_id=3)
    outs = generate_many(params, px, budgets=budgets, slots=2, steps_per_call=3, bucket_start=4, **kw)
    assert len(set(assert_alone_beams(params, px, outs, budgets, **kw))) > 1



class _TickPolicy(draft_policy.DraftPolicy):
    """Every call takes one tick of the clock; a drafted call is credited ``credit`` times the
    tokens it wrote (so drafting measures faster or slower at will)."""

    def __init__(self, credit: float):
        ticks = itertools.count()
        super().__init__(3, clock=lambda: float(next(ticks)))
        self.credit = credit

    def record(self, drafts, columns, tokens, started):
        super().record(drafts, columns, tokens * self.credit if drafts else tokens, started)


def test_auto_drafts_only_where_they_measure_faster(model, monkeypatch):
    """A draft policy (what speculate="auto", the default, builds) drafts once drafting measures
    faster and leaves it once it measures slower; the tokens stay greedy's either way; sampling
    never drafts under "auto"."""
    params, _ = model
    px = rand_pixels(10, seed=2)   # twice the file's inputs and budgets: calls enough to measure both modes
    kw = dict(budgets=BUDGETS * 2, slots=2, steps_per_call=3, bucket_start=4, min_new_tokens=max(BUDGETS), ngram=1)
    monkeypatch.setattr(draft_policy, "WARM_CALLS", 1)
    monkeypatch.setattr(draft_policy, "MIN_STEPS_LEFT", 0)
    plain = generate_many(params, px, speculate=0, **kw)
    fast, slow = _TickPolicy(10.0), _TickPolicy(0.1)
    faster, slower = (generate_many(params, px, speculate=p, **kw) for p in (fast, slow))
    for outs in (faster, slower):
        assert [o.sequence.tolist() for o in outs] == [o.sequence.tolist() for o in plain]
    assert fast.rates.drafted > fast.rates.plain and slow.rates.drafted < slow.rates.plain
    steps = [sum(o.steps for o in outs) for outs in (plain, faster, slower)]
    assert steps[1] < steps[2] <= steps[0] == 2 * sum(BUDGETS)
    assert sum(o.drafted for o in slower) < sum(o.drafted for o in faster)
    sampled = generate_many(params, px, do_sample=True, keys=jax.random.split(jax.random.key(1), 10),
                            **{k: v for k, v in kw.items() if k != "ngram"})
    assert all(o.drafted == 0 and o.steps == len(o.token_logprobs) for o in sampled)
