"""Hostile weight files: crafted torch pickles, shapes with huge integers, safetensors headers
and flax chunked arrays. Each reader bounds time and memory before allocating and fails with the
package's error (the bounded child: tests/hostile_util.py)."""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np
import pytest

import purevedec as pv
from hostile_util import assert_refused, read_all, read_bounded, run_bounded, safetensors_file


# ----- .bin files crafted with torch's own pickling conventions, without allocating tensors -----

class _StorageRef:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


def _rebuild_tensor_v2(*args):
    """Stands for torch._utils._rebuild_tensor_v2 while pickling (renamed in the bytes)."""


class FloatStorage:
    """Stands for torch.FloatStorage while pickling (renamed in the bytes)."""


# protocol 2 names globals as text: the stand-ins become torch's names (torch is never imported).
_RENAMES = {f"c{__name__}\n_rebuild_tensor_v2\n".encode(): b"ctorch._utils\n_rebuild_tensor_v2\n",
            f"c{__name__}\nFloatStorage\n".encode(): b"ctorch\nFloatStorage\n"}


class _TensorRef:
    """Pickles as torch.save pickles a tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage: _StorageRef, size, stride, offset=0):
        self.storage, self.size, self.stride, self.offset = storage, tuple(size), tuple(stride), offset

    def __reduce__(self):
        return (_rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride, False,
                                     collections.OrderedDict()))


class _TorchPickler(pickle.Pickler):
    def __init__(self, f, pid=None):
        super().__init__(f, protocol=2)
        self.pid = pid

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return self.pid if self.pid is not None else ("storage", FloatStorage, obj.key, "cpu", obj.numel)
        return None


ONE_FLOAT = {"0": np.ones(1, np.float32).tobytes()}   # storage "0" holding one float32


def one_float_tensor() -> _TensorRef:
    """A tensor of shape [1] over storage "0" (``ONE_FLOAT``): what a valid entry looks like."""
    return _TensorRef(_StorageRef("0", 1), (1,), (1,))


def pickled(obj, pid=None) -> bytes:
    """obj pickled as torch.save pickles a state dict (storages as persistent ids)."""
    import io
    buf = io.BytesIO()
    _TorchPickler(buf, pid).dump(obj)
    data = buf.getvalue()
    for stand_in, torch_name in _RENAMES.items():
        data = data.replace(stand_in, torch_name)
    return data


def write_bin(path, pkl: bytes, storages: dict[str, bytes] = {}, compression=zipfile.ZIP_STORED) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        for key, data in storages.items():
            zf.writestr(f"archive/data/{key}", data, compress_type=compression)
    return str(path)


def deflated_zeros(n: int) -> bytes:
    """A raw deflate stream of n zero bytes (n a multiple of 16 MiB), built in well under a second:
    one fully flushed block of 16 MiB of zeros repeated, then an empty final block."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(2 ** 24)) + c.flush(zlib.Z_FULL_FLUSH)
    return block * (n // 2 ** 24) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def raw_zip(path, members) -> str:
    """A zip archive written field by field: [(name, method, stored bytes, uncompressed size or None)].
    zipfile itself would spend seconds compressing a bomb; the CRC is only right for stored members."""
    out, central = bytearray(), bytearray()
    for name, method, data, size in members:
        size = len(data) if size is None else size
        crc = zlib.crc32(data) if method == zipfile.ZIP_STORED else 0
        fields = struct.pack("<HHHHHIIIH", 20, 0, method, 0, 0x21, crc, len(data), size, len(name))
        central += b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHHII", 0, 0, 0, 0, 0, len(out))
        central += name.encode()
        out += b"PK\x03\x04" + fields + struct.pack("<H", 0) + name.encode() + data
    end = struct.pack("<HHHHIIH", 0, 0, len(members), len(members), len(central), len(out), 0)
    with open(path, "wb") as f:
        f.write(bytes(out + central) + b"PK\x05\x06" + end)
    return str(path)


def dag_list(depth: int):
    """A list whose repr is 2**depth items long, pickled in a few hundred bytes (memo-shared)."""
    x: list = []
    for _ in range(depth):
        x = [x, x]
    return x


def dag_tuple_body(depth: int) -> bytes:
    """Pickle opcodes (no PROTO/STOP) pushing a tuple DAG whose hash takes 2**depth steps."""
    t: tuple = ()
    for _ in range(depth):
        t = (t, t)
    return pickle.dumps(t, protocol=2)[2:-1]


def test_pickle_error_messages_are_bounded(tmp_path):
    """A persistent id or a state-dict value that is a memo-shared list DAG: the message
    describes it without printing 2**60 items."""
    marker = _StorageRef("0", 1)
    attacks = {
        "persistent id DAG": write_bin(tmp_path / "pid.bin", pickled({"w": marker}, pid=dag_list(60))),
        "value DAG": write_bin(tmp_path / "value.bin", pickled({"w": dag_list(60)})),
        "global name": write_bin(tmp_path / "global.bin", b"\x80\x02c" + b"m" * 100_000 + b"\nx\n."),
    }
    results = read_bounded("read_torch_bin", attacks)
    assert_refused(results, {"persistent id DAG": ("CheckpointError", r"unexpected persistent id a list of 2 items"),
                             "value DAG": ("CheckpointError", r"entry 'w' is a list of 2 items, not a tensor"),
                             "global name": ("CheckpointError", r"refusing to load global m{100}\.x")})
    assert all(len(r["message"]) < 600 for r in results.values())


def test_pickle_keys_are_checked_before_hashing(tmp_path):
    """A state-dict key (or set item) that is a tuple DAG of depth 70 would take 2**70 steps to
    hash, whichever opcode inserts it."""
    key = dag_tuple_body(70)
    pickles = {"SETITEM": b"\x80\x02}" + key + b"K\x01s.",
               "SETITEMS": b"\x80\x02}(" + key + b"K\x01u.",
               "DICT": b"\x80\x02(" + key + b"K\x01d.",
               "OrderedDict args": b"\x80\x02ccollections\nOrderedDict\n](" + key + b"K\x01\x86e\x85R.",
               "set": b"\x80\x04\x8f(" + key + b"\x90."}
    files = {label: write_bin(tmp_path / f"{i}.bin", pkl) for i, (label, pkl) in enumerate(pickles.items())}
    results = read_bounded("read_torch_bin", files)
    key_error = ("CheckpointError", r"a dict key in the pickle is a tuple of 2 items, not a string")
    assert_refused(results, {"SETITEM": key_error, "SETITEMS": key_error, "DICT": key_error,
                             "OrderedDict args": ("CheckpointError", "OrderedDict called with arguments"),
                             "set": ("CheckpointError", "opcode a state dict never needs")})


def test_pickle_views_are_checked_before_materialising(tmp_path):
    """Views over a 1-float storage that would copy gigabytes, one past the storage, and many
    full-storage views of one 4 MB storage (reading it once per view)."""
    one = _StorageRef("0", 1)
    big = _StorageRef("0", 2 ** 20)
    many = {f"w{i}": _TensorRef(big, (2,), (2 ** 20 - 1,)) for i in range(4000)}
    attacks = {
        "stride 0": write_bin(tmp_path / "s0.bin", pickled({"w": _TensorRef(one, (100_000, 100_000), (0, 0))}),
                              ONE_FLOAT),
        "stride 0, one row": write_bin(tmp_path / "s1.bin", pickled({"w": _TensorRef(one, (2 ** 31,), (0,))}),
                                       ONE_FLOAT),
        "past the storage": write_bin(tmp_path / "past.bin", pickled({"w": _TensorRef(one, (4,), (1,))}),
                                      ONE_FLOAT),
        "many views": write_bin(tmp_path / "many.bin", pickled(many), {"0": bytes(4 * 2 ** 20)}),
        "negative stride": write_bin(tmp_path / "neg.bin", pickled({"w": _TensorRef(big, (2,), (-1,), 1)}),
                                     {"0": bytes(4 * 2 ** 20)}),
    }
    results = read_bounded("read_torch_bin", attacks)
    assert_refused(results, {
        "stride 0": ("CheckpointError", r"tensor w: .*repeats elements: 10000000000 values from a storage of 1"),
        "stride 0, one row": ("CheckpointError", r"tensor w: .*repeats elements"),
        "past the storage": ("CheckpointError", r"tensor w: view .*reaches past its storage of 1 elements"),
        "many views": ("CheckpointError", r"read its storages far more than once"),
        "negative stride": ("CheckpointError", r"tensor w \(stride\): shape \[-1\] is not a list"),
    })


def test_pickle_members_must_be_stored(tmp_path):
    """A storage member deflated from 1.5 GiB of zeros to a few MB, and a small deflated one:
    torch never compresses, so both are refused before anything is inflated."""
    numel = 3 * 2 ** 27  # 1.5 GiB of float32
    bomb = raw_zip(tmp_path / "bomb.bin", [
        ("archive/data.pkl", zipfile.ZIP_STORED, pickled({"w": _TensorRef(_StorageRef("0", numel), (numel,), (1,))}),
         None),
        ("archive/data/0", zipfile.ZIP_DEFLATED, deflated_zeros(numel * 4), numel * 4)])
    assert os.path.getsize(bomb) < 2 ** 21
    small = write_bin(tmp_path / "deflated.bin", pickled({"w": one_float_tensor()}), ONE_FLOAT,
                      compression=zipfile.ZIP_DEFLATED)
    pkl_deflated = str(tmp_path / "pkl.bin")
    with zipfile.ZipFile(pkl_deflated, "w", compression=zipfile.ZIP_BZIP2) as zf:
        zf.writestr("archive/data.pkl", pickled({}))
    results = run_bounded({"1.5 GiB bomb": read_all("read_torch_bin", bomb),
                           "deflated storage": read_all("read_torch_bin", small),
                           "bzip2 pickle": read_all("read_torch_bin", pkl_deflated)})
    assert_refused(results, {
        "1.5 GiB bomb": ("CheckpointError", r"bomb\.bin: tensor w: storage: archive member archive/data/0 is "
                                            r"compressed \(method 8\)"),
        "deflated storage": ("CheckpointError", r"archive/data/0 is compressed \(method 8\)"),
        "bzip2 pickle": ("CheckpointError", r"the pickle: archive member archive/data\.pkl is compressed \(method 12\)"),
    })


def test_pickle_build_cannot_hide_tensors(tmp_path):
    """BUILD on the state dict may only carry torch's _metadata; tensors set as attributes (where
    the loader never looks) or in the metadata are refused, and torch's own form still loads."""
    w = one_float_tensor()

    class StateDict:
        def __init__(self, state):
            self.state = state

        def __reduce__(self):
            return collections.OrderedDict, (), self.state, None, iter([("w", w)])

    files = {label: write_bin(tmp_path / f"{i}.bin", pickled(StateDict(state)), ONE_FLOAT) for i, (label, state) in
             enumerate({"attribute": {"hidden": w}, "slot state": (None, {"hidden": w}),
                        "metadata": {"_metadata": {"": {"version": w}}},
                        # what torch.save writes for a module's state_dict (see pickletools.dis of one)
                        "torch's own": {"_metadata": collections.OrderedDict({"": {"version": 1}})}}.items())}
    results = read_bounded("read_torch_bin", files)
    assert_refused(results, {label: ("CheckpointError", r"BUILD with state .*only carries torch's _metadata")
                             for label in ("attribute", "slot state", "metadata")})
    assert results["torch's own"]["type"] is None
    assert [(n, a.tolist()) for n, a in pv.checkpoints.torch_pickle.read_torch_bin(files["torch's own"])] == [("w", [1.0])]


# ----- shapes with huge integers, in all three readers -----

def msgpack_file(path, tree) -> str:
    import msgpack
    with open(path, "wb") as f:
        f.write(msgpack.packb(tree, use_bin_type=True))
    return str(path)


def ndarray_ext(shape, dtype: str, data: bytes):
    import msgpack
    return msgpack.ExtType(1, msgpack.packb([list(shape), dtype, data], use_bin_type=True))


def test_huge_shape_integers_are_bounded(tmp_path):
    """Hundreds of dimensions of thousands of digits: math.prod of them takes minutes. Each reader
    bounds the rank and every dimension first."""
    huge = 10 ** 4000
    header = '{"w": {"dtype": "F32", "shape": [' + ",".join([str(10 ** 4000)] * 300) + '], "data_offsets": [0, 4]}}'
    files = {
        "safetensors rank": safetensors_file(tmp_path / "rank.safetensors", header, b"\0" * 4),
        "safetensors dim": safetensors_file(tmp_path / "dim.safetensors",
                                            {"w": {"dtype": "F32", "shape": [2 ** 60, 2 ** 60], "data_offsets": [0, 4]}},
                                            b"\0" * 4),
        "msgpack rank": msgpack_file(tmp_path / "rank.msgpack", {"w": ndarray_ext([2 ** 63] * 60000, "float32", b"")}),
        "bin rank": write_bin(tmp_path / "rank.bin", pickled({"w": _TensorRef(_StorageRef("0", 1), [huge] * 300,
                                                                               [1] * 300)}), {"0": bytes(4)}),
        "bin dim": write_bin(tmp_path / "dim.bin", pickled({"w": _TensorRef(_StorageRef("0", 1), [huge], [1])}),
                             {"0": bytes(4)}),
    }
    reader = {"safetensors": "read_safetensors", "msgpack": "read_flax_msgpack", "bin": "read_torch_bin"}
    # Python's json refuses ints over 4300 digits by default; lift that so the header reaches the reader.
    results = run_bounded({k: "sys.set_int_max_str_digits(0); " + read_all(reader[k.split()[0]], p)
                           for k, p in files.items()})
    assert_refused(results, {
        "safetensors rank": ("CheckpointError", r"tensor w: shape a list of 300 items is not a list of at most 16"),
        "safetensors dim": ("CheckpointError", r"tensor w: shape \[1152921504606846976, 1152921504606846976\] is not"),
        "msgpack rank": ("CheckpointError", r"array: shape a list of 60000 items is not a list of at most 16"),
        "bin rank": ("CheckpointError", r"tensor w: shape a tuple of 300 items is not a list of at most 16"),
        "bin dim": ("CheckpointError", r"tensor w: shape \[an int of 13288 bits\] is not a list of at most 16"),
    })


def test_safetensors_header_length_is_capped(tmp_path):
    """A header length the file does hold (a sparse 4 GiB file) but that no checkpoint needs: refused
    before reading, not read into memory (4 GiB under the child's 1.5 GiB limit)."""
    path = tmp_path / "huge_header.safetensors"
    size = 4 * 2 ** 30
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", size - 8))
        f.truncate(size)
    results = read_bounded("read_safetensors", {"huge header": str(path)})
    assert_refused(results, {"huge header": (
        "CheckpointError", rf"header length {size - 8} exceeds the file size {size} or the 16777216 bytes")})


# ----- safetensors headers refused as the safetensors library refuses them -----

@pytest.mark.parametrize("case", ["duplicate name", "overlap", "gap", "trailing bytes", "offsets past the end"])
def test_safetensors_header_must_tile_the_data(tmp_path, case):
    entry = lambda begin: {"dtype": "F32", "shape": [1], "data_offsets": [begin, begin + 4]}  # noqa: E731
    header, data, message = {
        "duplicate name": ('{"a": %s, "a": %s}' % (json.dumps(entry(0)), json.dumps(entry(4))), bytes(8),
                           r"names 'a' more than once"),
        "overlap": ({"a": entry(0), "b": entry(2) | {"data_offsets": [2, 6]}}, bytes(8), r"tensor b: .*overlapping"),
        "gap": ({"a": entry(0), "b": entry(8)}, bytes(12), r"tensor b: data_offsets start at 8, expected 4 .*gap"),
        "trailing bytes": ({"a": entry(0)}, bytes(8), r"cover 4 bytes of data, the file holds 8"),
        "offsets past the end": ({"a": entry(0)}, bytes(2), r"cover 4 bytes of data, the file holds 2"),
    }[case]
    path = safetensors_file(tmp_path / "x.safetensors", header, data)
    from safetensors.numpy import load_file
    with pytest.raises(Exception):  # the independent reference: the safetensors library refuses it too
        load_file(path)
    from purevedec.checkpoints.safetensors_io import read_safetensors
    with pytest.raises(pv.CheckpointError, match=message):
        list(read_safetensors(path))


# ----- flax chunked arrays -----

@pytest.mark.parametrize("case", ["mixed dtypes", "negative shape entry", "missing chunk", "value count"])
def test_flax_chunked_arrays_are_checked(tmp_path, case):
    f32, f16 = np.ones(2, np.float32), np.ones(2, np.float16)
    chunks = {"mixed dtypes": [f32, f16], "negative shape entry": [f32, f32],
              "missing chunk": [f32, f32], "value count": [f32, f32]}[case]
    shape = {"negative shape entry": {"0": -4}, "value count": {"0": 5}}.get(case, {"0": 4})
    numbered = {str(i): ndarray_ext(c.shape, c.dtype.name, c.tobytes()) for i, c in enumerate(chunks)}
    if case == "missing chunk":
        numbered = {"0": numbered["0"], "2": numbered["1"]}
    tree = {"decoder": {"transformer": {"wte": {"embedding": {"__msgpack_chunked_array__": True, "shape": shape,
                                                              "chunks": numbered}}}}}
    message = {"mixed dtypes": r"chunks of different dtypes \['float16', 'float32'\]",
               "negative shape entry": r"shape \[-4\] is not a list",
               "missing chunk": r"chunks is a dict of 2 items, expected a map numbered from \"0\"",
               "value count": r"chunks hold 4 values, shape \[5\] needs 5"}[case]
    from purevedec.checkpoints.flax_msgpack import read_flax_msgpack
    with pytest.raises(pv.CheckpointError, match=message):
        list(read_flax_msgpack(msgpack_file(tmp_path / "flax_model.msgpack", tree)))
