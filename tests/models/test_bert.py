"""BERT, RoBERTa and bert-generation decoders behind ViT and DeiT encoders, against transformers:
config parsing, logits and states, cached steps, generation, loading, saving, composing, gradients."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import purevedec as pv
from bert_models import IDS, make_bert_reference, make_generation_reference
from conftest import maxdiff, rand_pixels, torch_forward
from formats_util import copy_config, hf_state_dict, write_bin
from ocr_models import assert_same_tensors, compose_both, load_reference

# The matrix: (decoder, encoder, encoder options, decoder options). Together the cases cover every
# option the decoders read: projection or not (widths, cross_attention_hidden_size), hidden_act
# (RoBERTa's head keeps exact gelu whatever it says), layer_norm_eps, tied or untied head,
# type_vocab_size, RoBERTa's pad id (its position offset), layers and heads.
CASES = {
    "bert_vit_projection": ("bert", "vit", {}, {}),
    "bert_deit_same_width_relu_untied": ("bert", "deit", dict(hidden_size=24), dict(
        hidden_act="relu", tie_word_embeddings=False, layer_norm_eps=1e-5, type_vocab_size=1)),
    "bert_vit_cross_size_gelu_new": ("bert", "vit", dict(hidden_size=24, num_attention_heads=3), dict(
        cross_attention_hidden_size=24, hidden_act="gelu_new", num_hidden_layers=3, num_attention_heads=2)),
    "roberta_deit_projection": ("roberta", "deit", {}, {}),
    "roberta_vit_pad3_silu_untied": ("roberta", "vit", {}, dict(
        pad_token_id=3, hidden_act="silu", tie_word_embeddings=False, layer_norm_eps=1e-6, type_vocab_size=3)),
    "bert_generation_vit": ("bert-generation", "vit", {}, {}),
    "bert_generation_deit_untied_quick_gelu": ("bert-generation", "deit", {}, dict(
        tie_word_embeddings=False, hidden_act="quick_gelu", intermediate_size=20)),
}
SEEDS = {name: seed for seed, name in enumerate(CASES)}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    """(name, torch model, params, config, folder) of one case, saved and loaded by purevedec."""
    dec, enc, enc_kw, dec_kw = CASES[request.param]
    model = make_bert_reference(dec, enc, enc_kw, dec_kw, seed=SEEDS[request.param])
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    params, config = pv.load(folder)
    return request.param, model, params, config, folder


def _ids(b, t, seed, start, vocab=60):
    """[b,t] random ids starting with ``start`` (a config: its decoder start id), none of them a pad id."""
    ids = np.random.RandomState(seed).randint(4, vocab, (b, t)).astype(np.int32)
    ids[:, 0] = start if isinstance(start, int) else start.decoder_start_token_id
    return ids


def test_config_reads_the_options(case):
    _, model, params, config, _ = case
    theirs, dec = model.config.decoder, config.decoder
    assert dec.model_type == theirs.model_type
    for field in ("hidden_act", "layer_norm_eps", "tie_word_embeddings", "pad_token_id", "num_hidden_layers",
                  "num_attention_heads", "intermediate_size", "max_position_embeddings"):
        assert getattr(dec, field) == getattr(theirs, field), field
    assert dec.type_vocab_size == getattr(theirs, "type_vocab_size", 0)
    assert config.has_projection == hasattr(model, "enc_to_dec_proj")
    assert ("proj" in params) == config.has_projection
    assert ("lm_head" in params["decoder"]) == (not dec.tie_word_embeddings)
    assert ("head" in params["decoder"]) == (dec.model_type != "bert-generation")


def test_logits_states_and_attentions_match(case):
    """A pad id inside row 0 (RoBERTa: that token reads the pad row and later ones shift back),
    a right-padded row 1 (mask 0): logits, every decoder state and cross-attention within 1e-4."""
    _, model, params, config, _ = case
    px, ids = rand_pixels(2, seed=3), _ids(2, 9, 4, config)
    ids[0, 4] = config.decoder.pad_token_id
    mask = np.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = config.decoder.pad_token_id, 0
    ref = torch_forward(model, px, ids, decoder_attention_mask=mask, output_hidden_states=True,
                        output_attentions=True)
    out = pv.forward(params, px, ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    assert maxdiff(out.logits, ref.logits) <= 1e-4
    assert len(out.decoder_hidden_states) == len(ref.decoder_hidden_states)
    for ours, theirs in zip(out.decoder_hidden_states, ref.decoder_hidden_states, strict=True):
        assert maxdiff(ours, theirs) <= 1e-4
    for ours, theirs in zip(out.cross_attentions, ref.cross_attentions, strict=True):
        assert maxdiff(ours, theirs) <= 1e-5


def test_roberta_positions_skip_pad_tokens():
    """fairseq numbering: a pad id in the middle of a row moves the positions of the tokens after it."""
    model = make_bert_reference("roberta", seed=11)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        params, config = pv.load(d)
    px, ids = rand_pixels(1, seed=5), _ids(1, 7, 6, config)
    ids[0, 3] = config.decoder.pad_token_id
    ours = pv.forward(params, px, ids)
    assert maxdiff(ours, torch_forward(model, px, ids).logits) <= 1e-4
    unpadded = ids.copy()
    unpadded[0, 3] = 7
    assert maxdiff(ours[:, 4:], pv.forward(params, px, unpadded)[:, 4:]) > 1e-3


def test_cached_steps_equal_forward(case):
    _, _, params, config, _ = case
    px, ids = rand_pixels(2, seed=7), _ids(2, 7, 8, config)
    full = np.asarray(pv.forward(params, px, ids))
    cache = pv.init_cache(params, pv.encode(params, px), max_len=8)
    logits, cache = pv.step(params, cache, ids[:, :3])  # a prompt, then token by token
    parts = [np.asarray(logits)]
    for t in range(3, 7):
        logits, cache = pv.step(params, cache, ids[:, t:t + 1])
        parts.append(np.asarray(logits))
    assert np.max(np.abs(np.concatenate(parts, 1) - full)) <= 1e-4


def test_save_loads_in_transformers(case, tmp_path):
    """save -> transformers loads it -> the same tensors (names and values) and the same logits."""
    _, model, params, config, _ = case
    pv.save(params, tmp_path / "out")
    reloaded = load_reference(tmp_path / "out")
    want = {k: v.numpy() for k, v in model.state_dict().items()}
    got = {k: v.numpy() for k, v in reloaded.state_dict().items()}
    assert set(got) == set(want)
    for k in want:
        if "pooler" not in k:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # test_cached_steps_equal_forward's shapes: its compiled forward serves here too
    px, ids = rand_pixels(2, seed=2), _ids(2, 7, 3, config)
    assert maxdiff(pv.forward(params, px, ids), torch_forward(reloaded, px, ids).logits) <= 1e-4


@pytest.mark.parametrize("decoder", ["bert", "roberta"])
def test_loads_a_bin_with_the_tied_head_tensors(decoder, tmp_path):
    """Older checkpoints (manga-ocr's pytorch_model.bin) also store the tied output projection and
    its bias; they are recognised as copies, and the params equal those of the safetensors file."""
    model = make_bert_reference(decoder, seed=4)
    model.save_pretrained(tmp_path / "ref")
    params, _ = pv.load(tmp_path / "ref")
    sd = dict(hf_state_dict(tmp_path / "ref"))
    head = "decoder.cls.predictions." if decoder == "bert" else "decoder.lm_head."
    base = "decoder.bert." if decoder == "bert" else "decoder.roberta."
    sd[head + "decoder.weight"] = sd[base + "embeddings.word_embeddings.weight"]
    sd[head + "decoder.bias"] = sd[head + "bias"]
    copy_config(tmp_path / "ref", tmp_path / "bin")
    write_bin(sd, tmp_path / "bin")
    again, _ = pv.load(tmp_path / "bin")
    import jax
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("bad, message", [
    (dict(position_embedding_type="relative_key"), "position_embedding_type='relative_key'"),
    (dict(is_decoder=False), "is_decoder is false"),
    (dict(add_cross_attention=False), "add_cross_attention is false"),
    (dict(cross_attention_hidden_size=32), "cross_attention_hidden_size=32 differs from hidden_size"),
    (dict(type_vocab_size=0), "type_vocab_size"),
    (dict(max_position_embeddings=2), "leaves no position after RoBERTa's offset"),
])
def test_unsupported_configs_are_refused(bad, message, tmp_path):
    from purevedec.config import parse_config
    model = make_bert_reference("roberta", enc_kw=dict(hidden_size=24), seed=1, randomized=False)
    d = model.config.to_dict()
    d["decoder"].update(bad)
    with pytest.raises(pv.ConfigError, match=message):
        parse_config(d)


def test_compose_vit_and_bert_matches_transformers(tmp_path):
    """A standalone ViT and a BertLMHeadModel with cross-attention: every tensor copied exactly;
    the model equals transformers' composition loaded from the saved files."""
    from transformers import BertConfig, BertLMHeadModel, ViTConfig, ViTModel
    from bert_models import TINY_DECODER, TINY_ENCODER
    torch.manual_seed(0)
    dec_cfg = BertConfig(**TINY_DECODER, is_decoder=True, add_cross_attention=True)
    enc, dec = ViTModel(ViTConfig(**TINY_ENCODER)), BertLMHeadModel(dec_cfg)
    params, config, want, got = compose_both(tmp_path, enc, dec)
    assert config.decoder.model_type == "bert" and config.has_projection
    assert_same_tensors(want, got)
    ref = load_reference(tmp_path / "ref")
    params2, _ = pv.load(tmp_path / "ref")
    px, ids = rand_pixels(1), _ids(1, 4, 0, 2)
    assert maxdiff(pv.forward(params2, px, ids), torch_forward(ref, px, ids).logits) <= 1e-4


def test_compose_with_a_masked_lm_checkpoint_adds_cross_attention(tmp_path):
    """bert-base-style BertForMaskedLM (no cross-attention, an NSP-free head): its tensors are copied,
    the cross-attention layers are new, and transformers runs what purevedec saves identically."""
    import jax
    from transformers import BertConfig, BertForMaskedLM, DeiTConfig, DeiTModel
    from bert_models import TINY_DECODER, TINY_ENCODER
    from ocr_models import randomize
    torch.manual_seed(0)
    enc, dec = DeiTModel(DeiTConfig(**TINY_ENCODER)), BertForMaskedLM(BertConfig(**TINY_DECODER))
    randomize(dec, 3)
    enc.save_pretrained(tmp_path / "enc")
    dec.save_pretrained(tmp_path / "dec")
    params, config = pv.from_encoder_decoder_pretrained(str(tmp_path / "enc"), str(tmp_path / "dec"),
                                                         key=jax.random.PRNGKey(0))
    theirs = hf_state_dict(tmp_path / "dec")
    pv.save(params, tmp_path / "ours")
    ours = hf_state_dict(tmp_path / "ours")
    for name, tensor in theirs.items():
        np.testing.assert_array_equal(ours["decoder." + name].numpy(), tensor.numpy(), err_msg=name)
    assert any("crossattention" in n for n in ours)
    ref = load_reference(tmp_path / "ours")
    px, ids = rand_pixels(2, seed=1), _ids(2, 5, 2, 2)
    assert maxdiff(pv.forward(params, px, ids), torch_forward(ref, px, ids).logits) <= 1e-4


@pytest.mark.parametrize("decoder", ["bert", "roberta", "bert-generation"])
def test_gradients_match_torch_autograd(decoder, tmp_path):
    """Mean token loss over padded labels, with pad ids inside rows too (an input pad id that
    later positions read: torch's padding_idx leaves its embedding rows without that gradient):
    every gradient as torch's float64 autograd."""
    from gradient_util import assert_gradients_match, both_gradients
    model = make_bert_reference(decoder, "deit", seed=9)
    model.save_pretrained(tmp_path / "model")
    params, config = pv.load(tmp_path / "model")
    labels = np.random.RandomState(7).randint(4, 60, (4, 6)).astype(np.int32)
    labels[1, 3:], labels[3, 5:] = -100, -100
    labels[0, 2] = labels[2, 1] = config.decoder.pad_token_id  # a pad id read by later positions
    ours, theirs = both_gradients(model, params, rand_pixels(2, seed=7), labels, 60, 0.0, tmp_path)
    assert_gradients_match(ours, theirs)
    pad_row = ours["decoder." + ("roberta" if decoder == "roberta" else "bert") +
                   ".embeddings.word_embeddings.weight"][config.decoder.pad_token_id]
    if config.decoder.tie_word_embeddings:  # the head still reads the pad row
        assert np.abs(pad_row).max() > 0


def _generate_ref(model, px, **kw):
    with torch.no_grad():
        return model.generate(pixel_values=torch.tensor(px), **kw).numpy()


GEN_CASES = {
    "greedy": dict(max_new_tokens=14),
    "beam": dict(max_new_tokens=14, num_beams=3),
    "manga_recipe": dict(num_beams=4, max_length=30, no_repeat_ngram_size=3, length_penalty=2.0,
                         early_stopping=True),
    "beam_return_2": dict(num_beams=4, max_new_tokens=12, num_return_sequences=2),
    "sampling_top_k_1": dict(max_new_tokens=12, do_sample=True, top_k=1),
    "repetition_min_new": dict(max_new_tokens=12, repetition_penalty=1.4, min_new_tokens=4),
}


def _late_token(rows: np.ndarray) -> int:
    """The token whose earliest appearance in greedy ``rows`` [R,T] is latest but by step 8."""
    first_seen = {}
    for row in rows:
        for t, token in enumerate(row):
            first_seen[int(token)] = min(first_seen.get(int(token), t), t)
    return max((t, token) for token, t in first_seen.items() if t <= 8)[1]


@pytest.fixture(scope="module", params=["bert", "roberta", "bert-generation"])
def gen_model(request, tmp_path_factory):
    """Image-dependent greedy outputs, and an EOS that decoding reaches after a while: EOS's
    output row becomes a slightly larger copy of a token that greedy decoding emits late."""
    model = make_generation_reference(request.param)
    eos = IDS[request.param][2]
    with torch.no_grad():
        head = model.decoder.get_output_embeddings()
        first = _generate_ref(model, rand_pixels(3, seed=9), max_new_tokens=14)[:, 1:]
        late = _late_token(first)
        head.weight[eos] = 1.05 * head.weight[late]
        head.bias[eos] = head.bias[late]
    path = tmp_path_factory.mktemp("gen")
    model.save_pretrained(path)
    params, _ = pv.load(path)
    return request.param, model, params


@pytest.mark.parametrize("name", sorted(GEN_CASES))
def test_generation_is_token_identical(gen_model, name):
    import jax
    decoder, model, params = gen_model
    px = rand_pixels(3, seed=9)
    kw = GEN_CASES[name]
    ref = _generate_ref(model, px, **kw)
    key = jax.random.PRNGKey(0) if kw.get("do_sample") else None
    ours = pv.generate(params, px, key=key, **kw).sequences
    np.testing.assert_array_equal(ours, ref)
    start, pad, eos = IDS[decoder]
    assert np.all(ours[:, 0] == start)
    if name == "greedy":  # rows end on EOS, not all at the same step, and are padded after it
        ends = [1 + list(row[1:]).index(eos) if eos in row[1:] else None for row in ours]
        assert any(e is not None for e in ends) and len(set(ends)) > 1
        for row, end in zip(ours, ends):
            if end is not None:
                assert np.all(row[end + 1:] == pad)


def test_generation_defaults_from_config_json(tmp_path):
    """manga-ocr keeps beams, no-repeat size and length penalty in config.json and ships no
    generation_config.json: generate() with no options follows them as transformers does."""
    model = make_generation_reference("bert")
    model.save_pretrained(tmp_path)
    os.remove(tmp_path / "generation_config.json")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(max_length=20, num_beams=4, no_repeat_ngram_size=3, length_penalty=2.0, early_stopping=True)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    params, config = pv.load(tmp_path)
    gen = params["generation_config"]
    assert (gen.num_beams, gen.no_repeat_ngram_size, gen.length_penalty, gen.max_length) == (4, 3, 2.0, 20)
    ref_model = load_reference(tmp_path)
    px = rand_pixels(2, seed=7)
    np.testing.assert_array_equal(pv.generate(params, px).sequences, _generate_ref(ref_model, px))
