"""The captioning loss with VisionEncoderDecoderModel's semantics, and the label shift it needs.

``labels`` are the target tokens, unshifted, -100 where a position does not count (padding).
The decoder reads them shifted right one place behind ``decoder_start_token_id`` (-100 read
as the pad id), so the logits at position t predict ``labels[:, t]`` directly: there is
exactly one shift, here (transformers 4.50-4.55 shifted twice and broke Donut/TrOCR
fine-tuning; tests/training/test_loss.py checks the alignment itself).

Several caption rows per image (COCO's five) are image-major: rows r*k..r*k+k-1 of ``labels``
belong to image r, and each image is encoded once.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..config import Config
from ..errors import ConfigError
from ..layers import site_key
from ..length_buckets import bucket_length, pad_columns
from ..inputs import check_mask, check_pixels, check_rows, compute_dtype
from ..params import unpack
from ..passes import decode_pass, encode_pass
from ..sharding import batch_split, gather_weights, weight_gathers

IGNORE_INDEX = -100  # transformers' (and torch CrossEntropyLoss's) ignore index


class LossOutput(NamedTuple):
    """What ``loss`` returns. ``loss`` is the mean over counted tokens; the sums let a caller
    average exactly over devices or accumulation steps (sum ``loss_sum`` and ``tokens``, then divide)."""
    loss: jax.Array
    """float32 scalar: loss_sum / max(tokens, 1) (0 when no token counts)."""
    loss_sum: jax.Array
    """float32 scalar: summed per-token loss over tokens whose label is not -100."""
    tokens: jax.Array
    """int32 scalar: how many labels are not -100."""
    correct: jax.Array
    """int32 scalar: counted tokens whose argmax logit is the label."""
    accuracy: jax.Array
    """float32 scalar: correct / max(tokens, 1)."""


def _config_from(config) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, dict) and isinstance(config.get("config"), Config):
        return config["config"]
    raise ConfigError("shift_right needs a purevedec.Config (or params carrying one) for "
                      "decoder_start_token_id and pad_token_id, or both ids passed explicitly")


def special_ids(config: Config | None, decoder_start_token_id=None, pad_token_id=None) -> tuple[int, int]:
    """(decoder start id, pad id): explicit values win over the config's; a missing one raises
    the error transformers raises, as a ConfigError."""
    if config is not None and (decoder_start_token_id is None or pad_token_id is None):
        config = _config_from(config)
        decoder_start_token_id = (config.decoder_start_token_id if decoder_start_token_id is None
                                  else decoder_start_token_id)
        pad_token_id = config.pad_token_id if pad_token_id is None else pad_token_id
    if decoder_start_token_id is None:
        raise ConfigError("decoder_start_token_id is not set: set config.decoder_start_token_id (the model's "
                          "config.json) or pass decoder_start_token_id= to shift the labels right")
    if pad_token_id is None:
        raise ConfigError("pad_token_id is not set: set config.pad_token_id (the model's config.json) or pass "
                          "pad_token_id= (the id that replaces -100 in the decoder inputs)")
    return int(decoder_start_token_id), int(pad_token_id)


def shift_right(labels, config=None, *, decoder_start_token_id=None, pad_token_id=None) -> jax.Array:
    """Decoder inputs from labels, as transformers' ``shift_tokens_right``: [B,T] -> [B,T] with
    column 0 the decoder start id, column t the label at t-1, and -100 replaced by the pad id.
    ``config`` is a Config or params carrying one; explicit ids win."""
    start, pad = special_ids(config, decoder_start_token_id, pad_token_id)
    labels = jnp.asarray(labels)
    if labels.ndim != 2 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be a [B,T] integer array, got shape {labels.shape} dtype {labels.dtype}")
    first = jnp.full((labels.shape[0], 1), start, labels.dtype)
    shifted = jnp.concatenate([first, labels[:, :-1]], axis=1)
    return jnp.where(shifted == IGNORE_INDEX, jnp.asarray(pad, labels.dtype), shifted)


def token_losses(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0):
    """Per-token cross-entropy [B,T] (0 where the label is -100) and whether the argmax is right.

    With smoothing e the target is (1-e) one-hot + e uniform, as torch's
    ``CrossEntropyLoss(label_smoothing=e)``: (1-e) * nll + e * mean over the vocabulary of -log p."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B,T,V]
    counted = labels != IGNORE_INDEX
    target = jnp.where(counted, labels, 0)
    nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    right = (jnp.argmax(logits, axis=-1) == target) & counted
    return jnp.where(counted, nll, 0.0), right, counted


def summarize(per_token: jax.Array, right: jax.Array, counted: jax.Array) -> LossOutput:
    total = jnp.sum(per_token)
    tokens = jnp.sum(counted, dtype=jnp.int32)
    correct = jnp.sum(right, dtype=jnp.int32)
    denom = jnp.maximum(tokens, 1).astype(jnp.float32)
    return LossOutput(total / denom, total, tokens, correct, correct.astype(jnp.float32) / denom)


