"""Score given captions: the log-likelihood the model gives each token of given ids, per token and
per sequence, for rerankers, evaluation and RL.

    out = score(params, pixels, ids, attention_mask=mask)   # ids as generate returns them
    out.token_logprobs  # [N,T-1]: log p(ids[:, t+1] | image, ids[:, :t+1]); 0 where not counted
    out.logprob         # [N]: their sum (divided by tokens ** length_penalty on request)

Token t+1 counts when it is past the prompt (``prompt_len``, default 1: the start token) and its
attention mask is 1. The per-token values are the negatives of transformers' per-token
cross-entropy with the same tokens as labels (-100 elsewhere); the sequence value with
``length_penalty`` is the score ``generate`` gives a finished beam.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .config import Config
from .length_buckets import bucket_length, pad_columns
from .model import forward
from .params import unpack


class Score(NamedTuple):
    """``score``'s output; N rows of T ids."""
    token_logprobs: jax.Array
    """[N,T-1] float32: log-prob of ids[:, t+1] given the image and ids[:, :t+1]; 0 at prompt and padding."""
    logprob: jax.Array
    """[N] float32: the sum of ``token_logprobs``, divided by ``tokens ** length_penalty``."""
    tokens: jax.Array
    """[N] int32: how many tokens count (past the prompt, attention mask 1)."""


def score(params, pixels, ids, config: Config | None = None, *, attention_mask=None, prompt_len=1,
          length_penalty: float = 0.0, position_ids=None, dtype=jnp.float32,
          pad_to_multiple_of: int | None = None) -> Score:
    """Log-likelihood of ``ids`` [N,T] (k rows per image, image-major, as in ``forward``) given
    ``pixels`` [B,C,H,W]. ``attention_mask`` [N,T] (1 = token) marks padding, which neither counts
    nor is attended to; ``prompt_len`` (an int, or [N] ints for ragged prompts) is how many leading
    ids are given rather than scored. ``length_penalty`` 0 sums the log-probs, 1 averages them.
    ``pad_to_multiple_of=m`` scores at T rounded up to a multiple of m (one compiled program per
    bucket of lengths, the same values; see ``purevedec.length_buckets``).
    Traceable: usable under ``jit`` and ``vmap`` (then ``ids`` cannot be range-checked)."""
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float, jax.Array, np.ndarray)):
        raise ValueError(f"length_penalty={length_penalty!r} must be a number (0: sum, 1: mean)")
    prompt = jnp.asarray(prompt_len)
    if prompt.ndim > 1 or not jnp.issubdtype(prompt.dtype, jnp.integer) or \
            (prompt.ndim == 1 and prompt.shape[0] != np.shape(ids)[0]):
        raise ValueError(f"prompt_len must be an int or one int per row of ids, got shape {prompt.shape} "
                         f"and dtype {prompt.dtype}")
    length = np.shape(ids)[1]
    if pad_to_multiple_of is not None:
        padded = bucket_length(length, pad_to_multiple_of, unpack(params, config)[1].decoder.n_positions)
        mask = np.ones(np.shape(ids), np.int32) if attention_mask is None else attention_mask
        ids, attention_mask = pad_columns(ids, padded, 0), pad_columns(mask, padded, 0)
        position_ids = pad_columns(position_ids, padded, 0)
    logits = forward(params, pixels, ids, config, attention_mask=attention_mask, position_ids=position_ids,
                     dtype=dtype)
    mask = jnp.ones(ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask) != 0
    out = _score(logits, jnp.asarray(ids), mask, prompt, jnp.float32(length_penalty))
    if out.token_logprobs.shape[1] == length - 1:
        return out
    return out._replace(token_logprobs=out.token_logprobs[:, :length - 1])  # the padding's are 0


@jax.jit
def _score(logits, ids, mask, prompt, length_penalty) -> Score:
    # logits [N,T,V] at t predict ids[:, t+1]; [N,T-1] from here on
    picked = token_logprobs(logits[:, :-1], ids[:, 1:])
    target = jnp.arange(1, ids.shape[1])[None, :]
    counted = mask[:, 1:] & (target >= prompt.reshape(-1, 1))
    picked = jnp.where(counted, picked, 0.0)
    tokens = jnp.sum(counted, axis=-1, dtype=jnp.int32)
    total = jnp.sum(picked, axis=-1)
    return Score(picked, total / jnp.maximum(tokens, 1).astype(jnp.float32) ** length_penalty, tokens)


def token_logprobs(logits, ids) -> jax.Array:
    """log_softmax(logits)[..., ids] in float32: logits [..., V], ids [...] -> [...]. Computed as
    logit - logsumexp (no [..., V] array of log-probs kept)."""
    logits = logits.astype(jnp.float32)
    chosen = jnp.take_along_axis(logits, ids[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return chosen - jax.nn.logsumexp(logits, axis=-1)
