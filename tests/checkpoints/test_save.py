"""save(): an HF directory that transformers loads with no missing or unexpected weights."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

import purevedec as pv
from conftest import make_reference, maxdiff, rand_ids, rand_pixels, save_reference, torch_forward
from models import CASES, SEEDS


def _reload_in_transformers(path):
    from transformers import VisionEncoderDecoderModel
    model, info = VisionEncoderDecoderModel.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


@pytest.mark.parametrize("dec_kw", [{}, {"tie_word_embeddings": False}])
def test_save_loads_in_transformers_with_same_logits(tmp_path, dec_kw):
    model = make_reference(dec_kw=dec_kw)
    params, config = pv.load(save_reference(model, tmp_path / "in"))
    pv.save(params, config, tmp_path / "out")
    back = _reload_in_transformers(str(tmp_path / "out"))
    pixels, ids = rand_pixels(2), rand_ids(2, 5)
    ref = torch_forward(model, pixels, ids).logits
    assert maxdiff(torch_forward(back, pixels, ids).logits, ref) < 1e-6  # same weights, maybe other GEMM paths
    want, got = model.state_dict(), back.state_dict()
    for name, t in want.items():
        if "pooler" not in name:  # VisionEncoderDecoder never runs it; save writes zeros
            assert (got[name] == t).all(), name
    assert maxdiff(pv.forward(params, pixels, ids, config), ref) < 1e-4


def test_save_roundtrip_is_exact(tiny, tmp_path):
    params, config = pv.load(tiny[1])
    pv.save(params, config, tmp_path / "out")
    again, config2 = pv.load(tmp_path / "out")
    assert config2 == config and config2.source == config.source
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, again)


def test_save_config_built_by_hand(tmp_path):
    """A config with no source text gets a complete config.json that transformers reads."""
    config = dataclasses.replace(pv.load_config(save_reference(make_reference(), tmp_path / "in")), source="")
    params = pv.init_params(config, jax.random.PRNGKey(0))
    pv.save(params, config, tmp_path / "out")
    assert pv.load_config(tmp_path / "out") == config
    back = _reload_in_transformers(str(tmp_path / "out"))
    pixels, ids = rand_pixels(1), rand_ids(1, 4)
    assert maxdiff(pv.forward(params, pixels, ids, config), torch_forward(back, pixels, ids).logits) < 1e-4
    gen = json.load(open(os.path.join(tmp_path / "out", "generation_config.json")))
    assert gen["decoder_start_token_id"] == config.decoder_start_token_id and gen["eos_token_id"] == 2


def test_save_refuses_params_that_do_not_fit(tiny, tmp_path):
    params, config = pv.load(tiny[1])
    del params["proj"]
    with pytest.raises(ValueError, match="proj"):
        pv.save(params, config, tmp_path / "out")


@pytest.mark.parametrize("case", sorted(CASES))
def test_save_every_config_variant(tmp_path, case):
    """Each variant of the config matrix (no qkv bias, rectangular patches, no projection,
    untied head, ...) saves to a directory transformers loads with every weight equal; the
    pooler that ViTModel builds is written as a zeros placeholder of its shape."""
    enc_kw, dec_kw = CASES[case]
    model = make_reference(enc_kw, dec_kw, seed=SEEDS[case])
    params, config = pv.load(save_reference(model, tmp_path / "in"))
    pv.save(params, config, tmp_path / "out")
    back = _reload_in_transformers(str(tmp_path / "out"))
    got = back.state_dict()
    for name, t in model.state_dict().items():
        if "pooler" in name:
            assert got[name].shape == t.shape and not got[name].any(), name
        else:
            assert (got[name] == t).all(), name
    assert pv.load_config(tmp_path / "out") == config


def test_save_bf16_params(tiny, tmp_path):
    """bf16 params are written as BF16 tensors (no float32 detour) that transformers reads back
    as the same bf16 values."""
    import jax.numpy as jnp
    import torch
    from safetensors import safe_open
    model, path = tiny
    params, config = pv.load(path, dtype=jnp.bfloat16)
    pv.save(params, config, tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}
    back = _reload_in_transformers(str(tmp_path / "out"))
    want = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    for name, t in back.state_dict().items():
        if "pooler" not in name:
            assert t.dtype == torch.bfloat16 and (t == want[name]).all(), name
    again, _ = pv.load(tmp_path / "out")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32)),
                 params, again)
