"""DeiT and BEiT encoders (with the TrOCR decoder, as the released OCR checkpoints pair them)
against transformers: logits and encoder states, generation, save/reload and composition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import purevedec as pv
from ocr_models import (PAD, TINY_ENCODER, TINY_TROCR, assert_same_tensors, compose_both, decoder_ids as _ids,
                        load_reference, make_ocr_reference, saved_variant)
from conftest import maxdiff, rand_pixels, torch_forward
from formats_util import hf_state_dict

# Every BEiT option that changes the math: per-layer relative biases with layer scale and mean
# pooling (the final norm unused), and a shared bias with absolute positions, no layer scale and
# the final norm.
VARIANTS = {
    "deit": dict(encoder="deit"),
    "beit_layer_bias": dict(encoder="beit", enc_kw=dict(use_relative_position_bias=True, use_mean_pooling=True,
                                                        layer_scale_init_value=0.1)),
    "beit_shared_abs": dict(encoder="beit", enc_kw=dict(use_shared_relative_position_bias=True,
                                                        use_absolute_position_embeddings=True,
                                                        use_mean_pooling=False, layer_scale_init_value=0.0)),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request, tmp_path_factory):
    return saved_variant(request.param, VARIANTS[request.param], 4, tmp_path_factory.mktemp(request.param))


def test_params_follow_the_options(variant):
    name, _, params, config, _ = variant
    enc = params["encoder"]
    assert config.encoder.model_type == name.split("_")[0]
    if name == "deit":
        assert enc["pos"].shape[0] == 2 + config.encoder.num_patches and "dist" in enc
    elif name == "beit_layer_bias":
        assert "rel_bias" in enc["blocks"][0] and "ls1" in enc["blocks"][0] and "ln_f" not in enc and "pos" not in enc
    else:
        assert "rel_bias" in enc and "ls1" not in enc["blocks"][0] and "ln_f" in enc and "pos" in enc


def test_logits_and_encoder_states_match(variant):
    _, model, params, _, _ = variant
    px, ids = rand_pixels(2, seed=3), _ids(2, 8, seed=4)
    mask = np.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = PAD, 0
    ref = torch_forward(model, px, ids, decoder_attention_mask=mask, output_hidden_states=True)
    out = pv.forward(params, px, ids, attention_mask=mask, output_hidden_states=True)
    assert maxdiff(out.logits, ref.logits) <= 1e-4
    assert maxdiff(out.encoder_last_hidden_state, ref.encoder_last_hidden_state) <= 1e-4
    assert len(out.encoder_hidden_states) == len(ref.encoder_hidden_states)
    for ours, theirs in zip(out.encoder_hidden_states, ref.encoder_hidden_states):
        assert maxdiff(ours, theirs) <= 1e-4


def test_beam_recipe_is_token_identical(variant):
    _, model, params, _, _ = variant
    px = rand_pixels(2, seed=6)
    kw = dict(num_beams=4, max_length=20, no_repeat_ngram_size=3, length_penalty=2.0, early_stopping=True)
    with torch.no_grad():
        ref = model.generate(pixel_values=torch.tensor(px), **kw).numpy()
    np.testing.assert_array_equal(pv.generate(params, px, **kw).sequences, ref)


def test_save_loads_in_transformers(variant, tmp_path):
    _, model, params, _, path = variant
    pv.save(params, tmp_path)
    want, got = hf_state_dict(path), hf_state_dict(tmp_path)
    assert set(got) == set(want)
    for name in want:
        if "pooler" not in name:  # the unused pooler is written as zeros
            np.testing.assert_array_equal(got[name].numpy(), want[name].numpy(), err_msg=name)
    reloaded = load_reference(tmp_path)
    for name, t in model.state_dict().items():
        if "pooler" not in name:
            np.testing.assert_array_equal(reloaded.state_dict()[name].numpy(), t.numpy(), err_msg=name)


def test_deit_interpolated_positions_match(tmp_path):
    """DeiT resizes only the patch positions (bicubic), never the class and distillation rows."""
    model = make_ocr_reference("deit", seed=2)
    model.save_pretrained(tmp_path)
    params, _ = pv.load(tmp_path)
    px, ids = rand_pixels(1, h=24, w=20, seed=1), _ids(1, 4, seed=2)
    ref = torch_forward(model, px, ids, interpolate_pos_encoding=True).logits
    assert maxdiff(pv.forward(params, px, ids, interpolate_pos_encoding=True), ref) <= 1e-4
    with pytest.raises(ValueError, match="doesn't match"):
        pv.forward(params, px, ids)


# BEiT at grids other than the tiny 4 x 4 one: a larger square grid (6 x 6, as 384 px is to 224),
# and a non-square one, where transformers resamples its bias table even at the configured size.
GRIDS = {"square_6x6": dict(image_size=24), "wide_4x6": dict(image_size=(16, 24))}


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("bias", ["layer", "shared"])
def test_beit_relative_bias_at_another_grid_matches(tmp_path, grid, bias):
    kw = dict(use_relative_position_bias=True) if bias == "layer" else dict(use_shared_relative_position_bias=True)
    model = make_ocr_reference("beit", enc_kw=dict(**GRIDS[grid], **kw, layer_scale_init_value=0.1), seed=7)
    model.save_pretrained(tmp_path)
    params, config = pv.load(tmp_path)
    table = params["encoder"]["blocks"][0]["rel_bias"] if bias == "layer" else params["encoder"]["rel_bias"]
    gh, gw = config.encoder.grid
    assert table.shape == ((2 * gh - 1) * (2 * gw - 1) + 3, 4)
    h, w = config.encoder.image_size
    px, ids = rand_pixels(2, h=h, w=w, seed=8), _ids(2, 5, seed=9)
    ref = torch_forward(model, px, ids, output_hidden_states=True)
    out = pv.forward(params, px, ids, output_hidden_states=True)
    assert maxdiff(out.encoder_last_hidden_state, ref.encoder_last_hidden_state) <= 1e-4
    assert maxdiff(out.logits, ref.logits) <= 1e-4


@pytest.mark.parametrize("interpolate", [False, True])
def test_beit_image_of_another_size_resizes_biases_and_positions(tmp_path, interpolate):
    """transformers resizes the bias tables (bilinear) and absolute positions (bicubic) for any
    other input size, with or without interpolate_pos_encoding."""
    options = dict(use_relative_position_bias=True, use_shared_relative_position_bias=True,
                   use_absolute_position_embeddings=True)
    model = make_ocr_reference("beit", enc_kw=options, seed=2)
    model.save_pretrained(tmp_path)
    params, _ = pv.load(tmp_path)
    px, ids = rand_pixels(1, h=24, w=20, seed=1), _ids(1, 4, seed=2)
    ref = torch_forward(model, px, ids, interpolate_pos_encoding=interpolate)
    out = pv.forward(params, px, ids, interpolate_pos_encoding=interpolate, output_hidden_states=True)
    assert out.encoder_last_hidden_state.shape[1] == 1 + 6 * 5
    assert maxdiff(out.encoder_last_hidden_state, ref.encoder_last_hidden_state) <= 1e-4
    assert maxdiff(out.logits, ref.logits) <= 1e-4


def test_beit_refuses_qkv_bias_key(tmp_path):
    import json
    model = make_ocr_reference(seed=2, encoder="beit")
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["encoder"]["qkv_bias"] = False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(pv.ConfigError, match="qkv_bias is not a BEiT option"):
        pv.load(tmp_path)


@pytest.mark.parametrize("kind", ["deit_teacher", "beit_classifier"])
def test_compose_with_classifier_checkpoints(tmp_path, kind):
    """A DeiT with its teacher heads or a BEiT classifier (heads dropped) + TrOCRForCausalLM:
    every pretrained tensor copied exactly, the file transformers writes for the same composition."""
    from transformers import (BeitConfig, BeitForImageClassification, DeiTConfig,
                              DeiTForImageClassificationWithTeacher, TrOCRConfig, TrOCRForCausalLM)
    torch.manual_seed(0)
    if kind == "deit_teacher":
        enc = DeiTForImageClassificationWithTeacher(DeiTConfig(**TINY_ENCODER, num_labels=3))
    else:
        enc = BeitForImageClassification(BeitConfig(**TINY_ENCODER, num_labels=3, use_relative_position_bias=True))
    _, _, want, got = compose_both(tmp_path, enc, TrOCRForCausalLM(TrOCRConfig(**TINY_TROCR)))
    assert_same_tensors(want, got)


class _Digits:
    """A stand-in tokenizer: the captioner only needs ``decode`` here."""
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def test_attention_map_of_a_deit_captioner_covers_only_the_patches():
    """DeiT's encoder output starts with two special tokens ([CLS], distillation): a caption's
    attention over the image is the mean cross-attention over its patches alone, one weight per
    patch of the grid (not the distillation token's weight and all but the last patch)."""
    import jax
    from purevedec.captioning import Captioner, ImageConfig
    from purevedec import DeiTConfig, TrOCRConfig
    config = pv.Config(encoder=DeiTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=24, image_size=8, patch_size=4),
                       decoder=TrOCRConfig(vocab_size=20, d_model=16, decoder_layers=1, decoder_attention_heads=2,
                                           decoder_ffn_dim=24, max_position_embeddings=16),
                       decoder_start_token_id=2, pad_token_id=1, eos_token_id=2)
    params = pv.init_params(config, jax.random.key(0))
    cap = Captioner(params, config, ImageConfig(size=(8, 8)), _Digits())
    pixels = rand_pixels(1, h=8, w=8)
    [[caption]] = cap.caption_pixels(pixels, attention=True, max_new_tokens=4)
    out = pv.generate(params, pixels, max_new_tokens=4, output_cross_attentions=True)
    n = len(caption.token_ids)
    assert caption.attention.shape == (n, config.encoder.num_patches)
    want = np.asarray(out.cross_attentions)[0, :n].mean(axis=(1, 2))[:, 2:]
    np.testing.assert_allclose(caption.attention, want, atol=1e-6)
