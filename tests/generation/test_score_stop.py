"""Nougat's stopping rule (score_stop.py) against a literal torch transcription of the reference
(facebookresearch/nougat, model.py: RunningVarTorch and StoppingCriteriaScores), written here as
the oracle: per step, each row's stopped flag and the step at which the batch stops."""

from __future__ import annotations

import warnings
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from purevedec.generation.score_stop import (ScoreStop, check_rule, new_score_stop, push_score,
                                             repetition_cut, score_stop_trace)


class OracleRunningVar:
    def __init__(self, L=15, norm=False):
        self.values, self.L, self.norm = None, L, norm

    def push(self, x):
        if self.values is None:
            self.values = x[:, None]
        elif self.values.shape[1] < self.L:
            self.values = torch.cat((self.values, x[:, None]), 1)
        else:
            self.values = torch.cat((self.values[:, 1:], x[:, None]), 1)

    def variance(self):
        if self.norm:
            return torch.var(self.values, 1) / self.values.shape[1]
        return torch.var(self.values, 1)


class OracleCriterion:
    def __init__(self, threshold=0.015, window_size=200):
        self.threshold, self.window_size = threshold, window_size
        self.vars, self.varvars = OracleRunningVar(norm=True), OracleRunningVar(L=window_size)
        self.stop_inds, self.stopped, self.size = defaultdict(int), defaultdict(bool), 0

    def __call__(self, scores):   # the reference gets the tuple of all steps' scores; it reads the last
        last = scores[-1]
        self.vars.push(last.max(1)[0].float().cpu())
        self.varvars.push(self.vars.variance())
        self.size += 1
        if self.size < self.window_size:
            return False
        varvar = self.varvars.variance()
        for b in range(len(last)):
            if varvar[b] < self.threshold:
                if self.stop_inds[b] > 0 and not self.stopped[b]:
                    self.stopped[b] = self.stop_inds[b] >= self.size
                else:
                    self.stop_inds[b] = int(min(max(self.size, 1) * 1.15 + 150 + self.window_size, 4095))
            else:
                self.stop_inds[b] = 0
                self.stopped[b] = False
        return all(self.stopped.values()) and len(self.stopped) > 0


def oracle(stream: np.ndarray, threshold: float, window: int):
    """(stopped [N,B], the first size at which the criterion says stop, or None)."""
    crit, seen, flags, end = OracleCriterion(threshold, window), [], [], None
    for step in stream:
        seen.append(torch.from_numpy(step))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "var\\(\\): degrees of freedom")   # the first step's variance: NaN
            says_stop = crit(tuple(seen))
        if says_stop and end is None:
            end = crit.size
        flags.append([bool(crit.stopped.get(b, False)) for b in range(step.shape[0])])
    return np.array(flags), end


def segments(rng, rows: int, vocab: int, plan) -> np.ndarray:
    """[N,rows,vocab] scores whose top score per row is noisy (scale) or a loop (period) by segment:
    ``plan`` is a list of (steps, per-row kind) with kind a float scale or ("loop", period)."""
    out = []
    base = rng.normal(size=(rows, 8)).astype(np.float32)   # each row's loop values
    for steps, kinds in plan:
        for t in range(steps):
            step = rng.normal(size=(rows, vocab)).astype(np.float32)
            for b, kind in enumerate(kinds):
                if isinstance(kind, tuple):
                    step[b, 0] = 20 + base[b, t % kind[1]]          # the same top scores again and again
                else:
                    step[b, 0] = 20 + kind * rng.normal()
            out.append(step)
    return np.stack(out)


def assert_same(stream, threshold, window):
    trace = score_stop_trace(stream, threshold, window)
    flags, end = oracle(stream, threshold, window)
    np.testing.assert_array_equal(trace.stopped, flags)
    assert trace.batch_end == end
    return trace


def test_random_streams_match_the_oracle_step_by_step():
    rng = np.random.default_rng(0)
    flips = 0
    for trial in range(6):
        stream = (rng.normal(size=(90, 3, 11)) * rng.uniform(0.5, 4, size=(90, 3, 1))).astype(np.float32)
        trace = assert_same(stream, threshold=0.05, window=12)
        flips += int(np.sum(trace.stopped[1:] != trace.stopped[:-1]))
    assert flips > 5  # rows stop and restart: the reset branch and the stop branch both ran


def test_loops_stop_rows_at_their_own_step_and_the_batch_when_all_have():
    rng = np.random.default_rng(1)
    plan = [(230, (3.0, 3.0, ("loop", 4))), (260, (("loop", 3), 3.0, ("loop", 4))),
            (300, (("loop", 3), ("loop", 6), ("loop", 4)))]
    stream = segments(rng, 3, 9, plan)
    trace = assert_same(stream, 0.015, 200)
    ends = trace.row_ends()
    assert ends[2] == 202                     # looping from the start: the earliest possible stop
    assert 230 + 200 < ends[0] < 490 < ends[1]   # each row once its window holds only the loop
    assert trace.batch_end == ends.max()


