"""The mBART and BART decoders against transformers' MBartForCausalLM / BartForCausalLM with cross-attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import maxdiff, rand_ids
from purevedec.decoder_cache import init_cache
from purevedec.errors import ConfigError
from purevedec.param_spec import shapes
from purevedec.models import mbart
from purevedec.params import flatten, map_with_path

BASE = dict(vocab_size=50, d_model=16, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=24,
            max_position_embeddings=20, dropout=0.0, init_std=0.3, pad_token_id=1, bos_token_id=0, eos_token_id=2)
# init_std 0.3: with the default 0.02 attention is near uniform and, for one, the cross-attention
# queries hardly change the logits (a missing norm before them moved them by 2e-6).
# (model_type, config overrides). Each case changes knobs these decoders read.
CASES = {
    "mbart_scaled_tied": ("mbart", dict(scale_embedding=True)),
    "mbart_untied_relu": ("mbart", dict(tie_word_embeddings=False, activation_function="relu", decoder_layers=3)),
    "bart_post_norm": ("bart", dict(activation_function="gelu_new")),
    "bart_scaled_untied": ("bart", dict(scale_embedding=True, tie_word_embeddings=False, decoder_ffn_dim=8)),
}


def make_torch(model_type: str, overrides: dict, seed: int):
    from transformers import BartConfig, BartForCausalLM, MBartConfig, MBartForCausalLM
    config_cls, model_cls = {"mbart": (MBartConfig, MBartForCausalLM), "bart": (BartConfig, BartForCausalLM)}[model_type]
    config = config_cls(**{**BASE, **overrides}, is_decoder=True, add_cross_attention=True, is_encoder_decoder=False)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # norms away from 1/0 so that a missing or misplaced norm shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
    return model


def to_params(model, cfg: mbart.MBartConfig) -> dict:
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    flat = {}
    for rule in mbart.hf_rules(cfg):  # the rules name the tensors inside a VisionEncoderDecoder
        if cfg.tie_word_embeddings and rule.hf == mbart.FAMILY.tied_head:
            continue  # the loader skips a tied head the same way
        for i in range(cfg.decoder_layers):
            hf = rule.hf.replace("decoder.", "", 1).replace("{i}", str(i))
            if hf in state:
                flat[rule.ours[0].replace("decoder.", "", 1).replace("{i}", str(i))] = state.pop(hf)
    assert not state or set(state) == {"lm_head.weight"} and cfg.tie_word_embeddings, sorted(state)
    tree_shapes = shapes(mbart.params(cfg))
    assert set(flat) == set(flatten(tree_shapes))
    return map_with_path(tree_shapes, lambda path, shape: jnp.asarray(flat[path].reshape(shape)))


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    model_type, overrides = CASES[request.param]
    model = make_torch(model_type, overrides, seed=list(CASES).index(request.param))
    cfg = mbart.parse_mbart(model.config.to_dict())
    enc = np.random.RandomState(5).randn(2, 7, cfg.d_model).astype(np.float32)
    return model, cfg, to_params(model, cfg), enc


def cross_kv(params, enc, cfg, dtype=jnp.float32):
    return [mbart.layer_cross_kv(bp, jnp.asarray(enc), cfg, dtype) for bp in params["blocks"]]


def test_config_is_parsed_from_transformers(case):
    model, cfg, _, _ = case
    assert cfg.model_type == model.config.model_type and cfg.pre_norm == (cfg.model_type == "mbart")
    assert (cfg.scale_embedding, cfg.tie_word_embeddings) == (model.config.scale_embedding,
                                                              model.config.tie_word_embeddings)


def test_logits_and_hidden_states_match(case):
    model, cfg, params, enc = case
    ids = rand_ids(2, 9, cfg.vocab_size, seed=2)
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                    encoder_hidden_states=torch.tensor(enc), output_hidden_states=True)
    out = mbart.apply(params, jnp.asarray(ids), cross_kv(params, enc, cfg), cfg, attention_mask=jnp.asarray(mask))
    assert maxdiff(out["logits"], ref.logits) <= 1e-4
    assert len(out["hidden_states"]) == len(ref.hidden_states)
    for ours, theirs in zip(out["hidden_states"], ref.hidden_states):
        assert maxdiff(ours, theirs) <= 1e-4


def test_cached_steps_equal_forward(case):
    _, cfg, params, enc = case
    ids = jnp.asarray(rand_ids(2, 8, cfg.vocab_size, seed=4))
    full = mbart.apply(params, ids, cross_kv(params, enc, cfg), cfg)["logits"]
    cache = init_cache(cfg, cross_kv(params, enc, cfg), 2, 10, jnp.float32)
    step = jax.jit(lambda cache, ids: mbart.apply_cached(params, cache, ids, cfg)[:2])
    chunks = []
    for lo, hi in ((0, 3), (3, 4), (4, 5), (5, 8)):  # a prompt, then single tokens and a chunk
        logits, cache = step(cache, ids[:, lo:hi])
        chunks.append(logits)
    assert maxdiff(jnp.concatenate(chunks, axis=1), full) <= 1e-4


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="cross_attention_hidden_size=8 differs from d_model=16"):
        mbart.MBartConfig(d_model=16, decoder_attention_heads=4, cross_attention_hidden_size=8)
    with pytest.raises(ConfigError, match="layernorm_embedding"):
        mbart.MBartConfig(layernorm_embedding=False)
    with pytest.raises(ConfigError, match="TrOCR options"):
        mbart.parse_mbart({"model_type": "bart", "layernorm_embedding": True})
    with pytest.raises(ConfigError, match="contradicts"):
        mbart.parse_mbart({"model_type": "mbart", "d_model": 16, "hidden_size": 32})
