"""Hostile and broken inputs: every reader bounds time and memory, and fails with the package's error.

Each attack is a tiny file built here. Attacks on time or memory run in a child process under
an address-space limit (``resource.setrlimit(RLIMIT_AS)``), each timed on its own; the child
reports the error type, message and seconds of every attack as JSON. Without the bounds these
files take gigabytes (a MemoryError under the limit) or minutes to hours (the child's timeout).
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest

import purevedec as pv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MEMORY_LIMIT = 1536 * 2 ** 20   # the child's address space: importing jax takes ~0.45 GB of it
SECONDS = 20.0                  # per attack, generous for a loaded 2-core machine
_CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]),) * 2)
import purevedec as pv
from purevedec.checkpoints.flax_msgpack import read_flax_msgpack
from purevedec.checkpoints.safetensors_io import read_safetensors
from purevedec.checkpoints.torch_pickle import read_torch_bin
from purevedec.captioning.image import open_image
results = {}
for label, code in json.loads(sys.argv[2]).items():
    start = time.perf_counter()
    try:
        exec(code)
        error = {"type": None, "message": ""}
    except BaseException as e:  # MemoryError and RecursionError included: they are the failures we test for
        error = {"type": type(e).__name__, "message": str(e)[:1000]}
    results[label] = {**error, "seconds": time.perf_counter() - start}
print(json.dumps(results))
"""


def run_bounded(attacks: dict[str, str], timeout: float = 300) -> dict[str, dict]:
    """Run each {label: python statement} in one child under MEMORY_LIMIT; {label: result}."""
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, str(MEMORY_LIMIT), json.dumps(attacks)],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the readers did not finish {sorted(attacks)} within {timeout} s (a hang)")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_refused(results: dict, expected: dict[str, tuple[str, str]]) -> None:
    """Every attack raised the named error type, with a message matching the regex, in time."""
    for label, (error, pattern) in expected.items():
        got = results[label]
        assert got["type"] == error, f"{label}: {got}"
        assert re.search(pattern, got["message"]), f"{label}: {got['message']}"
        assert got["seconds"] < SECONDS, f"{label}: took {got['seconds']:.1f} s"


def read_all(reader: str, path) -> str:
    return f"list({reader}({str(path)!r}))"


def read_bounded(reader: str, files: dict[str, str]) -> dict[str, dict]:
    """Read every {label: file} with ``reader`` in the bounded child; {label: result}."""
    return run_bounded({label: read_all(reader, path) for label, path in files.items()})


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

def safetensors_file(path, header, data: bytes = b"") -> str:
    text = header if isinstance(header, (bytes, str)) else json.dumps(header)
    text = text.encode() if isinstance(text, str) else text
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
    return str(path)


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


# ----- config.json against the weights on disk -----

def _write_json(path, d) -> None:
    with open(path, "w") as f:
        json.dump(d, f)


def _edit_json(path, fn):
    with open(path) as f:
        d = json.load(f)
    fn(d)
    _write_json(path, d)


@pytest.fixture
def tiny(tmp_path):
    """A small random checkpoint written by purevedec itself (no torch or transformers needed)."""
    from purevedec.params import map_with_path
    config = pv.Config(encoder=pv.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=37, image_size=16, patch_size=8),
                       decoder=pv.GPT2Config(vocab_size=50, n_positions=24, n_embd=24, n_layer=2, n_head=2),
                       decoder_start_token_id=0, pad_token_id=1, eos_token_id=1)
    path = str(tmp_path / "tiny")
    rng = np.random.RandomState(0)
    params = map_with_path(pv.param_shapes(config), lambda _, shape: rng.standard_normal(shape).astype(np.float32))
    pv.save({**params, "config": config}, config, path)
    return config, path


