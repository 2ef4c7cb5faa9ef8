"""Readers of untrusted files: refuse code, report corruption clearly, never crash or hang."""

from __future__ import annotations

import os
import pickle
import re
import zipfile

import numpy as np
import pytest

import purevedec as pv
from purevedec.checkpoints.safetensors_io import read_safetensors
from purevedec.checkpoints.flax_msgpack import read_flax_msgpack
from purevedec.checkpoints.torch_pickle import read_torch_bin


class _Call:
    """Pickles as a call of `fn(*args)`: what a malicious checkpoint does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _zip_with_pickle(path, obj):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
    return str(path)


@pytest.mark.parametrize("fn, name", [(os.system, "system"), (eval, "builtin__.eval"), (exec, "builtin__.exec"),
                                      (getattr, "builtin__.getattr")])
def test_pickle_calling_other_globals_is_refused(tmp_path, fn, name):
    marker = tmp_path / "ran"
    arg = f"touch {marker}" if fn is os.system else "1"
    path = _zip_with_pickle(tmp_path / "evil.bin", {"w": _Call(fn, arg)})
    with pytest.raises(pv.CheckpointError, match=f"refusing to load global .*{name}"):
        list(read_torch_bin(path))
    assert not marker.exists()


def test_torch_saved_object_with_code_is_refused(tmp_path):
    import torch
    marker = tmp_path / "ran"
    torch.save({"w": torch.zeros(2), "x": _Call(os.system, f"touch {marker}")}, tmp_path / "evil.bin")
    with pytest.raises(pv.CheckpointError, match="refusing to load global"):
        list(read_torch_bin(str(tmp_path / "evil.bin")))
    assert not marker.exists()


@pytest.fixture
def small_bin(tmp_path):
    import torch
    path = str(tmp_path / "small.bin")
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"a": t, "b": t.t(), "c": t[1], "d": torch.ones(2, dtype=torch.float16)}, path)
    return path


def test_small_bin_views_are_honoured(small_bin):
    got = dict(read_torch_bin(small_bin))
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], a.T)
    np.testing.assert_array_equal(got["c"], a[1])
    assert got["d"].dtype == np.float16


def test_legacy_format_is_refused_clearly(tmp_path):
    import torch
    path = tmp_path / "old.bin"
    torch.save({"a": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(pv.CheckpointError, match=r"legacy \(torch < 1.6\)"):
        list(read_torch_bin(str(path)))


def test_truncated_bin(small_bin):
    data = open(small_bin, "rb").read()
    open(small_bin, "wb").write(data[: len(data) // 2])
    with pytest.raises(pv.CheckpointError, match=rf"^{re.escape(small_bin)}: not a torch zip archive"):
        list(read_torch_bin(small_bin))


def test_big_endian_bin_is_refused(small_bin):
    """torch records the byte order of the storages; read as little-endian, a big-endian
    archive's floats would be byte-swapped garbage."""
    _rewrite_member(small_bin, "/byteorder", lambda d: b"big")
    with pytest.raises(pv.CheckpointError, match=rf"^{re.escape(small_bin)}: big-endian archives are not supported"):
        list(read_torch_bin(small_bin))


def test_missing_storage_member_is_named(small_bin):
    with zipfile.ZipFile(small_bin) as zf:
        items = [(i.filename, zf.read(i.filename)) for i in zf.infolist()]
    with zipfile.ZipFile(small_bin, "w") as zf:
        for name, data in items:
            if not name.endswith("/data/0"):
                zf.writestr(name, data)
    with pytest.raises(pv.CheckpointError, match=rf"^{re.escape(small_bin)}: tensor a: storage: \S+/data/0 is missing"):
        list(read_torch_bin(small_bin))


