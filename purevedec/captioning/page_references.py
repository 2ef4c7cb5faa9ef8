"""Removing hallucinated reference lists from a generated page, as Nougat's post-processing does
(transformers' ``remove_hallucinated_references``; the same result on the same text).

A model that has lost track of the page often writes a long run of near-identical lines (the
same reference over and over with different numbers). Such a run of more than 15 lines, each
3-200 characters and within 0.9 Levenshtein similarity of the next once digits, ``_`` and ``**``
are ignored, is cut (with a little context either side, by the reference's rules) and replaced by
``[MISSING_PAGE_POST]``.

``similarity`` is Levenshtein's ``ratio`` (python-Levenshtein / rapidfuzz, not needed here):
1 - indel distance / total length, the indel distance being the characters not in a longest
common subsequence. The subsequence is found bit-parallel (Hyyrö), a Python int per row, so a
long line costs one big-integer operation per character of the other.
"""

from __future__ import annotations

import re
from typing import Optional

import numpy as np

MISSING = "\n\n[MISSING_PAGE_POST]\n\n"
_NOISE = re.compile(r"(?:[\d_]|\*\*)")


def _lcs_length(a: str, b: str) -> int:
    """Length of a longest common subsequence of ``a`` and ``b``."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, ch in enumerate(a):
        masks[ch] = masks.get(ch, 0) | (1 << i)
    full = (1 << len(a)) - 1
    row = full   # bit i set: a[i] not yet matched on this row's path
    for ch in b:
        match = row & masks.get(ch, 0)
        row = ((row + match) | (row - match)) & full
    return len(a) - bin(row).count("1")


def similarity(a: str, b: str) -> float:
    """Levenshtein's ``ratio``: 1 - (indel distance / (len(a) + len(b))); 1.0 for two empty strings."""
    total = len(a) + len(b)
    if total == 0:
        return 1.0
    return 1.0 - (total - 2 * _lcs_length(a, b)) / total


def without_numbers(line: str) -> str:
    """A line with digits, ``_`` and ``**`` removed, stripped: what the comparisons read."""
    return _NOISE.sub("", line).strip()


def _similar_run_lines(lines: list[str], clean: list[str]) -> np.ndarray:
    """Which lines start a pair (with the next non-empty clean line) of similar lines."""
    marked = np.zeros(len(lines), bool)
    for i in range(len(lines) - 1):
        j = i + 1
        while not clean[j] and j < len(lines) - 1:
            j += 1
        a, b = clean[i], clean[j]
        if (3 < len(a) < 200 and 3 < len(b) < 200 and not a.startswith("[MISSING_PAGE")
                and (a == b or similarity(a, b) > 0.9)):
            marked[i:j] = True
    return marked


def repeated_runs(lines: list[str], clean: list[str]) -> list[tuple[int, int]]:
    """(first, last + 2) of each run of marked lines (gaps of up to 3 lines joined) longer than 15."""
    ids = np.flatnonzero(_similar_run_lines(lines, clean))
    if len(ids) == 0:
        return []
    runs, first = [], 0
    for k in np.flatnonzero(np.diff(ids) > 3):
        runs.append((int(ids[first]), int(ids[k]) + 2))
        first = k + 1
    runs.append((int(ids[first]), int(ids[-1]) + 2))
    return [r for r in runs if r[1] - r[0] > 15]


def _run_start(lines: list[str], base: str, start: int) -> tuple[int, bool]:
    """Walk back up to 4 lines from ``start``: (the first line to cut, whether a dissimilar line was found)."""
    for idx in range(max(0, start - 1), max(0, start - 5), -1):
        if not lines[idx]:
            continue
        if lines[idx] == "## References":
            return idx, False
        if similarity(base, without_numbers(lines[idx])) < 0.9:
            candidate = without_numbers(lines[max(0, idx - 1)].partition("* [")[2])
            unlike = len(candidate) >= 0.75 * len(base) and similarity(base, candidate) < 0.9
            return (idx if unlike else idx + 1), True
    return start, False


def _run_end(lines: list[str], base: str, end: int) -> int:
    """Walk forward up to 5 lines from ``end``: the last line to cut."""
    for idx in range(min(len(lines), end), min(len(lines), end + 5)):
        if similarity(base, without_numbers(lines[idx])) < 0.9:
            end = idx
            break
    return min(end, len(lines) - 1)


def _last_compared(prev: str, last: str) -> Optional[int]:
    """Compare ``prev`` and ``last`` character by character, numerals skipped in each, until they
    differ or one ends: the index in ``last`` of the last character taken from it (None: none was)."""
    pa = pb = 0
    taken = None
    while True:
        while pa < len(prev) and prev[pa].isnumeric():
            pa += 1
        if pa >= len(prev):
            return taken
        a = prev[pa]
        pa += 1
        while pb < len(last) and last[pb].isnumeric():
            taken = pb
            pb += 1
        if pb >= len(last):
            return taken
        b, taken = last[pb], pb
        pb += 1
        if a != b:
            return taken


def run_text(lines: list[str], clean: list[str], run: tuple[int, int]) -> str:
    """The text to cut for one run: the run, widened by its context rules, trimmed to the part of
    its last line that repeats the line before it."""
    base = clean[run[0]]
    first, found_start = _run_start(lines, base, run[0])
    last = _run_end(lines, base, run[1])
    text = "\n".join(lines[first:last + 1])
    taken = _last_compared(lines[last - 1], lines[last])  # index -1 when last is 0, as the reference reads it
    if found_start and "* [" in text:
        text = "* [" + text.partition("* [")[2]
    if taken is not None:
        extra = len(lines[last]) - taken - 1
        if extra > 0:
            text = text[:-extra]
    return text.strip()


def remove_hallucinated_references(text: str) -> str:
    """``text`` with each long run of near-identical lines replaced by ``[MISSING_PAGE_POST]``."""
    lines = text.split("\n")
    clean = [without_numbers(line) for line in lines]
    cuts = [run_text(lines, clean, run) for run in repeated_runs(lines, clean)]
    for cut in reversed(cuts):
        text = text.replace(cut, MISSING)
    # a References heading left with nothing under it but the marker goes too
    return re.sub(r"## References\n+\[MISSING_PAGE_POST(:\d+)?\]", lambda m: f"\n\n[MISSING_PAGE_POST{m[1] or ''}]",
                  text)
