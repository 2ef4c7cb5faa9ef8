"""Issue 10 section 2: generate_core is traceable (jit, vmap) with fixed-shape outputs, generate
is it trimmed, numeric sampling options are traced (a sweep compiles once) while top_k is
static, and greedy/beam search ignore a key."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import purevedec as pv
from purevedec.generation import search
from api_util import init, pixels, tiny_config

CONFIG = tiny_config()
NEW = 6                                   # max_new_tokens everywhere: one compile per mode
PIXELS = pixels(4)
SWEEP = [(0.5, 0.9), (0.7, 0.8), (1.3, 0.95)]  # (temperature, top_p), none neutral
KEYS = jax.random.split(jax.random.key(11), 2)


@pytest.fixture(scope="module")
def params():
    """Random params whose EOS embedding is scaled up, so that rows end at different lengths
    (and trimming has something to trim)."""
    p = init(CONFIG)
    return {**p, "decoder": {**p["decoder"], "wte": p["decoder"]["wte"].at[2].multiply(40.0)}}


def _sample(params, key, temperature, top_p, pixels=PIXELS):
    return pv.generate_core(params, pixels, key=key, do_sample=True, temperature=temperature, top_p=top_p,
                            max_new_tokens=NEW)


def _same(a: pv.GenerationResult, b: pv.GenerationResult):
    np.testing.assert_array_equal(a.sequences, b.sequences)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-5)


def _check_trimmed(full: pv.GenerationResult, out: pv.GenerateOutput):
    """generate's output is generate_core's, cut to the longest row."""
    n = int(np.max(full.lengths))
    np.testing.assert_array_equal(out.sequences, np.asarray(full.sequences)[:, :n])
    np.testing.assert_array_equal(out.scores, full.scores)
    np.testing.assert_array_equal(out.token_logprobs, np.asarray(full.token_logprobs)[:, :n - 1])


def test_core_shapes_are_fixed(params):
    out = pv.generate_core(params, PIXELS, max_new_tokens=NEW)
    assert out.sequences.shape == (4, 1 + NEW) and out.lengths.shape == (4,) and out.scores.shape == (4,)
    assert out.token_logprobs.shape == (4, NEW) and out.cross_attentions is None
    lengths = np.asarray(out.lengths)
    assert lengths.max() < 1 + NEW  # EOS reached: the fixed buffer is longer than every row
    for row, n in zip(np.asarray(out.sequences), lengths):
        assert row[n - 1] == 2 and (row[n:] == CONFIG.pad_token_id).all()


def test_an_explicit_config_serves_bare_weights(params):
    bare = {k: v for k, v in params.items() if k != "config"}
    _same(pv.generate_core(bare, PIXELS, CONFIG, max_new_tokens=NEW),
          pv.generate_core(params, PIXELS, max_new_tokens=NEW))
    np.testing.assert_array_equal(pv.generate(bare, PIXELS, CONFIG, max_new_tokens=NEW).sequences,
                                  pv.generate(params, PIXELS, max_new_tokens=NEW).sequences)


@pytest.mark.parametrize("mode", ["greedy", "sample", "beam"])
def test_generate_is_the_core_trimmed(params, mode):
    kw = {"greedy": {}, "sample": dict(do_sample=True, temperature=SWEEP[0][0], top_p=SWEEP[0][1]),
          "beam": dict(num_beams=2)}[mode]
    full = pv.generate_core(params, PIXELS, key=KEYS[0], max_new_tokens=NEW, **kw)
    _check_trimmed(full, pv.generate(params, PIXELS, key=KEYS[0], max_new_tokens=NEW, **kw))


def test_core_under_jit_and_vmap_over_pixel_batches(params):
    batches = np.stack([PIXELS, pixels(4, seed=5)])  # [2,B,C,H,W]
    run = jax.jit(jax.vmap(lambda px: pv.generate_core(params, px, max_new_tokens=NEW)))
    both = run(batches)
    for i in range(2):
        _same(jax.tree.map(lambda x: x[i], both), pv.generate_core(params, batches[i], max_new_tokens=NEW))


def test_python_float_sweep_compiles_once_and_top_k_is_static(params):
    _sample(params, KEYS[0], *SWEEP[0])
    compiled = search._generate_jit._cache_size()
    outs = [_sample(params, KEYS[0], *tp) for tp in SWEEP[1:]]
    assert search._generate_jit._cache_size() == compiled
    assert not np.array_equal(outs[0].scores, outs[1].scores)  # the values did reach the computation
    # top_k sets the size of a top-k selection, so it is static: a new value compiles anew,
    # and a traced one is refused with a message naming it.
    pv.generate_core(params, PIXELS, key=KEYS[0], do_sample=True, temperature=SWEEP[0][0], top_p=SWEEP[0][1],
                     top_k=7, max_new_tokens=NEW)
    assert search._generate_jit._cache_size() == compiled + 1
    with pytest.raises(pv.ConfigError, match="top_k"):
        jax.jit(lambda k: pv.generate_core(params, PIXELS, key=KEYS[0], do_sample=True, top_k=k,
                                           max_new_tokens=NEW))(7)
    assert "top_k" in pv.generate_core.__doc__ and "static" in pv.generate_core.__doc__


def test_traced_sweep_under_jit_and_vmap_over_keys(params):
    """temperature and top_p as traced values in a user's jit, vmapped over sampling keys: one
    compile for the whole sweep, and each result equal to the eager call with that value."""
    @jax.jit
    def run(keys, temperature, top_p):
        return jax.vmap(lambda k: _sample(params, k, temperature, top_p))(keys)
    for temperature, top_p in SWEEP:
        out = run(KEYS, temperature, top_p)
        for i in range(len(KEYS)):
            _same(jax.tree.map(lambda x: x[i], out), _sample(params, KEYS[i], temperature, top_p))
    assert run._cache_size() == 1
    assert not np.array_equal(out.sequences[0], out.sequences[1])  # the keys differ


@pytest.mark.parametrize("kw", [{}, {"num_beams": 2}], ids=["greedy", "beam"])
def test_a_key_is_ignored_without_sampling(params, kw):
    without = pv.generate(params, PIXELS, max_new_tokens=NEW, **kw)
    for key in KEYS:
        with_key = pv.generate(params, PIXELS, key=key, max_new_tokens=NEW, **kw)
        np.testing.assert_array_equal(with_key.sequences, without.sequences)
        np.testing.assert_array_equal(with_key.scores, without.scores)
    assert "ignore" in pv.generate.__doc__ and "ignore" in pv.generate_core.__doc__


def test_sampling_without_a_key_is_an_error(params):
    with pytest.raises(ValueError, match="key"):
        pv.generate_core(params, PIXELS, do_sample=True, max_new_tokens=NEW)
