"""Issue 10 section 3: wrong inputs get an error naming them (eagerly), or NaN rows under jit,
never a silent wrong answer; hand-built configs follow transformers; saving records the dtype;
several caption rows per image."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purevedec as pv
from api_util import N_POSITIONS, V, ids, init, pixels, tiny_config
from conftest import maxdiff, torch_forward

CONFIG = tiny_config()
PIXELS, IDS = pixels(2), ids(2, 5)


@pytest.fixture(scope="module")
def params():
    return init(CONFIG)


@pytest.fixture(scope="module")
def logits(params):
    return np.asarray(pv.forward(params, PIXELS, IDS))


# --- params validation: check_params and forward agree -------------------------------------------

def _blocks_as_dict(p):
    p["decoder"]["blocks"] = {str(i): b for i, b in enumerate(p["decoder"]["blocks"])}


def _missing_leaf(p):
    del p["decoder"]["wpe"]


def _transposed_kernel(p):
    fc = p["decoder"]["blocks"][0]["mlp"]["fc"]
    fc["w"] = fc["w"].T


def _int_leaf(p):
    p["decoder"]["ln_f"]["scale"] = p["decoder"]["ln_f"]["scale"].astype(jnp.int32)


@pytest.mark.parametrize("corrupt, message", [
    (_blocks_as_dict, r"decoder\.blocks is dict.*blocks\[str\(i\)\] for i in range\(1\)"),
    (_missing_leaf, r"decoder: missing \['wpe'\]"),
    (_transposed_kernel, r"decoder\.blocks\.0\.mlp\.fc\.w has shape \[24, 96\], the config needs \[96, 24\]"),
    (_int_leaf, r"decoder\.ln_f\.scale has dtype int32"),
], ids=["blocks-dict", "missing", "transposed", "int"])
def test_check_params_and_forward_agree(params, corrupt, message):
    bad = jax.tree.map(lambda x: x, params)  # a copy of the containers
    corrupt(bad)
    with pytest.raises(pv.ParamsError, match=message) as checked:
        pv.check_params(bad)
    with pytest.raises(pv.ParamsError) as ran:
        pv.forward(bad, PIXELS, IDS)
    assert str(ran.value) == str(checked.value)


def test_the_blocks_hint_repairs_the_tree(params, logits):
    bad = jax.tree.map(lambda x: x, params)
    _blocks_as_dict(bad)
    blocks = bad["decoder"]["blocks"]
    bad["decoder"]["blocks"] = [blocks[str(i)] for i in range(1)]  # what the message says to do
    np.testing.assert_array_equal(pv.forward(bad, PIXELS, IDS), logits)


# --- token ids and positions -------------------------------------------------------------------------

def _poke(a, value, row=1, col=2):
    a = np.array(a)
    a[row, col] = value
    return a


@pytest.mark.parametrize("what, value", [("ids", V), ("ids", -100), ("position_ids", N_POSITIONS),
                                         ("position_ids", -1)])
def test_out_of_range_values_raise_eagerly(params, what, value):
    positions = np.broadcast_to(np.arange(5), (2, 5))
    kw = {"ids": IDS, "position_ids": positions}
    kw[what] = _poke(kw[what], value)
    with pytest.raises(ValueError, match=what):
        pv.forward(params, PIXELS, kw["ids"], position_ids=kw["position_ids"])
    with pytest.raises(ValueError, match=what):
        pv.decode(params, kw["ids"], pv.encode(params, PIXELS), position_ids=kw["position_ids"])


_forward_traced = jax.jit(lambda p, px, i, pos: pv.forward(p, px, i, position_ids=pos))


@pytest.mark.parametrize("what, value", [("ids", V), ("ids", -100), ("ids", -1), ("position_ids", N_POSITIONS),
                                         ("position_ids", -1)])
def test_out_of_range_values_under_jit_give_nan_rows(params, logits, what, value):
    """Only the row holding the bad value is NaN (not a silent read of token V-100 or of
    another position); the other row is finite and equal to the eager result."""
    positions = np.broadcast_to(np.arange(5), (2, 5)).astype(np.int32)
    kw = {"ids": IDS, "position_ids": positions}
    kw[what] = _poke(kw[what], value)
    out = np.asarray(_forward_traced(params, PIXELS, kw["ids"], kw["position_ids"]))
    assert np.isnan(out[1, 2:]).all(), "the bad token and those after it"
    assert np.isnan(out[1]).all(), "the whole row"
    np.testing.assert_allclose(out[0], logits[0], atol=1e-5)


# --- the decoding cache --------------------------------------------------------------------------------

def test_step_past_max_len(params):
    cache = pv.init_cache(params, pv.encode(params, PIXELS), max_len=3)
    _, full = pv.step(params, cache, IDS[:, :3], donate=False)
    with pytest.raises(ValueError, match="cache is full"):
        pv.step(params, full, IDS[:, 3:4], donate=False)
    traced = jax.jit(lambda c, i: pv.step(params, c, i, donate=False))
    assert np.isfinite(traced(cache, IDS[:, :3])[0]).all()
    assert np.isnan(traced(full, IDS[:, 3:4])[0]).all()


def test_step_without_donation_branches_a_prefix(params):
    prefix, a, b = IDS[:, :3], IDS[:, 3:4], IDS[:, 4:5]
    enc = pv.encode(params, PIXELS)
    empty = pv.init_cache(params, enc, max_len=6)
    first, shared = pv.step(params, empty, prefix, donate=False)
    again, _ = pv.step(params, empty, prefix, donate=False)  # the input cache is still usable
    np.testing.assert_array_equal(again, first)
    branch_a, _ = pv.step(params, shared, a, donate=False)
    branch_b, _ = pv.step(params, shared, b, donate=False)
    for branch, tok in ((branch_a, a), (branch_b, b)):
        whole = pv.forward(params, PIXELS, np.concatenate([prefix, tok], axis=1))
        np.testing.assert_allclose(branch[:, 0], whole[:, -1], atol=1e-5)
    # The default donates: the stepped cache's buffers are gone (what donate=False avoids), and
    # stepping it again says so and how to keep it, rather than JAX's "Array has been deleted".
    pv.step(params, shared, a)
    with pytest.raises(ValueError, match=r"donated to an earlier step.*donate=False"):
        pv.step(params, shared, b)


# --- dtype -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call", ["forward", "encode", "decode", "init_cache", "generate"])
def test_a_non_float_dtype_is_refused(params, call):
    enc = np.zeros((2, 5, 24), np.float32)
    run = {"forward": lambda: pv.forward(params, PIXELS, IDS, dtype=jnp.int32),
           "encode": lambda: pv.encode(params, PIXELS, dtype=jnp.int32),
           "decode": lambda: pv.decode(params, IDS, enc, dtype=jnp.int32),
           "init_cache": lambda: pv.init_cache(params, enc, max_len=4, dtype=jnp.int32),
           "generate": lambda: pv.generate(params, PIXELS, max_new_tokens=2, dtype=jnp.int32)}[call]
    with pytest.raises(ValueError, match="dtype=int32 is not a floating-point"):
        run()


# --- hand-built configs ------------------------------------------------------------------------------

def test_derived_fields_follow_transformers():
    import transformers
    vit = pv.ViTConfig(hidden_size=32, num_attention_heads=2)
    ref_vit = transformers.ViTModel(transformers.ViTConfig(hidden_size=32, num_attention_heads=2,
                                                           num_hidden_layers=1, intermediate_size=8))
    ref_heads = [getattr(m, "head_dim", None) or getattr(m, "attention_head_size", None) for m in ref_vit.modules()]
    assert vit.head_dim == 16 == next(h for h in ref_heads if h)
    gpt = pv.GPT2Config(n_embd=32, n_head=4)
    ref_gpt = transformers.GPT2Model(transformers.GPT2Config(n_embd=32, n_head=4, n_layer=1, vocab_size=8))
    assert gpt.n_inner == 128 == ref_gpt.h[0].mlp.c_fc.weight.shape[1]
    assert pv.GPT2Config(n_embd=32, n_head=4, n_inner=40).n_inner == 40
    # transformers accepts GPT2Config(n_embd=32) (n_head=12) and fails when building the model;
    # here the config itself is refused, naming both fields.
    with pytest.raises(pv.ConfigError, match="n_embd=32 is not a multiple of n_head=12"):
        pv.GPT2Config(n_embd=32)


def test_an_int_image_size_builds_params():
    config = dataclasses.replace(CONFIG, encoder=pv.ViTConfig(hidden_size=32, num_hidden_layers=1,
                                                              num_attention_heads=2, image_size=16, patch_size=8))
    assert config.encoder.image_size == (16, 16) and config.encoder.patch_size == (8, 8)
    params = pv.init_params(config, jax.random.key(0))
    assert params["encoder"]["pos"].shape == (5, 32)  # cls + a 2 x 2 grid
    pv.check_params(params)


def test_generate_uses_a_hand_built_configs_special_ids(params):
    """Top-level start 3, eos 5 and pad 7, unlike the decoder's bos 0 and eos 2; EOS is made
    likelier (its embedding scaled up) so that some sampled rows end and get padded."""
    config = tiny_config(decoder_start_token_id=3, eos_token_id=5, pad_token_id=7)
    p = {**params, "config": config,
         "decoder": {**params["decoder"], "wte": params["decoder"]["wte"].at[5].multiply(10.0)}}
    kw = dict(max_new_tokens=6, do_sample=True, key=jax.random.key(0))
    out = pv.generate(p, pixels(4), **kw)
    explicit = pv.generate(p, pixels(4), decoder_start_token_id=3, eos_token_id=5, pad_token_id=7, **kw)
    np.testing.assert_array_equal(out.sequences, explicit.sequences)
    assert (out.sequences[:, 0] == 3).all()
    padded = 0
    for row in out.sequences:
        ends = np.flatnonzero(row == 5)
        if len(ends):
            assert (row[ends[0] + 1:] == 7).all()
            padded += ends[0] < len(row) - 1
        else:
            assert len(row) == 7  # ran to max_new_tokens
    assert padded  # a row stopped at the config's EOS and was filled with its pad id


def test_a_start_token_outside_the_vocabulary_is_named():
    """GPT-2's default bos 50256 in a 40-token vocabulary, no decoder_start_token_id."""
    decoder = pv.GPT2Config(vocab_size=V, n_positions=N_POSITIONS, n_embd=24, n_layer=1, n_head=2)
    config = pv.Config(encoder=CONFIG.encoder, decoder=decoder)
    params = init(config)
    with pytest.raises(pv.ConfigError) as e:
        pv.generate(params, PIXELS, max_new_tokens=2)
    assert "start token 50256" in str(e.value) and "bos_token_id=50256" in str(e.value)
    assert "decoder_input_ids" not in str(e.value)  # none were passed


