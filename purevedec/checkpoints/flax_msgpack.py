"""Read ``flax_model.msgpack`` (transformers 4.x Flax checkpoints) without flax or msgpack.

The file is ``flax.serialization.to_bytes(params)``: a msgpack map of maps whose leaves are
msgpack ext values of type 1, each holding a msgpack array ``[shape, dtype name, raw bytes]``
(C order). Arrays over flax's chunk limit are a map marked ``__msgpack_chunked_array__`` with
their flat ``chunks``. This reader parses the stream itself so that it can hand out one tensor
at a time instead of decoding the whole file into memory first.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO, Iterator

import ml_dtypes
import numpy as np

from . import names as hf_names
from ..errors import CheckpointError, reading
from .bounds import brief, checked_shape, numel

_NDARRAY_EXT = 1
_MAX_DEPTH = 64  # params nest ~8 deep; refuse pathological nesting early
# Whole values decoded here are shapes, [shape, dtype, data] triples and chunk maps: small.
_MAX_ITEMS = 65536
_DTYPES = {name: np.dtype(name) for name in
           ("float32", "float16", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")}
_DTYPES["bfloat16"] = np.dtype(ml_dtypes.bfloat16)
_CHUNKED = "__msgpack_chunked_array__"


class _Stream:
    """Reads exact byte counts, refusing lengths beyond the end of the file before allocating."""

    def __init__(self, f: BinaryIO):
        self.f, self.left = f, os.fstat(f.fileno()).st_size

    def read(self, n: int) -> bytes:
        if n > self.left:
            raise CheckpointError(f"truncated: wants {n} bytes, {self.left} left in the file")
        self.left -= n
        return self.f.read(n)

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]


# First byte -> (kind, struct format of the length/value that follows).
_SIZED = {0xc4: ("bin", ">B"), 0xc5: ("bin", ">H"), 0xc6: ("bin", ">I"),
          0xd9: ("str", ">B"), 0xda: ("str", ">H"), 0xdb: ("str", ">I"),
          0xdc: ("array", ">H"), 0xdd: ("array", ">I"), 0xde: ("map", ">H"), 0xdf: ("map", ">I"),
          0xc7: ("ext", ">B"), 0xc8: ("ext", ">H"), 0xc9: ("ext", ">I")}
_SCALARS = {0xca: ">f", 0xcb: ">d", 0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q",
            0xd0: ">b", 0xd1: ">h", 0xd2: ">i", 0xd3: ">q"}
_FIXEXT = {0xd4: 1, 0xd5: 2, 0xd6: 4, 0xd7: 8, 0xd8: 16}
_CONSTANTS = {0xc0: None, 0xc2: False, 0xc3: True}


def _header(s: _Stream) -> tuple[str, object]:
    """The next value's kind and its length (containers, bytes) or value (scalars)."""
    b = s.read(1)[0]
    if b <= 0x7f or b >= 0xe0:
        return "value", b if b <= 0x7f else b - 0x100
    if b <= 0x8f:
        return "map", b & 0x0f
    if b <= 0x9f:
        return "array", b & 0x0f
    if b <= 0xbf:
        return "str", b & 0x1f
    if b in _CONSTANTS:
        return "value", _CONSTANTS[b]
    if b in _SCALARS:
        return "value", s.unpack(_SCALARS[b])
    if b in _FIXEXT:
        return "ext", _FIXEXT[b]
    if b in _SIZED:
        kind, fmt = _SIZED[b]
        return kind, s.unpack(fmt)
    raise CheckpointError(f"byte 0x{b:02x} is not a msgpack type")


def _value(s: _Stream, depth: int = 0):
    """Decode one whole value (used for keys and small metadata, not for the tensor tree)."""
    if depth > _MAX_DEPTH:
        raise CheckpointError("nesting too deep")
    kind, n = _header(s)
    if kind == "value":
        return n
    if kind == "str":
        return s.read(n).decode("utf-8")
    if kind == "bin":
        return s.read(n)
    if kind in ("array", "map") and n > _MAX_ITEMS:
        raise CheckpointError(f"a msgpack {kind} of {n} items where a shape or chunk list belongs")
    if kind == "array":
        return [_value(s, depth + 1) for _ in range(n)]
    if kind == "map":
        return _map([(_key(s, depth), _value(s, depth + 1)) for _ in range(n)])
    return _ext(s, n)


