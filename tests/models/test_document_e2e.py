"""Donut- and Nougat-shaped VisionEncoderDecoder checkpoints (donut-swin + mBART, swin + BART) through
the public API: load, forward, generation, save and compose, against transformers."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

import purevedec as pv
from conftest import maxdiff, rand_ids, rand_pixels
from ocr_models import assert_same_tensors, compose_both, load_reference
from test_document_models import PAIRS, make_pair

START, PAD, EOS = 0, 1, 2


def saved_pair(name, path):
    model = make_pair(name)
    model.config.decoder_start_token_id, model.config.pad_token_id, model.config.eos_token_id = START, PAD, EOS
    with torch.no_grad():  # an EOS that greedy decoding reaches on some rows (a copy of token 11's row)
        head = model.decoder.get_output_embeddings().weight
        head[EOS] = 1.05 * head[11]
    model.save_pretrained(path)
    params, config = pv.load(path)
    return model, params, config


@pytest.fixture(scope="module", params=list(PAIRS))
def pair(request, tmp_path_factory):
    return (request.param, *saved_pair(request.param, tmp_path_factory.mktemp(request.param)))


def pixels(config, n=3, seed=9):
    return rand_pixels(n, 3, *config.encoder.image_size, seed=seed)


# Every plain forward runs on [2 images, 6 tokens]: the shapes are arbitrary, and each other one
# compiled the pair's Swin encoder again.
B, T = 2, 6


def test_config_and_params(pair):
    name, model, params, config = pair
    assert config.encoder.model_type == model.config.encoder.model_type
    assert config.decoder.model_type == model.config.decoder.model_type
    assert config.has_projection and "proj" in params  # encoder width 16, decoder 24
    assert ("ln_f" in params["encoder"]) == (config.encoder.model_type == "swin")
    assert ("ln_f" in params["decoder"]) == (config.decoder.model_type == "mbart")


def test_forward_logits_match(pair):
    _, model, params, config = pair
    px, ids = pixels(config, B), rand_ids(B, T, config.decoder.vocab_size, seed=3)
    with torch.no_grad():
        ref = model(pixel_values=torch.tensor(px), decoder_input_ids=torch.tensor(ids, dtype=torch.long)).logits
    assert maxdiff(pv.forward(params, px, ids), ref) <= 1e-4


GEN_CASES = {"greedy": dict(max_new_tokens=12), "beam": dict(max_new_tokens=12, num_beams=3),
             "beam_ngram": dict(max_new_tokens=12, num_beams=2, no_repeat_ngram_size=2, length_penalty=1.5),
             "bad_words": dict(max_new_tokens=10, bad_words_ids=[[3], [5]])}


@pytest.mark.parametrize("case", list(GEN_CASES))
def test_generation_is_token_identical(pair, case):
    _, model, params, config = pair
    px = pixels(config)
    with torch.no_grad():
        ref = model.generate(pixel_values=torch.tensor(px), **GEN_CASES[case]).numpy()
    np.testing.assert_array_equal(pv.generate(params, px, **GEN_CASES[case]).sequences, ref)


def test_a_prompt_without_the_start_token_is_used_as_transformers_uses_it(pair):
    """Donut's task prompt ("<s_cord-v2>") is its start: transformers feeds a donut-swin model's
    decoder_input_ids as given; for any other encoder it puts the start token before them."""
    name, model, params, config = pair
    px, prompt = pixels(config, 2), np.array([[7, 9], [7, 9]])
    with torch.no_grad():
        ref = model.generate(pixel_values=torch.tensor(px), decoder_input_ids=torch.tensor(prompt), max_new_tokens=6)
    got = pv.generate(params, px, decoder_input_ids=prompt, max_new_tokens=6).sequences
    np.testing.assert_array_equal(got, ref.numpy())
    assert (got[0, 0] == 7) == (config.encoder.model_type == "donut-swin")
    ragged = pv.generate(params, px[:1], decoder_input_ids=[[7, 9]], max_new_tokens=6).sequences
    np.testing.assert_array_equal(ragged, got[:1])


def test_sampling_top_k_1_is_greedy_and_a_key_is_reproducible(pair):
    _, _, params, config = pair
    px = pixels(config)
    # GEN_CASES["greedy"]'s length: the greedy program compiled there serves here
    greedy = pv.generate(params, px, max_new_tokens=12).sequences
    top1 = pv.generate(params, px, max_new_tokens=12, do_sample=True, top_k=1, key=jax.random.PRNGKey(0)).sequences
    np.testing.assert_array_equal(top1, greedy)
    a, b = (pv.generate(params, px, max_new_tokens=8, do_sample=True, temperature=1.5,
                        key=jax.random.PRNGKey(3)).sequences for _ in range(2))
    np.testing.assert_array_equal(a, b)


def test_cached_steps_equal_forward(pair):
    _, _, params, config = pair
    px, ids = pixels(config, B), rand_ids(B, T, config.decoder.vocab_size, seed=4)
    full = pv.forward(params, px, ids)
    cache = pv.init_cache(params, pv.encode(params, px), max_len=8)
    first, cache = pv.step(params, cache, ids[:, :4])
    rest, _ = pv.step(params, cache, ids[:, 4:])
    assert maxdiff(np.concatenate([first, rest], axis=1), full) <= 1e-4


def test_save_loads_in_transformers(pair, tmp_path):
    _, model, params, config = pair
    pv.save(params, tmp_path)
    reloaded = load_reference(tmp_path)
    want = {k: v.numpy() for k, v in model.state_dict().items() if not k.endswith("relative_position_index")}
    for k, v in want.items():
        np.testing.assert_array_equal(reloaded.state_dict()[k].numpy(), v, err_msg=k)
    px, ids = pixels(config, B), rand_ids(B, T, config.decoder.vocab_size, seed=5)
    with torch.no_grad():
        ref = reloaded(pixel_values=torch.tensor(px), decoder_input_ids=torch.tensor(ids, dtype=torch.long)).logits
    assert maxdiff(pv.forward(params, px, ids), ref) <= 1e-4


def test_compose_donut_swin_and_mbart(tmp_path):
    """A standalone DonutSwinModel and MBartForCausalLM composed by purevedec and by transformers."""
    from transformers import DonutSwinConfig, DonutSwinModel, MBartConfig, MBartForCausalLM
    from test_document_models import DECODER, ENCODER
    torch.manual_seed(0)
    enc = DonutSwinModel(DonutSwinConfig(**ENCODER, image_size=32, window_size=2))
    dec = MBartForCausalLM(MBartConfig(**DECODER))
    params, config, want, got = compose_both(tmp_path, enc, dec)
    assert config.encoder.model_type == "donut-swin" and config.decoder.model_type == "mbart"
    # transformers also writes DonutSwin's relative_position_index buffers; purevedec does not (they
    # are not parameters, and transformers rebuilds them on load: test_save_loads_in_transformers)
    index = [k for k in want if k.endswith("relative_position_index")]
    assert index and not any(k.endswith("relative_position_index") for k in got)
    assert_same_tensors({k: v for k, v in want.items() if k not in index}, got)


def test_weights_bound_counts_stages_exactly_and_refuses_huge_depths(pair, tmp_path):
    """The loader's size bound, extrapolated per Swin stage, equals the true parameter count; a
    config.json claiming 10^8 blocks in a stage is refused from the file size before anything is built."""
    import json
    from purevedec.checkpoints.loader import needed_size
    from purevedec.errors import CheckpointError
    _, _, params, config = pair
    leaves = jax.tree.leaves({k: v for k, v in params.items() if k not in ("config", "generation_config")})
    assert needed_size(config) == (sum(x.size for x in leaves), len(leaves))
    pv.save(params, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["encoder"]["depths"] = [2, 10 ** 8]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="describes .* parameter values"):
        pv.load(tmp_path)


@pytest.mark.parametrize("kinds", [("donut-swin", "mbart"), ("swin", "bart")])
def test_hand_built_config_saves_and_transformers_runs_it(kinds, tmp_path):
    """Config(SwinConfig, MBartConfig) built in code -> init_params -> save -> transformers reads the
    config.json written from the dataclasses, builds the same classes and computes the same logits."""
    from purevedec import Config, MBartConfig, SwinConfig
    enc, dec = kinds
    config = Config(encoder=SwinConfig(image_size=(24, 32), patch_size=4, embed_dim=8, depths=(2, 1), num_heads=(2, 2),
                                       window_size=2, model_type=enc),
                    decoder=MBartConfig(vocab_size=40, d_model=16, decoder_layers=1, decoder_attention_heads=2,
                                        decoder_ffn_dim=24, max_position_embeddings=16, scale_embedding=True,
                                        model_type=dec),
                    decoder_start_token_id=START, pad_token_id=PAD, eos_token_id=EOS)
    params = pv.init_params(config, jax.random.PRNGKey(0))
    # init draws the bias tables as zeros, as transformers does; give them values so that they are checked
    for stage in params["encoder"]["stages"]:
        for block in stage["blocks"]:
            block["rel_bias"] = jax.random.normal(jax.random.PRNGKey(1), block["rel_bias"].shape)
    pv.save(params, tmp_path)
    ref = load_reference(tmp_path)
    assert ref.encoder.config.model_type == enc and ref.decoder.config.model_type == dec
    px, ids = rand_pixels(1, 3, 24, 32, seed=4), rand_ids(1, 5, 40, seed=5)
    with torch.no_grad():
        want = ref(pixel_values=torch.tensor(px), decoder_input_ids=torch.tensor(ids, dtype=torch.long)).logits
    assert maxdiff(pv.forward(params, px, ids), want) <= 1e-4
