"""Ragged decoder prompts: each row continues exactly as its prompt would alone (positions per
row), and positions="shifted" reproduces transformers' batched left-padded output.

Two tiny checkpoints with decisive logits: "plain" (start 0, eos 2, pad 1) and "gpt2" (start,
eos and pad all 49, as GPT-2 checkpoints share 50256), where padding is the start token itself
and only the mask tells them apart. Prompts are 1 to 6 tokens long, start token included.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

import purevedec as pv
from conftest import make_reference, rand_pixels, save_reference

SPECIAL = {"plain": dict(bos_token_id=0, eos_token_id=2, pad_token_id=None),
           "gpt2": dict(bos_token_id=49, eos_token_id=49, pad_token_id=49)}
NEW = 8  # max_new_tokens


@pytest.fixture(scope="module", params=sorted(SPECIAL))
def ckpt(request, tmp_path_factory):
    model = make_reference(dec_kw=SPECIAL[request.param], init_scale=3.0, seed=3)
    params, config = pv.load(save_reference(model, tmp_path_factory.mktemp(request.param)))
    gen = params["generation_config"]
    return model, params, config, gen


def _prompts(start: int, seed: int = 0) -> list[list[int]]:
    """Six prompts of 1..6 tokens, each beginning with the start token."""
    rng = np.random.RandomState(seed)
    return [[start] + [int(t) for t in rng.randint(3, 48, n)] for n in range(6)]


def _left_padded(prompts, pad: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(map(len, prompts))
    ids = np.array([[pad] * (width - len(p)) + p for p in prompts])
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def _continuation(seq, prompt_len: int, pad: int) -> np.ndarray:
    """The generated tokens of one row, padded to NEW (rows of a batch are trimmed together)."""
    tail = list(np.asarray(seq)[prompt_len:])
    return np.array(tail + [pad] * (NEW - len(tail)))


def _hf_generate(model, px, ids, mask=None, **kw) -> np.ndarray:
    with torch.no_grad():
        extra = {} if mask is None else {"decoder_attention_mask": torch.tensor(mask)}
        return model.generate(pixel_values=torch.tensor(px), decoder_input_ids=torch.tensor(ids),
                              max_new_tokens=NEW, **extra, **kw).numpy()


def _hf_logits(model, px, ids) -> np.ndarray:
    with torch.no_grad():
        return model(pixel_values=torch.tensor(px), decoder_input_ids=torch.tensor(ids)).logits.numpy()


def test_step_with_left_padded_mask_gives_each_row_its_alone_logits(ckpt):
    """pv.step over a left-padded prompt, then three single tokens: per row, the logits of
    transformers' forward over that row alone (positions 0.. from its first token)."""
    model, params, config, gen = ckpt
    prompts = _prompts(gen.decoder_start_token_id, seed=1)
    ids, mask = _left_padded(prompts, gen.pad_token_id)
    px = rand_pixels(len(prompts), seed=3)
    cache = pv.init_cache(params, pv.encode(params, px, config), config, ids.shape[1] + 3)
    logits, cache = pv.step(params, cache, ids, config, attention_mask=mask)
    later = [np.asarray(logits)]
    for tok in (7, 8, 9):
        out, cache = pv.step(params, cache, np.full((len(prompts), 1), tok), config)
        later.append(np.asarray(out))
    ours = np.concatenate(later, axis=1)
    for i, p in enumerate(prompts):
        alone = _hf_logits(model, px[i:i + 1], np.array([p + [7, 8, 9]]))[0]
        np.testing.assert_allclose(ours[i, ids.shape[1] - len(p):], alone, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", [dict(), dict(num_beams=3)], ids=["greedy", "beam3"])
def test_each_row_continues_as_its_prompt_alone(ckpt, mode):
    """Default positions: a ragged list and the same left-padded array with its mask both give,
    per row, transformers' output for that prompt alone (no padding, so no position question)."""
    model, params, config, gen = ckpt
    prompts = _prompts(gen.decoder_start_token_id)
    px = rand_pixels(len(prompts), seed=4)
    ids, mask = _left_padded(prompts, gen.pad_token_id)
    from_list = pv.generate(params, px, config, decoder_input_ids=prompts, max_new_tokens=NEW, **mode).sequences
    from_array = pv.generate(params, px, config, decoder_input_ids=ids, decoder_attention_mask=mask,
                             max_new_tokens=NEW, **mode).sequences
    np.testing.assert_array_equal(from_list, from_array)
    np.testing.assert_array_equal(from_list[:, :ids.shape[1]], ids)
    for i, p in enumerate(prompts):
        alone = _hf_generate(model, px[i:i + 1], np.array([p]), **mode)[0]
        np.testing.assert_array_equal(_continuation(from_list[i], ids.shape[1], gen.pad_token_id),
                                      _continuation(alone, len(p), gen.pad_token_id), err_msg=f"row {i}")


@pytest.mark.parametrize("ckpt", ["gpt2"], indirect=True)
@pytest.mark.parametrize("mode", [dict(num_return_sequences=2), dict(num_beams=3, num_return_sequences=2)],
                         ids=["sample", "beam_sample"])
def test_sampling_with_per_image_keys_continues_as_alone(ckpt, mode):
    """Sampling draws for the whole batch at once from one key, so rows are compared with one key
    per image (jax.random.split): each image draws only from its own, per generated step. The
    references are our own generate (torch's sampler draws other numbers; the greedy and beam
    tests tie the positions to transformers): the prompts of 1 and 4 tokens alone, with their
    image's key (each alone prompt length is one more compile), and every row in a second batch
    in reverse order with three more columns of padding."""
    _, params, config, gen = ckpt
    prompts = _prompts(gen.decoder_start_token_id, seed=2)
    px = rand_pixels(len(prompts), seed=5)
    keys = jax.random.split(jax.random.key(7), len(prompts))
    kw = dict(do_sample=True, temperature=1.5, top_k=0, max_new_tokens=NEW, **mode)
    k = mode["num_return_sequences"]
    batch = pv.generate(params, px, config, decoder_input_ids=prompts, key=keys, **kw).sequences
    width = max(map(len, prompts))
    row = lambda seq, i, j, n: _continuation(seq[i * k + j], n, gen.pad_token_id)  # noqa: E731
    for i in (0, 3):
        alone = pv.generate(params, px[i:i + 1], config, decoder_input_ids=[prompts[i]], key=keys[i:i + 1],
                            **kw).sequences
        for j in range(k):
            np.testing.assert_array_equal(row(batch, i, j, width), row(alone, 0, j, len(prompts[i])),
                                          err_msg=f"row {i}.{j}")
    ids, mask = _left_padded(prompts[::-1], gen.pad_token_id)
    ids = np.concatenate([np.full((len(prompts), 3), gen.pad_token_id), ids], axis=1)
    mask = np.concatenate([np.zeros((len(prompts), 3), mask.dtype), mask], axis=1)
    wide = pv.generate(params, px[::-1], config, decoder_input_ids=ids, decoder_attention_mask=mask,
                       key=keys[::-1], **kw).sequences
    n = len(prompts)
    for i in range(n):
        for j in range(k):
            np.testing.assert_array_equal(row(batch, i, j, width), row(wide, n - 1 - i, j, width + 3),
                                          err_msg=f"row {i}.{j}")
    other = pv.generate(params, px, config, decoder_input_ids=prompts,
                        key=jax.random.split(jax.random.key(8), len(prompts)), **kw).sequences
    assert other.shape != batch.shape or not np.array_equal(other, batch)  # the draws do depend on the key


@pytest.mark.parametrize("mode", [dict(), dict(num_beams=3)], ids=["greedy", "beam3"])
def test_shifted_positions_equal_transformers_batched_left_padding(ckpt, mode):
    model, params, config, gen = ckpt
    prompts = _prompts(gen.decoder_start_token_id, seed=3)
    px = rand_pixels(len(prompts), seed=6)
    ids, mask = _left_padded(prompts, gen.pad_token_id)
    ours = pv.generate(params, px, config, decoder_input_ids=ids, decoder_attention_mask=mask,
                       positions="shifted", max_new_tokens=NEW, **mode).sequences
    np.testing.assert_array_equal(ours, _hf_generate(model, px, ids, mask, **mode))
    listed = pv.generate(params, px, config, decoder_input_ids=prompts, positions="shifted", max_new_tokens=NEW,
                         **mode).sequences
    np.testing.assert_array_equal(listed, ours)


@pytest.mark.parametrize("ckpt", ["gpt2"], indirect=True)
def test_list_rows_without_start_token_each_get_it(ckpt):
    """A pad id equal to the start id must not pass for a row's start token after padding.
    Six rows of up to 6 tokens: test_each_row_continues_as_its_prompt_alone[greedy]'s program."""
    model, params, config, gen = ckpt
    start = gen.decoder_start_token_id
    prompts = [[5, 6, 7], [start, 9], [11], [13, 14, 15, 16, 17], [start], [20, 21]]
    px = rand_pixels(len(prompts), seed=7)
    ours = pv.generate(params, px, config, decoder_input_ids=prompts, max_new_tokens=NEW).sequences
    fulls = [p if p[0] == start else [start] + p for p in prompts]
    width = max(map(len, fulls))
    for i, full in enumerate(fulls):
        alone = _hf_generate(model, px[i:i + 1], np.array([full]))[0]
        np.testing.assert_array_equal(ours[i, width - len(full):width], full)
        np.testing.assert_array_equal(_continuation(ours[i], width, gen.pad_token_id),
                                      _continuation(alone, len(full), gen.pad_token_id))


@pytest.mark.parametrize("ckpt", ["gpt2"], indirect=True)
def test_bad_positions_and_keys_are_refused(ckpt):
    _, params, config, _ = ckpt
    px = rand_pixels(6, seed=3)  # test_step_with_left_padded_mask_gives_each_row_its_alone_logits's cache
    with pytest.raises(ValueError, match="positions='absolute' must be one of"):
        pv.generate(params, px, config, positions="absolute", max_new_tokens=2)
    cache = pv.init_cache(params, pv.encode(params, px, config), config, 9)
    with pytest.raises(ValueError, match="positions"):
        pv.step(params, cache, np.zeros((6, 1), np.int32), config, positions=None)
    with pytest.raises(ValueError, match="one per image"):
        pv.generate(params, px, config, do_sample=True, max_new_tokens=2,
                    key=jax.random.split(jax.random.key(0), 7))
    with pytest.raises(ValueError, match="key must be"):
        pv.generate(params, px, config, do_sample=True, max_new_tokens=2, key=np.zeros(3, np.float32))
