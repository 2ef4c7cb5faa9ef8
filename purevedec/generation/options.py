"""Generation defaults of a checkpoint, and the options ``generate`` accepts.

Names follow transformers' ``generate`` keywords so calls port over unchanged. A checkpoint's
defaults come from ``generation_config.json`` when it has one, else from the legacy generation
keys of ``config.json`` (top level first, then the ``decoder`` section for keys still unset),
which is where many older checkpoints keep ``num_beams``, ``max_length`` and friends; params
returned by ``load`` carry them at ``params["generation_config"]`` (a static pytree node).
Every option is validated here, whether it came from a file or a keyword, with an error that
names it (and the file): transformers refuses the same values.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Mapping

from .. import validate as v
from ..errors import ConfigError
from ..generation_config import FIELDS, SPECIAL_IDS, GenerationConfig  # noqa: F401 (re-exported)

# Accepted and without effect on the tokens produced (outputs are always returned in full).
_INERT = frozenset({
    "_from_model_config", "transformers_version", "use_cache", "output_scores", "output_attentions",
    "output_hidden_states", "output_logits", "return_dict_in_generate", "cache_implementation",
    "compile_config", "low_memory", "max_time", "trust_remote_code",
})
# transformers features not implemented here, with the value at which they do nothing.
_UNSUPPORTED = {
    "num_beam_groups": 1, "diversity_penalty": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0, "min_p": None, "top_h": None, "penalty_alpha": None, "guidance_scale": None,
    "sequence_bias": None, "suppress_tokens": None, "begin_suppress_tokens": None,
    "exponential_decay_length_penalty": None, "remove_invalid_values": False, "renormalize_logits": False,
    "constraints": None, "force_words_ids": None, "dola_layers": None, "stop_strings": None,
    "watermarking_config": None, "prompt_lookup_num_tokens": None, "forced_decoder_ids": None,
    "encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0, "token_healing": False,
}
# Beams, samples and generated tokens past these sizes are a mistake or an attack (a file asking
# for 2,000,000 beams would allocate [rows, vocab] buffers of terabytes), not a use.
MAX_BEAMS = 1024
MAX_RETURN_SEQUENCES = 16384


def _bad_words(value: Any, name: str) -> tuple[tuple[int, ...], ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value or isinstance(value[0], int):
        raise ConfigError(f"{name} must be a list of non-empty lists of token ids, got {value!r:.80}")
    return tuple(v.token_ids(row, name) for row in value)


def _check(name: str, value: Any) -> Any:
    """Type- and range-check one option and convert it to the hashable form the dataclass holds."""
    if name in ("eos_token_id", "forced_eos_token_id"):
        return v.token_ids(value, name)
    if name in ("bos_token_id", "pad_token_id", "decoder_start_token_id", "forced_bos_token_id"):
        return v.token_id(value, name)
    if name == "bad_words_ids":
        return _bad_words(value, name)
    if name == "early_stopping":
        return v.one_of(value, name, (True, False, "never"))
    if name == "do_sample":
        return v.flag(value, name)
    if name == "temperature":
        return v.number(value, name, low=0.0, low_open=True)
    if name == "top_p":
        return v.number(value, name, low=0.0, high=1.0)
    if name == "repetition_penalty":
        return v.number(value, name, low=0.0, low_open=True)
    if name == "length_penalty":
        return v.number(value, name)
    if name == "num_beams":
        return _at_most(v.positive_int(value, name), MAX_BEAMS, name)
    if name == "num_return_sequences":
        return _at_most(v.positive_int(value, name), MAX_RETURN_SEQUENCES, name)
    if value is None:
        return None
    if name in ("max_length", "max_new_tokens"):
        return v.positive_int(value, name)
    return v.non_negative_int(value, name)  # min_length, min_new_tokens, top_k, no_repeat_ngram_size


def _at_most(value: int, limit: int, name: str) -> int:
    if value > limit:
        raise ConfigError(f"{name}={value} is more than purevedec supports ({limit})")
    return value


def from_dict(d: Mapping, where: str) -> dict:
    """The supported options set in ``d`` (a generation_config.json, a legacy config section or
    generate()'s keywords), checked; errors name ``where`` and the option."""
    out = {}
    for name, value in d.items():
        if name in FIELDS:
            try:
                out[name] = _check(name, value)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
        elif name in _UNSUPPORTED:
            if value != _UNSUPPORTED[name] and value not in (None, [], {}):
                raise ConfigError(f"{where}: {name}={value!r:.80} is not supported by purevedec's generate")
        elif name not in _INERT:
            warnings.warn(f"{where}: ignoring unknown generation option {str(name)!r:.80}", stacklevel=3)
    return out


def legacy_options(config_dict: Mapping) -> dict:
    """transformers' GenerationConfig.from_model_config: top-level keys, then the decoder's."""
    keep = lambda d: {k: val for k, val in d.items() if k in FIELDS and val is not None}  # noqa: E731
    values = keep(config_dict)
    decoder = config_dict.get("decoder")
    for k, val in keep(decoder if isinstance(decoder, Mapping) else {}).items():
        values.setdefault(k, val)
    return from_dict(values, "config.json")


def from_checkpoint(config_dict: Mapping, file_dict: Mapping | None, file: str = "generation_config.json"
                    ) -> GenerationConfig:
    """A checkpoint's defaults: its generation_config.json (``file_dict``) when it has one, with
    the special ids the file leaves out taken from the model config; else config.json's legacy keys."""
    legacy = legacy_options(config_dict)
    if file_dict is None:
        return GenerationConfig(**legacy)
    ids = {k: val for k, val in legacy.items() if k in SPECIAL_IDS}
    return GenerationConfig(**{**ids, **from_dict(file_dict, file)})


# Options whose values may be traced (jax arrays) so that a sweep over them compiles once.
TRACEABLE = ("temperature", "top_p", "repetition_penalty", "length_penalty")


def with_options(base: GenerationConfig, options: Mapping) -> GenerationConfig:
    """``base`` updated with ``generate(**options)``; unknown keywords raise TypeError."""
    unknown = sorted(k for k in options if k not in FIELDS and k not in _UNSUPPORTED and k not in _INERT)
    if unknown:
        raise TypeError(f"generate() got unknown options {unknown}; supported: {sorted(FIELDS)}")
    return dataclasses.replace(base, **from_dict(options, "generate()"))


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