def loss_core(weights: dict, pixels, labels, config: Config, *, decoder_attention_mask=None, key=None,
              label_smoothing: float = 0.0, dtype=jnp.float32, remat: bool = False,
         pad_to_multiple_of: int | None = None) -> LossOutput:
    """The traceable loss over a weights tree (no checks): for use inside jitted training code.
    Dropout keys are split as ``forward`` splits them, so ``key`` gives the same logits there."""
    ids = shift_right(labels, config)
    enc, _ = encode_pass(weights, pixels, config, False, dtype, site_key(key, 0), remat)
    logits = decode_pass(weights, ids, enc, config, decoder_attention_mask, None, dtype, site_key(key, 1),
                     remat)["logits"]
    return summarize(*token_losses(logits, labels, label_smoothing))


def _loss_program(weights, pixels, labels, config, *, decoder_attention_mask, key, label_smoothing, dtype, remat,
                  gathers) -> LossOutput:
    """loss_core with FSDP's weights gathered (``sharding.weight_gathers``)."""
    return loss_core(gather_weights(weights, gathers), pixels, labels, config,
                     decoder_attention_mask=decoder_attention_mask, key=key, label_smoothing=label_smoothing,
                     dtype=dtype, remat=remat)


_loss_jit = jax.jit(_loss_program, static_argnames=("config", "label_smoothing", "dtype", "remat", "gathers"))


def check_labels(labels, config: Config) -> None:
    """Shape, dtype and (when concrete) range: token ids in [0, V) or -100."""
    if getattr(labels, "ndim", None) != 2 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be a [B,T] integer array (-100 = not counted), got shape "
                         f"{getattr(labels, 'shape', None)} dtype {getattr(labels, 'dtype', None)}")
    if labels.shape[1] > config.decoder.n_positions:
        raise ValueError(f"labels have {labels.shape[1]} positions, beyond the decoder's "
                         f"n_positions={config.decoder.n_positions}")
    if isinstance(labels, jax.core.Tracer) or not labels.size:
        return
    values = np.asarray(labels)
    bad = (values != IGNORE_INDEX) & ((values < 0) | (values >= config.decoder.vocab_size))
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise ValueError(f"labels[{row}, {col}] = {int(values[row, col])} is neither a token id in "
                         f"[0, {config.decoder.vocab_size}) nor the ignore index -100")


def _check_smoothing(label_smoothing) -> float:
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) or not (
            0.0 <= label_smoothing <= 1.0):
        raise ValueError(f"label_smoothing={label_smoothing!r} must be a number in [0, 1]")
    return float(label_smoothing)


def loss(params, pixels, labels, config: Config | None = None, *, decoder_attention_mask=None, key=None,
         label_smoothing: float = 0.0, dtype=jnp.float32, remat: bool = False,
         pad_to_multiple_of: int | None = None) -> LossOutput:
    """Cross-entropy of the captions ``labels`` given the images, as
    ``VisionEncoderDecoderModel(pixel_values, labels=labels).loss``.

    pixels [B,C,H,W]; labels [B*k,T] unshifted token ids, -100 where a position does not count
    (k caption rows per image, image-major; each image is encoded once); decoder_attention_mask
    [B*k,T] (1 = token) masks the decoder's keys, as transformers passes it. ``key`` turns on
    dropout (same key, same loss; None is evaluation); ``label_smoothing`` as torch's
    CrossEntropyLoss; ``dtype`` the compute dtype; ``remat`` recomputes each layer in the
    backward pass to save memory. ``pad_to_multiple_of=m`` pads the labels to a multiple of m
    with -100 (one compiled program per bucket of lengths, the same loss; see
    ``purevedec.length_buckets``). Differentiable in ``params``. Returns a ``LossOutput``."""
    weights, config = unpack(params, config)
    special_ids(config)
    check_pixels(pixels, config)
    check_labels(labels, config)
    check_rows(pixels.shape[0], labels.shape[0], "labels")
    check_mask(decoder_attention_mask, labels, "decoder_attention_mask")
    padded = bucket_length(labels.shape[1], pad_to_multiple_of, config.decoder.n_positions)
    labels = pad_columns(labels, padded, IGNORE_INDEX)
    decoder_attention_mask = pad_columns(decoder_attention_mask, padded, 0)
    return _loss_jit(weights, pixels, labels, config=config, decoder_attention_mask=decoder_attention_mask,
                     key=key, label_smoothing=_check_smoothing(label_smoothing), dtype=compute_dtype(dtype),
                     remat=bool(remat), gathers=weight_gathers(weights, batch_split(pixels)))
