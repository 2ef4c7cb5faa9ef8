"""Nougat's stopping rule for repetition loops: stop when the top score has gone steady.

The reference (facebookresearch/nougat, ``StoppingCriteriaScores``) watches, per row, the top
processed score of each step (the max over the vocabulary). After every step it pushes that
score into a window of the last ``TOP_WINDOW`` (15) of them and takes their variance divided by
their count; it pushes that value into a window of the last ``window`` (200) of those and takes
their variance, the "variance of the variance". A model caught in a loop writes with steady
confidence, so this value falls. From step ``window`` on, per row:

- variance of variance >= threshold (or NaN): the row is reset (stop index 0, not stopped);
- below it, and the row has a stop index and is not stopped: stopped = stop index >= step;
- below it otherwise: stop index = int(min(max(step, 1) * 1.15 + 150 + window, 4095)).

Variances are unbiased (n - 1), so the first step's is NaN (one value), and the NaN stays in the
second window until step ``window`` + 1: the earliest step a row can stop is ``window`` + 2.
The comparison reads "index >= step" where "step >= index" was surely meant; as written, a
row stops one step after its value first falls below the threshold, and stays stopped while it
stays below. The reference ends generation only when every row of the batch is stopped (rows
that met EOS included: their scores keep coming); run one page at a time, that is "end the row
when it is stopped", which is what the in-loop form here does for each row (``generate``'s
greedy and sampling loop, and each slot of the engine), so a page never depends on its batch.

``score_stop_trace`` replays the rule on the host (numpy) over a stream of score matrices, with
the reference's arithmetic as near as numpy gets: torch's CPU variance accumulates float32
values in float64 and rounds the result to float32; this two-pass float64 form gave torch's
float32 value bit for bit in 1999 of 2000 random windows of 200 (a float32 sum: 1198). ``ScoreStop`` and ``push_score`` carry it inside the jitted loop in
float32; a value within a few float32 ulps of the threshold could be judged differently there.
``repetition_cut`` is the reference's second, after-the-fact rule: where its inference blanks a
looping row's tail.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

THRESHOLD = 0.015     # the reference's default threshold on the variance of the variance
WINDOW = 200          # the reference's default window of variances
TOP_WINDOW = 15       # RunningVarTorch's default length: the window of top scores
INDEX_CAP = 4095      # the reference caps stop indices (its max_length is 4096)


class ScoreStopTrace(NamedTuple):
    """The rule replayed over N steps of a batch of B rows (step n is the reference's size n + 1)."""
    variance_of_variance: np.ndarray
    """[N,B] float32: the value compared with the threshold (NaN before step ``window``)."""
    stopped: np.ndarray
    """[N,B] bool: each row's stopped flag after the step."""
    batch_end: Optional[int]
    """The number of steps after which the reference's criterion first says stop (every row
    stopped), or None if it never does."""

    def row_ends(self) -> np.ndarray:
        """[B] int: per row, the steps after which it is first stopped (0 if never)."""
        stopped = self.stopped
        return np.where(stopped.any(0), stopped.argmax(0) + 1, 0)


def check_rule(rule) -> Optional[tuple[float, int]]:
    """``stop_score_variance`` as given to the engine: None/False (off), True (the reference's
    threshold and window) or (threshold > 0, window >= 2)."""
    if rule is None or rule is False:
        return None
    if rule is True:
        return THRESHOLD, WINDOW
    try:
        threshold, window = float(rule[0]), int(rule[1])
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"stop_score_variance={rule!r} must be True or (threshold, window), "
                         f"e.g. ({THRESHOLD}, {WINDOW})") from None
    if len(rule) != 2 or not (np.isfinite(threshold) and threshold > 0) or window < 2:
        raise ValueError(f"stop_score_variance={rule!r}: threshold must be > 0 and window >= 2")
    return threshold, window


# --- the host-side replay ---------------------------------------------------------------------------

def _torch_var(values: np.ndarray) -> np.ndarray:
    """Unbiased variance over the last axis as torch's CPU kernel gives it for float32: float64
    accumulation, float32 result (NaN for one value)."""
    wide = values.astype(np.float64)
    dev = wide - wide.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((dev * dev).sum(-1) / (values.shape[-1] - 1)).astype(np.float32)


def _stop_index(step: int, window: int) -> int:
    return int(min(max(step, 1) * 1.15 + 150 + window, INDEX_CAP))  # Python floats, as the reference


def score_stop_trace(step_scores: Iterable, threshold: float = THRESHOLD, window: int = WINDOW) -> ScoreStopTrace:
    """The reference rule over ``step_scores``: per step a [B,V] matrix of processed scores (or a
    [N,B,V] array); each step reads only the max of each row."""
    tops = np.stack([np.asarray(s).max(-1).astype(np.float32) for s in step_scores])   # [N,B]
    steps, rows = tops.shape
    variances = np.empty_like(tops)
    varvar = np.full_like(tops, np.nan)
    stopped = np.zeros((steps, rows), bool)
    stop_index, row_stopped = [0] * rows, [False] * rows
    limit = np.float32(threshold)   # torch compares a float32 tensor with the threshold in float32
    batch_end = None
    for n in range(steps):
        size = n + 1
        recent = tops[max(0, size - TOP_WINDOW):size].T                    # [B,<=15]
        variances[n] = _torch_var(recent) / np.float32(recent.shape[1])
        if size >= window:
            varvar[n] = _torch_var(variances[size - window:size].T)
            for b in range(rows):
                _update_row(b, varvar[n, b] < limit, size, window, stop_index, row_stopped)
            if all(row_stopped) and size > window:   # at size == window no row can be stopped yet
                batch_end = size if batch_end is None else batch_end
        stopped[n] = row_stopped
    return ScoreStopTrace(varvar, stopped, batch_end)


