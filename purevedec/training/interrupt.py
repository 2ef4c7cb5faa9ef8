"""Ctrl-C that always ends ``purevedec train`` within seconds, with exit status 130.

Python raises ``KeyboardInterrupt`` only when the main thread next runs Python code; while it
sits in XLA's compiler or in a long native call that can take a minute. So besides the usual
``KeyboardInterrupt`` path (the main thread says where to resume and exits), a watcher thread
learns of the signal at once through ``signal.set_wakeup_fd`` (the interpreter's C-level handler
writes the signal number there whatever the main thread is doing) and, if the main thread has
not finished within ``grace`` seconds, prints the same message and ends the process with
``os._exit(130)``. A second Ctrl-C ends it at once. Checkpoints are written beside their place
and renamed in (``checkpoint_dir``), so ending the process at any point leaves the last one
whole.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from typing import Callable

INTERRUPTED = 130  # the shell's status for a process ended by SIGINT (128 + 2)


class InterruptGuard:
    """``with InterruptGuard(message):`` arms the watcher; ``message()`` is the text printed on
    the way out (where to resume). Only the main thread can arm it; elsewhere it does nothing."""

    def __init__(self, message: Callable[[], str], grace: float = 3.0):
        self.message, self.grace = message, grace
        self._reader = self._writer = None
        self._previous_fd = -1
        self._done = threading.Event()

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is not threading.main_thread():
            return self
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="purevedec-interrupt", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._writer is not None:
            signal.set_wakeup_fd(self._previous_fd)
            self._writer.close()

    def exit_now(self) -> None:
        """Print the message and end the process with status 130 (no interpreter teardown: native
        threads of a half-finished compilation can crash it)."""
        try:
            print(self.message(), file=sys.stderr, flush=True)
            sys.stdout.flush()
        finally:
            os._exit(INTERRUPTED)

    def _watch(self) -> None:
        seen = None
        while True:
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGINT not in data and signal.SIGTERM not in data:
                continue
            if seen is not None:  # a second Ctrl-C: no more waiting
                self.exit_now()
            seen = time.monotonic()
            threading.Thread(target=self._deadline, daemon=True).start()

    def _deadline(self) -> None:
        if not self._done.wait(self.grace):
            self.exit_now()
