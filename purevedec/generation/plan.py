"""From options to a static plan: the decoding mode, lengths, special ids and processors of one
generate call, and the decoder prompt. Everything here runs in Python, before tracing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..config import Config
from ..errors import ConfigError
from .options import GenerationConfig
from .processors import Processing


@dataclass(frozen=True)
class Plan:
    """Everything static about one generate call (hashed by jit)."""
    mode: str                 # "greedy", "sample", "beam", "beam_sample"
    num_beams: int
    num_return_sequences: int
    rows_per_image: int       # decoder rows per image: beams, or returned samples
    early_stopping: object    # True, False or "never"
    pad: int                  # what fills the token buffer after a row ends
    processing: Processing
    cross_attentions: bool    # whether per-token cross-attention maps are kept
    score_stop: Optional[tuple[float, int]] = None   # Nougat's stopping rule (threshold, window), if on


def lengths(gen: GenerationConfig, prompt_len: int, config: Config) -> tuple[int, int]:
    """(max_length, min_length) in decoder tokens, prompt included, as transformers computes them."""
    if gen.max_new_tokens is not None:
        max_length = prompt_len + gen.max_new_tokens
    elif gen.max_length is not None:
        max_length = gen.max_length
    else:
        max_length = prompt_len + 20  # transformers' default: 20 new tokens
    if prompt_len >= max_length:
        raise ValueError(f"Input length of decoder_input_ids is {prompt_len}, but `max_length` is set to "
                         f"{max_length}. Set max_new_tokens to generate new tokens.")
    if max_length > config.decoder.n_positions:
        raise ValueError(f"max_length={max_length} exceeds the decoder's n_positions={config.decoder.n_positions}")
    min_length = gen.min_length or 0
    if gen.min_new_tokens is not None:
        min_length = gen.min_new_tokens + prompt_len
    return max_length, min_length


def _mode(gen: GenerationConfig) -> str:
    if gen.num_beams == 1:
        if gen.num_return_sequences > 1 and not gen.do_sample:
            raise ValueError("Greedy search cannot return num_return_sequences > 1; use beams or do_sample=True")
        return "sample" if gen.do_sample else "greedy"
    if gen.num_return_sequences > gen.num_beams:
        raise ValueError("`num_return_sequences` has to be smaller or equal to `num_beams`.")
    return "beam_sample" if gen.do_sample else "beam"


def special_ids(gen: GenerationConfig) -> tuple[int, tuple[int, ...], Optional[int]]:
    """(decoder start, eos ids, pad) with transformers' fallbacks: start <- bos; pad <- eos[0]."""
    start = gen.decoder_start_token_id if gen.decoder_start_token_id is not None else gen.bos_token_id
    if start is None:
        raise ValueError("`decoder_start_token_id` or `bos_token_id` has to be defined for encoder-decoder generation.")
    eos = gen.eos_token_id or ()
    pad = gen.pad_token_id if gen.pad_token_id is not None else (eos[0] if eos else None)
    return start, eos, pad


def start_origin(gen: GenerationConfig) -> str:
    """Where the decoder start token came from, for messages about it."""
    if gen.decoder_start_token_id is not None:
        return f"decoder_start_token_id={gen.decoder_start_token_id}"
    return f"bos_token_id={gen.bos_token_id} (decoder_start_token_id is unset)"


def _check_vocab(gen: GenerationConfig, vocab: int) -> None:
    """Ids that the decoder reads or processors index the vocabulary with (JAX indexing would
    wrap or drop them). The start token begins every prompt, given or not."""
    start = special_ids(gen)[0]
    if not 0 <= start < vocab:
        raise ConfigError(f"the decoder start token {start} (from {start_origin(gen)}) is outside the vocabulary "
                          f"[0, {vocab}): set decoder_start_token_id in the Config or pass it to generate()")
    named = {"bad_words_ids": [t for row in gen.bad_words_ids or () for t in row],
             "forced_bos_token_id": [] if gen.forced_bos_token_id is None else [gen.forced_bos_token_id],
             "forced_eos_token_id": list(gen.forced_eos_token_id or ())}
    for name, ids in named.items():
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"{name} holds {bad[:5]}, outside the vocabulary [0, {vocab})")


