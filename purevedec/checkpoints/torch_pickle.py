"""Read ``pytorch_model.bin`` state dicts without torch and without running their code.

A ``torch.save`` file (torch >= 1.6) is a zip archive: ``<dir>/data.pkl`` pickles the state
dict, and each storage's raw little-endian bytes sit in ``<dir>/data/<key>``. Unpickling
normally imports and calls whatever globals the pickle names; here ``find_class`` admits only
the handful a state dict uses, each replaced by an inert stand-in, and refuses everything
else, so a malicious file cannot run anything. Tensors stay lazy references while unpickling
and are read from the archive one at a time afterwards.

What the file says is bounded before it is used: only uncompressed members (torch never
compresses, and an inflating member has no size limit); dict keys must be strings before they
are hashed; views are checked against their storage (no reading past it, no broadcast views
that would copy a few bytes into gigabytes) and read only the bytes they cover; the state
dict's BUILD state may only be torch's ``_metadata``; error messages describe values without
walking them.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Iterator, NamedTuple

import ml_dtypes
import numpy as np

from ..errors import CheckpointError, reading
from .bounds import brief, checked_shape, is_count, numel

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


def _ordered_dict(*args):
    # torch pickles OrderedDict() with no arguments and fills it with SETITEMS (checked below);
    # arguments would be hashed by the constructor before anything could look at them.
    if args:
        raise CheckpointError("OrderedDict called with arguments: a state dict never pickles one that way")
    return collections.OrderedDict()


_ALLOWED = {("collections", "OrderedDict"): _ordered_dict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}

# Opcodes a state dict never uses: sets (which hash their items), objects built from classes,
# and the extension registry.
_REFUSED_OPCODES = (pickle.EMPTY_SET, pickle.ADDITEMS, pickle.FROZENSET, pickle.NEWOBJ, pickle.NEWOBJ_EX,
                    pickle.OBJ, pickle.INST, pickle.EXT1, pickle.EXT2, pickle.EXT4)
_PLAIN_VALUES = (int, float, str, bool, type(None))


def _check_key(key) -> None:
    # Checked before the dict hashes it: hashing a tuple whose items share one sub-tuple many
    # times over takes time exponential in the pickle's length.
    if type(key) is not str:
        raise CheckpointError(f"a dict key in the pickle is {brief(key)}, not a string: state dict names are strings")


def _check_metadata(state) -> None:
    """torch's BUILD state for a state dict: ``{"_metadata": {prefix: {"version": n}}}``, nothing else,
    so that no tensor can hide in an attribute where the loader would never look."""
    meta = state.get("_metadata") if isinstance(state, dict) else None
    if not (isinstance(state, dict) and set(state) <= {"_metadata"} and isinstance(meta, dict)
            and all(isinstance(v, dict) and all(isinstance(x, _PLAIN_VALUES) for x in v.values())
                    for v in meta.values())):
        raise CheckpointError(f"BUILD with state {brief(state)}: a state dict only carries torch's "
                              "_metadata of module versions")


class _Unpickler(pickle._Unpickler):
    """The pure-Python unpickler (its opcodes can be replaced one by one, the C one's cannot),
    with the opcodes that hash, build objects or set attributes checked or refused."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        found = _ALLOWED.get((module, name))
        if found is None and module == "torch":
            found = _storage_type(name)
        if found is None:
            raise CheckpointError(f"refusing to load global {module[:100]}.{name[:100]}: a state dict needs "
                                  "only tensors, and this file asks to import (and maybe run) other code")
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and type(pid[0]) is str and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and type(pid[2]) is str and is_count(pid[4])):
            raise CheckpointError(f"unexpected persistent id {brief(pid)}: expected "
                                  "('storage', storage type, key, location, element count)")
        return _Storage(pid[2], pid[1].dtype, pid[4])

    def _refused(self):
        raise CheckpointError("the pickle uses an opcode a state dict never needs (sets, objects, extensions)")

    def _setitems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, dict) or len(items) % 2:
            raise CheckpointError("SETITEMS on something that is not a dict")
        for i in range(0, len(items), 2):
            _check_key(items[i])
            target[items[i]] = items[i + 1]

    def _setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        if not isinstance(self.stack[-1], dict):
            raise CheckpointError("SETITEM on something that is not a dict")
        _check_key(key)
        self.stack[-1][key] = value

    def _dict(self):
        items = self.pop_mark()
        for key in items[::2]:
            _check_key(key)
        self.append(dict(zip(items[::2], items[1::2])))

    def _build(self):
        state = self.stack.pop()
        if not isinstance(self.stack[-1], collections.OrderedDict):
            raise CheckpointError(f"BUILD on {brief(self.stack[-1])}: only a state dict takes pickled state")
        _check_metadata(state)  # checked, then dropped: module versions do not matter here

    for _op in _REFUSED_OPCODES:
        dispatch[_op[0]] = _refused
    dispatch[pickle.SETITEMS[0]] = _setitems
    dispatch[pickle.SETITEM[0]] = _setitem
    dispatch[pickle.DICT[0]] = _dict
    dispatch[pickle.BUILD[0]] = _build
    del _op


