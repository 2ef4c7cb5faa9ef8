"""The environment of a child process that simulates several CPU devices.

XLA_FLAGS is set there only, never in the test process; the child keeps the suite's own XLA
flags (tests/conftest.py's compile settings) beside the device count."""

from __future__ import annotations

import os


def simulated_devices_env(count: int, **extra: str) -> dict:
    """os.environ with ``count`` simulated CPU devices, and ``extra`` variables."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip()
    return {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", **extra}
