"""When the slot engine drafts: ``speculate="auto"`` measures both ways and keeps the faster.

A speculative step feeds every slot k + 1 tokens, so it costs little more than a plain step
while a decode step is bound by reading the weights (few slots, a wide model) and up to k + 1
times more once the rows make it compute-bound (many slots); what it gains depends on how
often the text repeats itself. Neither is known before the text is written, so the engine
times its calls: tokens written per second, plain and drafted, each an exponential moving
average. It drafts while drafting measures at least as fast, and re-measures the mode it is not
using every ``probe_every`` calls (a page turns repetitive, or stops being so). A call that
compiled (the first of its mode at each cache size) is not counted. Drafting is first tried
only once ``WARM_CALLS`` plain calls were measured and at least ``MIN_STEPS_LEFT`` decoder
steps of work remain: its program compiles for each cache size, which a short job (a few
dozen captions) would not win back. The tokens are greedy's either way, so the choice changes
only the speed.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple, Optional

SMOOTHING = 0.3     # weight of the newest call in a mode's moving average
PROBE_EVERY = 16    # calls between two measurements of the mode not in use
WARM_CALLS = 4      # plain calls measured before drafting is first tried
MIN_STEPS_LEFT = 256  # decoder steps of work left (per slot) for drafting to be first tried


class Rates(NamedTuple):
    """Tokens per second of the two modes (None until measured)."""
    plain: Optional[float] = None
    drafted: Optional[float] = None


class DraftPolicy:
    """Chooses each call's draft length (0 or ``k``) from the measured rates."""

    def __init__(self, k: int, probe_every: int = PROBE_EVERY, clock: Callable[[], float] = time.perf_counter):
        self.k, self.probe_every, self.clock = k, probe_every, clock
        self.rates = Rates()
        self.compiled: set[tuple[bool, int]] = set()   # (drafting, cache columns) already run once
        self.calls = self.plain_measured = 0

    def choose(self, steps_left: int) -> int:
        """The next call's draft length, with ``steps_left`` decoder steps of work per slot left
        (the inputs' remaining budgets over the slots)."""
        self.calls += 1
        plain, drafted = self.rates
        if drafted is None:
            ready = self.plain_measured >= WARM_CALLS and steps_left >= MIN_STEPS_LEFT
            return self.k if ready else 0
        best = drafted >= plain
        probe = self.calls % self.probe_every == 0
        return self.k if best != probe else 0

    def start(self) -> float:
        return self.clock()

    def record(self, drafts: int, columns: int, tokens: int, started: float) -> None:
        """A finished call: ``tokens`` written by ``drafts``-token drafting at ``columns`` cache
        columns, since ``started`` (``start()``)."""
        seconds = self.clock() - started
        mode = (drafts > 0, columns)
        if mode not in self.compiled:   # its time is mostly compiling
            self.compiled.add(mode)
            return
        if tokens <= 0 or seconds <= 0:
            return
        rate = tokens / seconds
        self.plain_measured += not drafts
        old = self.rates.drafted if drafts else self.rates.plain
        new = rate if old is None else (1 - SMOOTHING) * old + SMOOTHING * rate
        self.rates = self.rates._replace(**{"drafted" if drafts else "plain": new})
