"""Every error type the package raises on bad input, in one place.

Each is a ``ValueError`` (or ``OSError``) subclass, so existing ``except ValueError`` code keeps
working, and all share ``PurevedecError`` so one ``except`` catches any of them.
"""

from __future__ import annotations

import contextlib


class PurevedecError(Exception):
    """Base of the package's own errors."""


class ConfigError(PurevedecError, ValueError):
    """A config.json, generation option or preprocessor option that is missing, malformed or not supported."""


class CheckpointError(PurevedecError, ValueError):
    """A weights file that is missing, malformed, or does not fit the config."""


class ModelNotFound(CheckpointError):
    """A model name that is neither a local directory nor available from the Hub or its cache."""


class ParamsError(PurevedecError, ValueError):
    """A params tree that does not match its config (a missing, extra or mis-shaped leaf)."""


class ImageError(PurevedecError, ValueError):
    """An input that cannot be read or turned into an RGB image."""


class TokenizerError(PurevedecError, ValueError):
    """A checkpoint whose tokenizer files are missing or malformed."""


class GenerationError(PurevedecError, ValueError):
    """An input whose generated scores turned NaN or infinite (weights or a dtype that overflow)."""


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
    except MemoryError:
        raise  # a reader's bounds failed: that is a bug to see, not a corrupt file to report
    except (Exception, RecursionError) as e:  # noqa: BLE001 - corrupt input may fail anywhere
        raise CheckpointError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from None
