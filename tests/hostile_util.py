"""Helpers of the hostile-input tests (tests/checkpoints/test_hostile*.py).

Attacks on time or memory run in a child process under an address-space limit
(``resource.setrlimit(RLIMIT_AS)``), each timed on its own; the child reports the error type,
message and seconds of every attack as JSON. Without the bounds the attack files take gigabytes
(a MemoryError under the limit) or minutes to hours (the child's timeout).
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

import purevedec as pv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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



def safetensors_file(path, header, data: bytes = b"") -> str:
    text = header if isinstance(header, (bytes, str)) else json.dumps(header)
    text = text.encode() if isinstance(text, str) else text
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
    return str(path)


def write_json(path, d) -> None:
    with open(path, "w") as f:
        json.dump(d, f)


def edit_json(path, fn):
    with open(path) as f:
        d = json.load(f)
    fn(d)
    write_json(path, d)


def write_tokenizer(path, with_json: bool) -> None:
    """A two-merge BPE as tokenizer.json, or as vocab.json + merges.txt."""
    from tokenizers import Tokenizer, models
    tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    if with_json:
        tok.save(os.path.join(path, "tokenizer.json"))
    else:
        tok.model.save(str(path))
    write_json(os.path.join(path, "tokenizer_config.json"), {"eos_token": "ab"})


def captioning_dir(tiny_path: str) -> str:
    """The tiny checkpoint with a tokenizer covering its 50 ids and a matching preprocessor."""
    from tokenizers import Tokenizer, models
    vocab = {f"t{i}": i for i in range(50)}
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(os.path.join(tiny_path, "tokenizer.json"))
    write_json(os.path.join(tiny_path, "preprocessor_config.json"), {"size": {"height": 16, "width": 16}})
    return tiny_path


def write_tiny(tmp_path):
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
