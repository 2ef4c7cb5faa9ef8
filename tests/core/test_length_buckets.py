"""Issue 34 point 6: forward, loss and score with ``pad_to_multiple_of`` give the unpadded call's
values, and every decoder length in one bucket runs one compiled program."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import purevedec as pv
from purevedec import model as pv_model
from purevedec.training import cross_entropy
from api_util import N_POSITIONS, V, init, pixels, tiny_config

CONFIG = tiny_config()
PIXELS = pixels(2)
LENGTHS = (3, 4, 5, 6, 7)  # one bucket of 8; no length is 8 itself, which would compile the bucket's program


@pytest.fixture(scope="module")
def params():
    return init(CONFIG)


def _ids(t: int, seed: int = 1) -> np.ndarray:
    return np.random.RandomState(seed).randint(3, V, (2, t)).astype(np.int32)


def test_forward_in_a_bucket_equals_the_unpadded_call_and_compiles_once(params):
    plain = {t: np.asarray(pv.forward(params, PIXELS, _ids(t))) for t in LENGTHS}
    compiled = pv_model._forward_jit._cache_size()
    for t in LENGTHS:
        padded = pv.forward(params, PIXELS, _ids(t), pad_to_multiple_of=8)
        assert padded.shape == (2, t, V)
        np.testing.assert_allclose(padded, plain[t], atol=1e-6, rtol=0)
    assert pv_model._forward_jit._cache_size() == compiled + 1


def test_forward_outputs_are_cut_back_to_the_length(params):
    ids, mask = _ids(5), np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
    positions = np.tile(np.arange(2, 7, dtype=np.int32), (2, 1))
    kw = dict(attention_mask=mask, position_ids=positions, output_hidden_states=True, output_attentions=True)
    plain, padded = pv.forward(params, PIXELS, ids, **kw), pv.forward(params, PIXELS, ids, pad_to_multiple_of=8, **kw)
    assert jax.tree.structure(plain) == jax.tree.structure(padded)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(padded)):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)


def test_the_bucket_stops_at_the_position_table(params):
    ids = _ids(N_POSITIONS - 1)
    np.testing.assert_allclose(pv.forward(params, PIXELS, ids, pad_to_multiple_of=64),
                               pv.forward(params, PIXELS, ids), atol=1e-6, rtol=0)


def test_forward_pads_traced_ids_too(params):
    ids = _ids(6)
    jitted = jax.jit(lambda p, i: pv.forward(p, PIXELS, i, pad_to_multiple_of=8))
    np.testing.assert_allclose(jitted(params, ids), pv.forward(params, PIXELS, ids), atol=1e-6, rtol=0)


def test_loss_in_a_bucket_equals_the_unpadded_loss_and_compiles_once(params):
    def labels(t):
        out = _ids(t, seed=2)
        out[1, t - 2:] = -100  # the second caption is shorter
        return out
    plain = {t: pv.loss(params, PIXELS, labels(t)) for t in LENGTHS}
    compiled = cross_entropy._loss_jit._cache_size()
    for t in LENGTHS:
        padded = pv.loss(params, PIXELS, labels(t), pad_to_multiple_of=8)
        for a, b in zip(plain[t], padded):
            np.testing.assert_allclose(b, a, atol=1e-6, rtol=1e-6)
    assert cross_entropy._loss_jit._cache_size() == compiled + 1


@pytest.mark.parametrize("with_mask", [False, True])
def test_score_in_a_bucket_equals_the_unpadded_score(params, with_mask):
    for t in LENGTHS:
        ids = _ids(t, seed=3)
        mask = np.ones((2, t), np.int32)
        mask[1, t - 1:] = 0
        kw = dict(attention_mask=mask if with_mask else None, prompt_len=np.array([1, 2]), length_penalty=1.0)
        plain, padded = pv.score(params, PIXELS, ids, **kw), pv.score(params, PIXELS, ids, pad_to_multiple_of=8, **kw)
        assert padded.token_logprobs.shape == (2, t - 1)
        for a, b in zip(plain, padded):
            np.testing.assert_allclose(b, a, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -8, 2.5, True, "8"])
def test_a_bad_multiple_is_named(params, bad):
    ids = _ids(4)
    for call in (lambda: pv.forward(params, PIXELS, ids, pad_to_multiple_of=bad),
                 lambda: pv.loss(params, PIXELS, ids, pad_to_multiple_of=bad),
                 lambda: pv.score(params, PIXELS, ids, pad_to_multiple_of=bad)):
        with pytest.raises(ValueError, match="pad_to_multiple_of"):
            call()
