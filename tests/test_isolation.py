"""The suite's own isolation (tests/conftest.py): the Hub is offline whatever the environment
says, and test processes reach no address but this machine's."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


def test_hub_is_offline_even_when_the_environment_says_otherwise(tmp_path):
    """A child started with HF_HUB_OFFLINE=0 that loads the conftest sees huggingface_hub offline."""
    code = ("import os, sys; sys.path.insert(0, 'tests'); import conftest; "
            "from huggingface_hub import constants; print(os.environ['HF_HUB_OFFLINE'], constants.HF_HUB_OFFLINE)")
    env = {"HF_HUB_OFFLINE": "0", "PATH": "/usr/bin:/bin", "JAX_COMPILATION_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "True"]


def test_connections_leave_only_to_this_machine():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    with socket.socket() as s:
        s.settimeout(2)
        with pytest.raises(ConnectionRefusedError, match="tests do not reach the network"):
            s.connect(("192.0.2.1", 443))  # TEST-NET-1: never routed
