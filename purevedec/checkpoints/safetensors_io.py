"""Read ``.safetensors`` files one tensor at a time with plain reads.

The safetensors library memory-maps the file, and every page a load touches then stays in
the process's resident set until the file is closed: loading the full model peaked at twice
its size. The format is simple enough to read directly: an 8-byte little-endian header
length, a JSON header ``{name: {dtype, shape, data_offsets: [begin, end]}}`` (plus optional
``__metadata__``), then the raw little-endian bytes. The header is checked as the safetensors
library checks it (no name twice, tensors tiling the data exactly) and every shape is bounded
before its size is computed.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterator

import ml_dtypes
import numpy as np

from ..errors import CheckpointError, reading
from .bounds import brief, checked_shape, is_count, numel
from .jsonfile import MAX_JSON_BYTES

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}




def _no_duplicates(pairs: list) -> dict:
    """json's object hook: a name given twice would otherwise silently keep the last entry."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise CheckpointError(f"the header names {dup!r:.100} more than once")
    return out


def _entry(name: str, e) -> tuple[int, int, str, np.dtype, tuple[int, ...]]:
    if not isinstance(e, dict) or e.get("dtype") not in _DTYPES:
        raise CheckpointError(f"tensor {name}: unsupported or missing dtype {brief(e.get('dtype') if isinstance(e, dict) else e)}")
    shape = checked_shape(e.get("shape"), f"tensor {name}")
    offsets = e.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(is_count, offsets))):
        raise CheckpointError(f"tensor {name}: malformed data_offsets {brief(offsets)}")
    dtype = np.dtype(_DTYPES[e["dtype"]])
    (begin, end), need = offsets, numel(shape) * dtype.itemsize
    if end - begin != need:
        raise CheckpointError(f"tensor {name}: {list(shape)} {e['dtype']} needs {need} bytes, "
                              f"data_offsets {offsets} give {end - begin}")
    return begin, end, name, dtype, shape


def _entries(header: dict, data_size: int) -> list[tuple[int, int, str, np.dtype, tuple[int, ...]]]:
    """(begin, end, name, dtype, shape) for each tensor in file order, after checking, as the
    safetensors library does, that the tensors tile the data exactly: no overlap, no gap, no
    bytes left over."""
    out = sorted((_entry(name, e) for name, e in header.items() if name != "__metadata__"),
                 key=lambda t: (t[0], t[1]))
    at = 0
    for begin, end, name, *_ in out:
        if begin != at:
            raise CheckpointError(f"tensor {name}: data_offsets start at {begin}, expected {at} "
                                  f"({'overlapping the previous tensor' if begin < at else 'leaving a gap'})")
        at = end
    if at != data_size:
        raise CheckpointError(f"the tensors cover {at} bytes of data, the file holds {data_size}")
    return out


def read_safetensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for each tensor of a safetensors file, in file order."""
    with reading(path, "safetensors file"), open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = struct.unpack("<Q", f.read(8))[0]
        if n > min(size - 8, MAX_JSON_BYTES):
            raise CheckpointError(f"header length {n} exceeds the file size {size} or the "
                                  f"{MAX_JSON_BYTES} bytes a header may take (parsed JSON takes many times its size)")
        header = json.loads(f.read(n), object_pairs_hook=_no_duplicates)
        if not isinstance(header, dict):
            raise CheckpointError("header is not a JSON object")
        start = 8 + n
        for begin, end, name, dtype, shape in _entries(header, size - start):
            f.seek(start + begin)
            yield name, np.frombuffer(f.read(end - begin), dtype).reshape(shape)
