"""Logits, hidden states and attention weights match transformers across the config matrix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purevedec as pv
from conftest import make_reference, maxdiff, rand_ids, rand_pixels, save_reference, torch_forward
from models import CASES, SEEDS

TOL = 1e-4
# One batch and length for every case's plain forward (and encode, decode): the shapes are
# arbitrary, and each distinct one compiled the case's model again.
B, T = 2, 7

@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    enc_kw, dec_kw = CASES[request.param]
    model = make_reference(enc_kw, dec_kw, seed=SEEDS[request.param])
    path = save_reference(model, tmp_path_factory.mktemp(request.param))
    params, config = pv.load(path)
    return model, params, config


def _pixels_for(config, b, seed=0):
    h, w = config.encoder.image_size
    return rand_pixels(b, config.encoder.num_channels, h, w, seed=seed)


def test_logits_hidden_states_and_attentions_match(case):
    model, params, config = case
    px, ids = _pixels_for(config, B), rand_ids(B, T, config.decoder.vocab_size)
    ref = torch_forward(model, px, ids, output_hidden_states=True, output_attentions=True)
    out = pv.forward(params, px, ids, config, output_hidden_states=True, output_attentions=True)
    assert out.logits.dtype == jnp.float32 and out.logits.shape == (B, T, config.decoder.vocab_size)
    assert maxdiff(out.logits, ref.logits) <= TOL
    assert maxdiff(out.encoder_last_hidden_state, ref.encoder_last_hidden_state) <= TOL
    for name in ("encoder_hidden_states", "encoder_attentions", "decoder_hidden_states",
                 "decoder_attentions", "cross_attentions"):
        ours, theirs = getattr(out, name), getattr(ref, name)
        assert len(ours) == len(theirs), name
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert a.shape == tuple(b.shape), (name, i)
            assert maxdiff(a, b) <= TOL, (name, i)


def test_plain_forward_returns_logits_only(case):
    model, params, config = case
    px, ids = _pixels_for(config, B), rand_ids(B, T, config.decoder.vocab_size)
    logits = pv.forward(params, px, ids, config)
    assert isinstance(logits, jax.Array)
    assert maxdiff(logits, torch_forward(model, px, ids).logits) <= TOL


def test_encode_then_decode_equals_forward(case):
    _, params, config = case
    px, ids = _pixels_for(config, B), rand_ids(B, T, config.decoder.vocab_size)
    enc = pv.encode(params, px, config)
    assert enc.shape == (B, 1 + config.encoder.num_patches, config.decoder.n_embd)
    np.testing.assert_allclose(pv.decode(params, ids, enc, config), pv.forward(params, px, ids, config),
                               atol=1e-5)


def test_cached_steps_and_generation_match(case):
    """Every config variant: a prompt then token-by-token cached steps give forward's logits, and
    greedy generation gives transformers' tokens."""
    import torch
    model, params, config = case
    px, ids = _pixels_for(config, B, seed=3), rand_ids(B, T, config.decoder.vocab_size, seed=4)
    full = np.asarray(pv.forward(params, px, ids))
    cache = pv.init_cache(params, pv.encode(params, px), max_len=9)
    logits, cache = pv.step(params, cache, ids[:, :3])
    parts = [np.asarray(logits)]
    for t in range(3, 7):
        logits, cache = pv.step(params, cache, ids[:, t:t + 1])
        parts.append(np.asarray(logits))
    assert np.max(np.abs(np.concatenate(parts, 1) - full)) <= TOL
    # greedy only: the search code does not depend on the variant (test_generate covers beams)
    with torch.no_grad():
        ref = model.generate(pixel_values=torch.tensor(px), max_new_tokens=6).numpy()
    np.testing.assert_array_equal(pv.generate(params, px, max_new_tokens=6).sequences, ref)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_rows_match_on_real_tokens(tiny, side):
    model, path = tiny
    params, config = pv.load(path)
    px, ids = rand_pixels(3), rand_ids(3, 6)
    mask = np.ones((3, 6), np.int32)
    if side == "right":
        mask[1, 4:] = 0
        mask[2, 2:] = 0
    else:
        mask[1, :2] = 0
        mask[2, :4] = 0
    ref = torch_forward(model, px, ids, decoder_attention_mask=mask).logits.numpy()
    ours = np.asarray(pv.forward(params, px, ids, config, attention_mask=mask))
    # Positions that are padding have no defined output (implementations fill them differently);
    # every real token must match.
    real = mask.astype(bool)
    assert np.max(np.abs(ours[real] - ref[real])) <= TOL
    if side == "left":  # left padding sits before real tokens, so ignoring the mask would show
        unmasked = np.asarray(pv.forward(params, px, ids, config))
        assert np.max(np.abs(unmasked[real] - ours[real])) > 1e-3


