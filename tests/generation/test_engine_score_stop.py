"""Nougat's stopping rule inside the slot engine (stop_score_variance): each input ends where the
host-side replay of the rule (score_stop_trace, itself checked against the reference's torch code
in test_score_stop.py) ends it on the engine's own per-step top scores of a run without the rule."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import purevedec as pv
from purevedec.generation import generate_growing
from purevedec.generation.engine import generate_many
from purevedec.generation.score_stop import score_stop_trace
from conftest import make_reference, rand_pixels, save_reference

BUDGET = 56
WINDOW = 8


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    ref = make_reference(dec_kw={"n_positions": 64}, init_scale=3.0, seed=3)
    return pv.load(save_reference(ref, tmp_path_factory.mktemp("gpt2")))[0]


@pytest.mark.parametrize("threshold", [1e-5, 5e-8])
@pytest.mark.parametrize("mode", ["greedy", "sample"])
def test_each_input_ends_where_the_host_rule_ends_it(params, threshold, mode):
    px = rand_pixels(5, seed=2)
    kw = dict(budgets=[BUDGET] * 5, slots=2, steps_per_call=5, bucket_start=8, min_new_tokens=BUDGET,
              keys=jax.random.split(jax.random.key(4), 5),
              **(dict(do_sample=True, temperature=0.7) if mode == "sample" else {}))
    free = generate_many(params, px, **kw)
    stopped = generate_many(params, px, stop_score_variance=(threshold, WINDOW), **kw)
    ends = []
    for f, s in zip(free, stopped):
        assert f.top_scores.shape == (BUDGET,) and np.all(np.isfinite(f.top_scores))
        end = score_stop_trace(f.top_scores[:, None, None], threshold, WINDOW).row_ends()[0] or BUDGET
        assert s.sequence.tolist() == f.sequence[:1 + end].tolist()
        np.testing.assert_array_equal(s.top_scores, f.top_scores[:end])
        ends.append(end)
    assert min(ends) < BUDGET and len(set(ends)) > 1   # inputs cut, at different steps


def test_every_threshold_runs_the_same_compiled_step(params):
    """The threshold is an argument of the engine's step program, not a constant compiled into it:
    a Nougat user trying thresholds compiles the step once."""
    from purevedec.generation import engine
    px = rand_pixels(5, seed=2)
    kw = dict(budgets=[BUDGET] * 5, slots=2, steps_per_call=5, bucket_start=8, min_new_tokens=BUDGET,
              keys=jax.random.split(jax.random.key(4), 5))   # the greedy case above: its programs
    # first a threshold no input reaches: the slots grow through every cache size they can need
    full = generate_many(params, px, stop_score_variance=(1e-30, WINDOW), **kw)
    assert [len(d.sequence) for d in full] == [1 + BUDGET] * 5
    programs = engine._advance._cache_size()
    for threshold in (1e-5, 5e-8, 2e-3):   # inputs cut at other steps, by other thresholds
        generate_many(params, px, stop_score_variance=(threshold, WINDOW), **kw)
    assert engine._advance._cache_size() == programs > 0


def test_the_rule_refuses_bad_options(params):
    px = rand_pixels(1, seed=2)
    for rule in [(0.1, 1), (0, 8), "yes"]:
        with pytest.raises(ValueError, match="stop_score_variance"):
            generate_many(params, px, stop_score_variance=rule)


def test_drafted_tokens_are_judged_one_by_one(params):
    """With n-gram drafts a step writes several tokens; the rule still ends each input after the
    token where plain steps end it (the rule's state pushed token by token)."""
    px = rand_pixels(5, seed=2)
    kw = dict(budgets=[BUDGET] * 5, slots=2, steps_per_call=5, bucket_start=8, min_new_tokens=BUDGET,
              stop_score_variance=(1e-5, WINDOW))   # test_each_input_ends_where_the_host_rule_ends_it's greedy call
    plain = generate_many(params, px, speculate=0, **kw)
    drafted = generate_many(params, px, speculate=3, ngram=1, **kw)
    assert [d.sequence.tolist() for d in drafted] == [p.sequence.tolist() for p in plain]
    assert min(len(p.sequence) for p in plain) < 1 + BUDGET          # some inputs were cut by the rule
    assert sum(d.steps for d in drafted) < sum(p.steps for p in plain)  # and drafts were accepted


@pytest.mark.parametrize("mode", ["greedy", "sample"])
def test_generate_ends_each_row_where_the_engine_ends_its_input(params, mode):
    """generate's batched loop carries the rule per row: each row as the engine's input alone."""
    px = rand_pixels(5, seed=2)
    keys = jax.random.split(jax.random.key(4), 5)
    kw = dict(min_new_tokens=BUDGET, stop_score_variance=(1e-5, WINDOW),
              **(dict(do_sample=True, temperature=0.7) if mode == "sample" else {}))
    # test_each_input_ends_where_the_host_rule_ends_it's call at 1e-5: the same programs
    engine = generate_many(params, px, budgets=[BUDGET] * 5, slots=2, steps_per_call=5, bucket_start=8, keys=keys,
                           **kw)
    batched = pv.generate(params, px, max_new_tokens=BUDGET, key=keys, **kw)
    ends = []
    for row, o in zip(batched.sequences, engine):
        n = len(o.sequence)
        assert row[:n].tolist() == o.sequence.tolist() and np.all(row[n:] == row[n:][:1])  # then only pad
        ends.append(n)
    assert len(set(ends)) > 1 and max(ends) == batched.sequences.shape[1] < 1 + BUDGET
    grown = generate_growing(params, px, max_new_tokens=BUDGET, key=keys, bucket_start=8, **kw)
    np.testing.assert_array_equal(grown.sequences, batched.sequences)   # the state crosses cache buckets
    with pytest.raises(ValueError, match="stop_score_variance ends rows one by one"):
        pv.generate(params, px, max_new_tokens=4, num_beams=2, stop_score_variance=True)
