"""Frozen, hashable model configs, validated on construction, parsed strictly from ``config.json``.

A ``Config`` is a leafless static pytree node (``jax.tree_util.register_static``): stored in
params as ``params["config"]`` it is invisible to ``jax.tree.map``, ``grad``, optimizers and
sharding, and static under ``jit`` (it is hashed), so every field is a plain immutable value.

Build one in code as transformers does, with only the fields you change::

    Config(encoder=ViTConfig(hidden_size=32, num_attention_heads=2, image_size=16, patch_size=8),
           decoder=GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2),  # any registered families
           decoder_start_token_id=0, pad_token_id=1, eos_token_id=1)

Derived fields follow transformers: ``head_dim`` is ``hidden_size // num_attention_heads``,
``n_inner`` is ``4 * n_embd``, an int ``image_size``/``patch_size`` means a square. Every field is
checked in ``__post_init__``, so a hand-built config fails exactly as a bad config.json does.
Parsing (``parse_config``) is strict: an option the code cannot honour raises ``ConfigError``
naming it; keys that only matter to PyTorch bookkeeping are listed in ``config_fields.INERT_KEYS``; any other
key is reported with a warning rather than dropped silently. Each family's config class and
parser live in its module under ``purevedec.models``; this module dispatches on ``model_type``
through the registry. Reading files is the checkpoint
layer's job (``purevedec.checkpoints.config_files``), and generation defaults live in
``GenerationConfig`` (``params["generation_config"]``), so changing them never recompiles the model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

import jax

from . import validate as v
from .config_fields import ACTIVATION_NAMES, INERT_KEYS, set_field, warn_unknown  # noqa: F401 (re-exported)
from .errors import ConfigError
from .models import DECODER_CONFIG_TYPES, DECODERS, ENCODER_CONFIG_TYPES, ENCODERS
from .models.registry import DEFAULT_DECODER, DEFAULT_ENCODER, OTHER_MODEL_TYPES


@jax.tree_util.register_static
@dataclass(frozen=True)
class Config:
    """A whole VisionEncoderDecoder: encoder, decoder, and how they are joined."""
    encoder: Any = None
    """The image encoder's config: any registered encoder family's (default: ``ViTConfig()``)."""
    decoder: Any = None
    """The text decoder's config: any registered decoder family's (default: ``GPT2Config()``)."""
    decoder_start_token_id: int | None = None
    """The token every generated sequence starts with (and ``shift_right`` puts first)."""
    pad_token_id: int | None = None
    """The id written after EOS in generated sequences."""
    eos_token_id: int | tuple[int, ...] | None = None
    """End-of-sequence id, or a tuple of them."""
    source: str = dataclasses.field(default="", compare=False, repr=False)
    """The original config.json text, kept so that ``save`` can write back what it read (not compared)."""

    def __post_init__(self):
        if self.encoder is None:
            set_field(self, "encoder", ENCODERS[DEFAULT_ENCODER].config_class())
        if self.decoder is None:
            set_field(self, "decoder", DECODERS[DEFAULT_DECODER].config_class())
        if not isinstance(self.encoder, tuple(ENCODER_CONFIG_TYPES)) or not isinstance(
                self.decoder, tuple(DECODER_CONFIG_TYPES)):
            raise ConfigError(f"Config needs an encoder config and a decoder config, got "
                              f"{type(self.encoder).__name__} and {type(self.decoder).__name__}")
        v.token_id(self.decoder_start_token_id, "decoder_start_token_id")
        v.token_id(self.pad_token_id, "pad_token_id")
        eos = v.token_ids(self.eos_token_id, "eos_token_id")
        set_field(self, "eos_token_id", eos[0] if eos and len(eos) == 1 else eos)

    @property
    def has_projection(self) -> bool:
        """transformers adds enc_to_dec_proj when widths differ and no cross size is given."""
        return (self.encoder.hidden_size != self.decoder.n_embd
                and self.decoder.cross_attention_hidden_size is None)

    @property
    def cross_width(self) -> int:
        """The width of the states the decoder's cross-attention reads (after any projection)."""
        return self.decoder.cross_attention_hidden_size or self.decoder.n_embd

    def with_source(self, d: Mapping) -> "Config":
        return dataclasses.replace(self, source=json.dumps(d, sort_keys=True))



def _sub(d: Mapping, key: str, families: Mapping) -> tuple[str, Mapping]:
    sub = d.get(key)
    if not isinstance(sub, Mapping):
        raise ConfigError(f"config.json has no '{key}' section: is this a VisionEncoderDecoder checkpoint?")
    model_type = sub.get("model_type")
    if model_type not in families:
        raise ConfigError(f"{key}.model_type={model_type!r:.80} is not supported; supported: {sorted(families)}")
    return model_type, sub


def parse_config(d: Mapping) -> Config:
    """Parse the dict of a VisionEncoderDecoder config.json, refusing what cannot be honoured."""
    model_type = d.get("model_type", "vision-encoder-decoder")
    if model_type != "vision-encoder-decoder":
        what = OTHER_MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None
        hint = f" ({what}, not an image-to-text checkpoint)" if what else ""
        raise ConfigError(f"model_type={model_type!r:.80}{hint}: purevedec loads VisionEncoderDecoder "
                          "checkpoints (model_type 'vision-encoder-decoder'); compose a separate encoder and "
                          "decoder with from_encoder_decoder_pretrained")
    enc_type, enc_d = _sub(d, "encoder", ENCODERS)
    dec_type, dec_d = _sub(d, "decoder", DECODERS)
    encoder = ENCODERS[enc_type].parse(enc_d, "encoder")
    decoder = DECODERS[dec_type].parse(dec_d, "decoder")
    if d.get("tie_encoder_decoder") or enc_d.get("tie_encoder_decoder") or dec_d.get("tie_encoder_decoder"):
        raise ConfigError("tie_encoder_decoder=true is not supported (image encoder and text decoder share no layers)")
    _check_cross_size(dec_d.get("cross_attention_hidden_size"), encoder, decoder)
    warn_unknown({k: val for k, val in d.items() if k not in ("encoder", "decoder")}, frozenset(), "config")
    return Config(
        encoder=encoder, decoder=decoder,
        decoder_start_token_id=d.get("decoder_start_token_id"),
        pad_token_id=d.get("pad_token_id"),
        eos_token_id=d.get("eos_token_id"),
    ).with_source(d)


def _check_cross_size(cross: Any, encoder, decoder) -> None:
    if cross is None:
        return
    if cross != encoder.hidden_size:
        raise ConfigError(
            "If `cross_attention_hidden_size` is specified in the decoder's configuration, it has to be "
            f"equal to the encoder's `hidden_size`. Got {cross!r:.40} for `config.decoder.cross_attention_hidden_size` "
            f"and {encoder.hidden_size} for `config.encoder.hidden_size`.")
    DECODERS[decoder.model_type].check_cross_width(cross, decoder)
