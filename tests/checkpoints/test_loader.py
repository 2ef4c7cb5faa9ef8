"""Strict loading: each way a checkpoint can be wrong gives an error naming the problem."""

from __future__ import annotations

import json
import os
import re

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
    (lambda d: d["decoder"].__setitem__("model_type", "t5"), r"decoder\.model_type='t5'.*gpt2"),  # trocr, bart and mbart are supported now
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


@pytest.mark.parametrize("name, relayout", [
    # same element count, another layout: a count-only check would reshape these into wrong values
    ("encoder.embeddings.position_embeddings", lambda a: np.ascontiguousarray(a.transpose(0, 2, 1))),
    ("encoder.embeddings.patch_embeddings.projection.weight", lambda a: np.ascontiguousarray(a.transpose(2, 3, 1, 0))),
    ("encoder.embeddings.cls_token", lambda a: a.reshape(-1, 1, 1)),
])
def test_reshaped_tensor_in_another_layout_is_refused(tiny, name, relayout):
    _, path = tiny
    shape = []
    _rewrite(path, lambda t: (shape.extend(t[name].shape), t.__setitem__(name, relayout(t[name]))))
    wrong = list(relayout(np.zeros(shape)).shape)
    assert wrong != shape and np.prod(wrong) == np.prod(shape)
    with pytest.raises(pv.CheckpointError, match=rf"model\.safetensors: tensor {re.escape(name)} has shape "
                                                rf"{re.escape(str(wrong))}, the config needs {re.escape(str(shape))}"):
        pv.load(path)


def _sharded(tmp_path):
    from conftest import make_reference
    path = str(tmp_path / "m")
    make_reference().save_pretrained(path, max_shard_size="20KB")
    index = os.path.join(path, "model.safetensors.index.json")
    return path, index, json.load(open(index))


@pytest.mark.parametrize("shard", ["../model-00001-of-00009.safetensors", "/etc/passwd", "sub/x.safetensors", ".."])
def test_shard_name_outside_the_folder_is_refused(tmp_path, shard):
    path, index, data = _sharded(tmp_path)
    (tmp_path / "model-00001-of-00009.safetensors").write_bytes(b"outside")  # a file the name would reach
    data["weight_map"] = {name: shard for name in data["weight_map"]}
    json.dump(data, open(index, "w"))
    with pytest.raises(pv.CheckpointError, match=rf"model\.safetensors\.index\.json: shard name "
                                                rf"{re.escape(repr(shard))} is not a plain file name"):
        pv.load(path)


@pytest.mark.parametrize("weight_map, problem", [
    (None, "no weight_map object"),
    (["model-00001-of-00002.safetensors"], "no weight_map object"),
    ({"a": "x.safetensors", "b": 3}, "weight_map values must be shard file names"),
    ({"a": 5}, "weight_map values must be shard file names"),
])
def test_malformed_weight_map_names_the_index(tmp_path, weight_map, problem):
    path, index, data = _sharded(tmp_path)
    if weight_map is None:
        del data["weight_map"]
    else:
        data["weight_map"] = weight_map
    json.dump(data, open(index, "w"))
    with pytest.raises(pv.CheckpointError, match=rf"{re.escape(index)}: {problem}"):
        pv.load(path)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_safetensors_load_exactly(tmp_path, dtype):
    """bf16/f16 safetensors (as torch writes them) load bit-exact, as stored, and compute."""
    import jax.numpy as jnp
    import torch
    from safetensors.torch import load_file as load_torch, save_file as save_torch
    from conftest import make_reference, rand_ids, rand_pixels, save_reference, torch_forward
    model = make_reference()
    path = save_reference(model, tmp_path / "m")
    f = os.path.join(path, "model.safetensors")
    save_torch({k: v.to(getattr(torch, dtype)).contiguous() for k, v in load_torch(f).items()}, f)
    params, config = pv.load(path)
    want = load_torch(f)
    assert params["decoder"]["wte"].dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(params["decoder"]["wte"], np.float32),
                                  want["decoder.transformer.wte.weight"].float().numpy())
    np.testing.assert_array_equal(np.asarray(params["encoder"]["pos"], np.float32),
                                  want["encoder.embeddings.position_embeddings"].float().numpy()[0])
    px, ids = rand_pixels(1), rand_ids(1, 4)
    ref = torch_forward(model, px, ids).logits.numpy()  # the float32 model these weights were rounded from
    ours = np.asarray(pv.forward(params, px, ids, dtype=dtype))
    assert np.linalg.norm(ours - ref) < 3e-2 * np.linalg.norm(ref)


@pytest.mark.parametrize("option, value", [("num_beam_groups", 2), ("constraints", [[1, 2]]), ("typical_p", 0.5),
                                           ("suppress_tokens", [3])])
def test_generation_config_with_unsupported_option(tiny, option, value):
    _, path = tiny
    f = os.path.join(path, "generation_config.json")
    d = json.load(open(f))
    d[option] = value
    json.dump(d, open(f, "w"))
    with pytest.raises(pv.ConfigError, match=rf"generation_config\.json: {option}=.* is not supported"):
        pv.load(path)
