"""A self-attention cache that grows in buckets gives generate's tokens, scores and maps, for
GPT-2 and TrOCR decoders, every decoding mode, ragged prompts and rows ending at different steps."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

import purevedec as pv
from purevedec.decoder_cache import DecoderCache
from purevedec.generation.growing import bucket_sizes, generate_growing, grow_cache
from conftest import make_reference, rand_pixels, save_reference
from ocr_models import make_ocr_reference

MODES = {
    "greedy": dict(),
    "sample": dict(do_sample=True, top_k=20, temperature=1.3),
    "beam": dict(num_beams=3, num_return_sequences=2),
    "beam_sample": dict(num_beams=2, do_sample=True),
    "processors": dict(repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=3),
}


def _build(family: str, path) -> tuple:
    """(params, EOS ids, a row and a column 6-12 where it ends on them when EOS is banned before):
    the checkpoint's EOS and a token greedy decoding first writes at that column of that row."""
    ref = make_reference(init_scale=3.0, seed=3) if family == "gpt2" else make_ocr_reference(seed=1, scale=0.6)
    params, _ = pv.load(save_reference(ref, path))
    greedy = pv.generate(params, rand_pixels(3, seed=2), max_new_tokens=12, min_new_tokens=12).sequences
    row, col = next((r, c) for c in range(12, 5, -1) for r, seq in enumerate(greedy) if seq[c] not in seq[1:c])
    return params, (*params["generation_config"].eos_token_id, int(greedy[row, col])), (row, col)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    built = {}

    def get(family):
        if family not in built:
            built[family] = _build(family, tmp_path_factory.mktemp(family))
        return built[family]
    return get


def test_bucket_sizes():
    assert bucket_sizes(1, 100, 8) == (8, 16, 32, 64, 100)
    assert bucket_sizes(9, 100, 8) == (16, 32, 64, 100)  # the first bucket holds the prompt and a token
    assert bucket_sizes(3, 20, 32) == (20,)
    with pytest.raises(ValueError, match="bucket_start"):
        bucket_sizes(1, 10, 0)


def test_grow_cache_pads_only_the_self_entries():
    kv = (np.ones((2, 3, 4, 5)), np.ones((2, 3, 4, 5)))
    cross = ((np.ones((2, 3, 7, 5)),) * 2,)
    cache = DecoderCache(self_kv=(kv,), cross_kv=cross, mask=np.ones((2, 4), bool), offset=np.zeros(2), pos=4)
    grown = grow_cache(cache, 9)
    assert grown.self_kv[0][0].shape == (2, 3, 9, 5) and grown.mask.shape == (2, 9)
    assert not np.any(grown.mask[:, 4:]) and np.all(grown.mask[:, :4])
    assert not np.any(grown.self_kv[0][1][:, :, 4:]) and grown.cross_kv is cache.cross_kv
    with pytest.raises(ValueError, match="shrink"):
        grow_cache(cache, 3)


# Every mode on GPT-2; TrOCR (its own positions and cache code) greedy, sampling and beams.
CASES = [("gpt2", m) for m in sorted(MODES)] + [("trocr", m) for m in ("beam", "greedy", "sample")]


@pytest.mark.parametrize("family,mode", CASES)
def test_growing_cache_equals_generate(models, family, mode):
    """Buckets of 2, 4, 8, 16 columns, then max_length: every boundary is crossed."""
    params, eos, (row, col) = models(family)
    px = rand_pixels(3, seed=2)
    kw = dict(dict(min_new_tokens=col - 1), **MODES[mode], max_new_tokens=18, eos_token_id=eos, key=jax.random.key(4),
              output_cross_attentions=mode in ("greedy", "beam"))
    want = pv.generate(params, px, **kw)
    got = generate_growing(params, px, bucket_start=2, **kw)
    np.testing.assert_array_equal(got.sequences, want.sequences)
    assert got.sequences.shape[1] > 8  # past several buckets
    if mode == "greedy":  # a row ends on EOS at column col
        assert got.sequences[row, col] in eos
    # float32 log-softmax over caches of other lengths, reduced in another order: a few ulps (with
    # XLA's older fusion emitters, 1.1e-5 on one TrOCR beam step; 1.5e-5 on a sum of 18 near -16)
    np.testing.assert_allclose(got.scores, want.scores, rtol=3e-6, atol=1e-5)
    np.testing.assert_allclose(got.token_logprobs, want.token_logprobs, atol=1e-4)
    if want.cross_attentions is not None:
        np.testing.assert_allclose(got.cross_attentions, want.cross_attentions, atol=1e-5)  # the same ulps, carried


@pytest.mark.parametrize("family", ["gpt2", "trocr"])
def test_growing_with_ragged_prompts_and_per_image_keys(models, family):
    params, eos, _ = models(family)
    px = rand_pixels(3, seed=7)
    start = params["generation_config"].decoder_start_token_id
    kw = dict(decoder_input_ids=[[start, 5], [start], [start, 7, 9, 11]], max_new_tokens=15, do_sample=True,
              key=jax.random.split(jax.random.key(1), 3), eos_token_id=eos)
    want = pv.generate(params, px, **kw)
    got = generate_growing(params, px, bucket_start=4, **kw)
    np.testing.assert_array_equal(got.sequences, want.sequences)


def test_greedy_growing_matches_transformers(tmp_path):
    ref = make_reference(init_scale=3.0, seed=3)
    params, _ = pv.load(save_reference(ref, tmp_path))
    px = rand_pixels(2, seed=5)
    with torch.no_grad():
        want = ref.generate(pixel_values=torch.tensor(px), max_new_tokens=20).numpy()
    np.testing.assert_array_equal(generate_growing(params, px, bucket_start=4, max_new_tokens=20).sequences, want)
