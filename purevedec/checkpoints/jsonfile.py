"""Reading the JSON files a checkpoint carries, with errors that name the file."""

from __future__ import annotations

import json
import os

from ..errors import ConfigError

# Side files are kilobytes (a tokenizer_config.json with thousands of added tokens, a few MB);
# parsed, JSON can take 20 times its size in Python objects ("[]," is a 64-byte list), so the
# size is bounded before parsing. Also the bound on a safetensors header.
MAX_JSON_BYTES = 16 * 2 ** 20


def read_json_object(path: str, error: type[Exception] = ConfigError) -> dict:
    """The JSON object in ``path``; ``error`` names the file when it is missing, too large, is not
    valid JSON (nesting too deep included), or holds something other than an object."""
    try:
        with open(path, encoding="utf-8") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_JSON_BYTES:
                raise error(f"{path} holds {size} bytes, more than the {MAX_JSON_BYTES} a config file may")
            d = json.load(f)
    except FileNotFoundError:
        raise error(f"no {os.path.basename(path)} at {path}") from None
    except (OSError, UnicodeDecodeError) as e:
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
