"""The loss, the label shift, dropout keys and gradients, against transformers and torch autograd."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purevedec as pv
from purevedec.training.cross_entropy import summarize, token_losses
from conftest import make_reference, rand_pixels, save_reference
from gradient_util import assert_gradients_match, both_gradients

V = 50  # the tiny reference's vocabulary
# Label length wherever it is arbitrary: one compiled loss (2 images, 2 rows of T) serves those tests.
T = 6


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """(torch model, params) of the tiny reference (projection 32 -> 24), with every dropout
    rate the configs define set to 0.1 (torch's eval() and our key=None turn them off)."""
    model = make_reference(dict(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1), seed=3)
    params, _ = pv.load(save_reference(model, tmp_path_factory.mktemp("loss")))
    return model, params


def _labels(rows, t, seed, pad_from=None):
    """Random labels; row r is padded with -100 from position pad_from[r] on."""
    labels = np.random.RandomState(seed).randint(0, V, (rows, t)).astype(np.int32)
    for r, start in enumerate(pad_from or []):
        labels[r, start:] = -100
    return labels


def _hf_loss(model, pixels, labels, k=1, mask=None):
    import torch
    px = torch.tensor(np.repeat(pixels, k, axis=0))  # transformers encodes each caption row's image
    kw = {} if mask is None else {"decoder_attention_mask": torch.tensor(mask)}
    with torch.no_grad():
        out = model(pixel_values=px, labels=torch.tensor(labels, dtype=torch.long), **kw)
    return out


def test_shift_right_matches_transformers(ref):
    import torch
    from transformers.models.vision_encoder_decoder.modeling_vision_encoder_decoder import shift_tokens_right
    _, params = ref
    labels = _labels(3, 6, seed=0, pad_from=[6, 2, 0])
    want = shift_tokens_right(torch.tensor(labels, dtype=torch.long), pad_token_id=1, decoder_start_token_id=0)
    got = pv.shift_right(labels, params)
    np.testing.assert_array_equal(np.asarray(got), want.numpy())
    assert (np.asarray(got) >= 0).all()  # no -100 reaches the decoder
    got = pv.shift_right(labels, decoder_start_token_id=7, pad_token_id=9)
    assert np.asarray(got)[:, 0].tolist() == [7, 7, 7] and np.asarray(got)[1, 3] == 9


def test_shift_right_needs_both_ids(ref):
    _, params = ref
    config = params["config"]
    for missing in ("decoder_start_token_id", "pad_token_id"):
        bad = dataclasses.replace(config, **{missing: None})
        with pytest.raises(pv.ConfigError, match=missing):
            pv.shift_right(_labels(1, 3, 0), bad)
        with pytest.raises(pv.ConfigError, match=missing):
            pv.loss(params, rand_pixels(1), _labels(1, 3, 0), bad)


@pytest.mark.parametrize("k", [1, 3])
def test_loss_matches_transformers_with_padding(ref, k):
    model, params = ref
    pixels = rand_pixels(2, seed=k)
    labels = _labels(2 * k, T, seed=k, pad_from=[6, 4, 1, 5, 6, 2][: 2 * k])
    out = pv.loss(params, pixels, labels)
    want = _hf_loss(model, pixels, labels, k)
    assert abs(float(out.loss) - want.loss.item()) <= 1e-5
    counted = labels != -100
    assert int(out.tokens) == counted.sum()
    assert abs(float(out.loss_sum) - want.loss.item() * counted.sum()) <= 1e-4
    hits = (want.logits.argmax(-1).numpy() == labels) & counted
    assert int(out.correct) == hits.sum() and abs(float(out.accuracy) - hits.sum() / counted.sum()) < 1e-7


def test_decoder_attention_mask_is_passed_like_transformers(ref):
    model, params = ref
    pixels, labels = rand_pixels(2, seed=5), _labels(2, 6, seed=5, pad_from=[6, 3])
    mask = (labels != -100).astype(np.int32)
    mask[1, 3:] = 0
    mask[0, 2] = 0  # a hidden key inside a row changes later positions' logits
    out = pv.loss(params, pixels, labels, decoder_attention_mask=mask)
    want = _hf_loss(model, pixels, labels, mask=mask)
    assert abs(float(out.loss) - want.loss.item()) <= 1e-5
    assert abs(float(out.loss) - float(pv.loss(params, pixels, labels).loss)) > 1e-4


def test_label_smoothing_matches_torch_cross_entropy(ref):
    import torch
    model, params = ref
    pixels, labels = rand_pixels(2, seed=6), _labels(4, 5, seed=6, pad_from=[5, 2, 3, 0])
    logits = _hf_loss(model, pixels, labels, k=2).logits
    for eps in (0.1, 0.35):
        want = torch.nn.CrossEntropyLoss(label_smoothing=eps)(logits.reshape(-1, V),
                                                              torch.tensor(labels, dtype=torch.long).reshape(-1))
        got = pv.loss(params, pixels, labels, label_smoothing=eps)
        assert abs(float(got.loss) - want.item()) <= 1e-5


def test_logits_at_t_are_scored_against_labels_at_t(ref):
    """Alignment, from a shift built by hand: decoder inputs [start, l0, l1, ...]; the loss is the
    mean of -log p(l_t) at position t (float64), and scoring against l_{t+1} (a second shift) differs."""
    import torch
    model, params = ref
    pixels, labels = rand_pixels(1, seed=7), _labels(1, 6, seed=7)
    inputs = np.concatenate([[[0]], labels[:, :-1]], axis=1)  # decoder_start_token_id = 0
    with torch.no_grad():
        logits = model(pixel_values=torch.tensor(pixels), decoder_input_ids=torch.tensor(inputs)).logits
    logp = torch.log_softmax(logits.double(), -1)[0].numpy()
    aligned = -np.mean([logp[t, labels[0, t]] for t in range(6)])
    double_shift = -np.mean([logp[t, labels[0, t + 1]] for t in range(5)])
    got = float(pv.loss(params, pixels, labels).loss)
    assert abs(got - aligned) <= 1e-5
    assert abs(got - double_shift) > 1e-3


def test_all_ignored_gives_zero_not_nan(ref):
    _, params = ref
    out = pv.loss(params, rand_pixels(2), np.full((2, T), -100, np.int32))
    assert float(out.loss) == 0.0 and int(out.tokens) == 0 and float(out.accuracy) == 0.0


def test_bad_labels_are_refused(ref):
    _, params = ref
    px = rand_pixels(2)
    with pytest.raises(ValueError, match=r"labels\[1, 2\] = 50"):
        pv.loss(params, px, np.array([[1, 2, 3], [4, 5, 50]], np.int32))
    with pytest.raises(ValueError, match=r"labels\[0, 0\] = -1 "):
        pv.loss(params, px, np.array([[-1, 2, 3], [4, 5, 6]], np.int32))
    with pytest.raises(ValueError, match="not a multiple of the 2 images"):
        pv.loss(params, px, _labels(3, 4, 0))
    with pytest.raises(ValueError, match="integer"):
        pv.loss(params, px, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="decoder_attention_mask has shape"):
        pv.loss(params, px, _labels(2, 4, 0), decoder_attention_mask=np.ones((2, 3)))
    with pytest.raises(ValueError, match="label_smoothing"):
        pv.loss(params, px, _labels(2, 4, 0), label_smoothing=1.5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_every_gradient_matches_torch_autograd(ref, smoothing, tmp_path):
    """Dropout off; torch in float64 so the error measured is ours. Per tensor, the largest
    difference relative to the largest reference gradient entry is <= 1e-4 (for the
    identically-zero key-bias gradients, relative to 1e-3 of the largest gradient overall)."""
    model, params = ref
    pixels, labels = rand_pixels(2, seed=8), _labels(4, 6, seed=8, pad_from=[6, 3, 0, 4])
    ours, theirs = both_gradients(model, params, pixels, labels, V, smoothing, tmp_path)
    assert_gradients_match(ours, theirs)
    # what we have and transformers has not: only ViT's unused pooler and the tied head
    assert {n for n in set(ours) - set(theirs) if "pooler" not in n} <= {"decoder.lm_head.weight"}


def test_ocr_gradients_match_torch_autograd(tmp_path):
    """BEiT (relative position bias in every layer) + TrOCR at 257 encoder tokens, where attention
    runs in groups of heads with its hand-written backward pass: every gradient as torch's."""
    from ocr_models import make_ocr_reference
    from purevedec.attention import heads_per_group
    model = make_ocr_reference(seed=6, encoder="beit", enc_kw=dict(
        image_size=64, patch_size=4, use_relative_position_bias=True, layer_scale_init_value=0.1))
    model.save_pretrained(tmp_path / "model")
    params, config = pv.load(tmp_path / "model")
    heads = config.encoder.num_attention_heads
    assert heads_per_group((2, heads, 257, 8), (2, heads, 257, 8)) is not None
    vocab = config.decoder.vocab_size
    labels = np.random.RandomState(7).randint(3, vocab, (2, 5)).astype(np.int32)
    labels[1, 3:] = -100
    ours, theirs = both_gradients(model, params, rand_pixels(2, h=64, w=64, seed=7), labels, vocab, 0.0, tmp_path)
    assert any("relative_position_bias" in n for n in theirs)
    assert_gradients_match(ours, theirs)


def test_no_key_is_evaluation_and_equals_forward(ref):
    model, params = ref
    pixels, labels = rand_pixels(2, seed=9), _labels(2, T, seed=9, pad_from=[5, 3])
    logits = np.asarray(pv.forward(params, pixels, pv.shift_right(labels, params)), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    counted = labels != -100
    want = -sum(logp[r, t, labels[r, t]] for r, t in zip(*np.nonzero(counted))) / counted.sum()
    assert abs(float(pv.loss(params, pixels, labels).loss) - want) <= 1e-5


@jax.jit  # one program: eagerly, each operation of the token losses compiled on its own
def _mean_token_loss(logits, labels):
    return summarize(*token_losses(logits, labels)).loss


def _loss_from_forward(params, pixels, labels, key):
    logits = pv.forward(params, pixels, pv.shift_right(labels, params), key=key)
    return float(_mean_token_loss(logits, jnp.asarray(labels)))


def test_dropout_follows_the_key(ref):
    _, params = ref
    pixels, labels = rand_pixels(2, seed=10), _labels(4, 6, seed=10, pad_from=[6, 2, 5, 6])
    k1, k2 = jax.random.key(1), jax.random.key(2)
    a, b, c = (float(pv.loss(params, pixels, labels, key=k).loss) for k in (k1, k1, k2))
    off = float(pv.loss(params, pixels, labels).loss)
    assert a == b
    assert abs(a - c) > 1e-4 and abs(a - off) > 1e-4
    # the same dropout masks as forward(key=...): the loss uses the model's own dropout sites
    assert abs(a - _loss_from_forward(params, pixels, labels, k1)) <= 1e-5


SITES = {"encoder": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
         "decoder": ("embd_pdrop", "attn_pdrop", "resid_pdrop")}


@pytest.mark.parametrize("part,site", [(p, s) for p, sites in SITES.items() for s in sites])
def test_every_dropout_site_is_driven_by_the_key(ref, part, site):
    """Only one rate non-zero: keys still change the loss (the site is live), the same key repeats it.
    The loss is deterministic, so any difference at all comes from the masks (this tiny model's
    encoder sites move it by only ~1e-5)."""
    _, params = ref
    config = params["config"]
    rates = {p: dataclasses.replace(getattr(config, p), **{s: 0.0 for s in sites}) for p, sites in SITES.items()}
    rates[part] = dataclasses.replace(rates[part], **{site: 0.3})
    config = dataclasses.replace(config, **rates)
    pixels, labels = rand_pixels(1, seed=11), _labels(2, 5, seed=11)
    k1, k2 = jax.random.key(4), jax.random.key(5)
    a, b, c = (float(pv.loss(params, pixels, labels, config, key=k).loss) for k in (k1, k1, k2))
    assert a == b and a != c and a != float(pv.loss(params, pixels, labels, config).loss)


def test_remat_changes_nothing(ref):
    _, params = ref
    pixels, labels = rand_pixels(2, seed=12), _labels(2, 6, seed=12, pad_from=[6, 4])
    # dropout on: remat must recompute the same masks (without a key: the OCR models' test below);
    # jitted, as eager remat with dropout ran op by op for two minutes
    for k in (jax.random.key(3),):
        plain = jax.jit(jax.value_and_grad(lambda p: pv.loss(p, pixels, labels, key=k).loss))(params)
        remat = jax.jit(jax.value_and_grad(lambda p: pv.loss(p, pixels, labels, key=k, remat=True).loss))(params)
        assert abs(float(plain[0]) - float(remat[0])) <= 1e-6
        for g1, g2 in zip(jax.tree.leaves(plain[1]), jax.tree.leaves(remat[1])):
            np.testing.assert_allclose(np.asarray(g2), np.asarray(g1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("encoder", ["vit", "beit"])
def test_remat_changes_nothing_for_ocr_models(tmp_path, encoder):
    """TrOCR decoder layers, and BEiT layers with a shared relative bias (an input of every layer)."""
    from ocr_models import make_ocr_reference
    kw = dict(use_shared_relative_position_bias=True, layer_scale_init_value=0.1) if encoder == "beit" else {}
    make_ocr_reference(encoder, enc_kw=kw, seed=5).save_pretrained(tmp_path)
    params, _ = pv.load(tmp_path)
    pixels = rand_pixels(2, seed=14)
    labels = np.random.RandomState(14).randint(3, 60, (2, 7)).astype(np.int32)
    # jitted: one program each (eagerly, the forward and backward halves compiled apart)
    plain = jax.jit(jax.value_and_grad(lambda p: pv.loss(p, pixels, labels).loss))(params)
    remat = jax.jit(jax.value_and_grad(lambda p: pv.loss(p, pixels, labels, remat=True).loss))(params)
    assert abs(float(plain[0]) - float(remat[0])) <= 1e-6
    # Summation order only: a recomputed layer fuses its (transposed) attention derivative differently;
    # BEiT's relative-bias gradient sums over both images, where one element in 576 differed by 1.1e-6.
    for g1, g2 in zip(jax.tree.leaves(plain[1]), jax.tree.leaves(remat[1]), strict=True):
        np.testing.assert_allclose(np.asarray(g2), np.asarray(g1), rtol=1e-4, atol=3e-6)


def _deep_config():
    """8 + 8 layers of width 64 over 65 image tokens: activations outweigh everything else."""
    enc = dict(model_type="vit", hidden_size=64, num_hidden_layers=8, num_attention_heads=4, intermediate_size=256,
               image_size=64, patch_size=8)
    dec = dict(model_type="gpt2", vocab_size=100, n_positions=32, n_embd=64, n_layer=8, n_head=4,
               add_cross_attention=True, is_decoder=True, bos_token_id=1, eos_token_id=1)
    return pv.parse_config(dict(model_type="vision-encoder-decoder", encoder=enc, decoder=dec,
                                decoder_start_token_id=1, pad_token_id=1, eos_token_id=1))


def test_remat_saves_activation_memory_in_the_compiled_backward():
    """XLA's temp buffers of the compiled gradient: with remat only a layer's activations are live
    at a time. (jax.checkpoint alone was scheduled with every recomputation up front on XLA:CPU
    and saved nothing.)"""
    config = _deep_config()
    weights = {k: v for k, v in pv.init_params(config, jax.random.key(0)).items() if k != "config"}
    pixels, labels = jnp.zeros((8, 3, 64, 64)), jnp.ones((8, 24), jnp.int32)

    def temp_bytes(remat):
        f = lambda w: pv.training.loss_core(w, pixels, labels, config, remat=remat).loss  # noqa: E731
        return jax.jit(jax.grad(f)).lower(weights).compile().memory_analysis().temp_size_in_bytes
    plain, remat = temp_bytes(False), temp_bytes(True)
    assert remat < plain / 3, (plain, remat)  # measured: 1/5


def test_bfloat16_loss_is_close(ref):
    _, params = ref
    pixels, labels = rand_pixels(2, seed=13), _labels(2, 6, seed=13)
    f32 = float(pv.loss(params, pixels, labels).loss)
    bf16 = float(pv.loss(params, pixels, labels, dtype=jnp.bfloat16).loss)
    assert abs(f32 - bf16) < 0.05 * abs(f32)
