"""What every family's config parser shares: the activation names, the keys that never change
the math, and strict field extraction from a config.json section.

Parsing is strict: an option the code cannot honour raises ``ConfigError`` naming it; keys that
only matter to PyTorch bookkeeping are listed in ``INERT_KEYS``; any other unknown key is
reported with a warning rather than dropped silently.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Mapping

from .errors import ConfigError

# transformers' ACT2FN names whose formula layers.ACTIVATIONS implements (layers checks the two agree).
ACTIVATION_NAMES = frozenset({
    "gelu", "gelu_python", "gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_accurate", "gelu_fast",
    "gelu_10", "quick_gelu", "relu", "relu2", "relu6", "leaky_relu", "silu", "swish", "hardswish", "mish",
    "sigmoid", "tanh", "linear", "laplace", "sqrtsoftplus",
})

# Keys every transformers config may carry that do not change the math of inference or training.
INERT_KEYS = frozenset({
    "_name_or_path", "_commit_hash", "architectures", "transformers_version", "torch_dtype", "dtype",
    "output_hidden_states", "output_attentions", "return_dict", "use_return_dict", "torchscript",
    "chunk_size_feed_forward", "id2label", "label2id", "num_labels", "problem_type", "finetuning_task",
    "tokenizer_class", "prefix", "task_specific_params", "use_cache", "is_encoder_decoder", "is_decoder",
    "cross_attention_hidden_size", "tie_encoder_decoder", "pruned_heads", "model_type",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "tie_word_embeddings", "add_cross_attention", "gradient_checkpointing", "output_past",
    "use_bfloat16", "xla_device", "_attn_implementation_autoset", "_attn_implementation",
    "label_smoothing",
    # Legacy generation options (read by the generation config, not by the model).
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "max_new_tokens", "min_new_tokens",
})


def set_field(obj, name: str, value) -> None:
    """Assign a field of a frozen dataclass normalising its own fields in ``__post_init__``."""
    object.__setattr__(obj, name, value)


def field_names(cls) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def warn_unknown(d: Mapping, known: frozenset, where: str) -> None:
    """Warn about the keys of ``d`` that are neither ``known`` nor inert."""
    unknown = sorted(str(k) for k in d if k not in known and k not in INERT_KEYS)
    if unknown:
        warnings.warn(f"{where}: ignoring config keys purevedec does not know: {unknown}", stacklevel=4)


def fields(cls, d: Mapping, where: str, renames: Mapping[str, str] = {}) -> dict:
    """The dataclass fields set in ``d`` (under their own names or an alias ``renames`` maps to them)."""
    d = dict(d)
    for alias, name in renames.items():
        if alias in d:
            if name in d and d[name] != d[alias]:
                raise ConfigError(f"{where}: {alias}={d[alias]!r} contradicts {name}={d[name]!r}")
            d[name] = d.pop(alias)
    names = field_names(cls)
    return {k: val for k, val in d.items() if k in names and k != "model_type"}


def parse_fields(cls, d: Mapping, where: str, inert: frozenset = frozenset(), renames: Mapping[str, str] = {}):
    """``cls`` built from the section ``d``, warning about keys it neither knows nor ignores."""
    warn_unknown(d, field_names(cls) | inert | frozenset(renames), where)
    return cls(**fields(cls, d, where, renames))
