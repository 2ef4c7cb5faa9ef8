"""The TrOCR decoder against transformers: logits, cached steps, generation, loading and saving."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import purevedec as pv
from ocr_models import (EOS, PAD, START, assert_same_tensors, compose_both, decoder_ids as _ids, load_reference,
                        make_ocr_reference, saved_variant)
from conftest import maxdiff, rand_pixels, torch_forward
from formats_util import copy_config, hf_state_dict, write_bin

# Decoder variants: trocr-base's options (the default), the learned-position family with an
# embedding norm and a tied head, and a decoder narrower than the encoder with no cross size
# (transformers then adds the enc->dec projection).
VARIANTS = {
    "sinusoidal": dict(),
    "learned_tied": dict(dec_kw=dict(use_learned_position_embeddings=True, layernorm_embedding=True,
                                     scale_embedding=False, tie_word_embeddings=True, activation_function="gelu")),
    "projection": dict(cross_size=False, enc_kw=dict(qkv_bias=False)),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request, tmp_path_factory):
    return saved_variant(request.param, VARIANTS[request.param], 1, tmp_path_factory.mktemp(request.param))


def test_config_reads_trocr_options(variant):
    name, model, params, config, _ = variant
    dec = config.decoder
    assert dec.model_type == "trocr" and dec.n_embd == model.config.decoder.d_model
    assert config.has_projection == (name == "projection")
    assert ("proj" in params) == (name == "projection")
    assert ("pos" in params["decoder"]) == dec.use_learned_position_embeddings
    assert ("lm_head" in params["decoder"]) == (not dec.tie_word_embeddings)


def test_logits_match_with_a_padded_row(variant):
    """A right-padded row (pad id 1, mask 0) beside a full one; sinusoidal positions count non-pad tokens."""
    _, model, params, config, _ = variant
    px, ids = rand_pixels(2, seed=3), _ids(2, 9, seed=4)
    mask = np.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = PAD, 0
    ref = torch_forward(model, px, ids, decoder_attention_mask=mask, output_hidden_states=True)
    out = pv.forward(params, px, ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    assert maxdiff(out.logits, ref.logits) <= 1e-4
    assert maxdiff(out.encoder_last_hidden_state, ref.encoder_last_hidden_state) <= 1e-4
    for ours, theirs in zip(out.decoder_hidden_states, ref.decoder_hidden_states, strict=True):
        assert maxdiff(ours, theirs) <= 1e-4


def test_pad_inside_a_row_moves_sinusoidal_positions():
    """fairseq numbering: a pad token in the middle shifts the positions of the tokens after it."""
    model = make_ocr_reference(seed=2)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        params, _ = pv.load(d)
    px, ids = rand_pixels(1, seed=5), _ids(1, 7, seed=6)
    ids[0, 3] = PAD
    ours = pv.forward(params, px, ids)
    assert maxdiff(ours, torch_forward(model, px, ids).logits) <= 1e-4
    unshifted = ids.copy()
    unshifted[0, 3] = 7
    assert maxdiff(ours[:, 4:], pv.forward(params, px, unshifted)[:, 4:]) > 1e-3  # positions did move


@pytest.mark.parametrize("variant", ["learned_tied", "sinusoidal"], indirect=True)
def test_cached_steps_equal_forward(variant):
    _, _, params, config, _ = variant
    px, ids = rand_pixels(2, seed=7), _ids(2, 7, seed=8)
    full = np.asarray(pv.forward(params, px, ids))
    cache = pv.init_cache(params, pv.encode(params, px), max_len=8)
    logits, cache = pv.step(params, cache, ids[:, :3])  # a prompt, then token by token
    parts = [np.asarray(logits)]
    for t in range(3, 7):
        logits, cache = pv.step(params, cache, ids[:, t:t + 1])
        parts.append(np.asarray(logits))
    assert np.max(np.abs(np.concatenate(parts, 1) - full)) <= 1e-4


@pytest.mark.parametrize("variant", ["sinusoidal"], indirect=True)
def test_position_ids_are_refused(variant):
    _, _, params, _, _ = variant
    ids = _ids(1, 4, seed=1)
    with pytest.raises(ValueError, match="TrOCR decoder"):
        pv.forward(params, rand_pixels(1), ids, position_ids=np.arange(4)[None])


def _generate_ref(model, px, **kw):
    with torch.no_grad():
        return model.generate(pixel_values=torch.tensor(px), **kw).numpy()


# Generation with the checkpoints' own ids (start 2 = eos 2, pad 1), their configs' use_cache:
# false left alone, and the community TrOCR recipe.
GEN_CASES = {
    "greedy": dict(max_new_tokens=14),
    "beam": dict(max_new_tokens=14, num_beams=3),
    "recipe": dict(num_beams=4, max_length=64, no_repeat_ngram_size=3, length_penalty=2.0, early_stopping=True),
    "recipe_return_2": dict(num_beams=4, max_length=24, no_repeat_ngram_size=3, length_penalty=2.0,
                            early_stopping=True, num_return_sequences=2),
    "repetition_min_new": dict(max_new_tokens=12, repetition_penalty=1.4, min_new_tokens=4),
}


@pytest.fixture(scope="module")
def gen_model(tmp_path_factory):
    """Decisive logits (larger weights), a position table long enough for max_length 64, and an
    EOS (id 2) that decoding reaches after a while: its output row becomes a copy of token 11's
    (scaled up a little so that EOS wins wherever 11 would), which this model's greedy decoding
    of the test images first emits at step 10 of one row (the other rows never do)."""
    model = make_ocr_reference(seed=5, scale=0.6, dec_kw=dict(max_position_embeddings=70))
    with torch.no_grad():
        head = model.decoder.output_projection.weight
        head[EOS] = 1.05 * head[11]
    path = tmp_path_factory.mktemp("gen")
    model.save_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["decoder"]["use_cache"] = False  # as in microsoft/trocr-* configs: must not matter
    (path / "config.json").write_text(json.dumps(cfg))
    params, _ = pv.load(path)
    return model, params


@pytest.mark.parametrize("case", sorted(GEN_CASES))
def test_generation_is_token_identical(gen_model, case):
    """Same tokens as transformers; rows end on EOS 2 at different steps and are padded with 1."""
    model, params = gen_model
    px = rand_pixels(3, seed=9)
    ref = _generate_ref(model, px, **GEN_CASES[case])
    ours = pv.generate(params, px, **GEN_CASES[case]).sequences
    np.testing.assert_array_equal(ours, ref)
    assert np.all(ours[:, 0] == START)
    ends = [1 + list(row[1:]).index(EOS) if EOS in row[1:] else None for row in ours]
    if case in ("greedy", "recipe"):  # rows that end on EOS, and not all at once
        assert any(e is not None for e in ends) and max(e or ours.shape[1] for e in ends) > 4
    for row, end in zip(ours, ends):
        if end is not None:
            assert np.all(row[end + 1:] == PAD)


def test_sampling_top_k_1_is_greedy_and_a_key_is_reproducible(gen_model):
    _, params = gen_model
    import jax
    px = rand_pixels(3, seed=9)
    greedy = pv.generate(params, px, **GEN_CASES["greedy"]).sequences
    top1 = pv.generate(params, px, **GEN_CASES["greedy"], do_sample=True, top_k=1, key=jax.random.PRNGKey(0))
    np.testing.assert_array_equal(top1.sequences, greedy)
    a, b = (pv.generate(params, px, **GEN_CASES["greedy"], do_sample=True, top_k=20, temperature=1.5,
                        key=jax.random.PRNGKey(3)).sequences for _ in range(2))
    np.testing.assert_array_equal(a, b)


def test_save_loads_in_transformers(variant, tmp_path):
    """save -> transformers loads it -> the same tensors and the same logits."""
    _, model, params, _, path = variant
    pv.save(params, tmp_path / "out")
    reloaded = load_reference(tmp_path / "out")
    want = {k: v.numpy() for k, v in model.state_dict().items()}
    got = {k: v.numpy() for k, v in reloaded.state_dict().items()}
    assert set(got) == set(want)
    for k in want:
        if "pooler" not in k:  # the unused pooler is written as zeros
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # test_cached_steps_equal_forward's shapes: its compiled forward serves here too
    px, ids = rand_pixels(2, seed=2), _ids(2, 7, seed=3)
    assert maxdiff(pv.forward(params, px, ids), torch_forward(reloaded, px, ids).logits) <= 1e-4


@pytest.mark.parametrize("fmt", ["bin", "bin_sharded", "safetensors_sharded"])
def test_loads_bin_and_sharded(tmp_path, fmt):
    """The same params from a torch .bin (one file or shards with an index) and sharded safetensors."""
    model = make_ocr_reference(seed=3)
    path = tmp_path / "ref"
    model.save_pretrained(path)
    params, _ = pv.load(path)
    tmp_path = tmp_path / fmt
    copy_config(path, tmp_path)
    if fmt == "safetensors_sharded":
        model.save_pretrained(tmp_path, max_shard_size="20KB")
        assert (tmp_path / "model.safetensors.index.json").exists()
    else:
        write_bin(hf_state_dict(path), tmp_path, shards=1 if fmt == "bin" else 3)
    again, _ = pv.load(tmp_path)
    for a, b in zip(jax_leaves(params), jax_leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


def jax_leaves(params):
    import jax
    return [np.asarray(x) for x in jax.tree.leaves({k: v for k, v in params.items() if k != "generation_config"})]


@pytest.mark.parametrize("variant", ["sinusoidal"], indirect=True)
def test_unknown_tensor_and_wrong_shape_are_named(variant, tmp_path):
    from safetensors.numpy import load_file, save_file
    _, _, _, _, path = variant
    tensors = load_file(path / "model.safetensors")
    for f in ("config.json", "generation_config.json"):
        (tmp_path / f).write_text((path / f).read_text())
    bad = dict(tensors, **{"decoder.model.decoder.layers.0.self_attn.k_proj.weight": np.zeros((3, 3), np.float32)})
    save_file(bad, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(pv.CheckpointError, match="self_attn.k_proj.weight"):
        pv.load(tmp_path)
    extra = dict(tensors, **{"decoder.model.decoder.embed_positions.weights": np.zeros((3, 3), np.float32)})
    save_file(extra, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(pv.CheckpointError, match="unexpected tensor decoder.model.decoder.embed_positions.weights"):
        pv.load(tmp_path)


def test_compose_vit_and_trocr_matches_transformers(tmp_path):
    """A standalone ViT and a TrOCRForCausalLM: every tensor of both files is copied exactly,
    and the model equals transformers' composition once loaded from it."""
    from transformers import TrOCRConfig, TrOCRForCausalLM, ViTConfig, ViTModel
    from ocr_models import TINY_ENCODER, TINY_TROCR
    torch.manual_seed(0)
    enc, dec = ViTModel(ViTConfig(**TINY_ENCODER)), TrOCRForCausalLM(TrOCRConfig(**TINY_TROCR))
    params, config, want, got = compose_both(tmp_path, enc, dec)
    assert config.decoder.model_type == "trocr" and config.has_projection  # 32 -> 24, no cross size
    assert_same_tensors(want, got)
    params2, _ = pv.load(tmp_path / "ref")
    px, ids = rand_pixels(1), _ids(1, 4, seed=0)
    ref = load_reference(tmp_path / "ref")
    assert maxdiff(pv.forward(params2, px, ids), torch_forward(ref, px, ids).logits) <= 1e-4