def test_explicit_position_ids(tiny):
    model, path = tiny
    params, config = pv.load(path)
    px, ids = rand_pixels(2), rand_ids(2, 5)
    pos = np.array([[0, 1, 2, 3, 4], [3, 4, 5, 6, 7]], np.int32)
    ref = torch_forward(model, px, ids, decoder_position_ids=pos).logits
    assert maxdiff(pv.forward(params, px, ids, config, position_ids=pos), ref) <= TOL


@pytest.mark.parametrize("size", [(16, 16), (24, 24), (20, 28), (8, 12)])
def test_interpolate_pos_encoding(tiny, size):
    model, path = tiny
    params, config = pv.load(path)
    px, ids = rand_pixels(2, h=size[0], w=size[1]), rand_ids(2, 4)
    ref = torch_forward(model, px, ids, interpolate_pos_encoding=True).logits
    ours = pv.forward(params, px, ids, config, interpolate_pos_encoding=True)
    assert maxdiff(ours, ref) <= TOL


def test_bf16_and_fp16_relative_error(tiny, capsys):
    model, path = tiny
    params, config = pv.load(path)
    px, ids = rand_pixels(2), rand_ids(2, 6)
    ref = torch_forward(model, px, ids).logits.numpy()
    for dt in (jnp.bfloat16, jnp.float16):
        for p in (params, jax.tree.map(lambda a: a.astype(dt), params)):  # fp32 params or low-precision params
            out = pv.forward(p, px, ids, config, dtype=dt)
            assert out.dtype == jnp.float32
            rel = float(np.linalg.norm(np.asarray(out) - ref) / np.linalg.norm(ref))
            with capsys.disabled():
                print(f"\n{jnp.dtype(dt).name} compute, {p['decoder']['wte'].dtype} params: relative error {rel:.2e}")
            assert rel < 3e-2


@pytest.mark.parametrize("batch,chunk", [(4, 2), (5, 2), (6, 2), (6, 4), (12, 8), (3, None)])
def test_encoder_chunks_equal_one_batch(tiny, batch, chunk):
    """Large batches are encoded in strided chunks (and a remainder): same states, in the same
    order, as the whole batch, which the hidden-states path still encodes in one piece.
    (6, 4) takes images 0,1,3,4 then 2,5; (5, 2) consecutive pairs then image 4."""
    from purevedec import model as pv_model
    _, path = tiny
    params, config = pv.load(path)
    px = rand_pixels(batch)
    chunked = jax.jit(lambda p, x: pv_model.encoder_states(p, x, config, False, jnp.float32, chunk))(params, px)
    whole = pv.encode(params, px, config, output_hidden_states=True).hidden
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_one_query_row_attention(dtype):
    """A decode step's attention (one query row; padded to two in low precision) equals softmax
    attention computed in float64, masked keys included."""
    from purevedec.attention import attention
    rng = np.random.RandomState(1)
    q, k, v = (jnp.asarray(rng.randn(*shape), dtype) for shape in ((2, 3, 1, 8), (2, 3, 5, 8), (2, 3, 5, 8)))
    mask = jnp.asarray(rng.rand(2, 1, 1, 5) > 0.3).at[..., 0].set(True)
    out, weights = jax.jit(attention, static_argnums=4)(q, k, v, mask, 0.5)  # eagerly: a compile per operation
    s = np.einsum("bhtk,bhuk->bhtu", *(np.asarray(a, np.float64) for a in (q, k))) * 0.5
    s = np.where(np.asarray(mask), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    want = np.einsum("bhtu,bhuk->bhtk", w, np.asarray(v, np.float64))
    assert out.shape == (2, 3, 1, 8) and out.dtype == dtype and weights.shape == (2, 3, 1, 5)
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    np.testing.assert_allclose(np.asarray(weights, np.float64), w, atol=tol)
    np.testing.assert_allclose(np.asarray(out, np.float64), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("lead", [(1,), (1, 1), (3,), (2, 3)])
def test_low_precision_products_accumulate_in_float32(lead):
    """dense/LM-head products: bf16 inputs, float32 accumulation and result, whatever the row
    count (fewer than min_low_precision_rows() take a padded path, more do not)."""
    from purevedec.layers import dense, rows_product
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(*lead, 96), jnp.bfloat16)
    w = jnp.asarray(rng.randn(40, 96), jnp.bfloat16)
    b = jnp.asarray(rng.randn(40), jnp.bfloat16)
    want = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    got = jax.jit(rows_product)(x, w)  # jitted: eagerly, each operation compiled per shape
    assert got.shape == (*lead, 40) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)
    y = jax.jit(dense, static_argnums=2)({"w": w, "b": b}, x, jnp.bfloat16)
    assert y.dtype == jnp.bfloat16 and y.shape == (*lead, 40)
    np.testing.assert_allclose(np.asarray(y, np.float64), want + np.asarray(b, np.float64), rtol=2 ** -7, atol=1e-3)


