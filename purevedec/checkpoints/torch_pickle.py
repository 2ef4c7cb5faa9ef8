"""Read ``pytorch_model.bin`` state dicts without torch and without running their code.

A ``torch.save`` file (torch >= 1.6) is a zip archive: ``<dir>/data.pkl`` pickles the state
dict, and each storage's raw little-endian bytes sit in ``<dir>/data/<key>``. Unpickling
normally imports and calls whatever globals the pickle names; here ``find_class`` admits only
the handful a state dict uses, each replaced by an inert stand-in, and refuses everything
else, so a malicious file cannot run anything. Tensors stay lazy references while unpickling
and are read from the archive one at a time afterwards.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import zipfile
from typing import Iterator, NamedTuple

import ml_dtypes
import numpy as np

from ..errors import CheckpointError, reading

_DTYPES = {
    "Float": np.float32, "Double": np.float64, "Half": np.float16, "BFloat16": ml_dtypes.bfloat16,
    "Long": np.int64, "Int": np.int32, "Short": np.int16, "Char": np.int8, "Byte": np.uint8, "Bool": np.bool_,
}
# Newer archives may name the dtype (torch.float32) where older ones name a storage type.
_DTYPE_NAMES = {"float32": "Float", "float": "Float", "float64": "Double", "double": "Double",
                "float16": "Half", "half": "Half", "bfloat16": "BFloat16", "int64": "Long", "long": "Long",
                "int32": "Int", "int": "Int", "int16": "Short", "short": "Short", "int8": "Char",
                "uint8": "Byte", "bool": "Bool"}


class _StorageType(NamedTuple):
    """Stands for ``torch.FloatStorage`` and friends: only its element type matters."""
    dtype: np.dtype


class _Storage(NamedTuple):
    key: str
    dtype: np.dtype
    numel: int


class _Tensor(NamedTuple):
    """A lazy view of a storage; NamedTuples take no pickle BUILD state, so stay as built."""
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    # (requires_grad, backward_hooks[, metadata]) do not matter for inference weights.
    return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):
    return data


def _storage_type(name: str) -> _StorageType | None:
    base = name[:-len("Storage")] if name.endswith("Storage") else _DTYPE_NAMES.get(name)
    return _StorageType(np.dtype(_DTYPES[base])) if base in _DTYPES else None


_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        found = _ALLOWED.get((module, name))
        if found is None and module == "torch":
            found = _storage_type(name)
        if found is None:
            raise CheckpointError(f"refusing to load global {module}.{name}: a state dict needs only "
                                  "tensors, and this file asks to import (and maybe run) other code")
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and _is_count(pid[4])):
            raise CheckpointError(f"unexpected persistent id {pid!r:.200}")
        return _Storage(pid[2], pid[1].dtype, pid[4])


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _archive_dir(zf: zipfile.ZipFile) -> str:
    pkls = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") <= 1]
    if len(pkls) != 1:
        raise CheckpointError(f"expected one data.pkl in the archive, found {pkls[:3]}")
    return pkls[0][: -len("data.pkl")]


def _check_byteorder(zf: zipfile.ZipFile, root: str) -> None:
    if f"{root}byteorder" in zf.namelist() and zf.read(f"{root}byteorder").strip() != b"little":
        raise CheckpointError("big-endian archives are not supported")


def _state_dict(zf: zipfile.ZipFile, root: str) -> dict:
    obj = _Unpickler(io.BytesIO(zf.read(f"{root}data.pkl"))).load()
    if not isinstance(obj, dict):
        raise CheckpointError(f"the pickle holds a {type(obj).__name__}, not a state dict")
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, _Tensor):
            raise CheckpointError(f"state dict entry {name!r:.100} is a {type(value).__name__}, not a tensor")
    return obj


def _extent(t: _Tensor) -> int:
    """1 + the largest storage index the view touches (0 when empty), after checking its fields."""
    if not (_is_count(t.offset) and len(t.size) == len(t.stride)
            and all(map(_is_count, t.size)) and all(map(_is_count, t.stride))):
        raise CheckpointError(f"malformed tensor view offset={t.offset!r:.50} size={t.size!r:.80} stride={t.stride!r:.80}")
    if math.prod(t.size) == 0:
        return 0
    return t.offset + 1 + sum((n - 1) * s for n, s in zip(t.size, t.stride))


def _materialize(zf: zipfile.ZipFile, root: str, name: str, t: _Tensor) -> np.ndarray:
    s = t.storage
    member = f"{root}data/{s.key}"
    nbytes = s.numel * s.dtype.itemsize
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise CheckpointError(f"tensor {name}: storage {member} is missing from the archive") from None
    if info.file_size != nbytes:
        raise CheckpointError(f"tensor {name}: storage {member} holds {info.file_size} bytes, "
                              f"{s.numel} x {s.dtype} needs {nbytes}")
    if _extent(t) > s.numel:
        raise CheckpointError(f"tensor {name}: view size={list(t.size)} stride={list(t.stride)} "
                              f"offset={t.offset} reaches past its storage of {s.numel} elements")
    flat = np.frombuffer(zf.read(member), dtype=s.dtype)
    if math.prod(t.size) == 0:
        return np.zeros(t.size, s.dtype)
    view = np.lib.stride_tricks.as_strided(flat[t.offset:], shape=t.size,
                                           strides=[st * s.dtype.itemsize for st in t.stride], writeable=False)
    if view.size == flat.size and view.flags.c_contiguous:
        return view  # the whole storage in order: no copy needed
    return np.array(view)  # copy only what the view covers, so a shared storage is not kept alive


def _open(path: str) -> zipfile.ZipFile:
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"\x80\x02":  # the pre-1.6 format: a sequence of pickles, no zip
            raise CheckpointError(f"{path}: legacy (torch < 1.6) .bin format is not supported; "
                                  "re-save it with a recent torch or convert it to safetensors")
        raise CheckpointError(f"{path}: not a torch zip archive")
    return zipfile.ZipFile(path)


def read_torch_bin(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for each tensor of a torch.save'd state dict, read one at a time."""
    with reading(path, "PyTorch .bin file"):
        with _open(path) as zf:
            root = _archive_dir(zf)
            _check_byteorder(zf, root)
            for name, t in _state_dict(zf, root).items():
                yield name, _materialize(zf, root, name, t)
