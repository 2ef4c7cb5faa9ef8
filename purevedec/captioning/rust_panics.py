"""Rust panic reports from the tokenizers library, kept off the CLI's stderr.

A panic inside the library (merges over tokens missing from the vocabulary, a regex that
exhausts its backtracking limit) reaches Python as pyo3's PanicException, which
``text.library_errors`` turns into a TokenizerError. But Rust's panic hook has already written its
report ("thread '<unnamed>' panicked at ...", a backtrace under RUST_BACKTRACE) straight to file
descriptor 2, above the CLI's one-line error, and no setting turns the hook off from Python.

So while ``hidden()`` is active (the CLI's run), each library call runs with descriptor 2 pointed at
a temporary file (``captured``); after the call, what landed there goes to the real stderr, less
the report of the panic that the call raised, matched by its message. Nothing else is lost: what
other threads wrote meanwhile comes out after the call. A library user, without ``hidden()``,
sees Rust's report as Rust prints it: the package does not take over a process's stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading

# One redirection at a time: descriptor 2 belongs to the whole process. Reentrant, so that a
# library call made inside another (a nested library_errors) captures into the outer file.
_LOCK = threading.RLock()
_hiding = 0


@contextlib.contextmanager
def hidden():
    """Keep the reports of panics that library calls raise off stderr while active."""
    global _hiding
    with _LOCK:
        _hiding += 1
    try:
        yield
    finally:
        with _LOCK:
            _hiding -= 1


class Report:
    """What a captured call tells the capture: the message of the panic it raised, if any."""
    message: str | None = None

    def panicked(self, message: str) -> None:
        self.message = message


# Rust's report: a header (since Rust 1.73 "panicked at LOCATION:\nMESSAGE", before it
# "panicked at 'MESSAGE', LOCATION"; a thread id since 1.88), then the first panic's note or a
# backtrace (frame lines are indented), with the note ending a short backtrace.
_HEADER = rb"\n?thread '[^'\n]*'(?: \(\d+\))? panicked at "
_TAIL = (rb"(?:note: run with `RUST_BACKTRACE=1`[^\n]*\n"
         rb"|stack backtrace:\n(?:[ \t][^\n]*\n)*(?:note: Some details are omitted[^\n]*\n)?)?")


def without_report(data: bytes, message: str | None) -> bytes:
    """``data`` (what descriptor 2 received) less Rust's report of the panic with ``message``."""
    if message is None:
        return data
    text = re.escape(message.encode("utf-8", "replace"))
    report = _HEADER + rb"(?:[^\n]*:\n" + text + rb"|'" + text + rb"', [^\n]*)\n" + _TAIL
    return re.sub(report, b"", data, count=1)


def _flush_python_stderr() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()


def _write_all(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError):  # stderr closed: nothing can be shown anyway
        while data:
            data = data[os.write(fd, data):]


def _redirect():
    """(temporary file, saved descriptor 2) with descriptor 2 now the file; None when stderr is
    closed or no temporary file can be made (the call then runs uncaptured)."""
    try:
        capture = tempfile.TemporaryFile()
    except OSError:
        return None
    try:
        saved = os.dup(2)
    except OSError:
        capture.close()
        return None
    _flush_python_stderr()  # what Python already buffered for stderr goes out first
    os.dup2(capture.fileno(), 2)
    return capture, saved


def _restore(capture, saved: int, message: str | None) -> None:
    _flush_python_stderr()
    os.dup2(saved, 2)
    os.close(saved)
    with capture:
        capture.seek(0)
        _write_all(2, without_report(capture.read(), message))


@contextlib.contextmanager
def captured():
    """Run the body with descriptor 2 in a temporary file when ``hidden()`` is active; yields the
    Report in which the body names the panic it raised."""
    report, hiding = Report(), _hiding > 0
    with _LOCK if hiding else contextlib.nullcontext():
        redirected = _redirect() if hiding else None
        try:
            yield report
        finally:
            if redirected is not None:
                _restore(*redirected, report.message)
