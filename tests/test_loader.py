"""Strict loading: each way a checkpoint can be wrong gives an error naming the problem."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import purevedec as pv


def _rewrite(path, fn):
    f = os.path.join(path, "model.safetensors")
    tensors = load_file(f)
    fn(tensors)
    save_file(tensors, f)


def test_loaded_params_match_param_shapes(tiny):
    _, path = tiny
    params, config = pv.load(path)
    pv.check_params(params, config)
    assert "proj" in params  # encoder 32 wide, decoder 24: transformers adds enc_to_dec_proj


def test_load_casts_dtype(tiny):
    import jax.numpy as jnp
    params, _ = pv.load(tiny[1], dtype=jnp.bfloat16)
    assert params["decoder"]["blocks"][0]["attn"]["qkv"]["w"].dtype == jnp.bfloat16


def test_unknown_tensor(tiny):
    _, path = tiny
    _rewrite(path, lambda t: t.__setitem__("decoder.transformer.h.0.attn.extra.weight", np.zeros(3, np.float32)))
    with pytest.raises(pv.CheckpointError, match=r"unexpected tensor decoder\.transformer\.h\.0\.attn\.extra\.weight"):
        pv.load(path)


def test_missing_tensor(tiny):
    _, path = tiny
    _rewrite(path, lambda t: t.pop("decoder.transformer.h.1.mlp.c_fc.weight"))
    with pytest.raises(pv.CheckpointError, match=r"missing .*decoder\.transformer\.h\.1\.mlp\.c_fc\.weight"):
        pv.load(path)


def test_wrong_shape(tiny):
    _, path = tiny
    _rewrite(path, lambda t: t.__setitem__("encoder.encoder.layer.0.intermediate.dense.weight",
                                          np.zeros((36, 32), np.float32)))
    with pytest.raises(pv.CheckpointError, match=r"encoder\.encoder\.layer\.0\.intermediate\.dense\.weight has shape \[36, 32\]"):
        pv.load(path)


def test_wrong_shape_in_fused_qkv(tiny):
    _, path = tiny
    _rewrite(path, lambda t: t.__setitem__("decoder.transformer.h.0.attn.c_attn.weight", np.zeros((24, 60), np.float32)))
    with pytest.raises(pv.CheckpointError, match=r"c_attn\.weight has shape \[24, 60\]"):
        pv.load(path)


def test_layer_beyond_config(tiny):
    _, path = tiny
    _rewrite(path, lambda t: t.__setitem__("decoder.transformer.h.7.ln_1.weight", np.ones(24, np.float32)))
    with pytest.raises(pv.CheckpointError, match=r"h\.7\.ln_1\.weight does not fit the config"):
        pv.load(path)


def test_duplicate_tensor_is_refused(tiny):
    _, path = tiny
    tensors = list(load_file(os.path.join(path, "model.safetensors")).items())
    config = pv.load_config(path)
    with pytest.raises(pv.CheckpointError, match="more than once"):
        pv.build_params(tensors + tensors[:1], config)


def test_known_non_parameters_are_skipped(tiny):
    model, path = tiny
    def add_buffers(t):
        t["decoder.transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 24, 24), np.float32))
        t["decoder.transformer.h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
        t["decoder.lm_head.weight"] = t["decoder.transformer.wte.weight"].copy()  # tied head saved by old versions
    _rewrite(path, add_buffers)
    params, config = pv.load(path)
    pv.check_params(params, config)


def test_untied_head_is_loaded(tmp_path):
    from conftest import make_reference, save_reference
    path = save_reference(make_reference(dec_kw=dict(tie_word_embeddings=False)), tmp_path / "m")
    params, config = pv.load(path)
    assert "lm_head" in params["decoder"]
    assert not np.allclose(params["decoder"]["lm_head"], params["decoder"]["wte"])


def test_missing_weights_file(tiny):
    _, path = tiny
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(pv.CheckpointError, match="no weights file"):
        pv.load(path)


def test_corrupt_safetensors(tiny):
    _, path = tiny
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(pv.CheckpointError, match="model.safetensors"):
        pv.load(path)


def _edit_config(path, fn):
    f = os.path.join(path, "config.json")
    d = json.load(open(f))
    fn(d)
    json.dump(d, open(f, "w"))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["decoder"].__setitem__("activation_function", "xielu"), r"decoder\.activation_function='xielu'"),
    (lambda d: d["encoder"].__setitem__("hidden_act", "swishy"), r"encoder\.hidden_act='swishy'.*supported"),
    (lambda d: d["encoder"].__setitem__("model_type", "bert"), r"encoder\.model_type='bert' is not supported.*vit"),
    (lambda d: d["decoder"].__setitem__("model_type", "bart"), r"decoder\.model_type='bart'.*gpt2"),  # trocr is supported now
    (lambda d: d["decoder"].__setitem__("add_cross_attention", False), r"add_cross_attention"),
    (lambda d: d["decoder"].__setitem__("cross_attention_hidden_size", 16), r"cross_attention_hidden_size"),
    (lambda d: d["decoder"].__setitem__("n_head", 5), r"n_embd=24 is not a multiple of n_head=5"),
    (lambda d: d["encoder"].__setitem__("image_size", "big"), r"encoder\.image_size"),
    (lambda d: d["decoder"].__setitem__("scale_attn_weights", "yes"), r"scale_attn_weights must be true or false"),
    (lambda d: d.pop("decoder"), r"no 'decoder' section"),
    (lambda d: d["decoder"].__setitem__("pruned_heads", {"0": [1]}), r"pruned_heads"),
])
def test_unsupported_config(tiny, edit, message):
    _, path = tiny
    _edit_config(path, edit)
    with pytest.raises(pv.ConfigError, match=message):
        pv.load(path)


def test_unknown_config_key_warns(tiny):
    _, path = tiny
    _edit_config(path, lambda d: d["decoder"].__setitem__("rotary_dim", 8))
    with pytest.warns(UserWarning, match="rotary_dim"):
        pv.load(path)


def test_generic_aliases_are_read(tiny):
    _, path = tiny
    def alias(d):
        d["decoder"]["num_hidden_layers"] = d["decoder"].pop("n_layer")
        d["decoder"]["hidden_size"] = d["decoder"].pop("n_embd")
    _edit_config(path, alias)
    assert pv.load_config(path).decoder.n_layer == 2


def test_input_errors(tiny):
    from conftest import rand_ids, rand_pixels
    _, path = tiny
    params, config = pv.load(path)
    with pytest.raises(ValueError, match="3 rows, which is not a multiple of the 2 images"):
        pv.forward(params, rand_pixels(2), rand_ids(3, 4), config)
    with pytest.raises(ValueError, match=r"Input image size \(20\*16\) doesn't match"):
        pv.forward(params, rand_pixels(1, h=20), rand_ids(1, 4), config)
    with pytest.raises(ValueError, match="Expected 3 but got 1"):
        pv.forward(params, rand_pixels(1, c=1), rand_ids(1, 4), config)
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 50\)"):
        pv.forward(params, rand_pixels(1), np.array([[1, 50]]), config)
    with pytest.raises(ValueError, match="n_positions=24"):
        pv.forward(params, rand_pixels(1), rand_ids(1, 25), config)
    with pytest.raises(ValueError, match="integer token ids"):
        pv.forward(params, rand_pixels(1), np.zeros((1, 3), np.float32), config)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        pv.forward(params, rand_pixels(1), rand_ids(1, 3), config, attention_mask=np.ones((1, 4)))


@pytest.mark.parametrize("text, message", [("[1, 2]", "must hold a JSON object"), ("{oops", "is not valid JSON")])
def test_bad_generation_config_file(tiny, text, message):
    _, path = tiny
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        f.write(text)
    with pytest.raises(pv.ConfigError, match=r"generation_config\.json.*" + message):
        pv.load(path)
