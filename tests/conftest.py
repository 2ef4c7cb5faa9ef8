"""Shared fixtures: tiny random transformers VisionEncoderDecoder checkpoints written to disk.

transformers and torch are the reference; they are test dependencies only.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import shutil
import signal
import socket
import sys
import tempfile

# Tests never reach a hub, whatever the environment says (a test that needs huggingface_hub
# online sets its constant itself, against a server on this machine). Set before anything
# imports huggingface_hub, which reads the variable once.
os.environ["HF_HUB_OFFLINE"] = "1"
if "huggingface_hub.constants" in sys.modules:
    sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The CLI turns on JAX's persistent compilation cache in ~/.cache (process-wide); in-process CLI
# tests must not write there. test_cli checks the CLI's own cache in a subprocess.
os.environ["PUREVEDEC_COMPILE_CACHE"] = "none"

# One persistent compilation cache for the whole run, made by the first process (the xdist
# controller, or plain pytest) before jax is imported: the workers and every subprocess a test
# starts inherit the variables, so a program compiled once (the tiny models at the same shapes,
# the CLI's encoder and generation loop, a file's programs after _release_compiled_programs) is
# read back instead of compiled again. The cache key covers the program, jax's version and
# XLA_FLAGS. Programs that compile faster than the threshold are not worth a file.
RUN_CACHE = "PUREVEDEC_TEST_RUN_CACHE"
if RUN_CACHE not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ[RUN_CACHE] = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="purevedec-xla-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.25"
    _MADE_RUN_CACHE = True
else:
    _MADE_RUN_CACHE = False

# The tests' models are tiny: their programs run in microseconds and compile in about a second,
# most of it spent optimising (measured in docs/perf-notes.md). The suite checks what programs
# compute, which no optimisation level may change, so it compiles with XLA's cheapest settings;
# `shipped_settings_env` gives a child the settings users get. Inherited by every subprocess.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("JAX_OPTIMIZATION_LEVEL", "O0")
# XLA:CPU's default fusion emitters (MLIR) take about 40% of what is left of the compile time;
# the older emitters compile the same programs (docs/perf-notes.md). An XLA that does not know a
# flag aborts the process, so the flag is only added once a child process has accepted it.
FAST_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
EMITTERS_CHECKED = "PUREVEDEC_TEST_EMITTERS_CHECKED"


def _xla_accepts(flag: str) -> bool:
    import subprocess
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip(), "JAX_PLATFORMS": "cpu"}
    child = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True)
    return child.returncode == 0


if EMITTERS_CHECKED not in os.environ:   # the first process decides; workers and children inherit
    os.environ[EMITTERS_CHECKED] = "1"
    if FAST_EMITTERS not in os.environ.get("XLA_FLAGS", "") and _xla_accepts(FAST_EMITTERS):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_EMITTERS}".strip()

# A shell without job control starts a background command with SIGINT ignored, and every child
# inherits that: the Ctrl-C tests' processes would never see their signal (their jobs ran to the
# end). The suite's processes take Python's own handler back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import numpy as np
import pytest

from models import make_reference  # noqa: F401  (re-exported for tests)


def _dist_chosen(config) -> bool:
    """Whether the command line or $PYTEST_ADDOPTS names a distribution mode itself."""
    args = [*config.invocation_params.args, *os.environ.get("PYTEST_ADDOPTS", "").split()]
    return any(a == "--dist" or a.startswith("--dist=") or a == "-d" for a in args)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """With -n, a file's tests share a worker (xdist's loadfile) unless --dist says otherwise:
    module fixtures (test_sharding's, test_multihost's) run minute-long subprocesses, which every
    worker that ran one of their tests would run again. Set here, not in addopts, so that a file
    still runs with plain pytest where pytest-xdist is not installed."""
    if getattr(config.option, "dist", "no") == "load" and not _dist_chosen(config):
        config.option.dist = "loadfile"
    # A crashed worker ends the run at once: xdist 3.8's loadfile scheduler hung after replacing
    # one (CI then waited out its 90 minutes with nothing to show).
    if hasattr(config.option, "maxworkerrestart") and config.option.maxworkerrestart is None:
        config.option.maxworkerrestart = "0"


def pytest_unconfigure(config):
    if _MADE_RUN_CACHE:
        shutil.rmtree(os.environ[RUN_CACHE], ignore_errors=True)


def _is_loopback(host) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it would be resolved and reached
        return False


_connect = socket.socket.connect


def _loopback_only(sock, address):
    """socket.connect for the test processes: this machine only, anything else refused at once."""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        raise ConnectionRefusedError(f"tests do not reach the network (connect to {address!r:.100})")
    return _connect(sock, address)


socket.socket.connect = _loopback_only


def _mapping_count() -> int:
    with open("/proc/self/maps", "rb") as f:
        return f.read().count(b"\n")


# Each compiled XLA:CPU program holds about six memory mappings until JAX drops it, and JAX keeps
# every program it compiled: a worker that runs hundreds of test files reached Linux's limit
# (vm.max_map_count, 65530), its next compile failed and the C++ unwinder crashed the worker
# ("Fatal Python error: Segmentation fault" in backend_compile_and_load). The programs are
# dropped after each file (a file's tests share theirs), and after a test that left many.
MAPPINGS_BEFORE_RELEASE = 20_000


def _release_programs() -> None:
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.clear_caches()
        gc.collect()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    yield
    _release_programs()


@pytest.fixture(autouse=True)
def _bounded_mappings():
    yield
    if sys.platform == "linux" and _mapping_count() > MAPPINGS_BEFORE_RELEASE:
        _release_programs()


@pytest.fixture
def shipped_settings_env() -> dict:
    """This process's environment less the suite's compile settings: a child started with it
    compiles as a user's process does."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_DISABLE_MOST_OPTIMIZATIONS", "JAX_OPTIMIZATION_LEVEL")}
    flags = env.pop("XLA_FLAGS", "").replace(FAST_EMITTERS, "").strip()
    return {**env, "XLA_FLAGS": flags} if flags else env


