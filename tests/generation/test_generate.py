"""Cached decoding equals forward; generate is token-identical to transformers' generate."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import purevedec as pv
from conftest import make_reference, rand_ids, rand_pixels, save_reference, torch_forward


@pytest.fixture(scope="module")
def gen_model(tmp_path_factory):
    """A tiny model with scaled-up init so that logits are decisive (no near-ties)."""
    model = make_reference(init_scale=3.0, seed=3)
    path = save_reference(model, tmp_path_factory.mktemp("gen"))
    params, config = pv.load(path)
    return model, params, config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(torch model, checkpoint dir) for the default tiny config, built once: no test edits it."""
    model = make_reference()
    return model, save_reference(model, tmp_path_factory.mktemp("tiny"))


def _frequent_token(model, px):
    """A token greedy decoding emits early for image 0: used as EOS so rows end at different steps."""
    with torch.no_grad():
        seq = model.generate(pixel_values=torch.tensor(px), max_new_tokens=6).numpy()
    return int(seq[0, 3])


def _reference(model, px, **kw):
    kw = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    with torch.no_grad():
        return model.generate(pixel_values=torch.tensor(px), **kw).numpy()


def test_cached_steps_equal_forward(tiny):
    _, path = tiny
    params, config = pv.load(path)
    px, ids = rand_pixels(2), rand_ids(2, 9)
    full = np.asarray(pv.forward(params, px, ids, config))
    cache = pv.init_cache(params, pv.encode(params, px, config), config, 12)
    logits, cache = pv.step(params, cache, ids[:, :4], config)  # a prompt, then token by token
    parts = [np.asarray(logits)]
    for t in range(4, 9):
        logits, cache = pv.step(params, cache, ids[:, t:t + 1], config)
        parts.append(np.asarray(logits))
    assert np.max(np.abs(np.concatenate(parts, 1) - full)) <= 1e-4


def test_cached_ragged_prompt_equals_masked_forward(tiny):
    """positions="shifted": transformers' forward over the padded batch (positions 0..T-1);
    the default per-row positions are checked in test_ragged.py."""
    _, path = tiny
    params, config = pv.load(path)
    px, ids = rand_pixels(2), rand_ids(2, 6)
    mask = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], np.int32)
    full = np.asarray(pv.forward(params, px, ids, config, attention_mask=mask))
    cache = pv.init_cache(params, pv.encode(params, px, config), config, 8)
    logits, cache = pv.step(params, cache, ids, config, attention_mask=mask, positions="shifted")
    real = mask.astype(bool)
    assert np.max(np.abs(np.asarray(logits)[real] - full[real])) <= 1e-4


def test_cache_overflow_is_refused(tiny):
    _, path = tiny
    params, config = pv.load(path)
    cache = pv.init_cache(params, pv.encode(params, rand_pixels(1), config), config, 3)
    with pytest.raises(ValueError, match="cache is full"):
        pv.step(params, cache, rand_ids(1, 4), config)


