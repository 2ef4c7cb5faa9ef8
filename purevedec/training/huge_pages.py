"""``purevedec train`` restarts itself once with glibc told to back malloc's large blocks with
transparent huge pages (the ``glibc.malloc.hugetlb=1`` tunable, glibc 2.35 and later).

Why: XLA:CPU mallocs a compiled program's temp buffer at every execution and frees it afterwards.
Blocks that large are mmapped, so every train step first-touches its whole temp buffer in fresh
4 KiB pages: ~700,000 minor faults a step for vit-gpt2 at batch 8 (2.26 GB of temp by XLA's
memory analysis; the fault count implies ~2.7 GB touched). With the tunable they fall to a few
thousand and the step runs 10-20% faster (docs/perf-notes.md). glibc reads tunables only when a
process starts, hence the restart, which costs one more import of the package before a run of
minutes or hours.

The restart happens only where it changes something: Linux with glibc 2.35+, transparent huge
pages in ``madvise`` mode (``always`` already gives them, ``never`` forbids them), no
``glibc.malloc.hugetlb`` already in GLIBC_TUNABLES (the user's choice stands), and
``PUREVEDEC_HUGE_PAGES`` not set to ``0``. The Python API never restarts anything: a script
that trains with ``purevedec.training`` can be started with the tunable itself.
"""

from __future__ import annotations

import os
import re
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "PUREVEDEC_HUGE_PAGES"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent huge page mode (the bracketed word: always, madvise, never)."""
    try:
        with open(path) as f:
            match = re.search(r"\[(\w+)\]", f.read())
    except OSError:
        return None
    return match.group(1) if match else None


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library when it is glibc, else None."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, OSError, ValueError):
        return None


def huge_page_environment(environ: dict, *, thp: str | None, glibc: tuple[int, int] | None) -> dict | None:
    """``environ`` with the tunable added to GLIBC_TUNABLES, or None when a restart would change
    nothing or the user has decided otherwise."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if environ.get(OPT_OUT) == "0" or thp != "madvise" or glibc is None or glibc < (2, 35):
        return None
    if any(t.split("=")[0] == TUNABLE for t in tunables.split(":")):
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"}


def restart_with_huge_pages() -> None:
    """Replace this process by the same command line with the tunable set; returns (changing
    nothing) when ``huge_page_environment`` says no or the interpreter cannot be re-run."""
    env = huge_page_environment(dict(os.environ), thp=thp_mode(), glibc=glibc_version())
    if env is None or not sys.executable or not getattr(sys, "orig_argv", None):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        return  # the run goes on without huge pages
