"""from_encoder_decoder_pretrained: pretrained parts copied exactly, new layers initialised."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import purevedec as pv
from models import TINY_DECODER, TINY_ENCODER
from conftest import maxdiff, rand_ids, rand_pixels, torch_forward
from formats_util import hf_state_dict


def _parts(tmp_path, classifier: bool):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTForImageClassification, ViTModel
    torch.manual_seed(0)
    vit_cls = ViTForImageClassification if classifier else ViTModel
    enc = vit_cls(ViTConfig(**TINY_ENCODER, num_labels=3))
    dec = GPT2LMHeadModel(GPT2Config(**TINY_DECODER))  # no cross-attention in the standalone decoder
    enc.save_pretrained(tmp_path / "enc")
    dec.save_pretrained(tmp_path / "dec")
    return str(tmp_path / "enc"), str(tmp_path / "dec")


@pytest.mark.parametrize("classifier", [False, True])
def test_compose_matches_transformers(tmp_path, classifier):
    from transformers import VisionEncoderDecoderModel
    enc, dec = _parts(tmp_path, classifier)
    params, config = pv.from_encoder_decoder_pretrained(enc, dec, key=jax.random.PRNGKey(0))
    from transformers import AutoConfig
    # transformers 5's own path reads decoder_config.is_decoder, which GPT2Config no longer
    # defines; pass the decoder config it would build instead.
    dec_cfg = AutoConfig.from_pretrained(dec)
    dec_cfg.is_decoder, dec_cfg.add_cross_attention = True, True
    ref = VisionEncoderDecoderModel.from_encoder_decoder_pretrained(enc, dec, decoder_config=dec_cfg).eval()
    assert config.decoder_start_token_id is None and getattr(ref.config, "decoder_start_token_id", None) is None
    # Pretrained tensors: exactly those of the files. Fresh ones: transformers' init statistics.
    ref.save_pretrained(tmp_path / "ref")
    ours_dir = tmp_path / "ours"
    pv.save(params, config, ours_dir)
    want, got = hf_state_dict(tmp_path / "ref"), hf_state_dict(ours_dir)
    assert set(got) - {"encoder.pooler.dense.weight", "encoder.pooler.dense.bias"} <= set(want)
    for name, t in got.items():
        if "pooler" in name:
            continue
        fresh = "crossattention" in name or "ln_cross_attn" in name or "enc_to_dec_proj" in name
        if not fresh:
            assert (t == want[name]).all(), name
        elif name.endswith("bias"):
            assert (t == 0).all(), name
        elif "ln_cross_attn" in name:
            assert (t == 1).all(), name
        else:
            std = 0.02 / np.sqrt(2 * 2) if ".c_proj." in name else 0.02
            assert abs(float(t.std()) - std) < 0.35 * std and abs(float(t.std()) - float(want[name].std())) < 0.35 * std, name
    # Same model once the fresh layers agree: load transformers' own composition.
    params2, config2 = pv.load(tmp_path / "ref")
    pixels, ids = rand_pixels(1), rand_ids(1, 4)
    assert maxdiff(pv.forward(params2, pixels, ids, config2), torch_forward(ref, pixels, ids).logits) < 1e-4


def test_compose_refuses_a_decoder_that_is_not_gpt2(tmp_path):
    enc, _ = _parts(tmp_path, False)
    with pytest.raises(pv.ConfigError, match="decoder.model_type='vit'"):
        pv.from_encoder_decoder_pretrained(enc, enc, key=jax.random.PRNGKey(0))
