"""Generation defaults of a checkpoint, and the options ``generate`` accepts.

Names follow transformers' ``generate`` keywords so calls port over unchanged. Defaults come
from ``generation_config.json`` when the checkpoint has one, else from the legacy generation
keys of ``config.json`` (top level first, then the ``decoder`` section for keys still unset),
which is where many older checkpoints keep ``num_beams``, ``max_length`` and friends.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ConfigError
from .jsonfile import read_json_object


@dataclass(frozen=True)
class GenerationConfig:
    max_length: int | None = None
    max_new_tokens: int | None = None
    min_length: int | None = None
    min_new_tokens: int | None = None
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    no_repeat_ngram_size: int = 0
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: tuple[int, ...] | None = None
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] | None = None
    pad_token_id: int | None = None
    decoder_start_token_id: int | None = None


_SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
FIELDS = tuple(f.name for f in dataclasses.fields(GenerationConfig))
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


def _ids(value: Any, name: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    raise ConfigError(f"{name} must be a token id or a list of token ids, got {value!r}")


def _normalise(name: str, value: Any) -> Any:
    """Type-check one option and convert it to the hashable form the dataclass holds."""
    if name in ("eos_token_id", "forced_eos_token_id"):
        return _ids(value, name)
    if name == "bad_words_ids":
        if value is None:
            return None
        if not isinstance(value, (list, tuple)) or not all(_ids(v, name) for v in value):
            raise ConfigError(f"bad_words_ids must be a list of non-empty lists of token ids, got {value!r}")
        return tuple(_ids(v, name) for v in value)
    if name == "early_stopping":
        if value not in (True, False, "never"):
            raise ConfigError(f"early_stopping must be True, False or 'never', got {value!r}")
        return value
    if name == "do_sample":
        if not isinstance(value, bool):
            raise ConfigError(f"do_sample must be true or false, got {value!r}")
        return value
    if name in ("temperature", "top_p", "repetition_penalty", "length_penalty"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name} must be an int or null, got {value!r}")
    return value


def from_dict(d: Mapping, where: str) -> dict:
    """The supported options set in ``d`` (a generation_config.json or legacy config section)."""
    out = {}
    for name, value in d.items():
        if name in FIELDS:
            out[name] = _normalise(name, value)
        elif name in _UNSUPPORTED:
            if value != _UNSUPPORTED[name] and value not in (None, [], {}):
                raise ConfigError(f"{where}: {name}={value!r} is not supported by purevedec's generate")
        elif name not in _INERT:
            warnings.warn(f"{where}: ignoring unknown generation option {name!r}", stacklevel=3)
    return out


def _legacy(config_dict: Mapping) -> dict:
    """transformers' GenerationConfig.from_model_config: top-level keys, then the decoder's."""
    keep = lambda d: {k: v for k, v in d.items() if k in FIELDS and v is not None}  # noqa: E731
    values = keep(config_dict)
    for k, v in keep(config_dict.get("decoder") or {}).items():
        values.setdefault(k, v)
    return from_dict(values, "config.json")


def load_generation_config(path: str, config_dict: Mapping) -> GenerationConfig:
    """generation_config.json in ``path`` if present, else the legacy keys of config.json."""
    file = os.path.join(path, "generation_config.json")
    if os.path.exists(file):
        d = read_json_object(file)
        # Special ids the file leaves out fall back to the model config (top level, then decoder).
        ids = {k: v for k, v in _legacy(config_dict).items() if k in _SPECIAL_IDS}
        return GenerationConfig(**{**ids, **from_dict(d, file)})
    return GenerationConfig(**_legacy(config_dict))


def resolve(base: GenerationConfig, options: Mapping) -> GenerationConfig:
    """``base`` updated with ``generate(**options)``; unknown keywords raise TypeError."""
    unknown = sorted(k for k in options if k not in FIELDS and k not in _UNSUPPORTED and k not in _INERT)
    if unknown:
        raise TypeError(f"generate() got unknown options {unknown}; supported: {sorted(FIELDS)}")
    checked = from_dict(options, "generate()")
    return dataclasses.replace(base, **checked)