def _update_row(b: int, low: bool, size: int, window: int, stop_index: list, row_stopped: list) -> None:
    if not low:
        stop_index[b], row_stopped[b] = 0, False
    elif stop_index[b] > 0 and not row_stopped[b]:
        row_stopped[b] = stop_index[b] >= size
    else:
        stop_index[b] = _stop_index(size, window)


# --- the in-loop form (one row, under jit) ----------------------------------------------------------

class ScoreStop(NamedTuple):
    """The rule's state for one row; W = the window of variances."""
    tops: jax.Array         # [15] float32: the latest top scores, step n at slot n % 15
    variances: jax.Array    # [W] float32: the latest variances of tops, step n at slot n % W
    size: jax.Array         # int32: steps pushed so far
    stop_index: jax.Array   # int32: the reference's stop index (0: none)
    stopped: jax.Array      # bool: the reference's stopped flag


def new_score_stop(window: int) -> ScoreStop:
    return ScoreStop(tops=jnp.zeros(TOP_WINDOW, jnp.float32), variances=jnp.zeros(window, jnp.float32),
                     size=jnp.int32(0), stop_index=jnp.int32(0), stopped=jnp.bool_(False))


def _masked_var(ring, count):
    """Unbiased variance of the first ``count`` entries of ``ring`` (NaN for one entry)."""
    valid = jnp.arange(ring.shape[0]) < count
    n = count.astype(jnp.float32)
    mean = jnp.sum(jnp.where(valid, ring, 0.0)) / n
    return jnp.sum(jnp.where(valid, jnp.square(ring - mean), 0.0)) / (n - 1)


def push_score(state: ScoreStop, top, threshold: float) -> ScoreStop:
    """``state`` after a step whose top processed score is ``top`` (float32 scalar)."""
    window = state.variances.shape[0]
    size = state.size + 1
    tops = state.tops.at[(size - 1) % TOP_WINDOW].set(top)
    count = jnp.minimum(size, TOP_WINDOW)
    variance = _masked_var(tops, count) / count.astype(jnp.float32)
    variances = state.variances.at[(size - 1) % window].set(variance)
    low = _masked_var(variances, jnp.minimum(size, window)) < threshold   # NaN: not low
    counting = low & (state.stop_index > 0) & ~state.stopped
    # The index is only ever compared with the step, from which it stays >= 150 + window away
    # until the cap, so integer arithmetic in place of the reference's floats decides the same.
    fresh = jnp.minimum(jnp.maximum(size, 1) * 115 // 100 + 150 + window, INDEX_CAP)
    stop_index = jnp.where(low, jnp.where(counting, state.stop_index, fresh), 0)
    stopped = low & jnp.where(counting, state.stop_index >= size, state.stopped)
    judged = size >= window
    return ScoreStop(tops, variances, size, jnp.where(judged, stop_index, state.stop_index),
                     jnp.where(judged, stopped, state.stopped))


# --- the reference's cut after generation (host side) -------------------------------------------

CUT_THRESHOLD = 0.045   # the reference's bound on the variance of the variances' suffixes
CUT_MIN_LENGTH = 120    # tokens the reference adds to the start of the steady stretch


def repetition_cut(top_scores, top_ids, pad_id: int, eos_id: int) -> Optional[int]:
    """Where Nougat's reference inference (``NougatModel.inference``, early_stopping on) cuts a
    row after generation, or None: it sets ``sequences[row, cut:]`` to pad (``sequences`` holds
    the start token first, the cut counts steps: the reference's own off-by-one). ``top_scores``
    and ``top_ids`` [N]: each step's max processed score and its argmax (the reference's
    ``torch.stack(scores, 1).max(-1)`` for one row). numpy float32 arithmetic, as the reference's."""
    top_scores, top_ids = np.asarray(top_scores, np.float32), np.asarray(top_ids)
    kept = top_scores[top_ids != pad_id]
    n = len(kept)
    # windows of 15 at starts 0..n-16 (the reference's ``batch`` leaves the last one out)
    variances = np.array([np.var(kept[i:i + TOP_WINDOW]) / TOP_WINDOW for i in range(n - TOP_WINDOW)])
    if len(variances) < 10:
        return None
    if (top_ids == eos_id).any() and n + 1 < len(top_ids):   # the row ended: no loop, says the reference
        return None
    # the variance of each suffix variances[j + 1:], summed in reverse order as the reference's
    # subdiv of the reversed list does (float32 sums in another order could differ in the last bit)
    backwards = variances[::-1]
    suffix = np.array([np.var(backwards[:i + 10]) for i in range(len(backwards) - 10)][::-1])
    steady = np.nonzero(suffix < CUT_THRESHOLD)[0]
    if len(steady) <= 1 or not np.all(np.diff(steady) < 2):
        return None
    cut = int(min(max(steady[0], 1) * 1.08 + CUT_MIN_LENGTH, INDEX_CAP))
    if cut / n > 0.9:   # the loop would be in the last tenth at most
        return None
    return 0 if steady[0] < 30 else cut
