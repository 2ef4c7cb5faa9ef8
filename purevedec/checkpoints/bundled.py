"""Models shipped inside the package, addressed as ``purevedec:<name>`` (e.g. ``purevedec:shapes``).

A Hub repo id cannot contain a colon, so the prefix never shadows a Hub model; a local folder
named ``purevedec:shapes`` is not looked up either (the bundled model always wins, whatever the
working directory holds). The files are an ordinary HF checkpoint folder under
``purevedec/bundled/<name>/``: transformers loads them from that path too.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelNotFound

PREFIX = "purevedec:"
ROOT = Path(__file__).resolve().parent.parent / "bundled"


def is_bundled_name(name: str | os.PathLike) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def available() -> list[str]:
    """The bundled model names (with their prefix)."""
    if not ROOT.is_dir():
        return []
    return sorted(PREFIX + p.name for p in ROOT.iterdir() if (p / "config.json").is_file())


def bundled_dir(name: str) -> str:
    """The folder of the bundled model ``purevedec:<name>``."""
    short = name[len(PREFIX):]
    folder = ROOT / short
    if not short or "/" in short or "\\" in short or short.startswith(".") or not (folder / "config.json").is_file():
        known = ", ".join(available()) or "none in this installation"
        raise ModelNotFound(f"{name!r:.100} is not a bundled model (bundled: {known})")
    return str(folder)