def _member(zf: zipfile.ZipFile, name: str, what: str) -> zipfile.ZipInfo:
    """A stored (uncompressed) member that fits in the archive: torch never compresses, and a
    compressed member could inflate to any size."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{what}: {name} is missing from the archive") from None
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        raise CheckpointError(f"{what}: archive member {name} is compressed (method {info.compress_type}); "
                              "torch.save stores members uncompressed, and a compressed one could inflate "
                              "to any size")
    if info.file_size > _archive_size(zf):
        raise CheckpointError(f"{what}: archive member {name} claims {info.file_size} bytes, more than the archive")
    return info


def _archive_size(zf: zipfile.ZipFile) -> int:
    return os.fstat(zf.fp.fileno()).st_size


def _archive_dir(zf: zipfile.ZipFile) -> str:
    pkls = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") <= 1]
    if len(pkls) != 1:
        raise CheckpointError(f"expected one data.pkl in the archive, found {[brief(p) for p in pkls[:3]]}")
    return pkls[0][: -len("data.pkl")]


def _check_byteorder(zf: zipfile.ZipFile, root: str) -> None:
    if f"{root}byteorder" in zf.namelist():
        _member(zf, f"{root}byteorder", "byteorder")
        if zf.read(f"{root}byteorder").strip() != b"little":
            raise CheckpointError("big-endian archives are not supported")


def _state_dict(zf: zipfile.ZipFile, root: str) -> dict:
    _member(zf, f"{root}data.pkl", "the pickle")
    obj = _Unpickler(io.BytesIO(zf.read(f"{root}data.pkl"))).load()
    if not isinstance(obj, dict):
        raise CheckpointError(f"the pickle holds {brief(obj)}, not a state dict")
    for name, value in obj.items():  # keys were checked to be strings as they were inserted
        if not isinstance(value, _Tensor):
            raise CheckpointError(f"state dict entry {brief(name)} is {brief(value)}, not a tensor")
    return obj


def _checked_view(name: str, t: _Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(size, stride) after bounding them, so that the arithmetic below stays small."""
    size = checked_shape(t.size, f"tensor {name}")
    stride = checked_shape(t.stride, f"tensor {name} (stride)")
    if len(size) != len(stride) or not is_count(t.offset):
        raise CheckpointError(f"tensor {name}: malformed view offset={brief(t.offset)} size={brief(t.size)} "
                              f"stride={brief(t.stride)}")
    return size, stride


def _extent(offset: int, size: tuple, stride: tuple) -> int:
    """1 + the largest storage index the view touches (0 when empty)."""
    if numel(size) == 0:
        return 0
    return offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))


class _ReadBudget:
    """Bytes read from storages so far, against a multiple of what the archive holds: many
    views of one big storage would otherwise read it once per view."""

    def __init__(self, zf: zipfile.ZipFile):
        self.left = 2 * _archive_size(zf) + 2 ** 20

    def take(self, n: int, name: str) -> None:
        if n > self.left:
            raise CheckpointError(f"tensor {name}: the views of this archive read its storages far more than "
                                  "once (many tensors over one storage)")
        self.left -= n


def _materialize(zf: zipfile.ZipFile, root: str, name: str, t: _Tensor, budget: _ReadBudget) -> np.ndarray:
    s = t.storage
    member = f"{root}data/{s.key}"
    size, stride = _checked_view(name, t)
    info = _member(zf, member, f"tensor {name}: storage")
    nbytes = s.numel * s.dtype.itemsize
    if info.file_size != nbytes:
        raise CheckpointError(f"tensor {name}: storage {member} holds {info.file_size} bytes, "
                              f"{s.numel} x {s.dtype} needs {nbytes}")
    end = _extent(t.offset, size, stride)
    if end > s.numel:
        raise CheckpointError(f"tensor {name}: view size={list(size)} stride={list(stride)} "
                              f"offset={t.offset} reaches past its storage of {s.numel} elements")
    if numel(size) > s.numel:
        # Only a broadcast (stride 0) view has more elements than its storage; weights never do,
        # and copying one would allocate any multiple of the file.
        raise CheckpointError(f"tensor {name}: view size={list(size)} stride={list(stride)} repeats elements: "
                              f"{numel(size)} values from a storage of {s.numel}")
    if numel(size) == 0:
        return np.zeros(size, s.dtype)
    item = s.dtype.itemsize
    budget.take((end - t.offset) * item, name)
    with zf.open(member) as f:  # only the part of the storage the view covers
        f.seek(t.offset * item)
        flat = np.frombuffer(f.read((end - t.offset) * item), dtype=s.dtype)
    view = np.lib.stride_tricks.as_strided(flat, shape=size, strides=[st * item for st in stride], writeable=False)
    if view.size == flat.size and view.flags.c_contiguous:
        return view  # the covered bytes in order: no copy needed
    return np.array(view)  # copy only what the view covers


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
            budget = _ReadBudget(zf)
            for name, t in _state_dict(zf, root).items():
                yield name, _materialize(zf, root, name, t, budget)
