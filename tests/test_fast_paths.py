"""The CPU fast paths that change how a product is computed, not what it computes: attention in
groups of heads at long sequences, and few-row weight products as w @ x.T. Each is checked
against the plain computation and, through whole models, against transformers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purevedec as pv
from purevedec import layers
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
    assert layers.heads_per_group((2, heads, tokens, 8), (2, heads, tokens, 8)) is not None
    ref = torch_forward(model, px, ids, output_attentions=True)
    out = pv.forward(params, px, ids, output_attentions=True)
    assert maxdiff(out.encoder_last_hidden_state, ref.encoder_last_hidden_state) <= 1e-4
    assert maxdiff(out.logits, ref.logits) <= 1e-4
    for ours, theirs in zip(out.encoder_attentions, ref.encoder_attentions, strict=True):
        assert maxdiff(ours, theirs) <= 1e-5


@pytest.mark.parametrize("group_bytes", [4 * 300 * 280, 4 * 300 * 280 * 2, 2 ** 30])
def test_grouped_attention_equals_one_pass(monkeypatch, group_bytes):
    """Groups of 1, 2 and all 4 heads, with a per-image mask and a bias shared by the images
    (both broadcast over an axis the groups slice): same output and weights as one pass."""
    monkeypatch.setattr(layers, "GROUP_SCORES_BYTES", group_bytes)
    rng = np.random.default_rng(0)
    q, k, v = (_normal(rng, s) for s in ((3, 4, 300, 16), (3, 4, 280, 16), (3, 4, 280, 16)))
    mask = jnp.asarray(rng.random((3, 1, 300, 280)) > 0.2)
    bias = _normal(rng, (1, 4, 300, 280))
    assert layers.heads_per_group(q.shape, k.shape) == min(4, group_bytes // (4 * 300 * 280))
    grouped = jax.jit(lambda *a: layers.attention(*a, 0.25, bias=bias))(q, k, v, mask)
    one_pass = jax.jit(lambda *a: layers._attend(*a, bias, 0.25))(q, k, v, mask)
    for a, b in zip(grouped, one_pass, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_short_sequences_attend_in_one_pass():
    assert layers.heads_per_group((8, 12, 197, 64), (8, 12, 197, 64)) is None  # ViT-B at 224 px
    assert layers.heads_per_group((16, 16, 1, 64), (16, 16, 577, 64)) is None  # a decode step's cross-attention
    assert layers.heads_per_group((8, 12, 577, 64), (8, 12, 577, 64)) == 2  # 577^2 x 4 B = 1.3 MB a head


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
