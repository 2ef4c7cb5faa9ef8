"""Read ``.safetensors`` files one tensor at a time with plain reads.

The safetensors library memory-maps the file, and every page a load touches then stays in
the process's resident set until the file is closed: loading the full model peaked at twice
its size. The format is simple enough to read directly: an 8-byte little-endian header
length, a JSON header ``{name: {dtype, shape, data_offsets: [begin, end]}}`` (plus optional
``__metadata__``), then the raw little-endian bytes.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Iterator

import ml_dtypes
import numpy as np

from ..errors import CheckpointError, reading

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _entries(header: dict, data_size: int) -> list[tuple[int, int, str, np.dtype, list[int]]]:
    """(begin, end, name, dtype, shape) for each tensor, checked against the data size."""
    out = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(e, dict) or e.get("dtype") not in _DTYPES:
            raise CheckpointError(f"tensor {name}: unsupported or missing dtype {e!r:.100}")
        shape, offsets = e.get("shape"), e.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise CheckpointError(f"tensor {name}: malformed shape/data_offsets {e!r:.100}")
        dtype = np.dtype(_DTYPES[e["dtype"]])
        begin, end = offsets
        if not 0 <= begin <= end <= data_size or end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"tensor {name}: {shape} {e['dtype']} needs {math.prod(shape) * dtype.itemsize} "
                                  f"bytes, data_offsets {offsets} give {end - begin} (data is {data_size} bytes)")
        out.append((begin, end, name, dtype, shape))
    return sorted(out, key=lambda t: t[0])


def read_safetensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for each tensor of a safetensors file, in file order."""
    with reading(path, "safetensors file"), open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = struct.unpack("<Q", f.read(8))[0]
        if n > size - 8:
            raise CheckpointError(f"header length {n} exceeds the file size {size}")
        header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise CheckpointError("header is not a JSON object")
        start = 8 + n
        for begin, end, name, dtype, shape in _entries(header, size - start):
            f.seek(start + begin)
            yield name, np.frombuffer(f.read(end - begin), dtype).reshape(shape)
