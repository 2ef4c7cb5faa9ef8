"""The command line's inputs: arguments -> the files to caption, each once, in a stable order.

An argument is a file, a folder (its image files, recursively) or a glob pattern (``**``
matches any number of folders). Walks never follow symbolic links to folders, so a link loop
cannot repeat files or walk forever; files are deduplicated by their real path (a file named
twice, or reached through a link, is captioned once, under the first name it was given).
"""

from __future__ import annotations

import glob
import os
import pathlib
from typing import Iterator, NamedTuple, Optional

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class Input(NamedTuple):
    """One input: a path to caption, or (``problem`` set) an argument that gave no file."""
    path: str
    problem: Optional[str] = None
    page: Optional[int] = None
    """A document page's number (1-based; ``read``'s records carry it), else None."""
    source: object = None
    """What the model reads when it is not ``path`` itself (a ``DeferredImage``: a PDF page)."""


def is_glob(arg: str) -> bool:
    return any(c in arg for c in "*?[")


def _folder_images(folder: str, extensions: tuple[str, ...]) -> list[str]:
    return sorted(os.path.join(root, f) for root, _, files in os.walk(folder) for f in files
                  if f.lower().endswith(extensions))


def _glob(pattern: str) -> list[str]:
    """Files matching ``pattern``. ``**`` goes through pathlib, which (unlike glob.glob, which
    follows a link loop until the path is too long) does not descend into linked folders."""
    if "**" not in pattern:
        return sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
    parts = pathlib.PurePath(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if is_glob(part))
    root = pathlib.Path(*parts[:fixed]) if fixed else pathlib.Path(".")
    rest = str(pathlib.PurePath(*parts[fixed:]))
    found = (str(p) for p in root.glob(rest))
    # Hidden files are left out, as glob.glob leaves them out.
    return sorted(p for p in found if os.path.isfile(p) and not os.path.basename(p).startswith("."))


def _expand_one(arg: str, extensions: tuple[str, ...]) -> Iterator[Input]:
    if os.path.isdir(arg):
        found = _folder_images(arg, extensions)
        yield from (Input(p) for p in found)
        if not found:
            yield Input(arg, f"folder holds no {'image or PDF' if '.pdf' in extensions else 'image'} files")
    elif os.path.lexists(arg) or not is_glob(arg):
        yield Input(arg)               # a missing plain path is reported when it is read
    else:
        matches = _glob(arg)
        yield from (Input(p) for p in matches)
        if not matches:
            yield Input(arg, "no file matches this pattern")


def expand_inputs(args: list[str], extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> Iterator[Input]:
    """Every argument's files in order (a folder's files with ``extensions`` and a pattern's, sorted),
    each file once."""
    seen: set[str] = set()
    for arg in args:
        for item in _expand_one(arg, extensions):
            if item.problem is None:
                real = os.path.realpath(item.path)
                if real in seen:
                    continue
                seen.add(real)
            yield item


def map_names(paths: list[str]) -> dict[str, str]:
    """A distinct relative file name for each input's attention map: its path relative to the
    folder all inputs share, with ".png" appended (a/x.png -> a/x.png.png, b/x.jpg -> b/x.jpg.png)."""
    if not paths:
        return {}
    absolute = {p: os.path.abspath(p) for p in paths}
    parents = [os.path.dirname(a) for a in absolute.values()]
    common = os.path.commonpath(parents)
    return {p: os.path.relpath(a, common) + ".png" for p, a in absolute.items()}
