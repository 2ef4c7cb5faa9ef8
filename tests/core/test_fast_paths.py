"""The CPU fast paths that change how a product is computed, not what it computes: attention in
groups of heads at long sequences, attention's hand-written backward pass, and few-row weight
products as w @ x.T. Each is checked against the plain computation and, through whole models,
against transformers."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purevedec as pv
from purevedec import attention, backend_tuning, layers
from conftest import maxdiff, rand_pixels, torch_forward
from ocr_models import decoder_ids, make_ocr_reference

# 64 px in patches of 4: 256 patches + the special tokens, so one head's scores are at least
# 257 x 257 entries, past MIN_GROUPED_SCORES: the encoders attend in groups of heads.
LONG = dict(image_size=64, patch_size=4)
ENCODERS = {
    "vit": dict(encoder="vit", enc_kw=LONG),
    "deit": dict(encoder="deit", enc_kw=LONG),
    "beit": dict(encoder="beit", enc_kw=dict(**LONG, use_relative_position_bias=True, use_mean_pooling=True,
                                             layer_scale_init_value=0.1)),
}


def _normal(rng, shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_long_sequence_encoders_match_transformers(tmp_path, kind):
    model = make_ocr_reference(seed=4, **ENCODERS[kind])
    model.save_pretrained(tmp_path)
    params, config = pv.load(tmp_path)
    px, ids = rand_pixels(2, h=64, w=64, seed=5), decoder_ids(2, 7, seed=6)
    tokens = 256 + (2 if kind == "deit" else 1)
    heads = config.encoder.num_attention_heads
    assert attention.heads_per_group((2, heads, tokens, 8), (2, heads, tokens, 8)) is not None
    ref = torch_forward(model, px, ids, output_attentions=True)
    out = pv.forward(params, px, ids, output_attentions=True)
    assert maxdiff(out.encoder_last_hidden_state, ref.encoder_last_hidden_state) <= 1e-4
    assert maxdiff(out.logits, ref.logits) <= 1e-4
    for ours, theirs in zip(out.encoder_attentions, ref.encoder_attentions, strict=True):
        assert maxdiff(ours, theirs) <= 1e-5


def _plain_attention(q, k, v, mask, bias, scale):
    """The textbook computation, differentiated by autodiff: the reference for both fast paths."""
    scores = jnp.einsum("bhtk,bhuk->bhtu", q.astype(jnp.float32), k.astype(jnp.float32), precision="highest")
    scores = jnp.where(mask, scores * scale + bias, attention.MASKED)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bhtu,bhuk->bhtk", weights, v.astype(jnp.float32), precision="highest"), weights


def _attention_case(rng, dtype=jnp.float32):
    """q/k/v of 3 images x 4 heads (300 queries, 280 keys), a per-image mask with one query
    row fully masked (it attends uniformly, as a left-padding position does) and a bias shared
    by the images: both broadcast over an axis the groups slice."""
    q, k, v = (_normal(rng, s).astype(dtype) for s in ((3, 4, 300, 16), (3, 4, 280, 16), (3, 4, 280, 16)))
    mask = jnp.asarray(rng.random((3, 1, 300, 280)) > 0.2).at[1, 0, 5].set(False)
    return q, k, v, mask, _normal(rng, (1, 4, 300, 280)), _normal(rng, (3, 4, 300, 16))


@pytest.mark.parametrize("group_bytes", [4 * 300 * 280, 4 * 300 * 280 * 2, 2 ** 30, None])
def test_attention_and_its_gradients_equal_the_plain_computation(monkeypatch, group_bytes):
    """Groups of 1, 2 and all 4 heads, and one pass (None): outputs, weights and the hand-written
    backward's gradients for q, k, v and the bias equal autodiff of the plain computation."""
    if group_bytes is None:
        monkeypatch.setattr(attention, "MIN_GROUPED_SCORES", 10 ** 9)
    else:
        monkeypatch.setattr(attention, "GROUP_SCORES_BYTES", group_bytes)
    q, k, v, mask, bias, cotangent = _attention_case(np.random.default_rng(0))
    expected_group = None if group_bytes is None else min(4, group_bytes // (4 * 300 * 280))
    assert attention.heads_per_group(q.shape, k.shape) == expected_group
    ours = jax.jit(lambda *a: attention.attention(*a[:4], 0.25, bias=a[4]))
    for a, b in zip(ours(q, k, v, mask, bias), _plain_attention(q, k, v, mask, bias, 0.25), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda q, k, v, bias: jnp.sum(f(q, k, v, mask, bias)[0] * cotangent)  # noqa: E731
    grads = jax.jit(jax.grad(loss(lambda *a: attention.attention(*a[:4], 0.25, bias=a[4])), argnums=(0, 1, 2, 3)))
    reference = jax.grad(loss(lambda *a: _plain_attention(*a, 0.25)), argnums=(0, 1, 2, 3))
    for name, a, b in zip("q k v bias".split(), grads(q, k, v, bias), reference(q, k, v, bias), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5, err_msg=name)
    assert not np.any(np.asarray(grads(q, k, v, bias)[0][1, :, 5]))  # the fully masked row: no query gradient


def test_low_precision_attention_gradients_keep_their_dtype():
    q, k, v, mask, bias, cotangent = _attention_case(np.random.default_rng(1), jnp.bfloat16)
    loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v)[0].astype(jnp.float32) * cotangent)  # noqa: E731
    ours = jax.grad(loss(lambda q, k, v: attention.attention(q, k, v, mask, 0.25, bias=bias)), argnums=(0, 1, 2))(
        q, k, v)
    reference = jax.grad(loss(lambda q, k, v: _plain_attention(q, k, v, mask, bias, 0.25)), argnums=(0, 1, 2))(
        q, k, v)
    for a, b in zip(ours, reference, strict=True):
        assert a.dtype == jnp.bfloat16
        scale = float(jnp.max(jnp.abs(b.astype(jnp.float32))))
        assert float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))) <= 0.03 * scale


