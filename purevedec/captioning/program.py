"""The ``purevedec`` program's driver: one parser with one-line errors, the errors a command
raises and the exit code each one means, stderr's one-line messages, and ``main``.

Exit codes: 0 done; 1 some inputs could not be used (each named on stderr); 2 the command line,
an option or the model is wrong (one line on stderr); 3 the output could not be written (disk
full, ...); 130 interrupted; 141 stdout was closed early (``| head``): the run stops quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from typing import Callable, TextIO

from . import interrupts, rust_panics
from .escape import escape

EXIT_OK, EXIT_FAILED_INPUTS, EXIT_USAGE, EXIT_OUTPUT, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 3, 130, 141


class UsageError(Exception):
    """A wrong command line or option: reported as one line, exit 2."""


class OutputError(Exception):
    """The output could not be written: reported as one line, exit 3."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (its usage block is for --help)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {escape(message, backslash=False)}\n")


def version() -> str:
    """The installed package's version (from its metadata)."""
    from importlib.metadata import PackageNotFoundError, version as dist_version
    try:
        return dist_version("purevedec")
    except PackageNotFoundError:
        return "unknown (not installed)"


def say(err: TextIO, message: str) -> None:
    """One line on stderr, with terminal control characters (from file names or a checkpoint) escaped."""
    err.write(escape(message, backslash=False) + "\n")
    err.flush()


def _parser(commands) -> argparse.ArgumentParser:
    """The ``purevedec`` parser: ``commands`` are functions like ``cli.add_caption_command``,
    each adding a subparser whose ``run`` is its function ``run(args, out, err) -> exit code``."""
    parser = Parser(prog="purevedec", description="Pure-JAX VisionEncoderDecoder tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in commands:
        add(subparsers)
    return parser


def _show_warning(err: TextIO) -> Callable:
    def show(message, category, filename, lineno, file=None, line=None):
        say(err, f"warning: {message}")
    return show


def _silence_stdout() -> None:
    """After a broken pipe or a full disk: point stdout at /dev/null so that Python's final
    flush of what is still buffered does not print a traceback."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None, *,
         commands=()) -> int:
    """Parse ``argv`` with ``commands`` (as in ``_parser``) and run the chosen one; returns the
    exit code. ``out``/``err`` default to sys.stdout/sys.stderr (tests pass their own)."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = _parser(commands).parse_args(argv)
    except SystemExit as e:  # --help, --version, or a one-line usage error
        return EXIT_OK if e.code is None else e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        with warnings.catch_warnings(), rust_panics.hidden(), interrupts.remembered():
            warnings.showwarning = _show_warning(err)   # the one-line error says it all
            try:
                return args.run(args, out, err)
            except Exception:
                if not interrupts.received():
                    raise
                raise KeyboardInterrupt from None   # what a library made of the interrupt
    except UsageError as e:
        say(err, f"error: {e}")
        return EXIT_USAGE
    except OutputError as e:
        say(err, f"error: {e}")
        if out is sys.stdout:
            _silence_stdout()
        return EXIT_OUTPUT
    except BrokenPipeError:
        if out is sys.stdout:
            _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            say(err, "interrupted")
        return EXIT_INTERRUPTED
