"""Cutting a repetition loop off the end of a generated page, as Nougat's post-processing does
(transformers' ``truncate_repetitions``; the same result on the same text, quirks included).

A decoder caught in a loop writes the same stretch again and again until it runs out of tokens.
The rule: find the longest tail (at least ``min_len`` characters, compared case-insensitively)
that repeats right before itself; drop every copy of it; then give back whole sentences of the
dropped text (up to the next ``.?!`` or newline) until one of them lies inside the repeating tail.
"""

from __future__ import annotations

from typing import Optional

SENTENCE_ENDS = frozenset(".?!\n")


def next_sentence_end(text: str, start: int = 0) -> Optional[int]:
    """Index of the first ``.``, ``?``, ``!`` or newline at or after ``start``, else None."""
    for i in range(start, len(text)):
        if text[i] in SENTENCE_ENDS:
            return i
    return None


def _longest_repeat(lower: str, min_len: int) -> Optional[int]:
    """The longest length L in [min_len, len/2) whose last L characters equal the L before them."""
    n, best = len(lower), None
    for size in range(min_len, n // 2):
        if lower[n - 2 * size:n - size] == lower[n - size:]:
            best = size
    return best


def truncate_repetitions(text: str, min_len: int = 30) -> str:
    """``text`` with a repeating tail cut to its first copy (and the sentence it ends in)."""
    lower = text.lower()  # the reference measures everything on the lowered text, also when lengths differ
    if len(lower) < 2 * min_len:
        return text
    size = _longest_repeat(lower, min_len)
    if size is None:
        return text
    unit, kept = lower[-size:], len(lower)
    while lower[:kept].endswith(unit):
        kept -= size
    tail = lower[kept:]
    reversed_lower = lower[::-1]
    end_at = kept
    while True:
        end = next_sentence_end(lower, end_at)
        # The reference looks the sentence's start up in the reversed text at the same index (it is not
        # the sentence's start, but it is what decides the result), and treats index 0 as "not found".
        start = next_sentence_end(reversed_lower, end_at)
        if not (end and start):
            break
        end_at = end + 1
        if lower[start:end] in tail:
            break
    return text[:end_at]
