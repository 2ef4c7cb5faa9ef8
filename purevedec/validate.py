"""Checks of single option values, shared by every config type (model, generation, image).

Each takes the value, the name to report and returns the value in its canonical form, or
raises ``error`` naming the option and what was found. No jax here: config parsing stays cheap.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any, name: str, error=ConfigError) -> int:
    if not _is_int(value) or value <= 0:
        raise error(f"{name} must be a positive int, got {value!r}")
    return value


def non_negative_int(value: Any, name: str, error=ConfigError) -> int:
    if not _is_int(value) or value < 0:
        raise error(f"{name} must be an int >= 0, got {value!r}")
    return value


def number(value: Any, name: str, error=ConfigError, *, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> float:
    """A finite number, optionally within [low, high] (or (low, high] with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise error(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise error(f"{name} must be <= {high}, got {value!r}")
    return float(value)


def probability(value: Any, name: str, error=ConfigError) -> float:
    """A dropout-style rate in [0, 1)."""
    value = number(value, name, error, low=0.0)
    if value >= 1.0:
        raise error(f"{name} must be in [0, 1), got {value!r}")
    return value


def flag(value: Any, name: str, error=ConfigError) -> bool:
    if not isinstance(value, bool):
        raise error(f"{name} must be true or false, got {value!r}")
    return value


def pair(value: Any, name: str, error=ConfigError) -> tuple[int, int]:
    """An int or an (h, w) pair of positive ints (ViT's image_size and patch_size)."""
    if _is_int(value):
        value = (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value):
        return (int(value[0]), int(value[1]))
    raise error(f"{name} must be a positive int or a pair of positive ints, got {value!r}")


# Token ids must fit the int32 buffers generation uses.
MAX_TOKEN_ID = 2 ** 31 - 1


def token_id(value: Any, name: str, error=ConfigError) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not 0 <= value <= MAX_TOKEN_ID:
        raise error(f"{name} must be a token id in [0, 2^31) or null, got {value!r:.80}")
    return value


def token_ids(value: Any, name: str, error=ConfigError) -> tuple[int, ...] | None:
    """One id or a list of ids -> a tuple (None stays None)."""
    if value is None:
        return None
    if _is_int(value):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise error(f"{name} must be a token id or a non-empty list of token ids, got {value!r:.80}")
    return tuple(token_id(v, name, error) for v in value)


def one_of(value: Any, name: str, choices, error=ConfigError):
    try:
        known = value in choices
    except TypeError:  # an unhashable value (a list, a dict) is never one of the choices
        known = False
    if not known:
        raise error(f"{name}={value!r:.80} is not supported; supported: {sorted(map(str, choices))}")
    return value
