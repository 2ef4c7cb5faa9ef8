"""Checkpoint folders a training run writes: complete model folders, replaced atomically.

A folder holds the weights, config.json and generation_config.json (``checkpoints.save``) and a
copy of the base model's tokenizer and preprocessor files, so ``caption``, the Captioner,
``load`` and transformers open it as they open the model the run started from.

Every folder is written beside its destination (``<name>.tmp-<pid>``) and renamed into place.
Replacing an existing folder moves it aside first (``<name>.old-<pid>``), renames the new one in
and only then deletes the old one, so an interrupt at any moment leaves either the previous
folder or the new one whole under ``<name>`` or ``<name>.old-*``; ``recover`` (run when a run
starts) puts such an orphaned previous folder back and deletes unfinished ``.tmp-`` folders.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Callable

from ..checkpoints import save
from ..checkpoints.hub import SIDE_FILES

# Written by ``save`` itself; every other side file is copied from the base model.
_WRITTEN = ("config.json", "generation_config.json")
MODEL_FILES = tuple(f for f in SIDE_FILES if f not in _WRITTEN)
"""The tokenizer and preprocessor files a checkpoint carries over from the base model."""

_TMP, _OLD, _TRASH = ".tmp-", ".old-", ".trash-"
_LEFTOVER = re.compile(r"^(?P<name>.+)(?P<kind>\.tmp-|\.old-|\.trash-)\d+$")


def side_files(model_dir: str) -> list[str]:
    """The base model's tokenizer and preprocessor files (their paths) that exist."""
    return [os.path.join(model_dir, f) for f in MODEL_FILES if os.path.isfile(os.path.join(model_dir, f))]


def write_model_folder(path: str, params, copy_from: list[str], extra: Callable[[str], None] | None = None) -> str:
    """Write ``params`` as a complete model folder at ``path`` (the files of ``copy_from`` copied
    in; ``extra(folder)`` adds more, such as the train state), replacing any folder there
    atomically. Returns ``path``."""
    def fill(tmp: str) -> None:
        save(params, tmp)
        for file in copy_from:
            shutil.copyfile(file, os.path.join(tmp, os.path.basename(file)))
    return _build_beside(path, fill, extra)


def copy_folder(source: str, path: str, extra: Callable[[str], None] | None = None, skip: tuple = ()) -> str:
    """Copy the folder ``source`` (less the file names in ``skip``) to ``path`` (``extra(folder)``
    adds files), replacing any folder there atomically."""
    return _build_beside(path, lambda tmp: shutil.copytree(source, tmp, ignore=lambda folder, names: [
        n for n in names if n in skip]), extra)


def _build_beside(path: str, fill: Callable[[str], None], extra: Callable[[str], None] | None) -> str:
    """Build a folder beside ``path`` (``fill(folder)`` creates it, ``extra(folder)`` adds files),
    then replace ``path`` with it atomically; an interrupted build leaves nothing behind."""
    tmp = f"{path}{_TMP}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        fill(tmp)
        if extra is not None:
            extra(tmp)
        replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def replace_folder(new: str, path: str) -> None:
    """Rename the finished folder ``new`` to ``path``; an existing ``path`` is moved aside first
    and deleted only once ``new`` is in place."""
    old = f"{path}{_OLD}{os.getpid()}"
    if os.path.isdir(path):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(path, old)
        os.rename(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, path)


def remove_folder(path: str) -> None:
    """Delete a folder so that an interrupt never leaves a half-deleted one under its name."""
    trash = f"{path}{_TRASH}{os.getpid()}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def recover(out_dir: str) -> list[str]:
    """Undo what an interrupted run left in ``out_dir``: a folder moved aside whose replacement
    never arrived goes back under its name; unfinished and half-deleted folders are removed.
    Returns what was restored (for a message)."""
    restored = []
    for entry in sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []:
        m = _LEFTOVER.match(entry)
        full = os.path.join(out_dir, entry)
        if not m or not os.path.isdir(full):
            continue
        home = os.path.join(out_dir, m.group("name"))
        if m.group("kind") == _OLD and not os.path.exists(home):
            os.rename(full, home)
            restored.append(home)
        else:
            shutil.rmtree(full, ignore_errors=True)
    return restored