def test_views_with_offsets_and_strides_read_the_right_values(tmp_path):
    """Tensors that share one storage at different offsets, strided and transposed: each must
    be read at its own offset and stride (torch.load is the reference)."""
    import torch
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    sd = {"tail": base[4:], "cols": base[:, 3::4], "t": base[1:3].t(), "scalar": base[5, 7], "b": torch.ones(1)}
    path = str(tmp_path / "views.bin")
    torch.save(sd, path)
    got = dict(read_torch_bin(path))
    for name, want in torch.load(path, weights_only=True).items():
        assert got[name].shape == tuple(want.shape), name
        np.testing.assert_array_equal(got[name], want.numpy(), err_msg=name)


def _rewrite_member(path, member_suffix, fn):
    with zipfile.ZipFile(path) as zf:
        items = [(i.filename, zf.read(i.filename)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in items:
            zf.writestr(name, fn(data) if name.endswith(member_suffix) else data)


def test_storage_byte_count_mismatch(small_bin):
    _rewrite_member(small_bin, "data/0", lambda d: d[:-4])
    with pytest.raises(pv.CheckpointError, match=r"holds 44 bytes, 12 x float32 needs 48"):
        list(read_torch_bin(small_bin))


def test_view_past_storage_is_refused(small_bin):
    # Patch the stride of "a" (4, 1) to (40, 1): the view would read past its 12 floats.
    _rewrite_member(small_bin, "data.pkl", lambda d: d.replace(b"K\x04K\x01\x86", b"K(K\x01\x86", 1))
    with pytest.raises(pv.CheckpointError, match="reaches past its storage"):
        list(read_torch_bin(small_bin))


def test_unknown_storage_dtype(small_bin):
    _rewrite_member(small_bin, "data.pkl", lambda d: d.replace(b"HalfStorage", b"QIntStorage"))
    with pytest.raises(pv.CheckpointError, match="refusing to load global torch.QIntStorage"):
        list(read_torch_bin(small_bin))


def test_safetensors_byte_count_mismatch(tmp_path):
    header = b'{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}'
    path = tmp_path / "x.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(pv.CheckpointError, match=r"x.safetensors: tensor w: \[3\] F32 needs 12 bytes"):
        list(read_safetensors(str(path)))


def test_corrupt_safetensors_header(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(pv.CheckpointError, match=rf"^{re.escape(str(path))}: header length \d+ exceeds the file size 10"):
        list(read_safetensors(str(path)))


def test_safetensors_offsets_not_in_name_order(tmp_path):
    """Tensors are where their data_offsets say, whatever the order of the header's names (a
    reader that assumed name order, or sequential data, would swap them)."""
    import json
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([7, 8], np.int64)
    header = json.dumps({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [16, 40]},
                         "b": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]},
                         "__metadata__": {"format": "pt"}}).encode() + b"  "  # padding spaces, as writers align
    path = tmp_path / "x.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b.tobytes() + a.tobytes())
    got = dict(read_safetensors(str(path)))
    from safetensors.numpy import load_file
    want = load_file(str(path))  # the reference reader agrees on the file
    for name, array in (("a", a), ("b", b)):
        np.testing.assert_array_equal(got[name], array)
        np.testing.assert_array_equal(want[name], array)
        assert got[name].dtype == array.dtype


def _msgpack_file(tmp_path, value) -> str:
    import msgpack
    path = tmp_path / "flax_model.msgpack"
    path.write_bytes(msgpack.packb(value, use_bin_type=True))
    return str(path)


def _ext(shape, dtype, data):
    import msgpack
    return msgpack.ExtType(1, msgpack.packb((shape, dtype, data), use_bin_type=True))


@pytest.mark.parametrize("leaf, message", [
    (_ext([2], "float32", b"\0" * 4), "needs 8 bytes, got 4"),
    (_ext([2], "complex64", b"\0" * 16), "unsupported array dtype"),
    (_ext([-1], "float32", b""), r"shape \[-1\] is not a list of at most 16 dimensions"),
    (5, "is a msgpack value, expected a map"),
])
def test_bad_msgpack_arrays(tmp_path, leaf, message):
    with pytest.raises(pv.CheckpointError, match=message):
        list(read_flax_msgpack(_msgpack_file(tmp_path, {"encoder": {"w": leaf}})))