def _map(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise CheckpointError("a msgpack map repeats a key")
    return out


def _key(s: _Stream, depth: int) -> str:
    key = _value(s, depth + 1)
    if not isinstance(key, str):
        raise CheckpointError(f"map key {brief(key)} is not a string")
    return key


def _ext(s: _Stream, length: int) -> np.ndarray:
    code = s.unpack(">b")
    if code != _NDARRAY_EXT:
        raise CheckpointError(f"msgpack ext type {code} is not a real ndarray (complex and scalars are not weights)")
    before = s.left
    triple = _value(s, _MAX_DEPTH - 2)
    if not (isinstance(triple, list) and len(triple) == 3):
        raise CheckpointError(f"ndarray ext holds {brief(triple)}, expected [shape, dtype, data]")
    shape, dtype, data = triple
    if s.left != before - length:
        raise CheckpointError("ndarray ext length does not match its contents")
    return _array(shape, dtype, data)


def _array(shape, dtype, data) -> np.ndarray:
    shape = checked_shape(shape, "array")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise CheckpointError(f"unsupported array dtype {brief(dtype)}")
    want = numel(shape) * _DTYPES[dtype].itemsize
    if not isinstance(data, bytes) or len(data) != want:
        raise CheckpointError(f"array {list(shape)} {dtype} needs {want} bytes, got "
                              f"{len(data) if isinstance(data, bytes) else brief(data)}")
    return np.frombuffer(data, _DTYPES[dtype]).reshape(shape)


def _numbered(d, what: str) -> list:
    """flax's list-as-map {"0": x0, "1": x1, ...} -> [x0, x1, ...], every index present once."""
    if not isinstance(d, dict) or set(d) != {str(i) for i in range(len(d))}:
        raise CheckpointError(f"chunked array: {what} is {brief(d)}, expected a map numbered from \"0\"")
    return [d[str(i)] for i in range(len(d))]


def _unchunk(d: dict) -> np.ndarray:
    """Reassemble an array flax split into flat chunks ({"0": ..., "1": ...}) to fit msgpack."""
    if set(d) != {"shape", "chunks"}:
        raise CheckpointError(f"chunked array: keys {sorted(d)[:5]}, expected shape and chunks")
    shape = checked_shape(_numbered(d["shape"], "shape"), "chunked array")
    chunks = _numbered(d["chunks"], "chunks")
    if not chunks or not all(isinstance(c, np.ndarray) for c in chunks):
        raise CheckpointError("chunked array: chunks must be one or more arrays")
    dtypes = sorted({str(c.dtype) for c in chunks})
    if len(dtypes) > 1:  # np.concatenate would silently upcast them to one type
        raise CheckpointError(f"chunked array: chunks of different dtypes {dtypes}")
    if sum(c.size for c in chunks) != numel(shape):
        raise CheckpointError(f"chunked array: chunks hold {sum(c.size for c in chunks)} values, "
                              f"shape {list(shape)} needs {numel(shape)}")
    return np.concatenate([c.reshape(-1) for c in chunks]).reshape(shape)


def _tree(s: _Stream, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Yield (key path, array) for each leaf of the map that starts here, as it is read."""
    if len(path) > _MAX_DEPTH:
        raise CheckpointError("nesting too deep")
    kind, n = _header(s)
    if kind == "ext":
        yield path, _ext(s, n)
        return
    if kind != "map":
        raise CheckpointError(f"{'/'.join(path) or 'top level'} is a msgpack {kind}, expected a map of arrays")
    for i in range(n):
        key = _key(s, len(path))
        if key == _CHUNKED and i == 0:  # one (big) array split into chunks: small map, decode it whole
            _value(s, len(path) + 1)  # the marker's value (true)
            rest = _map([(_key(s, len(path)), _value(s, len(path) + 1)) for _ in range(n - 1)])
            yield path, _unchunk(rest)
            return
        yield from _tree(s, path + (key,))


def read_flax_msgpack(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """(PyTorch-style HF name, array) for each param of a transformers Flax checkpoint."""
    with reading(path, "Flax msgpack file"), open(path, "rb") as f:
        s = _Stream(f)
        for keys, array in _tree(s, ()):
            yield hf_names.from_flax(keys, array)
        if s.left:
            raise CheckpointError(f"{s.left} bytes of trailing data after the params")