CASES = {
    "greedy": dict(max_new_tokens=12),
    "greedy_default_length": dict(),
    "beam": dict(max_new_tokens=12, num_beams=3),
    "beam_return_2_lp": dict(max_new_tokens=10, num_beams=4, num_return_sequences=2, length_penalty=0.4),
    "beam_early_true": dict(max_new_tokens=10, num_beams=3, early_stopping=True),
    "beam_never_neg_lp": dict(max_new_tokens=10, num_beams=3, early_stopping="never", length_penalty=-1.0),
    "beam_never_pos_lp": dict(max_new_tokens=10, num_beams=3, early_stopping="never", length_penalty=2.0),
    "min_new_tokens": dict(max_new_tokens=10, min_new_tokens=6),
    "min_length_beam": dict(max_length=11, min_length=7, num_beams=2),
    "no_repeat_2": dict(max_new_tokens=12, no_repeat_ngram_size=2),
    "no_repeat_1_beam": dict(max_new_tokens=8, no_repeat_ngram_size=1, num_beams=3),
    "repetition_penalty": dict(max_new_tokens=12, repetition_penalty=1.8),
    "repetition_penalty_beam": dict(max_new_tokens=12, repetition_penalty=1.5, num_beams=3),
    "bad_words": dict(max_new_tokens=12, bad_words_ids=[[7], [11, 12], [3, 4, 5]]),
    "forced_bos_eos": dict(max_new_tokens=8, forced_bos_token_id=9, forced_eos_token_id=13),
    "combined_beam": dict(max_new_tokens=12, num_beams=4, no_repeat_ngram_size=3, repetition_penalty=1.3,
                          min_new_tokens=3, bad_words_ids=[[5]], length_penalty=1.5, num_return_sequences=3),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_token_identity_with_transformers(gen_model, name):
    model, params, config = gen_model
    px = rand_pixels(3, seed=11)
    kw = dict(CASES[name], eos_token_id=_frequent_token(model, px))
    ref = _reference(model, px, **kw)
    ours = pv.generate(params, px, config, **kw)
    assert ours.sequences.shape == ref.shape
    np.testing.assert_array_equal(ours.sequences, ref)


def test_never_stopping_hopes_for_the_longest_hypothesis(tmp_path):
    """early_stopping="never" with a positive length penalty: a batch keeps searching while its
    best running beam, at the longest length it could reach, would beat a finished one. On this
    model and image (found by search) that keeps a beam that stopping at the current length
    (early_stopping=False) drops: transformers' two answers differ, and ours follows "never"."""
    model = make_reference(init_scale=3.0, seed=1)
    params, config = pv.load(save_reference(model, tmp_path / "never"))
    px = rand_pixels(3, seed=11)
    kw = dict(max_new_tokens=10, num_beams=2, num_return_sequences=2, length_penalty=2.0, eos_token_id=24)
    never = _reference(model, px, early_stopping="never", **kw)
    stop_now = _reference(model, px, early_stopping=False, **kw)
    assert never.shape != stop_now.shape or not np.array_equal(never, stop_now)  # the case tells them apart
    np.testing.assert_array_equal(pv.generate(params, px, config, early_stopping="never", **kw).sequences, never)


def test_rows_end_at_different_steps_and_pad_after_eos(gen_model):
    model, params, config = gen_model
    px = rand_pixels(3, seed=11)  # test_token_identity_with_transformers[greedy]'s inputs: its program
    eos = _frequent_token(model, px)
    out = pv.generate(params, px, config, max_new_tokens=12, eos_token_id=eos)
    ended = [list(r[1:]).index(eos) if eos in r[1:] else None for r in out.sequences]
    assert any(e is not None for e in ended)
    for row, e in zip(out.sequences, ended):
        if e is not None:
            assert np.all(row[e + 2:] == params["generation_config"].pad_token_id)


def test_ragged_prompts_match_transformers(gen_model):
    """positions="shifted" (transformers' batched left padding); per-row positions: test_ragged.py."""
    model, params, config = gen_model
    px = rand_pixels(3, seed=2)
    prompts = [[0, 5, 6, 7], [0, 9], [0, 4, 4]]
    ours = pv.generate(params, px, config, decoder_input_ids=prompts, max_new_tokens=8, num_beams=2,
                       positions="shifted")
    width = 4
    ids = np.array([[1] * (width - len(p)) + p for p in prompts])
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    ref = _reference(model, px, decoder_input_ids=ids, decoder_attention_mask=mask, max_new_tokens=8, num_beams=2)
    np.testing.assert_array_equal(ours.sequences, ref)


def test_prompt_without_start_token_gets_it_prepended(gen_model):
    model, params, config = gen_model
    px = rand_pixels(2, seed=4)
    ids = np.array([[5, 6], [7, 8]])
    ours = pv.generate(params, px, config, decoder_input_ids=ids, max_new_tokens=5)
    np.testing.assert_array_equal(ours.sequences, _reference(model, px, decoder_input_ids=ids, max_new_tokens=5))
    assert np.all(ours.sequences[:, 0] == params["generation_config"].decoder_start_token_id)


def test_scores_and_logprobs(gen_model):
    model, params, config = gen_model
    px = rand_pixels(3, seed=8)  # 3 images, 6 tokens: the programs of other tests here
    with torch.no_grad():
        ref = model.generate(pixel_values=torch.tensor(px), max_new_tokens=6, num_beams=3, output_scores=True,
                             return_dict_in_generate=True)
    ours = pv.generate(params, px, config, max_new_tokens=6, num_beams=3)
    np.testing.assert_allclose(ours.scores, ref.sequences_scores.numpy(), atol=1e-4)
    greedy = pv.generate(params, px, config, max_new_tokens=6)
    enc = pv.encode(params, px, config)
    logits = np.asarray(pv.decode(params, greedy.sequences[:, :-1], enc, config))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    chosen = np.take_along_axis(logp, greedy.sequences[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(greedy.token_logprobs, chosen, atol=1e-4)


def test_sampling_top_k_1_is_greedy_and_key_reproducible(gen_model):
    _, params, config = gen_model
    px = rand_pixels(3, seed=6)
    greedy = pv.generate(params, px, config, max_new_tokens=10).sequences
    top1 = pv.generate(params, px, config, max_new_tokens=10, do_sample=True, top_k=1, key=jax.random.key(3))
    np.testing.assert_array_equal(top1.sequences, greedy)
    kw = dict(max_new_tokens=10, do_sample=True, temperature=2.0, top_k=0)
    a = pv.generate(params, px, config, key=jax.random.key(1), **kw).sequences
    b = pv.generate(params, px, config, key=jax.random.key(1), **kw).sequences
    c = pv.generate(params, px, config, key=jax.random.key(2), **kw).sequences
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    with pytest.raises(ValueError, match="key"):
        pv.generate(params, px, config, do_sample=True)


def test_sampling_frequencies_follow_filtered_distribution(gen_model):
    """First sampled token over many rows vs the top-k / top-p / temperature filtered softmax."""
    _, params, config = gen_model
    px = np.repeat(rand_pixels(1, seed=9), 1, axis=0)
    n = 4000
    kw = dict(max_new_tokens=1, do_sample=True, temperature=1.7, top_k=8, top_p=0.9, num_return_sequences=n)
    first = pv.generate(params, px, config, key=jax.random.key(0), **kw).sequences[:, 1]
    logits = np.asarray(pv.forward(params, px, np.array([[params["generation_config"].decoder_start_token_id]]), config))[0, 0]
    s = logits / 1.7
    s[s < np.sort(s)[-8]] = -np.inf
    order = np.argsort(s)
    p = np.exp(s[order] - s[order].max())
    p /= p.sum()
    drop = np.cumsum(p) <= 0.1
    drop[-1] = False
    s[order[drop]] = -np.inf
    want = np.exp(s - s.max())
    want /= want.sum()
    got = np.bincount(first, minlength=len(want)) / n
    assert set(np.nonzero(got)[0]) <= set(np.nonzero(want)[0])
    assert np.max(np.abs(got - want)) < 0.035


def test_beam_sampling_is_reproducible(gen_model):
    _, params, config = gen_model
    px = rand_pixels(2, seed=1)
    kw = dict(max_new_tokens=8, num_beams=3, do_sample=True, num_return_sequences=2)
    a = pv.generate(params, px, config, key=jax.random.key(5), **kw)
    b = pv.generate(params, px, config, key=jax.random.key(5), **kw)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    assert a.sequences.shape[0] == 4


def _generated_lengths(sequences, eos, prompt_len=1) -> list[int]:
    """Per row, the generated tokens up to and including the first EOS."""
    out = []
    for row in np.asarray(sequences)[:, prompt_len:].tolist():
        out.append(row.index(eos) + 1 if eos in row else len(row))
    return out


@pytest.mark.parametrize("kw", [dict(max_new_tokens=6), dict(max_new_tokens=6, num_beams=3),
                                dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, length_penalty=0.0)],
                         ids=["greedy", "beam", "beam_return_2"])
def test_generated_cross_attention_is_the_forward_pass_on_the_sequences(gen_model, kw):
    """Each generated token's cross-attention (every layer and head) is transformers' forward
    cross-attention at the query position that produced it, on the returned sequence: for beams
    that means the attention followed its hypothesis through every reordering."""
    model, params, config = gen_model
    px = rand_pixels(2, seed=3)
    eos = _frequent_token(model, px)
    out = pv.generate(params, px, config, eos_token_id=eos, output_cross_attentions=True, **kw)
    n = out.sequences.shape[0]
    lengths = _generated_lengths(out.sequences, eos)
    ref = torch_forward(model, np.repeat(px, n // 2, axis=0), out.sequences, output_attentions=True)
    want = np.stack([a.numpy() for a in ref.cross_attentions]).transpose(1, 3, 0, 2, 4)  # [L,N,H,T,S] -> [N,T,L,H,S]
    assert out.cross_attentions.shape == (n, out.sequences.shape[1] - 1, *want.shape[2:])
    for i, g in enumerate(lengths):
        np.testing.assert_allclose(out.cross_attentions[i, :g], want[i, :g], atol=1e-5, err_msg=f"row {i}")
    if kw.get("num_return_sequences"):  # two hypotheses per image whose attention differs
        assert np.max(np.abs(want[0, :min(lengths[:2])] - want[1, :min(lengths[:2])])) > 1e-3


def test_eos_token_id_list_matches_transformers(gen_model):
    model, params, config = gen_model
    px = rand_pixels(3, seed=11)
    seq = _reference(model, px, max_new_tokens=8)
    eos = [int(seq[1, 3]), int(seq[0, 2])]  # two tokens that end different rows
    for kw in (dict(max_new_tokens=8), dict(max_new_tokens=8, num_beams=3)):
        np.testing.assert_array_equal(pv.generate(params, px, config, eos_token_id=eos, **kw).sequences,
                                      _reference(model, px, eos_token_id=eos, **kw))


def test_no_repeat_ngram_spans_the_prompt(gen_model):
    """An n-gram that the prompt already holds is banned in the continuation too."""
    model, params, config = gen_model
    px = rand_pixels(2, seed=4)
    greedy = _reference(model, px, max_new_tokens=6)
    prompt = np.concatenate([greedy[:, :3], greedy[:, 1:3]], axis=1)  # repeats its own bigram
    kw = dict(decoder_input_ids=prompt, max_new_tokens=6, no_repeat_ngram_size=2)
    for beams in (1, 2):
        ours = pv.generate(params, px, config, num_beams=beams, **kw).sequences
        np.testing.assert_array_equal(ours, _reference(model, px, num_beams=beams, **kw))


def test_padded_prompt_array_with_mask_equals_ragged_lists(gen_model):
    _, params, config = gen_model
    px = rand_pixels(2, seed=2)
    prompts = [[0, 5, 6, 7], [0, 9]]
    ids = np.array([[0, 5, 6, 7], [1, 1, 0, 9]])
    mask = np.array([[1, 1, 1, 1], [0, 0, 1, 1]])
    for kw in (dict(max_new_tokens=5), dict(max_new_tokens=5, num_beams=2, repetition_penalty=1.5)):
        a = pv.generate(params, px, config, decoder_input_ids=prompts, **kw)
        b = pv.generate(params, px, config, decoder_input_ids=ids, decoder_attention_mask=mask, **kw)
        np.testing.assert_array_equal(a.sequences, b.sequences)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_sampling_several_images_times_return_sequences(gen_model):
    """Rows are image-major: image i owns rows [i*k, (i+1)*k). With top_k=1 every sample is
    image i's greedy caption; with a real distribution the k samples of one image differ."""
    _, params, config = gen_model
    px = rand_pixels(3, seed=6)
    greedy = pv.generate(params, px, config, max_new_tokens=6).sequences
    top1 = pv.generate(params, px, config, max_new_tokens=6, do_sample=True, top_k=1, num_return_sequences=4,
                       key=jax.random.key(0)).sequences
    np.testing.assert_array_equal(top1, np.repeat(greedy, 4, axis=0))
    hot = pv.generate(params, px, config, max_new_tokens=6, do_sample=True, temperature=3.0, top_k=0,
                      num_return_sequences=4, key=jax.random.key(1)).sequences
    assert hot.shape[0] == 12
    assert all(len({tuple(r) for r in hot[i * 4:(i + 1) * 4]}) > 1 for i in range(3))


def test_interpolate_pos_encoding_through_generate(gen_model):
    model, params, config = gen_model
    px = rand_pixels(2, h=24, w=20, seed=7)
    for kw in (dict(max_new_tokens=6), dict(max_new_tokens=6, num_beams=2)):
        ours = pv.generate(params, px, config, interpolate_pos_encoding=True, **kw).sequences
        np.testing.assert_array_equal(ours, _reference(model, px, interpolate_pos_encoding=True, **kw))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("rows", [1, 3])
def test_low_precision_cached_steps_equal_same_dtype_forward(tiny, dtype, rows):
    """step in bf16/fp16 (one row: weight products padded to 4 rows and the single query row to
    2; low-precision caches) gives the logits of forward in the same dtype, far closer than
    either is to float32."""
    _, path = tiny
    params, config = pv.load(path, dtype=dtype)
    px, ids = rand_pixels(rows), rand_ids(rows, 9)
    full = np.asarray(pv.forward(params, px, ids, dtype=dtype))
    fp32 = np.asarray(pv.forward(pv.load(path)[0], px, ids))
    cache = pv.init_cache(params, pv.encode(params, px, dtype=dtype), max_len=12, dtype=dtype)
    assert all(a.dtype == dtype for a in jax.tree.leaves(cache) if jnp.issubdtype(a.dtype, jnp.floating))
    logits, cache = pv.step(params, cache, ids[:, :4], dtype=dtype)
    parts = [np.asarray(logits)]
    for t in range(4, 9):
        logits, cache = pv.step(params, cache, ids[:, t:t + 1], dtype=dtype)
        parts.append(np.asarray(logits))
    low_error = np.max(np.abs(full - fp32))
    assert low_error > 1e-5  # really computed in low precision
    assert np.max(np.abs(np.concatenate(parts, 1) - full)) <= low_error / 10


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "fp16"])
def test_low_precision_generate_tokens_equal_float32(gen_model, tmp_path, dtype):
    """On a model with decisive logits, bf16/fp16 generation (params and compute) picks
    transformers' float32 tokens, greedy and beam; its token log-probs are the same-dtype
    forward pass's."""
    model, params, config = gen_model
    low = jax.tree.map(lambda a: a.astype(dtype), params)
    px = rand_pixels(3, seed=12)
    for kw in (dict(max_new_tokens=8), dict(max_new_tokens=8, num_beams=3)):
        out = pv.generate(low, px, config, dtype=dtype, **kw)
        np.testing.assert_array_equal(out.sequences, _reference(model, px, **kw))
    logits = np.asarray(pv.forward(low, px, out.sequences[:, :-1], dtype=dtype))
    greedy = pv.generate(low, px, config, dtype=dtype, max_new_tokens=8)
    logits = np.asarray(pv.forward(low, px, greedy.sequences[:, :-1], dtype=dtype))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    chosen = np.take_along_axis(logp, greedy.sequences[:, 1:, None], -1)[..., 0]
    live = greedy.token_logprobs != 0
    np.testing.assert_allclose(greedy.token_logprobs[live], chosen[live], atol=2e-3)


def test_second_call_does_not_recompile(gen_model):
    _, params, config = gen_model
    from purevedec.generation import search as g
    pv.generate(params, rand_pixels(3, seed=1), config, max_new_tokens=6, num_beams=3)
    before = g._generate_jit._cache_size()
    pv.generate(params, rand_pixels(3, seed=2), config, max_new_tokens=6, num_beams=3)
    assert g._generate_jit._cache_size() == before


def test_generation_defaults_from_legacy_config(tmp_path):
    import json
    import os
    model = make_reference(init_scale=3.0, seed=3)
    path = save_reference(model, tmp_path / "legacy")
    os.remove(os.path.join(path, "generation_config.json"))
    cfg = json.load(open(os.path.join(path, "config.json")))
    cfg["num_beams"] = 3
    cfg["max_length"] = 9
    cfg["decoder"]["no_repeat_ngram_size"] = 2
    cfg["decoder"]["num_beams"] = 5  # the top level wins
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    params, config = pv.load(path)
    gen = params["generation_config"]
    assert (gen.num_beams, gen.max_length, gen.no_repeat_ngram_size) == (3, 9, 2)
    from transformers import VisionEncoderDecoderModel
    ref_model = VisionEncoderDecoderModel.from_pretrained(path).eval()
    px = rand_pixels(2, seed=7)
    np.testing.assert_array_equal(pv.generate(params, px, config).sequences, _reference(ref_model, px))


def test_bad_options_are_refused(gen_model):
    _, params, config = gen_model
    px = rand_pixels(1)
    with pytest.raises(TypeError, match="unknown options"):
        pv.generate(params, px, config, max_tokens=4)
    with pytest.raises(pv.ConfigError, match="num_beam_groups"):
        pv.generate(params, px, config, num_beams=4, num_beam_groups=2)
    with pytest.raises(ValueError, match="num_return_sequences"):
        pv.generate(params, px, config, num_return_sequences=2)
    with pytest.raises(ValueError, match="n_positions"):
        pv.generate(params, px, config, max_new_tokens=100)


def test_save_keeps_generation_defaults(gen_model, tmp_path):
    import dataclasses
    _, params, config = gen_model
    gen = dataclasses.replace(params["generation_config"], num_beams=3, no_repeat_ngram_size=2,
                              bad_words_ids=((4,), (5, 6)), max_length=9)
    pv.save({**params, "generation_config": gen}, tmp_path)
    assert pv.load(tmp_path)[0]["generation_config"] == gen
