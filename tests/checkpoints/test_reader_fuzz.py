"""Fuzzed checkpoint files (random byte flips and truncations): each reader loads what the
format's own reader sees in the same bytes, or raises CheckpointError naming the file."""

from __future__ import annotations

import io

import numpy as np
import pytest

import purevedec as pv
from purevedec.checkpoints.flax_msgpack import read_flax_msgpack
from purevedec.checkpoints.safetensors_io import read_safetensors
from purevedec.checkpoints.torch_pickle import read_torch_bin

pytest.importorskip("hypothesis")  # the test extra's; without it these tests skip, the rest still collect
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _fuzz_files(tmp_path_factory):
    import msgpack
    import torch
    from safetensors.numpy import save_file
    d = tmp_path_factory.mktemp("fuzz")
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float16)}
    torch.save({k: torch.tensor(v) for k, v in tensors.items()}, d / "m.bin")
    save_file(tensors, str(d / "m.safetensors"))
    kernel = msgpack.ExtType(1, msgpack.packb(([2, 3], "float32", tensors["a"].tobytes()), use_bin_type=True))
    (d / "flax_model.msgpack").write_bytes(msgpack.packb({"x": {"kernel": kernel}}, use_bin_type=True))
    return {read_torch_bin: (d / "m.bin").read_bytes(), read_safetensors: (d / "m.safetensors").read_bytes(),
            read_flax_msgpack: (d / "flax_model.msgpack").read_bytes()}


@pytest.fixture(scope="module")
def fuzz_files(tmp_path_factory):
    return _fuzz_files(tmp_path_factory)


@pytest.mark.parametrize("reader", [read_torch_bin, read_safetensors, read_flax_msgpack],
                         ids=["bin", "safetensors", "msgpack"])
# derandomize: the same 60 examples every run (a failure reproduces); no deadline: an example
# may take long on a loaded machine, and time is not what is tested.
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
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
        got = dict(reader(str(path)))
    except pv.CheckpointError as e:
        assert str(e).startswith(f"{path}: ") and len(str(e)) > len(f"{path}: ") + 10  # the file, then why
        return
    # Read without error: every tensor must be what the format's own reader sees in the same
    # bytes (when that reader accepts them too), never other bytes, another dtype or shape.
    want = _reference_read(reader, bytes(blob))
    if want is not None:
        assert sorted(got) == sorted(want)
        for name, array in want.items():
            assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
            np.testing.assert_array_equal(got[name], array)


def _reference_read(reader, blob: bytes) -> dict | None:
    """The tensors the format's reference implementation reads from ``blob``, or None if it
    refuses the bytes: torch.load (weights only), the safetensors library, msgpack + numpy."""
    try:
        if reader is read_torch_bin:
            import torch
            return {k: v.numpy() for k, v in torch.load(io.BytesIO(blob), weights_only=True).items()}
        if reader is read_safetensors:
            from safetensors.numpy import load
            return load(blob)
        import msgpack
        tree = msgpack.unpackb(blob, ext_hook=lambda code, data: msgpack.unpackb(data), strict_map_key=False)
        shape, dtype, data = tree["x"]["kernel"]
        kernel = np.frombuffer(data, np.dtype(dtype)).reshape(shape)
        # transformers' Flax kernels: Dense [in, out] (HF weight [out, in]), Conv HWIO (HF OIHW)
        return {"x.weight": kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T}
    except Exception:  # noqa: BLE001 - any refusal means "no reference"
        return None