# --- checkpoints ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["./no/such/dir", "a/b/c"])
def test_a_mistyped_path_fails_at_once(monkeypatch, tmp_path, name):
    """Online, a name that cannot be a repo id fails without asking the Hub anything (no file
    list, no download with its retries, no cache lookup)."""
    from hub_server import HubServer, use_hub
    with HubServer({}) as hub:
        use_hub(monkeypatch, hub.url, str(tmp_path / "hub-cache"))
        with pytest.raises(pv.CheckpointError, match="not a directory"):
            pv.load(name)
    assert hub.requests == []


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_save_records_the_stored_dtype(tiny, tmp_path, dtype):
    import torch
    from transformers import VisionEncoderDecoderModel
    params, _ = pv.load(tiny[1], dtype=getattr(jnp, dtype))
    pv.save(params, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == dtype
    ref = VisionEncoderDecoderModel.from_pretrained(tmp_path / "out")
    wte, fc = ref.decoder.transformer.wte.weight, ref.decoder.transformer.h[0].mlp.c_fc.weight
    assert wte.dtype == getattr(torch, dtype)
    as32 = lambda a: np.asarray(jnp.asarray(a, jnp.float32))  # noqa: E731
    np.testing.assert_array_equal(wte.detach().float().numpy(), as32(params["decoder"]["wte"]))
    np.testing.assert_array_equal(fc.detach().float().numpy(), as32(params["decoder"]["blocks"][0]["mlp"]["fc"]["w"]).T)


# --- several caption rows per image -----------------------------------------------------------------

def test_three_caption_rows_per_image(tiny):
    from conftest import rand_ids, rand_pixels
    model, path = tiny
    params, _ = pv.load(path)
    images, captions = rand_pixels(2), rand_ids(6, 5)  # rows 0-2 caption image 0, rows 3-5 image 1
    out = pv.forward(params, images, captions, output_hidden_states=True)
    ref = torch_forward(model, np.repeat(images, 3, axis=0), captions)
    assert maxdiff(out.logits, ref.logits) < 1e-4
    assert out.encoder_last_hidden_state.shape[0] == 2  # the encoder ran once per image, not per row
    np.testing.assert_allclose(out.logits, pv.decode(params, captions, pv.encode(params, images)), atol=1e-5)
    with pytest.raises(ValueError, match="5 rows, which is not a multiple of the 2 images"):
        pv.forward(params, images, captions[:5])