def test_encode_with_dropout_key_returns_states(tiny):
    """encode(key=...) is the training path (one piece, dropout on): still the [B,S,D] array.
    ViT's default dropout rates are 0, so here it equals the inference states."""
    _, path = tiny
    params, config = pv.load(path)
    assert config.encoder.hidden_dropout_prob == config.encoder.attention_probs_dropout_prob == 0.0
    px = rand_pixels(2)
    base = pv.encode(params, px, config)
    dropped = pv.encode(params, px, config, key=jax.random.key(0))
    assert isinstance(dropped, jax.Array) and dropped.shape == base.shape
    np.testing.assert_allclose(np.asarray(dropped), np.asarray(base), atol=1e-6)


def test_dropout_needs_a_key_and_is_reproducible(tiny):
    model, path = tiny
    params, config = pv.load(path)
    px, ids = rand_pixels(3), rand_ids(3, 6)  # the padded-rows test's shapes: its programs serve here too
    base = pv.forward(params, px, ids, config)
    k = jax.random.key(0)
    a, b = pv.forward(params, px, ids, config, key=k), pv.forward(params, px, ids, config, key=k)
    c = pv.forward(params, px, ids, config, key=jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert np.max(np.abs(np.asarray(a) - np.asarray(c))) > 1e-4
    assert np.max(np.abs(np.asarray(a) - np.asarray(base))) > 1e-4  # GPT-2 dropout rates are 0.1


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "raw uint32"])
def test_dropout_masks_keep_the_rate_and_follow_the_key(impl):
    """200,000 draws at rate 0.3 (standard deviation of the kept share ~0.001); a folded-in key
    gives an independent mask (agreement 0.7^2 + 0.3^2 = 0.58); kept entries scale by 1/0.7."""
    from purevedec.layers import dropout, keep_mask
    key = jax.random.PRNGKey(7) if impl == "raw uint32" else jax.random.key(7, impl=impl)
    mask = np.asarray(keep_mask(key, 0.3, (400, 500)))
    assert abs(mask.mean() - 0.7) < 0.005
    assert abs(mask[:, :250].mean() - mask[:, 250:].mean()) < 0.01  # no drift along the array
    np.testing.assert_array_equal(keep_mask(key, 0.3, (400, 500)), mask)
    other = np.asarray(keep_mask(jax.random.fold_in(key, 1), 0.3, (400, 500)))
    assert abs((other == mask).mean() - 0.58) < 0.01
    np.testing.assert_allclose(dropout(jnp.ones((400, 500)), 0.3, key), np.where(mask, 1 / 0.7, 0.0), rtol=1e-6)


def test_jit_compiles_once_per_shape(tiny):
    _, path = tiny
    params, config = pv.load(path)
    from purevedec import model as m
    pv.forward(params, rand_pixels(3), rand_ids(3, 6), config)
    before = m._forward_jit._cache_size()
    pv.forward(params, rand_pixels(3, seed=5), rand_ids(3, 6, seed=6), config)
    assert m._forward_jit._cache_size() == before