@pytest.fixture(autouse=True)
def _no_persistent_compilation_cache_of_its_own():
    """Fails the test that points JAX's persistent compilation cache somewhere else than the run's
    own (the CLI's default is ~/.cache, shared by every run), and points it back."""
    jax = sys.modules.get("jax")
    before = jax.config.jax_compilation_cache_dir if jax is not None else os.environ.get("JAX_COMPILATION_CACHE_DIR")
    yield
    jax = sys.modules.get("jax")
    if jax is None or jax.config.jax_compilation_cache_dir == before:
        return
    left = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", before)
    from jax._src import compilation_cache
    compilation_cache.reset_cache()
    pytest.fail(f"this test moved JAX's persistent compilation cache to {left}; run the CLI with "
                "--compile-cache none in-process, or in a subprocess")


def save_reference(model, path, **kwargs) -> str:
    model.save_pretrained(path, **kwargs)
    return str(path)


@pytest.fixture
def tiny(tmp_path):
    """(torch model, checkpoint dir) for the default tiny config (projection 32 -> 24)."""
    model = make_reference()
    return model, save_reference(model, tmp_path / "tiny")


def rand_pixels(b, c=3, h=16, w=16, seed=0):
    return np.random.RandomState(seed).randn(b, c, h, w).astype(np.float32)


def rand_ids(b, t, vocab=50, seed=1):
    return np.random.RandomState(seed).randint(0, vocab, (b, t)).astype(np.int32)


def torch_forward(model, pixels, ids, **kw):
    import torch
    with torch.no_grad():
        kw = {k: torch.tensor(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
        return model(pixel_values=torch.tensor(pixels), decoder_input_ids=torch.tensor(ids, dtype=torch.long), **kw)


def maxdiff(a, b) -> float:
    b = b.detach().numpy() if hasattr(b, "detach") else b
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))
