"""score: per-token and per-sequence log-likelihood of given ids, against transformers' per-token
cross-entropy and against generate's own scores of what it generated."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purevedec as pv
from conftest import rand_pixels, save_reference
from models import make_reference


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = make_reference(seed=3, init_scale=2.0)
    params, _ = pv.load(save_reference(model, tmp_path_factory.mktemp("score") / "tiny"))
    return model, params


def _ids_and_mask():
    """3 rows of 7 ids (start token 0 first) for 3 images, right-padded after 7, 5 and 4 tokens."""
    ids = np.random.RandomState(2).randint(3, 50, (3, 7)).astype(np.int32)
    ids[:, 0] = 0
    mask = (np.arange(7)[None] < np.array([[7], [5], [4]])).astype(np.int32)
    return np.where(mask == 1, ids, 1), mask


def test_score_equals_transformers_cross_entropy(tiny):
    import torch
    model, params = tiny
    px = rand_pixels(3, seed=4)
    ids, mask = _ids_and_mask()
    out = pv.score(params, px, ids, attention_mask=mask)
    labels = torch.tensor(np.where(mask[:, 1:] == 1, ids[:, 1:], -100), dtype=torch.long)
    with torch.no_grad():
        logits = model(pixel_values=torch.tensor(px), labels=labels).logits
        per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none",
                                                      ignore_index=-100).numpy()
        row_means = [model(pixel_values=torch.tensor(px[i:i + 1]), labels=labels[i:i + 1]).loss.item()
                     for i in range(3)]
    np.testing.assert_allclose(np.asarray(out.token_logprobs), -per_token, atol=1e-4)
    counts = mask[:, 1:].sum(1)
    np.testing.assert_array_equal(np.asarray(out.tokens), counts)
    np.testing.assert_allclose(np.asarray(out.logprob), -np.array(row_means) * counts, rtol=1e-5, atol=1e-4)
    mean = pv.score(params, px, ids, attention_mask=mask, length_penalty=1.0).logprob
    np.testing.assert_allclose(np.asarray(mean), -np.array(row_means), rtol=1e-5, atol=1e-5)
    assert not np.any(np.asarray(out.token_logprobs)[2, 3:])  # padding scores nothing


def test_prompt_positions_are_not_scored(tiny):
    _, params = tiny
    px = rand_pixels(3, seed=4)
    ids, mask = _ids_and_mask()
    full = pv.score(params, px, ids, attention_mask=mask)
    ragged = pv.score(params, px, ids, attention_mask=mask, prompt_len=np.array([1, 3, 2], np.int32))
    expected = np.asarray(full.token_logprobs).copy()
    expected[1, :2] = 0.0
    expected[2, :1] = 0.0
    np.testing.assert_allclose(np.asarray(ragged.token_logprobs), expected, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(ragged.tokens), [6, 2, 2])
    with pytest.raises(ValueError, match="prompt_len"):
        pv.score(params, px, ids, prompt_len=np.array([1, 2], np.int32))
    with pytest.raises(ValueError, match="length_penalty"):
        pv.score(params, px, ids, length_penalty="mean")


@pytest.mark.parametrize("beams", [1, 3])
def test_score_of_generated_captions_equals_generate_scores(tiny, beams):
    """Greedy: the sum of the generated tokens' log-probs; beams (length_penalty 1): the finished
    beam's score. Rows that stop at EOS are padded after it: the mask from the lengths drops them."""
    _, params = tiny
    px = rand_pixels(2, seed=7)
    out = pv.generate_core(params, px, max_new_tokens=6, num_beams=beams, length_penalty=1.0)
    ids = np.asarray(out.sequences)
    mask = (np.arange(ids.shape[1])[None] < np.asarray(out.lengths)[:, None]).astype(np.int32)
    got = pv.score(params, px, np.where(mask == 1, ids, 0), attention_mask=mask,
                   length_penalty=1.0 if beams > 1 else 0.0)
    np.testing.assert_allclose(np.asarray(got.logprob), np.asarray(out.scores), rtol=1e-5, atol=1e-5)
    gen = np.asarray(out.token_logprobs)[:, :ids.shape[1] - 1]
    np.testing.assert_allclose(np.asarray(got.token_logprobs), gen, atol=1e-5)


def test_score_under_jit_and_vmap(tiny):
    _, params = tiny
    px = jnp.asarray(rand_pixels(3, seed=4))
    ids, mask = _ids_and_mask()
    eager = pv.score(params, px, ids, attention_mask=mask)
    jitted = jax.jit(lambda p, x, i, m: pv.score(p, x, i, attention_mask=m))(params, px, ids, mask)
    mapped = jax.vmap(lambda x, i, m: pv.score(params, x[None], i[None], attention_mask=m[None]).logprob[0])(
        px, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(jitted.logprob), np.asarray(eager.logprob), atol=1e-5)
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(eager.logprob), atol=1e-5)
    assert np.all(np.asarray(eager.logprob) < 0)


@pytest.mark.parametrize("options", [dict(do_sample=True, temperature=0.7, top_k=5),
                                     dict(num_beams=3, do_sample=True, temperature=0.5)])
def test_generate_returns_the_models_own_log_probs_beside_the_processed_ones(tiny, options):
    """Processors change what is sampled from: token_logprobs are of the processed distribution,
    model_logprobs of the model's own, equal to score() of the generated captions."""
    _, params = tiny
    px = rand_pixels(2, seed=8)
    out = pv.generate_core(params, px, max_new_tokens=6, key=jax.random.key(1), **options)
    ids = np.asarray(out.sequences)
    mask = (np.arange(ids.shape[1])[None] < np.asarray(out.lengths)[:, None]).astype(np.int32)
    scored = pv.score(params, px, np.where(mask == 1, ids, 0), attention_mask=mask)
    model_lp = np.asarray(out.model_logprobs)
    np.testing.assert_allclose(model_lp, np.asarray(scored.token_logprobs), atol=1e-5)
    assert np.max(np.abs(model_lp - np.asarray(out.token_logprobs))) > 1e-2
    trimmed = pv.generate(params, px, max_new_tokens=6, key=jax.random.key(1), **options)
    np.testing.assert_allclose(trimmed.model_logprobs, model_lp[:, :trimmed.token_logprobs.shape[1]], atol=1e-6)
