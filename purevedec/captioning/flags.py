"""Command-line flag types shared by the commands: range-checked numbers, and ``--mesh`` (one
definition for ``caption`` and ``train``). A bad value is argparse's one-line error, exit 2."""

from __future__ import annotations

import argparse
import math
from typing import Callable

from .program import UsageError


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        """``text`` as an integer >= the minimum, or argparse's error."""
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


positive_int, count = int_at_least(1), int_at_least(0)


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"


def seed(text: str) -> int:
    """An argparse type: a random seed, an integer in [-2^63, 2^63) (what JAX's keys accept)."""
    try:
        value = int(text)
    except ValueError:   # also an integer of more than 4300 digits
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not an integer") from None
    if not -2 ** 63 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"must be an integer in [-2^63, 2^63), got {_shown(text)}")
    return value


def finite_float(text: str) -> float:
    """An argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _mesh_sizes(text: str) -> dict[str, int]:
    from ..sharding import parse_mesh
    try:
        return parse_mesh(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_mesh_flag(parser: argparse.ArgumentParser, what: str, needs: str = "") -> None:
    """Add ``--mesh data=N,model=M`` to ``parser``: ``what`` says what is split over the data axis
    ("batches", "the batch"), ``needs`` what else the command asks of the sizes; the value is
    parsed into axis sizes as the command line is read."""
    parser.add_argument("--mesh", metavar="data=N,model=M", type=_mesh_sizes, default=None,
                        help=f"run on a device mesh: {what} split over N devices, attention heads, MLP width "
                             f"and vocabulary over M (N*M must be the device count{needs}; see docs/sharding.md)")


def mesh_from(sizes: dict[str, int] | None):
    """``--mesh``'s axis sizes -> an Auto-axis mesh over every device (None: one device);
    UsageError when the sizes do not multiply to the device count."""
    if sizes is None:
        return None
    from ..sharding import make_mesh
    try:
        return make_mesh(sizes)
    except ValueError as e:
        raise UsageError(f"--mesh: {e}") from None