def test_config_is_checked_against_the_weights_before_building(tiny, tmp_path):
    """10**8 layers, or 10**12 positions, in config.json: refused from the file sizes before any
    description of the layers is built; the true config still loads."""
    _, path = tiny
    edits = {"decoder layers": lambda d: d["decoder"].__setitem__("n_layer", 10 ** 8),
             "encoder layers": lambda d: d["encoder"].__setitem__("num_hidden_layers", 10 ** 8),
             "alias layers": lambda d: d["decoder"].__setitem__("num_hidden_layers", 10 ** 8) or d["decoder"].pop("n_layer"),
             "positions": lambda d: d["decoder"].__setitem__("n_positions", 10 ** 12)}
    dirs = {}
    for i, (label, edit) in enumerate(edits.items()):
        dirs[label] = shutil.copytree(path, tmp_path / f"c{i}")
        _edit_json(os.path.join(dirs[label], "config.json"), edit)
    attacks = {k: f"pv.load({str(d)!r})" for k, d in dirs.items()}
    # Composing a ViT and a GPT-2 checkpoint: the decoder's 10**8 layers would be initialised first.
    with open(os.path.join(path, "config.json")) as f:
        whole = json.load(f)
    for part, config in (("enc", whole["encoder"]), ("dec", {**whole["decoder"], "n_layer": 10 ** 8})):
        shutil.copytree(path, tmp_path / part)
        _write_json(tmp_path / part / "config.json", config)
    attacks["compose"] = (f"pv.from_encoder_decoder_pretrained({str(tmp_path / 'enc')!r}, {str(tmp_path / 'dec')!r}, "
                          "key=__import__('jax').random.PRNGKey(0))")
    results = run_bounded(attacks)
    assert_refused(results, {k: ("CheckpointError", r"model\.safetensors: config\.json describes \d+ parameter values "
                                                    r"in \d+ tensors .* more than the \d+ bytes of weights on disk")
                             for k in dirs})
    assert_refused(results, {"compose": ("CheckpointError", r"enc \+ .*dec: config\.json describes \d+ parameter "
                                                            r"values .* more than")})
    # The check is not looser than the truth: the real config's needs, counted independently.
    from purevedec.checkpoints.loader import needed_size
    params, config = pv.load(path)
    leaves = [x for x in __import__("jax").tree.leaves({k: v for k, v in params.items() if k != "config"})]
    assert needed_size(config) == (sum(x.size for x in leaves), len(leaves))


# ----- side files: sizes, deep nesting -----

