"""Limits every weights reader checks before it computes with, or allocates for, what a file says.

A file of a few bytes can declare a shape of hundreds of dimensions of thousands of digits
(``math.prod`` of such numbers takes minutes), or a value whose ``repr`` is gigabytes long
(a pickle can share one list many times over). These helpers check shapes first and describe
untrusted values in a bounded number of steps.
"""

from __future__ import annotations

import math

from ..errors import CheckpointError

MAX_RANK = 16          # HF weights are at most 4-D; anything deeper is not a weight
MAX_DIM = 2 ** 48      # larger than any file a reader will see, small enough to multiply fast


def is_count(x) -> bool:
    """A plain non-negative int (not a bool), checked without converting it to text."""
    return type(x) is int and 0 <= x <= MAX_DIM


def checked_shape(shape, what: str) -> tuple[int, ...]:
    """``shape`` as a tuple of ints after bounding its rank and each dimension."""
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_RANK or not all(map(is_count, shape)):
        raise CheckpointError(f"{what}: shape {brief(shape)} is not a list of at most {MAX_RANK} "
                              f"dimensions in [0, 2^48]")
    return tuple(shape)


def numel(shape: tuple[int, ...]) -> int:
    """Element count of a shape already passed through ``checked_shape`` (at most 16 numbers < 2^49)."""
    return math.prod(shape)


def brief(x, width: int = 80) -> str:
    """A short description of an untrusted value: scalars and short strings shown, containers
    by type and length, never walked (a shared-substructure DAG would take forever to print)."""
    if x is None or isinstance(x, (bool, float)):
        return repr(x)
    if type(x) is int:
        return repr(x) if abs(x) < 2 ** 64 else f"an int of {x.bit_length()} bits"
    if isinstance(x, (str, bytes)):
        text = repr(x[:width])
        return text if len(x) <= width else f"{text}... ({len(x)} long)"
    if isinstance(x, (list, tuple)) and len(x) <= 8 and all(type(d) is int for d in x):
        return "[" + ", ".join(map(brief, x)) + "]"  # a short shape: worth showing
    if isinstance(x, (list, tuple, dict)):
        return f"a {type(x).__name__} of {len(x)} item{'' if len(x) == 1 else 's'}"
    return f"a {type(x).__name__}"