def make_plan(gen: GenerationConfig, config: Config, prompt_len: int, cross_attentions: bool, *,
              traced: frozenset = frozenset()) -> Plan:
    """The static plan. ``traced`` names the numeric options given as jax arrays: their
    processors are compiled in whatever their value."""
    mode = _mode(gen)
    max_length, min_length = lengths(gen, prompt_len, config)
    _check_vocab(gen, config.decoder.vocab_size)
    _, eos, pad = special_ids(gen)
    bad = [b for b in (gen.bad_words_ids or ()) if not (len(b) == 1 and b[0] in eos)]  # eos is never banned
    beams = mode.startswith("beam")
    sample = mode in ("sample", "beam_sample")
    # Beam buffers are filled with `pad or eos[0]` (a pad id of 0 falls through to eos, as in transformers).
    fill = (pad or (eos[0] if eos else -1)) if beams else (pad if pad is not None else 0)
    processing = Processing(
        prompt_len=prompt_len, max_length=max_length, eos=eos,
        repetition_penalty="repetition_penalty" in traced or gen.repetition_penalty != 1.0,
        no_repeat_ngram_size=gen.no_repeat_ngram_size or 0,
        bad_single=tuple(b[0] for b in bad if len(b) == 1), bad_multi=tuple(b for b in bad if len(b) > 1),
        min_length=min_length, min_new_tokens=gen.min_new_tokens or 0,
        forced_bos_token_id=gen.forced_bos_token_id, forced_eos_token_id=gen.forced_eos_token_id,
        sample=sample, temperature="temperature" in traced or gen.temperature != 1.0, top_k=gen.top_k or 0,
        top_p="top_p" in traced or gen.top_p < 1.0,
        min_tokens_to_keep=(len(eos) + 1 if eos else 2) if (beams and sample) else 1)
    return Plan(mode=mode, num_beams=gen.num_beams, num_return_sequences=gen.num_return_sequences,
                rows_per_image=gen.num_beams if beams else gen.num_return_sequences,
                early_stopping=gen.early_stopping, pad=int(fill), processing=processing,
                cross_attentions=cross_attentions)


def _ragged(rows, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Token lists of different lengths -> left-padded [B,P] ids and their mask."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
    return ids, mask


def prepare_prompt(gen: GenerationConfig, batch: int, decoder_input_ids=None,
                   decoder_attention_mask=None, prepend_start: bool = True) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Decoder prompt [B,P] and mask. Rows given as lists of different lengths are left-padded,
    after the start token is put before each row that lacks it (as that row alone would get it;
    deciding after padding would take a pad id equal to the start id, as GPT-2's, for a start).
    For an array, like transformers, the start token is prepended when no row begins with it.
    ``prepend_start=False`` (Donut: its task prompt is the start) uses the rows as given."""
    start, _, pad = special_ids(gen)
    if decoder_input_ids is None:
        return np.full((batch, 1), start, np.int32), None
    if isinstance(decoder_input_ids, (list, tuple)) and any(np.ndim(r) == 1 for r in decoder_input_ids):
        if decoder_attention_mask is not None:
            raise ValueError("pass decoder_attention_mask only with a padded [B,P] decoder_input_ids array")
        if any(len(r) == 0 for r in decoder_input_ids) and not prepend_start:
            raise ValueError("decoder_input_ids has an empty row: this model's prompt must start its text")
        rows = [list(r) if (len(r) and r[0] == start) or not prepend_start else [start, *r]
                for r in decoder_input_ids]
        decoder_input_ids, decoder_attention_mask = _ragged(rows, pad if pad is not None else start)
    ids = np.asarray(decoder_input_ids)
    if ids.ndim != 2 or ids.shape[0] != batch:
        raise ValueError(f"decoder_input_ids must be [{batch},P] (one row per image), got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"decoder_input_ids must be integer token ids, got dtype {ids.dtype}")
    mask = None if decoder_attention_mask is None else np.asarray(decoder_attention_mask)
    if mask is not None and mask.shape != ids.shape:
        raise ValueError(f"decoder_attention_mask has shape {mask.shape}, expected {ids.shape}")
    if prepend_start and np.all(ids[:, 0] != start):
        ids = np.concatenate([np.full((batch, 1), start, ids.dtype), ids], axis=1)
        mask = None if mask is None else np.concatenate([np.ones((batch, 1), mask.dtype), mask], axis=1)
    return ids, mask
