"""Opt-in persistent XLA compilation cache: a second process reuses the first one's compiled
programs instead of compiling the encoder and the generation loop again (seconds per shape).

The library never turns it on by itself (it changes process-wide JAX settings); the CLI does,
unless told not to, and applications call ``enable_compilation_cache``."""

from __future__ import annotations

import os


def default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "purevedec", "xla")


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str:
    """Store compiled programs under ``path`` (default ``$XDG_CACHE_HOME/purevedec/xla``) and
    reuse them across processes. Every program is cached, however fast it compiled. Returns the
    directory used."""
    import jax
    path = os.fspath(path) if path is not None else default_dir()
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
