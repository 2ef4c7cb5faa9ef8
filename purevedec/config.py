"""Frozen, hashable model configs parsed strictly from a VisionEncoderDecoder ``config.json``.

A config is static under ``jax.jit`` (it is hashed), so every field is a plain immutable value.
Parsing is strict: an option whose value the code cannot honour raises ``ConfigError`` naming
it; keys that only matter to PyTorch bookkeeping are listed in ``_INERT_KEYS`` and skipped on
purpose; any other key is reported with a warning rather than dropped silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ConfigError
from .generation_config import GenerationConfig, load_generation_config
from .jsonfile import read_json_object
from .layers import ACTIVATIONS


# Keys every transformers config may carry that do not change the math of inference or training.
_INERT_KEYS = frozenset({
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
_GPT2_INERT = frozenset({
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
    "summary_first_dropout", "n_ctx",
})
_VIT_INERT = frozenset({"encoder_stride", "pooler_output_size", "pooler_act"})


def _activation(name: Any, key: str, where: str) -> str:
    if name not in ACTIVATIONS:
        raise ConfigError(
            f"{where}.{key}={name!r} is not supported; supported activations: {sorted(ACTIVATIONS)}")
    return name


def _pair(value: Any, key: str, where: str) -> tuple[int, int]:
    """ViT accepts an int or an (h, w) pair for image_size and patch_size."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"{where}.{key} must be an int or a pair of ints, got {value!r}")


def _positive_int(d: Mapping, key: str, default: Any, where: str) -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}.{key} must be a positive int, got {value!r}")
    return value


def _number(d: Mapping, key: str, default: float, where: str) -> float:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}.{key} must be a number, got {value!r}")
    return float(value)


def _flag(d: Mapping, key: str, default: bool, where: str) -> bool:
    value = d.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
    return value


def _token_id(d: Mapping, key: str) -> int | tuple[int, ...] | None:
    value = d.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    raise ConfigError(f"{key} must be an int, a list of ints or null, got {value!r}")


def _warn_unknown(d: Mapping, known: frozenset, where: str) -> None:
    unknown = sorted(k for k in d if k not in known and k not in _INERT_KEYS)
    if unknown:
        warnings.warn(f"{where}: ignoring config keys purevedec does not know: {unknown}", stacklevel=3)


@dataclass(frozen=True)
class ViTConfig:
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    head_dim: int = 64
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    image_size: tuple[int, int] = (224, 224)
    patch_size: tuple[int, int] = (16, 16)
    num_channels: int = 3
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    model_type: str = "vit"

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along height and width at the configured image size."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


_VIT_KEYS = frozenset(f.name for f in dataclasses.fields(ViTConfig)) | _VIT_INERT


def parse_vit(d: Mapping, where: str = "encoder") -> ViTConfig:
    hidden = _positive_int(d, "hidden_size", 768, where)
    heads = _positive_int(d, "num_attention_heads", 12, where)
    if "head_dim" not in d and hidden % heads:
        raise ConfigError(f"{where}.hidden_size={hidden} is not a multiple of num_attention_heads={heads}")
    pooler_act = d.get("pooler_act", "tanh")
    _activation(pooler_act, "pooler_act", where)  # unused by captioning, still checked
    _warn_unknown(d, _VIT_KEYS, where)
    return ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=_positive_int(d, "num_hidden_layers", 12, where),
        num_attention_heads=heads,
        head_dim=_positive_int(d, "head_dim", hidden // heads, where),
        intermediate_size=_positive_int(d, "intermediate_size", 3072, where),
        hidden_act=_activation(d.get("hidden_act", "gelu"), "hidden_act", where),
        layer_norm_eps=_number(d, "layer_norm_eps", 1e-12, where),
        image_size=_pair(d.get("image_size", 224), "image_size", where),
        patch_size=_pair(d.get("patch_size", 16), "patch_size", where),
        num_channels=_positive_int(d, "num_channels", 3, where),
        qkv_bias=_flag(d, "qkv_bias", True, where),
        hidden_dropout_prob=_number(d, "hidden_dropout_prob", 0.0, where),
        attention_probs_dropout_prob=_number(d, "attention_probs_dropout_prob", 0.0, where),
        initializer_range=_number(d, "initializer_range", 0.02, where),
    )


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int = 3072
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    tie_word_embeddings: bool = True
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    initializer_range: float = 0.02
    bos_token_id: int | None = 50256
    eos_token_id: int | tuple[int, ...] | None = 50256
    pad_token_id: int | None = None
    model_type: str = "gpt2"

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# transformers' GPT2Config.attribute_map: the generic names are aliases of the n_* ones.
_GPT2_ALIASES = {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
                 "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"}
_GPT2_KEYS = (frozenset(f.name for f in dataclasses.fields(GPT2Config)) | _GPT2_INERT
              | frozenset(_GPT2_ALIASES))


