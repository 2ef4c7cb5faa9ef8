"""The package's error types, and the guard that turns any reader failure into one."""

from __future__ import annotations

import contextlib


class ConfigError(ValueError):
    """A config.json or generation option that is missing, malformed or not supported."""


class CheckpointError(ValueError):
    """A weights file that is missing, malformed, or does not fit the config."""


@contextlib.contextmanager
def reading(path: str, what: str):
    """Report any failure while parsing ``path`` as a CheckpointError naming the file.

    Readers parse untrusted bytes with libraries (zipfile, pickle, safetensors) that raise many
    kinds of errors on corrupt input; the caller should see one kind, saying which file."""
    try:
        yield
    except CheckpointError as e:
        if path in str(e):
            raise
        raise CheckpointError(f"{path}: {e}") from None
    except (Exception, RecursionError) as e:  # noqa: BLE001 - corrupt input may fail anywhere
        raise CheckpointError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from None
