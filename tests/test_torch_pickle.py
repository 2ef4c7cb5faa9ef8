"""Readers of untrusted files: refuse code, report corruption clearly, never crash or hang."""

from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    with pytest.raises(pv.CheckpointError, match="small.bin"):
        list(read_torch_bin(small_bin))


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
    with pytest.raises(pv.CheckpointError, match="x.safetensors"):
        list(read_safetensors(str(path)))


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


def _fuzz_files(tmp_path_factory):
    import torch
    from safetensors.numpy import save_file
    d = tmp_path_factory.mktemp("fuzz")
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float16)}
    torch.save({k: torch.tensor(v) for k, v in tensors.items()}, d / "m.bin")
    save_file(tensors, str(d / "m.safetensors"))
    _msgpack_file(d, {"x": {"kernel": _ext([2, 3], "float32", tensors["a"].tobytes())}})
    return {read_torch_bin: (d / "m.bin").read_bytes(), read_safetensors: (d / "m.safetensors").read_bytes(),
            read_flax_msgpack: (d / "flax_model.msgpack").read_bytes()}


@pytest.fixture(scope="module")
def fuzz_files(tmp_path_factory):
    return _fuzz_files(tmp_path_factory)


@pytest.mark.parametrize("reader", [read_torch_bin, read_safetensors, read_flax_msgpack],
                         ids=["bin", "safetensors", "msgpack"])
@settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_readers_fail_only_clearly(tmp_path, fuzz_files, reader, data):
    """Random byte flips and truncations: the reader loads or raises CheckpointError, nothing else."""
    blob = bytearray(fuzz_files[reader])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    path = tmp_path / "fuzzed"
    path.write_bytes(bytes(blob))
    try:
        for _, array in reader(str(path)):
            assert isinstance(array, np.ndarray)
    except pv.CheckpointError as e:
        assert "fuzzed" in str(e)