def parse_gpt2(d: Mapping, where: str = "decoder") -> GPT2Config:
    d = dict(d)
    for alias, name in _GPT2_ALIASES.items():
        if alias in d:
            if name in d and d[name] != d[alias]:
                raise ConfigError(f"{where}: {alias}={d[alias]!r} contradicts {name}={d[name]!r}")
            d[name] = d.pop(alias)
    if not _flag(d, "add_cross_attention", False, where):
        raise ConfigError(f"{where}.add_cross_attention is false: a GPT-2 decoder needs cross-attention "
                          "layers to read the image (transformers refuses it the same way)")
    if d.get("pruned_heads"):
        raise ConfigError(f"{where}.pruned_heads={d['pruned_heads']!r} is not supported")
    embd = _positive_int(d, "n_embd", 768, where)
    heads = _positive_int(d, "n_head", 12, where)
    if embd % heads:
        raise ConfigError(f"{where}.n_embd={embd} is not a multiple of n_head={heads}")
    n_inner = d.get("n_inner")
    _warn_unknown(d, _GPT2_KEYS, where)
    return GPT2Config(
        vocab_size=_positive_int(d, "vocab_size", 50257, where),
        n_positions=_positive_int(d, "n_positions", 1024, where),
        n_embd=embd, n_layer=_positive_int(d, "n_layer", 12, where), n_head=heads,
        n_inner=4 * embd if n_inner is None else _positive_int(d, "n_inner", None, where),
        activation_function=_activation(d.get("activation_function", "gelu_new"),
                                        "activation_function", where),
        layer_norm_epsilon=_number(d, "layer_norm_epsilon", 1e-5, where),
        scale_attn_weights=_flag(d, "scale_attn_weights", True, where),
        scale_attn_by_inverse_layer_idx=_flag(d, "scale_attn_by_inverse_layer_idx", False, where),
        reorder_and_upcast_attn=_flag(d, "reorder_and_upcast_attn", False, where),
        tie_word_embeddings=_flag(d, "tie_word_embeddings", True, where),
        resid_pdrop=_number(d, "resid_pdrop", 0.1, where),
        embd_pdrop=_number(d, "embd_pdrop", 0.1, where),
        attn_pdrop=_number(d, "attn_pdrop", 0.1, where),
        initializer_range=_number(d, "initializer_range", 0.02, where),
        bos_token_id=_token_id(d, "bos_token_id"),
        eos_token_id=_token_id(d, "eos_token_id"),
        pad_token_id=_token_id(d, "pad_token_id"),
    )


ENCODER_PARSERS = {"vit": parse_vit}
DECODER_PARSERS = {"gpt2": parse_gpt2}


@dataclass(frozen=True)
class Config:
    """A whole VisionEncoderDecoder: encoder, decoder, and how they are joined."""
    encoder: ViTConfig
    decoder: GPT2Config
    decoder_start_token_id: int | None = None
    pad_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    generation: GenerationConfig = GenerationConfig()
    # The original config.json text, kept so that save() can write back what it read.
    source: str = dataclasses.field(default="", compare=False, repr=False)

    @property
    def has_projection(self) -> bool:
        """transformers adds enc_to_dec_proj when widths differ and no cross size is given."""
        return self.encoder.hidden_size != self.decoder.n_embd

    def with_source(self, d: Mapping) -> "Config":
        return dataclasses.replace(self, source=json.dumps(d, sort_keys=True))


def _sub(d: Mapping, key: str, parsers: Mapping) -> tuple[str, Mapping]:
    sub = d.get(key)
    if not isinstance(sub, Mapping):
        raise ConfigError(f"config.json has no '{key}' section: is this a VisionEncoderDecoder checkpoint?")
    model_type = sub.get("model_type")
    if model_type not in parsers:
        raise ConfigError(f"{key}.model_type={model_type!r} is not supported; supported: {sorted(parsers)}")
    return model_type, sub


def parse_config(d: Mapping) -> Config:
    """Parse the dict of a VisionEncoderDecoder config.json, refusing what cannot be honoured."""
    if d.get("model_type", "vision-encoder-decoder") != "vision-encoder-decoder":
        raise ConfigError(f"model_type={d.get('model_type')!r}: expected 'vision-encoder-decoder'")
    enc_type, enc_d = _sub(d, "encoder", ENCODER_PARSERS)
    dec_type, dec_d = _sub(d, "decoder", DECODER_PARSERS)
    encoder = ENCODER_PARSERS[enc_type](enc_d)
    decoder = DECODER_PARSERS[dec_type](dec_d)
    if d.get("tie_encoder_decoder") or enc_d.get("tie_encoder_decoder") or dec_d.get("tie_encoder_decoder"):
        raise ConfigError("tie_encoder_decoder=true is not supported for a ViT encoder and GPT-2 decoder")
    _check_cross_size(dec_d.get("cross_attention_hidden_size"), encoder, decoder)
    _warn_unknown({k: v for k, v in d.items() if k not in ("encoder", "decoder")}, frozenset(), "config")
    return Config(
        encoder=encoder, decoder=decoder,
        decoder_start_token_id=_token_id(d, "decoder_start_token_id"),
        pad_token_id=_token_id(d, "pad_token_id"),
        eos_token_id=_token_id(d, "eos_token_id"),
    ).with_source(d)


def _check_cross_size(cross: Any, encoder: ViTConfig, decoder: GPT2Config) -> None:
    if cross is None:
        return
    if cross != encoder.hidden_size:
        raise ConfigError(
            "If `cross_attention_hidden_size` is specified in the decoder's configuration, it has to be "
            f"equal to the encoder's `hidden_size`. Got {cross} for `config.decoder.cross_attention_hidden_size` "
            f"and {encoder.hidden_size} for `config.encoder.hidden_size`.")
    if cross != decoder.n_embd:
        # With the size given transformers adds no projection, and GPT-2's cross-attention only
        # reads inputs of width n_embd, so such a model cannot run anywhere.
        raise ConfigError(
            f"decoder.cross_attention_hidden_size={cross} differs from decoder.n_embd={decoder.n_embd}: "
            "GPT-2 cross-attention only accepts encoder states of width n_embd")


def load_config(path: str | os.PathLike) -> Config:
    """Read and parse ``path/config.json`` (or a config.json path itself)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    d = read_json_object(path)
    config = parse_config(d)
    return dataclasses.replace(config, generation=load_generation_config(os.path.dirname(path), d))
