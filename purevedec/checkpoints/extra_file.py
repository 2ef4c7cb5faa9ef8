"""The extra leaves of params (``params["extra"]``: adapters, heads) in a file of their own.

``save`` writes the model's weights under transformers' names (so transformers loads the folder)
and the extra leaves, when there are any, to ``extra.safetensors`` beside them, a file
transformers never reads; ``load`` puts them back at ``params["extra"]``. A tensor's name is its
path in the extra tree, one segment per level joined by "/": a dict key as itself, a list (or
tuple) index as "[i]", so ``{"lora": [{"a": x}]}`` holds "lora/[0]/a". Tuples come back as lists.
"""

from __future__ import annotations

import os
import re
from typing import Iterable

import numpy as np

from ..errors import CheckpointError, ParamsError
from .safetensors_io import read_safetensors

EXTRA_FILE = "extra.safetensors"
_INDEX = re.compile(r"\[(\d+)\]")


def _segment(key) -> str:
    if not isinstance(key, str) or not key or "/" in key or _INDEX.fullmatch(key):
        raise ParamsError(f"params['extra'] key {key!r:.80}: save writes extra leaves under keys that are "
                          "non-empty strings without '/' and not of the form '[i]'")
    return key


def named_leaves(tree, prefix: str = "") -> dict[str, np.ndarray]:
    """{"lora/[0]/a": array, ...}: every leaf of the extra tree under its path's name."""
    if isinstance(tree, dict):
        items = ((_segment(k), v) for k, v in tree.items())
    elif isinstance(tree, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(tree))
    else:
        return {prefix: np.ascontiguousarray(np.asarray(tree))}
    out = {}
    for segment, value in items:
        out.update(named_leaves(value, f"{prefix}/{segment}" if prefix else segment))
    return out


def _insert(tree: dict, segments: list[str], value, name: str) -> None:
    *parents, last = segments
    for segment in parents:
        tree = tree.setdefault(segment, {})
        if not isinstance(tree, dict):
            raise CheckpointError(f"{EXTRA_FILE}: tensor {name!r:.200} lies inside another tensor")
    if last in tree:
        raise CheckpointError(f"{EXTRA_FILE}: tensor {name!r:.200} lies inside another tensor")
    tree[last] = value


def _lists(tree, name: str = ""):
    """Turn the dicts whose keys are all "[i]" back into lists (indices 0..n-1, each once)."""
    if not isinstance(tree, dict):
        return tree
    indexed = [_INDEX.fullmatch(k) for k in tree]
    if not any(indexed):
        return {k: _lists(v, f"{name}/{k}") for k, v in tree.items()}
    if not all(indexed) or sorted(int(m.group(1)) for m in indexed) != list(range(len(tree))):
        raise CheckpointError(f"{EXTRA_FILE}: the entries under {name or 'the top'!r:.200} mix keys and list "
                              f"indices, or skip an index: {sorted(tree)[:5]}")
    return [_lists(tree[f"[{i}]"], f"{name}/[{i}]") for i in range(len(tree))]


def tree_of(named: Iterable[tuple[str, np.ndarray]]):
    """The extra tree back from (name, array) pairs (``named_leaves``' inverse)."""
    tree: dict = {}
    for name, array in named:
        segments = name.split("/")
        if not all(segments):
            raise CheckpointError(f"{EXTRA_FILE}: tensor name {name!r:.200} has an empty segment")
        _insert(tree, segments, array, name)
    return _lists(tree)


def write_extra(leaves: dict[str, np.ndarray], folder: str) -> None:
    """Write ``named_leaves``' result to ``folder``/extra.safetensors; remove a stale one when there
    are none (so that ``load`` gives back what was saved)."""
    from safetensors.numpy import save_file
    path = os.path.join(folder, EXTRA_FILE)
    if leaves:
        save_file(leaves, path, metadata={"format": "purevedec-extra"})
    elif os.path.isfile(path):
        os.remove(path)


def read_extra(folder: str):
    """The extra tree saved in ``folder``, or None when it has no extra.safetensors."""
    path = os.path.join(folder, EXTRA_FILE)
    if not os.path.isfile(path):
        return None
    return tree_of((name, np.array(array)) for name, array in read_safetensors(path))
