"""Tensor parallelism splits every vocabulary-sized weight (token embeddings, tied or untied LM
heads) over "model", whatever the decoder family: ``shard_params`` on 4 simulated CPU devices in a
child process (XLA_FLAGS set in that child only). Leaves are found by their vocabulary dimension,
not by name, so the test holds whatever the rules are written in."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from models import make_reference
from ocr_models import make_ocr_reference
from simulated_devices import simulated_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_DEVICES = 4
# Vocabularies divisible by 4 and equal to no other dimension of their model.
GPT2_VOCAB, TROCR_VOCAB = 56, 52
_CHILD = r"""
import json, sys
import jax
import numpy as np
import purevedec as pv
from jax.sharding import AxisType
mesh = jax.make_mesh((int(sys.argv[1]),), ("model",), axis_types=(AxisType.Auto,))
facts = {}
for label, path in json.loads(sys.argv[2]).items():
    params, config = pv.load(path)
    sharded = pv.shard_params(params, mesh, config)
    leaves = jax.tree_util.tree_flatten_with_path(sharded)[0]
    facts[label] = [[jax.tree_util.keystr(p), list(x.shape), [a for a in x.sharding.spec],
                     x.nbytes, max(s.data.nbytes for s in x.addressable_shards)]
                    for p, x in leaves if isinstance(x, jax.Array)]
print(json.dumps(facts))
"""


@pytest.fixture(scope="module")
def placements(tmp_path_factory):
    """{checkpoint: [(leaf path, shape, spec, bytes, bytes on one device)]} after shard_params on model=4."""
    root = tmp_path_factory.mktemp("vocab")
    models = {
        "gpt2 untied head": make_reference(dec_kw=dict(vocab_size=GPT2_VOCAB, tie_word_embeddings=False)),
        "trocr tied": make_ocr_reference(dec_kw=dict(vocab_size=TROCR_VOCAB, tie_word_embeddings=True)),
        "trocr untied head": make_ocr_reference(dec_kw=dict(vocab_size=TROCR_VOCAB)),
    }
    paths = {}
    for label, model in models.items():
        paths[label] = str(root / label.replace(" ", "_"))
        model.save_pretrained(paths[label])
    env = simulated_devices_env(MODEL_DEVICES)
    done = subprocess.run([sys.executable, "-c", _CHILD, str(MODEL_DEVICES), json.dumps(paths)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def vocab_leaves(leaves, vocab: int) -> list:
    return [leaf for leaf in leaves if vocab in leaf[1]]


def assert_vocab_split(leaves, vocab: int, count: int) -> None:
    """``count`` leaves hold a vocabulary dimension; each is split over "model" along it, and each
    device holds a quarter of its bytes."""
    found = vocab_leaves(leaves, vocab)
    assert len(found) == count, [leaf[:2] for leaf in leaves]
    for path, shape, spec, nbytes, per_device in found:
        axis = shape.index(vocab)
        spec = spec + [None] * (len(shape) - len(spec))
        assert spec[axis] == "model", f"{path} {shape}: {spec}, the vocabulary is not split over 'model'"
        assert per_device * MODEL_DEVICES == nbytes, (path, nbytes, per_device)


def test_untied_gpt2_head_and_embedding_are_split(placements):
    assert_vocab_split(placements["gpt2 untied head"], GPT2_VOCAB, 2)


def test_untied_trocr_head_and_embedding_are_split(placements):
    assert_vocab_split(placements["trocr untied head"], TROCR_VOCAB, 2)


def test_tied_trocr_embedding_is_split(placements):
    assert_vocab_split(placements["trocr tied"], TROCR_VOCAB, 1)
