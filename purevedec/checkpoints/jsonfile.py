"""Reading the small files a checkpoint carries (configs, tokenizer files), bounded, with errors
that name the file."""

from __future__ import annotations

import json
import os
import stat

from ..errors import ConfigError

# Side files are kilobytes (a tokenizer_config.json with thousands of added tokens, a few MB);
# parsed, JSON can take 20 times its size in Python objects ("[]," is a 64-byte list), so the
# size is bounded before parsing. Also the bound on a safetensors header.
MAX_JSON_BYTES = 16 * 2 ** 20


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, for messages ("a FIFO", ...)."""
    return ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "not a regular file")


def read_side_file(path: str, error: type[Exception] = ConfigError, limit: int = MAX_JSON_BYTES,
                   what: str = "a config file") -> bytes:
    """The bytes of ``path``, at most ``limit`` of them. ``error`` names the file, at once, when it
    is missing, a FIFO, a device, a directory or anything but a regular file (opened without
    blocking, never read), and when it holds more than ``limit`` bytes: by the size the file
    system reports, and again by the bytes a read returns (a file may grow, or report 0)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"no {os.path.basename(path)} at {path}") from None
    except OSError as e:
        raise error(f"cannot read {path} ({e.strerror or e})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise error(f"{path} is {file_kind(info.st_mode)}, not a file")
    with os.fdopen(fd, "rb") as f:
        if info.st_size > limit:
            raise error(f"{path} holds {info.st_size} bytes, more than the {limit} {what} may")
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise error(f"cannot read {path} ({e.strerror or e})") from None
    if len(data) > limit:
        raise error(f"{path} holds more than the {limit} bytes {what} may (it grew while it was read)")
    return data


def read_json_object(path: str, error: type[Exception] = ConfigError) -> dict:
    """The JSON object in ``path``; ``error`` names the file when it is missing, not a regular
    file, too large, not valid JSON (nesting too deep included), or holds something other than
    an object."""
    data = read_side_file(path, error)
    try:
        d = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"cannot read {path} ({e})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON: {e}") from None
    except RecursionError:
        raise error(f"{path} nests JSON arrays or objects too deeply to be a config file") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits (Python's int parsing limit)
        raise error(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise error(f"{path} must hold a JSON object")
    return d