def test_stop_index_cap_past_4095_leaves_a_row_unstopped():
    rng = np.random.default_rng(2)
    # both rows noisy from 3950 to 4120, looping after: their fresh stop index is the cap, 4095,
    # below the step, so "index >= step" is false and they never stop again
    stream = segments(rng, 2, 5, [(3950, (("loop", 5), 10.0)), (170, (10.0, 10.0)), (60, (("loop", 5),) * 2)])
    trace = assert_same(stream, 0.05, 20)
    assert trace.stopped[3900, 0] and not trace.stopped[3900, 1] and not trace.stopped[3960:].any()
    assert np.all(trace.variance_of_variance[-10:] < 0.05)   # low, yet not stopped


def test_in_loop_state_matches_the_host_replay():
    rng = np.random.default_rng(3)
    stream = segments(rng, 2, 6, [(70, (3.0, ("loop", 3))), (80, (("loop", 5), 3.0)), (60, (3.0, ("loop", 2)))])
    trace = score_stop_trace(stream, 0.05, 16)

    def step(state: ScoreStop, top):
        state = push_score(state, top, 0.05)
        return state, state.stopped
    for b in range(2):
        _, flags = jax.lax.scan(step, new_score_stop(16), jnp.asarray(stream[:, b].max(-1)))
        np.testing.assert_array_equal(np.asarray(flags), trace.stopped[:, b])
    assert trace.stopped.any() and not trace.stopped.all()


def test_check_rule():
    assert check_rule(None) is None and check_rule(False) is None
    assert check_rule(True) == (0.015, 200) and check_rule((0.1, 8)) == (0.1, 8)
    for bad in [(0.1, 1), (-1, 8), (0.1,), "x", (float("nan"), 8)]:
        with pytest.raises(ValueError, match="stop_score_variance"):
            check_rule(bad)


# --- the reference's cut after generation (NougatModel.inference), transcribed literally ---------

def oracle_batch(l, b=15):
    return [l[i:i + b] for i in range(len(l) - b)]


def oracle_subdiv(l, b=10):
    return [l[:i + b] for i in range(len(l) - b)]


def oracle_cuts(stream: np.ndarray, pad: int, eos: int) -> list:
    logits = torch.stack([torch.from_numpy(s) for s in stream], 1).max(-1)
    values, indices = logits.values, logits.indices
    repeats = []
    for b in range(stream.shape[1]):
        mask = indices[b] != pad
        N = mask.sum().item()
        var = np.array([np.var(s) / len(s) for s in oracle_batch(values[b, mask].float().numpy())])
        if len(var) < 10:
            repeats.append(None)
            continue
        varvar = np.array([np.var(v) for v in oracle_subdiv(var[::-1])][::-1])
        if (indices[b] == eos).any() and N + 1 < indices.shape[1]:
            repeats.append(None)
            continue
        small_var = np.where(varvar < 0.045)[0]
        if len(small_var) > 1 and np.all(np.diff(small_var) < 2):
            idx = int(min(max(small_var[0], 1) * 1.08 + 120, 4095))
            if idx / N > 0.9:
                repeats.append(None)
                continue
            elif small_var[0] < 30:
                idx = 0
            repeats.append(idx)
        else:
            repeats.append(None)
    return repeats


def test_repetition_cut_matches_the_reference_inference():
    rng = np.random.default_rng(5)
    pad, eos = 1, 2
    plan = [(300, (3.0, 0.4, ("loop", 4), 3.0, 3.0, 0.3)),
            (400, (("loop", 5), ("loop", 3), ("loop", 4), ("loop", 6), ("loop", 2), 0.3))]
    stream = segments(rng, 6, 7, plan)
    stream[-60:, 4, pad] = 99      # row 4 ends in pad steps: the reference leaves them out
    stream[500, 3, eos] = stream[500, 3, 0] + 1e-3   # row 3 met EOS (its loop's score, barely on top)
    stream[501:, 3, pad] = 99                         # while other rows went on
    stream[-1, 0, eos] = stream[-1, 0, 0] + 1e-3      # row 0 met EOS at the last step: still judged
    stream[40:, 5] = stream[:-40, 5]   # row 5: noisy at small scale, then a copy of itself
    want = oracle_cuts(stream, pad, eos)
    tops = stream.max(-1).T, stream.argmax(-1).T
    got = [repetition_cut(tops[0][b], tops[1][b], pad, eos) for b in range(6)]
    assert got == want
    assert 0 in got and got[0] > 0 and got[4] > 0   # steady from the start; after 300 steps; pads left out
    stream[500, 3, eos] = 0   # the same row without its EOS would be cut
    assert got[3] is None and repetition_cut(stream[:, 3].max(-1), stream[:, 3].argmax(-1), pad, eos) > 0