def test_short_sequences_attend_in_one_pass():
    assert attention.heads_per_group((8, 12, 197, 64), (8, 12, 197, 64)) is None  # ViT-B at 224 px
    assert attention.heads_per_group((16, 16, 1, 64), (16, 16, 577, 64)) is None  # a decode step's cross-attention
    assert attention.heads_per_group((8, 12, 577, 64), (8, 12, 577, 64)) == 2  # 577^2 x 4 B = 1.3 MB a head


@pytest.mark.parametrize("rows", [2, 5, 16, 64])
def test_few_rows_product_and_its_gradients_equal_the_plain_product(rows):
    rng = np.random.default_rng(rows)
    x, w = _normal(rng, (rows, 48)), _normal(rng, (40, 48))
    plain = lambda x, w: jnp.einsum("mi,oi->mo", x, w, precision="highest")  # noqa: E731
    assert 1 < rows <= layers.MAX_TRANSPOSED_ROWS
    np.testing.assert_allclose(layers._few_rows_product(x, w), plain(x, w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layers.rows_product(x, w), plain(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
    ours = jax.jit(jax.grad(loss(layers.rows_product), argnums=(0, 1)))(x, w)
    theirs = jax.grad(loss(plain), argnums=(0, 1))(x, w)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec, a_shape, b_shape", [
    ("mi,oi->mo", (5, 7), (3, 7)),
    ("bhtk,bhuk->bhtu", (2, 3, 4, 5), (2, 3, 6, 5)),
    ("bhtu,bhtk->bhuk", (2, 3, 4, 6), (2, 3, 4, 5)),
    ("bij,bjk->kib", (2, 3, 4), (2, 4, 5)),   # an output order dot_general does not produce itself
    ("ij,kl->ljki", (2, 3), (4, 5)),          # no contraction: an outer product
])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_product_equals_einsum_with_float32_accumulation(spec, a_shape, b_shape, dtype):
    """``layers.product`` builds its dot_general itself (tracing jnp.einsum was slow): the same
    values, shapes and float32 result as jnp.einsum, and a clear error for specs it cannot run."""
    rng = np.random.default_rng(5)
    a = jnp.asarray(rng.standard_normal(a_shape), dtype)
    b = jnp.asarray(rng.standard_normal(b_shape), dtype)
    got = layers.product(spec, a, b)
    want = jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
    assert got.dtype == jnp.float32 and got.shape == want.shape
    assert np.array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("spec", ["ii,ij->j", "ij,jk->iz", "ij,jk->k", "ij,jk->ikk"])
def test_product_refuses_specs_it_cannot_run(spec):
    with pytest.raises(ValueError, match="product spec"):
        layers.product(spec, jnp.ones((2, 2)), jnp.ones((2, 2)))


# ---- a decode step attends to the cache as it was, then writes in place ---------------------------

def _step_case(rng, dtype, t):
    """2 rows x 4 heads: a 16-column cache holding 9 tokens (row 1's third is padding) and stale
    values beyond them (as rejected draft tokens leave), and t new tokens (row 0's first is padding)."""
    pos, cols = 9, 16
    q, k_new, v_new = (_normal(rng, (2, 4, t, 8)).astype(dtype) for _ in range(3))
    k_old, v_old = (_normal(rng, (2, 4, cols, 8)).astype(dtype) for _ in range(2))
    real = np.ones((2, cols), bool)
    real[1, 2] = False
    valid = np.ones((2, t), bool)
    valid[0, 0] = False
    return pos, q, (k_old, v_old), (k_new, v_new), jnp.asarray(real), jnp.asarray(valid)


@pytest.mark.parametrize("dtype, t", [(jnp.float32, 3), (jnp.float32, 1), (jnp.bfloat16, 1)])
def test_attention_after_cache_is_attention_over_the_written_buffer(dtype, t):
    pos, q, (k_old, v_old), (k_new, v_new), real, valid = _step_case(np.random.default_rng(11), dtype, t)
    cols = k_old.shape[2]
    k = jax.lax.dynamic_update_slice(k_old, k_new, (0, 0, pos, 0))
    v = jax.lax.dynamic_update_slice(v_old, v_new, (0, 0, pos, 0))
    columns = np.arange(cols)
    key_mask = np.asarray(real) & (columns < pos)
    key_mask[:, pos:pos + t] = np.asarray(valid)
    causal = columns[None, :] <= pos + np.arange(t)[:, None]
    full = key_mask[:, None, None, :] & causal[None, None]
    want_out, want_w = _plain_attention(q, k, v, full, 0.0, 0.3)
    own = np.tril(np.ones((t, t), bool))[None] & np.asarray(valid)[:, None, :]
    cached = (np.asarray(real) & (columns < pos))[:, None, None, :]
    out, w = attention.attention_after_cache(q, (k_old, v_old), (k_new, v_new), cached, own[:, None], pos, 0.3)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    assert out.dtype == dtype and maxdiff(out, want_out) <= tol
    assert maxdiff(w, want_w) <= tol


def _cache_copies(hlo: str, shape) -> int:
    """Copies of an array of the cache buffer's shape in an optimized HLO module."""
    return len(re.findall(r"f32\[%s\]\{[0-9,]*\} copy\(" % ",".join(map(str, shape)), hlo))


def test_decode_programs_write_the_cache_in_place():
    """No whole-cache copies per step in ``step``'s program or in ``generate_core``'s loop (a
    caller's jit given DECODE_COMPILER_OPTIONS): writing before attending made XLA:CPU copy each
    layer's K and V 3-4 times a step (docs/perf-notes.md)."""
    from api_util import init, pixels, tiny_config
    from purevedec import decoding
    config = tiny_config()
    params = init(config)
    cache = pv.init_cache(params, pv.encode(params, pixels(1)), config, 16)
    buffer = cache.self_kv[0][0].shape
    step = decoding._step_donating.lower(params, cache, jnp.zeros((1, 1), jnp.int32), None, config=config,
                                         dtype=jnp.float32, shifted=False).compile().as_text()
    assert _cache_copies(step, buffer) == 0
    loop = jax.jit(lambda p, px: pv.generate_core(p, px, config, max_new_tokens=15).sequences,
                   compiler_options=backend_tuning.DECODE_COMPILER_OPTIONS).lower(params, pixels(1)).compile().as_text()
    assert " while(" in loop and _cache_copies(loop, buffer) == 0
    # a bf16 cache is written through its bits: XLA:CPU widened a bf16 write to float32 over the whole buffer
    low = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    cache = pv.init_cache(low, pv.encode(low, pixels(1), dtype=jnp.bfloat16), config, 16, dtype=jnp.bfloat16)
    step = decoding._step_donating.lower(low, cache, jnp.zeros((1, 1), jnp.int32), None, config=config,
                                         dtype=jnp.bfloat16, shifted=False).compile().as_text()
    assert "f32[%s]" % ",".join(map(str, buffer)) not in step


def test_slots_as_rows_folds_vmapped_weight_products_into_one():
    """Under ``slots_as_rows`` a float32 weight product vmapped over 4 one-row slots is one 4-row
    product, which takes rows_product's few-row form (w @ x.T: the weights are the left operand),
    with the plain vmapped product's values; outside it each slot's one row keeps x @ w.T."""
    rng = np.random.default_rng(12)
    x, w = _normal(rng, (4, 1, 48)), _normal(rng, (40, 48))
    slots = lambda: jax.vmap(lambda row: layers.rows_product(row, w))  # noqa: E731  (new each time: traces are cached)
    plain = slots()(x)

    def left_operands():
        eqns = jax.make_jaxpr(slots())(x).jaxpr.eqns
        return [e.invars[0].aval.shape for e in _all_eqns(eqns) if e.primitive.name == "dot_general"]

    assert left_operands() and (40, 48) not in left_operands()
    with layers.slots_as_rows():
        folded = jax.jit(slots())(x)
        assert (40, 48) in left_operands()
    assert folded.shape == (4, 1, 40) and maxdiff(folded, plain) <= 1e-5


def _all_eqns(eqns):
    """Every equation, those of nested jaxprs (pjit, custom_vmap) included."""
    for e in eqns:
        yield e
        for p in e.params.values():
            inner = getattr(p, "jaxpr", p)
            if hasattr(inner, "eqns"):
                yield from _all_eqns(inner.eqns)
