"""Generation defaults as a frozen, hashable dataclass: ``GenerationConfig``.

It lives in the core (not in ``generation``) because every params tree carries one at
``params["generation_config"]``: ``init_params`` attaches the defaults its config implies
(``defaults_for``), ``load`` the checkpoint's, so trees built either way have one structure.
Like ``Config`` it is a leafless static pytree node. Parsing and checking the options
(``from_dict``, ``with_options``) stay in ``generation.options``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax

from . import validate as v
from .config import Config


@jax.tree_util.register_static
@dataclass(frozen=True)
class GenerationConfig:
    """The generation options purevedec implements, with transformers' defaults (frozen, hashable)."""
    max_length: int | None = None
    """Longest sequence, prompt included; None: prompt + 20 (transformers' default)."""
    max_new_tokens: int | None = None
    """Most tokens to generate after the prompt; wins over ``max_length``."""
    min_length: int | None = None
    """EOS is banned until the sequence, prompt included, is this long."""
    min_new_tokens: int | None = None
    """EOS is banned until this many tokens were generated."""
    do_sample: bool = False
    """Sample (with ``key``) instead of greedy or beam search."""
    num_beams: int = 1
    """Beams per image; 1 is greedy search or sampling."""
    num_return_sequences: int = 1
    """Sequences returned per image (at most ``num_beams`` for beam search)."""
    temperature: float = 1.0
    """Divides the logits before sampling (1 is neutral)."""
    top_k: int | None = 50
    """Sampling keeps the k most likely tokens; 0 or None turns it off."""
    top_p: float = 1.0
    """Sampling keeps the smallest set of tokens with this much probability (1 is off)."""
    repetition_penalty: float = 1.0
    """Divides positive (multiplies negative) logits of tokens already in the sequence (1 is off)."""
    length_penalty: float = 1.0
    """Beam search: a finished beam's score is its summed log-prob / (generated tokens) ** length_penalty."""
    early_stopping: bool | str = False
    """Beam search stopping rule: True, False or "never", as transformers."""
    no_repeat_ngram_size: int = 0
    """Bans any n-gram of this size from appearing twice (0 is off)."""
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None
    """Token sequences that are never generated."""
    forced_bos_token_id: int | None = None
    """Token forced as the first generated token."""
    forced_eos_token_id: tuple[int, ...] | None = None
    """Token(s) forced when ``max_length`` is reached."""
    bos_token_id: int | None = None
    """Beginning-of-sequence id."""
    eos_token_id: tuple[int, ...] | None = None
    """End-of-sequence ids: generation of a row stops at any of them."""
    pad_token_id: int | None = None
    """Id written after EOS."""
    decoder_start_token_id: int | None = None
    """Token every generated sequence starts with (before a prompt)."""
    from_config: bool = dataclasses.field(default=False, compare=False, repr=False)
    """True for the defaults ``init_params`` derived from its config: calls then take them from
    the config they use (transformers' ``_from_model_config``). Not an option: never compared,
    hashed or saved, so trees from ``init_params`` and ``load`` keep one structure."""


SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
FIELDS = tuple(f.name for f in dataclasses.fields(GenerationConfig) if f.compare)  # the options


def defaults_for(config: Config) -> GenerationConfig:
    """Generation defaults of a config built in code (no generation_config): its own special ids,
    the top-level ones first, then the decoder's, as transformers' from_model_config reads them."""
    dec = config.decoder
    pick = lambda a, b: a if a is not None else b  # noqa: E731
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=dec.bos_token_id,
        eos_token_id=v.token_ids(pick(config.eos_token_id, dec.eos_token_id), "eos_token_id"),
        pad_token_id=pick(config.pad_token_id, dec.pad_token_id))


def implied_defaults(config: Config) -> GenerationConfig:
    """``defaults_for(config)``, marked ``from_config``: what ``init_params`` attaches."""
    return dataclasses.replace(defaults_for(config), from_config=True)


def defaults_of(params, config: Config) -> GenerationConfig:
    """The generation defaults a call on ``params`` with ``config`` uses: the params' own (a
    checkpoint's, or given to ``init_params``), else (none, or ``from_config`` ones) those
    ``config`` implies, so a config edited into the params or passed beside them brings its own
    special ids, as transformers does for a generation config made from the model config."""
    gen = params.get("generation_config")
    return defaults_for(config) if gen is None or gen.from_config else gen
