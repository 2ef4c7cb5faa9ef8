"""Reading the JSON files a checkpoint carries, with errors that name the file."""

from __future__ import annotations

import json
import os

from ..errors import ConfigError


def read_json_object(path: str, error: type[Exception] = ConfigError) -> dict:
    """The JSON object in ``path``; ``error`` names the file when it is missing, is not valid
    JSON, or holds something other than an object."""
    try:
        with open(path, encoding="utf-8") as f:
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