def test_hand_built_config_saves_and_transformers_runs_it(tmp_path):
    """Config(DeiTConfig, TrOCRConfig) built in code -> init_params -> save -> transformers
    reads the config.json written from the dataclasses and computes the same logits."""
    import jax
    from purevedec import Config, DeiTConfig, TrOCRConfig
    config = Config(encoder=DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                       intermediate_size=37, image_size=16, patch_size=4),
                    decoder=TrOCRConfig(vocab_size=60, d_model=24, decoder_layers=1, decoder_attention_heads=4,
                                        decoder_ffn_dim=40, max_position_embeddings=20, cross_attention_hidden_size=32,
                                        use_learned_position_embeddings=False, tie_word_embeddings=False),
                    decoder_start_token_id=START, pad_token_id=PAD, eos_token_id=EOS)
    assert not config.has_projection and config.cross_width == 32
    params = pv.init_params(config, jax.random.PRNGKey(0))
    pv.save(params, tmp_path)
    ref = load_reference(tmp_path)
    assert type(ref.decoder).__name__ == "TrOCRForCausalLM" and type(ref.encoder).__name__ == "DeiTModel"
    px, ids = rand_pixels(1, seed=4), _ids(1, 5, seed=5)
    assert maxdiff(pv.forward(params, px, ids), torch_forward(ref, px, ids).logits) <= 1e-4