def test_side_file_options_are_bounded(tiny):
    _, path = tiny
    _write_json(os.path.join(path, "preprocessor_config.json"), {"size": {"height": 100_000, "width": 100_000}})
    with pytest.raises(pv.ConfigError, match=r"preprocessor_config\.json: preprocessor size=.* sides in \[1, 4096\]"):
        pv.load_image_config(path)
    _write_json(os.path.join(path, "generation_config.json"), {"num_beams": 2_000_000})
    with pytest.raises(pv.ConfigError, match=r"generation_config\.json: num_beams=2000000 is more than"):
        pv.load_generation_config(path)
    # 17 MB of "[]," parses to ~0.4 GB of lists: side files are bounded at 16 MiB before parsing.
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        f.write('{"a": [' + "[]," * (17 * 2 ** 20 // 3) + "[]]}")
    with pytest.raises(pv.ConfigError, match=r"preprocessor_config\.json holds \d+ bytes, more than the 16777216"):
        pv.load_image_config(path)


def _write_tokenizer(path, with_json: bool) -> None:
    """A two-merge BPE as tokenizer.json, or as vocab.json + merges.txt."""
    from tokenizers import Tokenizer, models
    tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    if with_json:
        tok.save(os.path.join(path, "tokenizer.json"))
    else:
        tok.model.save(str(path))
    _write_json(os.path.join(path, "tokenizer_config.json"), {"eos_token": "ab"})


DEEP = "[" * 50_000 + "]" * 50_000


@pytest.mark.parametrize("name, error", [
    ("config.json", pv.ConfigError), ("generation_config.json", pv.ConfigError),
    ("preprocessor_config.json", pv.ConfigError), ("tokenizer_config.json", pv.TokenizerError),
    ("special_tokens_map.json", pv.TokenizerError), ("tokenizer.json", pv.TokenizerError),
    ("vocab.json", pv.TokenizerError), ("model.safetensors.index.json", pv.CheckpointError),
    ("model.safetensors", pv.CheckpointError)])
def test_deeply_nested_json_is_the_library_error(tiny, name, error):
    """50,000 levels of nesting in any JSON a checkpoint carries (the tokenizers library reads
    tokenizer.json and vocab.json itself, with its own recursion limit)."""
    _, path = tiny
    _write_tokenizer(path, with_json=name != "vocab.json")
    target = os.path.join(path, name)
    if name == "model.safetensors":
        safetensors_file(target, DEEP)
    else:
        if name == "model.safetensors.index.json":
            os.remove(os.path.join(path, "model.safetensors"))
        with open(target, "w") as f:
            f.write(DEEP)
    read = {pv.ConfigError: {"preprocessor_config.json": pv.load_image_config,
                             "generation_config.json": pv.load_generation_config}.get(name, pv.load_config),
            pv.TokenizerError: pv.load_tokenizer, pv.CheckpointError: pv.load}[error]
    with pytest.raises(error, match=name.replace(".", r"\.")):
        read(path)


# ----- images: decoded pixels bounded before decoding -----

def png_of_zeros(path, width: int, height: int, rows: int | None = None) -> str:
    """A grayscale PNG of width x height zero pixels (only `rows` rows of data when given: enough
    for a header check), a few hundred KB whatever its size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = height if rows is None else rows
    per_block = 1000  # rows per fully flushed deflate block, repeated
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes((width + 1) * per_block)) + c.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = last.compress(bytes((width + 1) * (rows % per_block))) + last.flush()
    adler = 1
    for _ in range(rows // per_block):
        adler = zlib.adler32(bytes((width + 1) * per_block), adler)
    adler = zlib.adler32(bytes((width + 1) * (rows % per_block)), adler)
    idat = b"\x78\x01" + block * (rows // per_block) + tail + struct.pack(">I", adler)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return str(path)


def test_image_pixels_are_bounded_before_decoding(tmp_path):
    """13000 x 13000 (169 M pixels, under pillow's own refusal at 179 M: it decodes to 0.5 GB of
    RGB and more in copies) and 20000 x 20000 (pillow's DecompressionBombError): both are the
    file's ImageError, before any pixel is decoded; a small image still reads."""
    from PIL import Image
    files = {"13000 squared": png_of_zeros(tmp_path / "big.png", 13000, 13000),
             "20000 squared": png_of_zeros(tmp_path / "bomb.png", 20000, 20000, rows=1),
             "small": png_of_zeros(tmp_path / "small.png", 30, 20)}
    assert os.path.getsize(files["13000 squared"]) < 2 ** 20
    with pytest.warns(Image.DecompressionBombWarning), Image.open(files["13000 squared"]) as im:
        assert im.size == (13000, 13000)  # pillow only warns: it would decode this one
    results = run_bounded({k: f"pv.preprocess([{p!r}], pv.ImageConfig())" for k, p in files.items()})
    assert_refused(results, {
        "13000 squared": ("ImageError", r"^[^()]*big\.png: image of 13000 x 13000 pixels is larger than the 89478485"),
        "20000 squared": ("ImageError", r"bomb\.png: cannot read image \(Image size \(400000000 pixels\) exceeds"),
    })
    assert results["small"]["type"] is None, results["small"]


# ----- errors of the wrong type become the library's one-line errors -----

@pytest.mark.parametrize("section, key, value, message", [
    ("encoder", "patch_size", 0, r"encoder\.patch_size must be a positive int"),
    ("encoder", "patch_size", -8, r"encoder\.patch_size must be a positive int"),
    ("encoder", "image_size", -16, r"encoder\.image_size must be a positive int"),
    ("encoder", "layer_norm_eps", float("nan"), r"encoder\.layer_norm_eps must be a finite number, got nan"),
    ("encoder", "layer_norm_eps", -1e-5, r"encoder\.layer_norm_eps must be > 0"),
    ("decoder", "activation_function", ["gelu"], r"decoder\.activation_function=\['gelu'\] is not supported"),
    ("decoder", "n_layer", 0, r"decoder\.n_layer must be a positive int"),
    ("decoder", "n_layer", "9" * 5000, r"config\.json is not valid JSON: Exceeds the limit"),  # a 5000-digit number
])
def test_bad_config_fields_are_config_errors(tiny, section, key, value, message):
    _, path = tiny
    file = os.path.join(path, "config.json")
    with open(file) as f:
        text = f.read()
    d = json.loads(text)
    d[section][key] = value
    text = json.dumps(d).replace(f'"{value}"', value) if isinstance(value, str) else json.dumps(d)
    with open(file, "w") as f:
        f.write(text)
    with pytest.raises(pv.ConfigError, match=message):
        pv.load(path)


@pytest.mark.parametrize("config, message", [
    ({"additional_special_tokens": 5}, r"tokenizer_config\.json: additional_special_tokens=5 must be a list"),
    ({"added_tokens_decoder": [1]}, r"tokenizer_config\.json: added_tokens_decoder=\[1\] must be a map"),
    ({"added_tokens_decoder": {"x": {"content": "a"}}}, r"added_tokens_decoder entry 'x'"),
    ({"added_tokens_decoder": {"3": "ab"}}, r"added_tokens_decoder entry '3'"),
    ({"eos_token": 7}, r"tokenizer_config\.json: eos_token=7 must be a token string"),
])
def test_bad_tokenizer_config_is_a_tokenizer_error(tmp_path, config, message):
    _write_tokenizer(tmp_path, with_json=False)
    _write_json(tmp_path / "tokenizer_config.json", config)
    with pytest.raises(pv.TokenizerError, match=message):
        pv.load_tokenizer(tmp_path)


def test_negative_ids_reaching_the_tokenizer(tmp_path):
    _write_tokenizer(tmp_path, with_json=True)
    tok = pv.load_tokenizer(tmp_path)
    assert tok.decode([0, 1, 2]) == tok.backend.decode([0, 1, 2]) == "a b"  # eos "ab" skipped, as the backend does
    for ids in ([0, -1], [2 ** 32]):
        with pytest.raises(pv.TokenizerError, match=f"cannot decode token id {ids[-1]}"):
            tok.decode(ids)
    with pytest.raises(pv.TokenizerError, match="cannot decode token id -1"):
        tok.token_text(-1)


@pytest.mark.parametrize("name, shape", [
    ("decoder.transformer.h.0.crossattention.c_attn.weight", (24 * 48,)),   # 1-D
    ("decoder.transformer.h.0.crossattention.c_attn.weight", (24, 47)),     # odd: no K/V halves
    ("decoder.transformer.h.0.crossattention.c_attn.bias", (47,)),
    ("decoder.transformer.h.0.attn.c_attn.weight", (72,)),
])
def test_misshaped_split_tensors_are_checkpoint_errors(tiny, name, shape):
    from safetensors.numpy import load_file, save_file
    _, path = tiny
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    tensors[name] = np.zeros(shape, np.float32)
    save_file(tensors, file)
    with pytest.raises(pv.CheckpointError, match=rf"model\.safetensors: tensor {re.escape(name)} has shape "
                                                 rf"{re.escape(str(list(shape)))}, which does not give"):
        pv.load(path)


def test_path_like_names_fail_fast(tmp_path, monkeypatch):
    """Names that cannot be repo ids fail without asking the Hub (no file list, no download)."""
    from hub_server import HubServer, use_hub
    with HubServer({}) as hub:
        use_hub(monkeypatch, hub.url, str(tmp_path / "hub-cache"))
        for name in ("no/such/x", str(tmp_path / "missing"), "./ckpt", "a/../b"):
            with pytest.raises(pv.CheckpointError, match="is not a directory, and cannot be a Hub repo id"):
                pv.load(name)
    assert hub.requests == []


# ----- generation options, from a file or keywords (validated in generation/options.py) -----

@pytest.mark.parametrize("option, value, message", [
    ("temperature", 0, r"temperature must be > 0"), ("temperature", float("nan"), r"temperature must be a finite"),
    ("top_p", -0.1, r"top_p must be >= 0"), ("top_p", 1.5, r"top_p must be <= 1"),
    ("top_k", -1, r"top_k must be an int >= 0"), ("repetition_penalty", 0, r"repetition_penalty must be > 0"),
    ("length_penalty", float("nan"), r"length_penalty must be a finite"),
    ("pad_token_id", 2 ** 31, r"pad_token_id must be a token id in \[0, 2\^31\)"),
    ("decoder_start_token_id", -1, r"decoder_start_token_id must be a token id"),
    ("num_beams", 2_000_000, r"num_beams=2000000 is more than"),
    ("bad_words_ids", [[-1]], r"bad_words_ids must be a token id"),
])
def test_bad_generation_options_name_the_file_and_option(tiny, option, value, message):
    _, path = tiny
    # NaN is written as NaN, which Python's json (and transformers) read
    _write_json(os.path.join(path, "generation_config.json"), {option: value})
    with pytest.raises(pv.ConfigError, match=rf"generation_config\.json: {message}"):
        pv.load_generation_config(path)


def test_generation_ids_outside_the_vocabulary_are_refused(tiny):
    _, path = tiny
    params, _ = pv.load(path)
    pixels = np.zeros((1, 3, 16, 16), np.float32)
    for kwargs, message in [({"bad_words_ids": [[50]]}, r"bad_words_ids holds \[50\], outside the vocabulary \[0, 50\)"),
                            ({"forced_bos_token_id": 99}, r"forced_bos_token_id holds \[99\]"),
                            ({"forced_eos_token_id": 50}, r"forced_eos_token_id holds \[50\]"),
                            ({"temperature": 0.0, "do_sample": True}, r"temperature must be > 0")]:
        with pytest.raises(pv.ConfigError, match=message):
            pv.generate(params, pixels, max_new_tokens=2, **kwargs)


# ----- side files that are not files, or grow past their bound while read -----

SIDE_FILES = {"config.json": "pv.load_config", "generation_config.json": "pv.load_generation_config",
              "preprocessor_config.json": "pv.load_image_config", "tokenizer_config.json": "pv.load_tokenizer",
              "special_tokens_map.json": "pv.load_tokenizer", "tokenizer.json": "pv.load_tokenizer",
              "vocab.json": "pv.load_tokenizer", "merges.txt": "pv.load_tokenizer",
              "sentencepiece.bpe.model": "pv.load_tokenizer"}


def _side_file_dir(base, folder, name: str) -> str:
    """A copy of checkpoint ``base`` with the tokenizer files that make ``name`` the one read."""
    path = shutil.copytree(base, folder)
    if name in ("vocab.json", "merges.txt"):
        _write_tokenizer(path, with_json=False)
    elif name != "sentencepiece.bpe.model":
        _write_tokenizer(path, with_json=True)
    _write_json(os.path.join(path, "preprocessor_config.json"), {"size": 16})
    target = os.path.join(path, name)
    if os.path.exists(target):
        os.remove(target)
    return target


def test_special_side_files_are_refused_at_once(tiny, tmp_path):
    """A FIFO (a read blocks forever), a device (/dev/zero never ends) or a folder in the place of
    any side file: the file's own error, naming it, without reading it."""
    _, path = tiny
    attacks, expected = {}, {}
    for i, (name, reader) in enumerate(SIDE_FILES.items()):
        error = "ConfigError" if reader != "pv.load_tokenizer" else "TokenizerError"
        for kind, make in (("a FIFO", os.mkfifo), ("a device", lambda t: os.symlink("/dev/zero", t)),
                           ("a directory", os.mkdir)):
            target = _side_file_dir(path, tmp_path / f"{i}-{kind[2:]}", name)
            make(target)
            attacks[f"{name} {kind}"] = f"{reader}({os.path.dirname(target)!r})"
            expected[f"{name} {kind}"] = (error, rf"{re.escape(target)} is {kind}, not a file")
    weights = shutil.copytree(path, tmp_path / "weights-FIFO")
    os.remove(weights / "model.safetensors")
    os.mkfifo(weights / "model.safetensors")
    attacks["weights FIFO"] = f"pv.load({str(weights)!r})"
    expected["weights FIFO"] = ("CheckpointError", r"model\.safetensors is a FIFO, not a weights file")
    assert_refused(run_bounded(attacks, timeout=120), expected)


def test_side_file_bound_holds_while_reading(tiny, monkeypatch):
    """A file whose reported size is small (a /proc-like file, or one still growing) is cut off at
    the bound by the bytes actually read."""
    from purevedec.checkpoints import jsonfile
    _, path = tiny
    file = os.path.join(path, "preprocessor_config.json")
    with open(file, "w") as f:
        f.write('{"a": "' + "x" * (17 * 2 ** 20) + '"}')
    real_fstat = os.fstat

    def reports_empty(fd):
        info = real_fstat(fd)
        return os.stat_result((info.st_mode, *info[1:6], 0, *info[7:]))
    monkeypatch.setattr(jsonfile.os, "fstat", reports_empty)
    with pytest.raises(pv.ConfigError, match=r"preprocessor_config\.json holds more than the 16777216 bytes"):
        pv.load_image_config(path)


def test_oversized_tokenizer_files_are_refused_before_the_library_reads_them(tiny):
    """A 65 MiB (sparse) tokenizer.json or merges.txt: refused by size, not handed to the
    tokenizers library (which aborts the process when its parse runs out of memory)."""
    _, path = tiny
    for with_json, name in ((True, "tokenizer.json"), (False, "merges.txt")):
        _write_tokenizer(path, with_json=with_json)
        os.truncate(os.path.join(path, name), 65 * 2 ** 20)
        with pytest.raises(pv.TokenizerError, match=rf"{name.replace('.', '[.]')} holds 68157440 bytes, more than "
                                                    r"the 67108864"):
            pv.load_tokenizer(path)
        os.remove(os.path.join(path, name))


def test_empty_tokenizer_models_are_errors(tmp_path):
    from tokenizers import Tokenizer, models
    (tmp_path / "spm").mkdir()
    (tmp_path / "spm" / "sentencepiece.bpe.model").write_bytes(b"")
    with pytest.raises(pv.TokenizerError, match=r"sentencepiece\.bpe\.model holds no tokens"):
        pv.load_tokenizer(tmp_path / "spm")
    (tmp_path / "json").mkdir()
    Tokenizer(models.BPE(vocab={}, merges=[])).save(str(tmp_path / "json" / "tokenizer.json"))
    with pytest.raises(pv.TokenizerError, match=r"json: the tokenizer model holds no tokens"):
        pv.load_tokenizer(tmp_path / "json")


# ----- the tokenizers library's panics become TokenizerErrors -----

def _tokenizer_json(path, edit) -> None:
    from tokenizers import Tokenizer, models
    d = json.loads(Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")])).to_str())
    edit(d)
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        json.dump(d, f)


def test_tokenizer_library_panics_are_tokenizer_errors(tmp_path):
    """A merge whose result is not in the vocabulary panics inside the library at load; a
    backtracking regex panics at encode. Both are PanicExceptions (BaseException) unless caught."""
    (tmp_path / "merge").mkdir()
    _tokenizer_json(tmp_path / "merge", lambda d: d["model"]["merges"].append(["ab", "b"]))
    with pytest.raises(pv.TokenizerError, match=r"tokenizer\.json is not a readable tokenizer: the tokenizers "
                                                r"library failed"):
        pv.load_tokenizer(tmp_path / "merge")
    (tmp_path / "regex").mkdir()
    _tokenizer_json(tmp_path / "regex", lambda d: d.__setitem__("pre_tokenizer", {
        "type": "Split", "pattern": {"Regex": "(a*)*$"}, "behavior": "Isolated", "invert": False}))
    tok = pv.load_tokenizer(tmp_path / "regex")
    with pytest.raises(pv.TokenizerError, match=r"cannot encode 'aaaa.*the tokenizers library failed .*retry-limit"):
        tok.encode("a" * 5000 + "c")


def test_merges_are_read_as_the_library_reads_them(tmp_path):
    """vocab.json + merges.txt, read by purevedec and handed over as values: the same tokens as
    the library's own file reader; a malformed line and a merge over a missing token are errors."""
    from tokenizers.models import BPE
    _write_tokenizer(tmp_path, with_json=False)
    with open(tmp_path / "merges.txt", "a") as f:
        f.write("ab b\r\n")
    with open(tmp_path / "vocab.json", "w") as f:
        json.dump({"a": 0, "b": 1, "ab": 2, "abb": 3}, f)
    ours = pv.load_tokenizer(tmp_path)
    theirs = BPE.from_file(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert ours.backend.model.tokenize("abbab") and \
        [t.value for t in ours.backend.model.tokenize("abbab")] == [t.value for t in theirs.tokenize("abbab")] == \
        ["abb", "ab"]
    with open(tmp_path / "merges.txt", "a") as f:
        f.write("a b c\n")
    with pytest.raises(pv.TokenizerError, match=r"merges\.txt line 4 is not two tokens"):
        pv.load_tokenizer(tmp_path)
    with open(tmp_path / "merges.txt", "w") as f:
        f.write("a zz\n")
    with pytest.raises(pv.TokenizerError, match=r"cannot read .*vocab\.json / .*merges\.txt: .*zz"):
        pv.load_tokenizer(tmp_path)


def _captioning_dir(tiny_path: str) -> str:
    """The tiny checkpoint with a tokenizer covering its 50 ids and a matching preprocessor."""
    from tokenizers import Tokenizer, models
    vocab = {f"t{i}": i for i in range(50)}
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(os.path.join(tiny_path, "tokenizer.json"))
    _write_json(os.path.join(tiny_path, "preprocessor_config.json"), {"size": {"height": 16, "width": 16}})
    return tiny_path


def test_a_tokenizer_smaller_than_the_model_is_refused(tiny):
    _, path = tiny
    _captioning_dir(path)
    pv.Captioner.from_pretrained(path)
    _write_tokenizer(path, with_json=True)     # 3 tokens for a model of 50
    with pytest.raises(pv.TokenizerError, match=r"the tokenizer knows 3 token ids, fewer than the model's "
                                                r"vocabulary of 50"):
        pv.Captioner.from_pretrained(path)


# ----- weights that are NaN or infinite -----

def _poison(path, name: str, value: float) -> None:
    from safetensors.numpy import load_file, save_file
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    tensors[name] = tensors[name].copy()
    tensors[name].flat[3] = value
    save_file(tensors, file)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_weights_are_refused_at_load(tiny, value):
    _, path = tiny
    name = "decoder.transformer.h.1.mlp.c_fc.weight"
    _poison(path, name, value)
    with pytest.raises(pv.CheckpointError, match=rf"model\.safetensors: tensor {re.escape(name)} holds 1 NaN or "
                                                 r"infinite value.*allow_nonfinite=True"):
        pv.load(path)
    with pytest.warns(UserWarning, match=rf"tensor {re.escape(name)} holds 1 NaN or infinite"):
        params, _ = pv.load(path, allow_nonfinite=True)
    assert not np.isfinite(np.asarray(params["decoder"]["blocks"][1]["mlp"]["fc"]["w"])).all()


def test_weights_that_overflow_the_requested_dtype_are_refused(tiny):
    _, path = tiny
    name = "encoder.encoder.layer.0.intermediate.dense.weight"
    _poison(path, name, 1e6)                     # finite in float32, infinite in float16
    pv.load(path)
    with pytest.raises(pv.CheckpointError, match=rf"tensor {re.escape(name)} holds 1 NaN or infinite value "
                                                 r"after the cast to float16"):
        pv.load(path, dtype="float16")


def test_rows_that_turn_nonfinite_are_reported_per_input(tiny):
    """A float16 run whose activations overflow (finite weights, an input scale that fits float16
    but whose products do not): every input's result is its GenerationError, not an empty caption."""
    _, path = tiny
    _captioning_dir(path)
    _poison(path, "decoder.transformer.ln_f.weight", 60000.0)
    cap = pv.Captioner.from_pretrained(path, dtype="float16")
    images = [np.full((16, 16, 3), v, np.uint8) for v in (0, 128)]
    results = list(cap.captions(images, errors="return", max_new_tokens=3))
    assert all(isinstance(r, pv.GenerationError) for r in results), results
    assert "image 1: generation turned non-finite (NaN or infinite scores)" in str(results[1])
    with pytest.raises(pv.GenerationError, match="image 0"):
        cap.caption(images[0], max_new_tokens=3)


# ----- images: only the documented formats, bounded conversions -----

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
       b"newpath 0 0 moveto 8 8 lineto stroke showpage\n%%EOF\n")


def test_formats_that_run_interpreters_or_hide_payloads_are_not_opened(tmp_path, monkeypatch):
    """EPS (pillow hands it to Ghostscript), ICO (its PNG payload's size is not the header's):
    refused by content whatever the file is called, before any decoder runs."""
    import subprocess as sp
    from PIL import Image
    called = []
    monkeypatch.setattr(sp, "Popen", lambda *a, **k: called.append(a) or pytest.fail("a subprocess was started"))
    (tmp_path / "doc.png").write_bytes(EPS)
    big = Image.new("L", (300, 300))
    big.save(tmp_path / "icon.ico", format="ICO", sizes=[(256, 256)])
    for name in ("doc.png", "icon.ico"):
        with pytest.raises(pv.ImageError, match=rf"{name.replace('.', '[.]')}: cannot read image: not an image in a "
                                                r"supported format \(BMP, GIF, JPEG, .*\)"):
            pv.preprocess([str(tmp_path / name)], pv.ImageConfig(size=(16, 16)))
    assert not called


def test_wide_images_convert_without_full_size_wide_copies(tmp_path):
    """A 9000 x 9000 16-bit grayscale PNG (81 M pixels, under the pixel bound; 162 MB decoded):
    int64 and float64 copies of it would take 650 MB each; the conversion stays within the
    child's 1.5 GB and gives value / 257 rounded, as before."""
    from PIL import Image
    file = str(tmp_path / "wide.png")
    Image.fromarray(np.full((9000, 9000), 65535, np.uint16)).save(file)
    results = run_bounded({"wide": f"open_image({file!r})"})
    assert results["wide"]["type"] is None, results["wide"]
    values = np.array([0, 128, 129, 385, 386, 65535, 30000], np.uint16)
    small = tmp_path / "small.png"
    Image.fromarray(values[None, :]).save(small)
    from purevedec.captioning.image import open_image
    with pytest.warns(UserWarning, match="16-bit"):
        got = np.asarray(open_image(str(small)))[0, :, 0]
    assert got.tolist() == np.round(values / 257).astype(np.uint8).tolist()


# ----- config fields of the wrong type, and parts that disagree -----

@pytest.mark.parametrize("section", ["encoder", "decoder"])
@pytest.mark.parametrize("value", [["vit"], {"a": 1}])
def test_model_type_of_the_wrong_type_is_a_config_error(tiny, section, value):
    _, path = tiny
    _edit_json(os.path.join(path, "config.json"), lambda d: d[section].__setitem__("model_type", value))
    with pytest.raises(pv.ConfigError, match=rf"{section}\.model_type={re.escape(repr(value))} is not supported"):
        pv.load_config(path)


def test_image_size_disagreeing_with_the_preprocessor_is_a_config_error(tiny):
    _, path = tiny
    _captioning_dir(path)
    _write_json(os.path.join(path, "preprocessor_config.json"), {"size": {"height": 24, "width": 16}})
    with pytest.raises(pv.ConfigError, match=r"preprocessor_config\.json: size \(24, 16\) .* config\.json's "
                                             r"encoder\.image_size \(16, 16\)"):
        pv.Captioner.from_pretrained(path)
