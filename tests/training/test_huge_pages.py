"""``purevedec train`` restarts once with glibc's huge-page tunable (training/huge_pages.py)."""

import os
import subprocess
import sys

import pytest

from purevedec import commands
from purevedec.training import huge_pages as hp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("environ, thp, glibc, tunables", [
    ({}, "madvise", (2, 36), "glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise", (2, 35),
     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", (2, 36), None),  # the user's choice stands
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=2"}, "madvise", (2, 36), None),
    ({"PUREVEDEC_HUGE_PAGES": "0"}, "madvise", (2, 36), None),
    ({}, "always", (2, 36), None),  # huge pages already
    ({}, "never", (2, 36), None),
    ({}, None, (2, 36), None),  # no THP on this kernel
    ({}, "madvise", (2, 34), None),  # the tunable is newer
    ({}, "madvise", None, None),  # not glibc
])
def test_environment_adds_the_tunable_only_where_it_changes_something(environ, thp, glibc, tunables):
    env = hp.huge_page_environment({"HOME": "/h", **environ}, thp=thp, glibc=glibc)
    if tunables is None:
        assert env is None
    else:
        assert env["GLIBC_TUNABLES"] == tunables and env["HOME"] == "/h"


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert hp.thp_mode(str(path)) == "madvise"
    assert hp.thp_mode(str(tmp_path / "missing")) is None


class _Restarted(Exception):
    pass


def _record_execve(monkeypatch):
    calls = []

    def fake_execve(path, args, env):
        calls.append((path, args, env))
        raise _Restarted
    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.setattr(hp, "thp_mode", lambda: "madvise")
    monkeypatch.setattr(hp, "glibc_version", lambda: (2, 36))
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(hp.OPT_OUT, raising=False)
    return calls


def test_train_from_the_command_line_restarts_with_the_same_arguments(monkeypatch):
    calls = _record_execve(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["purevedec", "train", "model", "data", "--out", "o"])
    command = ["-m", "purevedec", "train", "model", "data", "--out", "o"]
    monkeypatch.setattr(sys, "orig_argv", ["python3", *command])
    with pytest.raises(_Restarted):
        commands.main()
    (path, args, env), = calls
    assert path == sys.executable and args == [sys.executable, *command]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("process_argv, argv", [(["caption", "--help"], None),
                                                (["train", "--help"], ["train", "--help"])])
def test_other_commands_and_explicit_argv_never_restart(monkeypatch, capsys, process_argv, argv):
    calls = _record_execve(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["purevedec", *process_argv])
    assert commands.main(argv) == 0
    assert calls == [] and "usage" in capsys.readouterr().out


def test_the_restarted_process_has_the_tunable():
    """A real restart: the script's first line runs twice, the second time with the tunable, where
    the kernel's THP mode is madvise (elsewhere once, unchanged)."""
    script = ("import os, sys; print('GLIBC_TUNABLES', os.environ.get('GLIBC_TUNABLES'), flush=True); "
              "sys.argv = ['purevedec', 'train', '/nonexistent-model', '/nonexistent-data', '--out', '/no-out']; "
              "from purevedec.commands import main; sys.exit(main())")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hp.OPT_OUT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          env={**env, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("GLIBC_TUNABLES")]
    restarts = hp.thp_mode() == "madvise" and (hp.glibc_version() or (0, 0)) >= (2, 35)
    assert lines == (["GLIBC_TUNABLES None", "GLIBC_TUNABLES glibc.malloc.hugetlb=1"] if restarts
                     else ["GLIBC_TUNABLES None"])
    assert done.returncode == 2 and "/nonexistent-" in done.stderr  # the run itself goes on as before
