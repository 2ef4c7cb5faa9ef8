"""Ctrl-C that always stops a CLI job, even when a library swallows the interrupt.

Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread happens to
be. When that is inside Python code that a C extension called, the extension may lose it: numpy
turns it into a ``SystemError`` ("returned a result with an exception set"), and code that clears
errors to try another path drops it, after which a caption job would run to its last file and
exit 0. So while ``remembered()`` is active the handler also records the signal: the job calls
``check()`` between records, and the driver treats any error that follows a Ctrl-C as the
interrupt (exit 130, "interrupted").
"""

from __future__ import annotations

import contextlib
import signal
import threading

_received = threading.Event()


def _on_sigint(signum, frame):
    _received.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def remembered():
    """Record Ctrl-C for the body's duration. Only the main thread can set a signal handler, and
    one set by the embedding program (not Python's default) is left alone."""
    install = (threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    _received.clear()
    previous = signal.signal(signal.SIGINT, _on_sigint) if install else None
    try:
        yield
    finally:
        if install:
            signal.signal(signal.SIGINT, previous)


def received() -> bool:
    """Whether Ctrl-C arrived during the current ``remembered()`` run."""
    return _received.is_set()


def check() -> None:
    """Raise the interrupt that arrived and was lost on the way (a no-op otherwise)."""
    if _received.is_set():
        raise KeyboardInterrupt
