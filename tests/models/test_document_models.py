"""Swin encoders with (m)BART decoders composed as transformers' VisionEncoderDecoderModel does:
encoder -> enc_to_dec_proj (widths differ) -> decoder cross-attention, logits within 1e-4."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import maxdiff, rand_ids, rand_pixels
from purevedec.layers import dense
from purevedec.param_spec import shapes
from purevedec.models import mbart, swin

# (encoder type, encoder overrides, decoder type, decoder overrides)
PAIRS = {
    "donut_swin_mbart": ("donut-swin", dict(image_size=[32, 24], window_size=2),
                         "mbart", dict(scale_embedding=True)),
    "swin_bart": ("swin", dict(image_size=[40, 56], window_size=3), "bart", dict(tie_word_embeddings=False)),
}
ENCODER = dict(patch_size=4, embed_dim=8, depths=[2, 2], num_heads=[2, 4], drop_path_rate=0.0)
DECODER = dict(vocab_size=50, d_model=24, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=20,
               max_position_embeddings=20, dropout=0.0, init_std=0.3, pad_token_id=1, bos_token_id=0, eos_token_id=2,
               is_decoder=True, add_cross_attention=True)


def make_pair(name):
    import transformers as t
    enc_type, enc_kw, dec_type, dec_kw = PAIRS[name]
    enc_cls = {"swin": t.SwinConfig, "donut-swin": t.DonutSwinConfig}[enc_type]
    dec_cls = {"mbart": t.MBartConfig, "bart": t.BartConfig}[dec_type]
    config = t.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        enc_cls(**{**ENCODER, **enc_kw}), dec_cls(**{**DECODER, **dec_kw}))
    torch.manual_seed(list(PAIRS).index(name))
    model = t.VisionEncoderDecoderModel(config)
    with torch.no_grad():  # weights large enough that cross-attention tells image tokens apart (at the
        # default 0.02 a wrong shift mask in the encoder still gave logits within 1e-4)
        for n, p in model.named_parameters():
            if (n.startswith("encoder.") and "norm" not in n) or n.startswith("enc_to_dec_proj"):
                p.normal_(0, 0.3)
    for c in (model.config, model.encoder.config, model.decoder.config):
        c._attn_implementation = "eager"
    return model.eval()


def load(model, tmp_path):
    """Our three parts from the saved file, through each family's tensor names."""
    from safetensors.numpy import load_file
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    enc_cfg, dec_cfg = swin.parse_swin(model.config.encoder.to_dict()), mbart.parse_mbart(model.config.decoder.to_dict())
    parts = {}
    for prefix, module, cfg in (("encoder.", swin, enc_cfg), ("decoder.", mbart, dec_cfg)):
        flat = {}
        for rule in module.hf_rules(cfg):
            for i in range(max(getattr(cfg, "decoder_layers", 1), 1)):  # Swin's rules are concrete; (m)BART's have {i}
                hf = rule.hf.replace("{i}", str(i))
                if hf in state:
                    flat[rule.ours[0].replace("{i}", str(i))[len(prefix):]] = state.pop(hf)
        parts[prefix] = _tree(shapes(module.params(cfg)), flat)
    proj = {"w": jnp.asarray(state.pop("enc_to_dec_proj.weight")), "b": jnp.asarray(state.pop("enc_to_dec_proj.bias"))}
    assert all(k.endswith("relative_position_index") for k in state), sorted(state)
    return parts["encoder."], proj, parts["decoder."], enc_cfg, dec_cfg


def _tree(shapes, flat, path=""):
    if isinstance(shapes, dict):
        return {k: _tree(v, flat, f"{path}.{k}" if path else k) for k, v in shapes.items()}
    if isinstance(shapes, list):
        return [_tree(v, flat, f"{path}.{i}") for i, v in enumerate(shapes)]
    return jnp.asarray(flat[path].reshape(shapes))


@functools.partial(jax.jit, static_argnums=(5, 6))   # one compile per pairing, not one per operation
def _composed_logits(enc_p, proj, dec_p, px, ids, enc_cfg, dec_cfg):
    states = dense(proj, swin.apply(enc_p, px, enc_cfg)["last_hidden_state"], jnp.float32)
    kv = [mbart.layer_cross_kv(bp, states, dec_cfg, jnp.float32) for bp in dec_p["blocks"]]
    return mbart.apply(dec_p, ids, kv, dec_cfg)["logits"]


@pytest.mark.parametrize("name", list(PAIRS))
def test_composed_logits_match(name, tmp_path):
    model = make_pair(name)
    enc_p, proj, dec_p, enc_cfg, dec_cfg = load(model, tmp_path)
    h, w = enc_cfg.image_size
    px, ids = rand_pixels(2, 3, h, w, seed=7), rand_ids(2, 6, dec_cfg.vocab_size, seed=8)
    with torch.no_grad():
        ref = model(pixel_values=torch.tensor(px), decoder_input_ids=torch.tensor(ids, dtype=torch.long)).logits
    logits = _composed_logits(enc_p, proj, dec_p, jnp.asarray(px), jnp.asarray(ids), enc_cfg, dec_cfg)
    assert maxdiff(logits, ref) <= 1e-4
    assert float(np.std(np.asarray(logits))) > 0.1  # logits that depend on their inputs, not a flat row
