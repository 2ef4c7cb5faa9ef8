"""Wall-clock timing shared by every benchmark: the first call (compile included) and the best
of the warm calls. Long workloads get fewer repeats so a full run stays within minutes."""

from __future__ import annotations

import time


def timed(fn, *, budget_s: float = 6.0, max_repeats: int = 3) -> tuple[float, float, object]:
    """(first call s, best warm call s, the warm call's result). ``fn`` must block until done."""
    t = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t
    best, spent, runs = float("inf"), 0.0, 0
    while runs < max_repeats and (runs == 0 or spent + best <= budget_s):
        t = time.perf_counter()
        result = fn()
        took = time.perf_counter() - t
        best, spent, runs = min(best, took), spent + took, runs + 1
    return first, best, result
