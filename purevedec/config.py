"""Frozen, hashable model configs, validated on construction, parsed strictly from ``config.json``.

A ``Config`` is a leafless static pytree node (``jax.tree_util.register_static``): stored in
params as ``params["config"]`` it is invisible to ``jax.tree.map``, ``grad``, optimizers and
sharding, and static under ``jit`` (it is hashed), so every field is a plain immutable value.

Build one in code as transformers does, with only the fields you change::

    Config(encoder=ViTConfig(hidden_size=32, num_attention_heads=2, image_size=16, patch_size=8),
           decoder=GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2),
           decoder_start_token_id=0, pad_token_id=1, eos_token_id=1)

Derived fields follow transformers: ``head_dim`` is ``hidden_size // num_attention_heads``,
``n_inner`` is ``4 * n_embd``, an int ``image_size``/``patch_size`` means a square. Every field is
checked in ``__post_init__``, so a hand-built config fails exactly as a bad config.json does.
Parsing (``parse_config``) is strict: an option the code cannot honour raises ``ConfigError``
naming it; keys that only matter to PyTorch bookkeeping are listed in ``_INERT_KEYS``; any other
key is reported with a warning rather than dropped silently. Reading files is the checkpoint
layer's job (``purevedec.checkpoints.config_files``), and generation defaults live in
``GenerationConfig`` (``params["generation_config"]``), so changing them never recompiles the model.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import jax

from . import validate as v
from .errors import ConfigError

# transformers' ACT2FN names whose formula layers.ACTIVATIONS implements (layers checks the two agree).
ACTIVATION_NAMES = frozenset({
    "gelu", "gelu_python", "gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_accurate", "gelu_fast",
    "gelu_10", "quick_gelu", "relu", "relu2", "relu6", "leaky_relu", "silu", "swish", "hardswish", "mish",
    "sigmoid", "tanh", "linear", "laplace", "sqrtsoftplus",
})

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
# BEiT keys for its segmentation/backbone/masked-image heads, which an image-to-text model never builds.
_BEIT_INERT = _VIT_INERT | frozenset({
    "vocab_size", "use_mask_token", "out_indices", "out_features", "stage_names", "pool_scales",
    "use_auxiliary_head", "auxiliary_loss_weight", "auxiliary_channels", "auxiliary_num_convs",
    "auxiliary_concat_input", "semantic_loss_ignore_index", "add_fpn", "reshape_hidden_states",
})
_TROCR_INERT = frozenset({"classifier_dropout"})


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)  # a frozen dataclass normalising its own fields


@dataclass(frozen=True)
class ViTConfig:
    """transformers' ViTConfig fields that change the math (defaults: ViT-B/16 at 224)."""
    hidden_size: int = 768
    """Width D_enc of the encoder's tokens."""
    num_hidden_layers: int = 12
    """Transformer layers L_enc."""
    num_attention_heads: int = 12
    """Attention heads H per layer."""
    head_dim: int | None = None
    """Width K of one head; None (the default) means ``hidden_size // num_attention_heads``."""
    intermediate_size: int = 3072
    """Width of the MLP's hidden layer."""
    hidden_act: str = "gelu"
    """The MLP's activation, by transformers' ``ACT2FN`` name."""
    layer_norm_eps: float = 1e-12
    """Epsilon of every layer norm."""
    image_size: tuple[int, int] = (224, 224)
    """(height, width) in pixels of the images the position table was trained for; an int means a square."""
    patch_size: tuple[int, int] = (16, 16)
    """(height, width) of a patch; an int means a square. S = patches + 1 ([CLS]) tokens."""
    num_channels: int = 3
    """Channels C of the input pixels."""
    qkv_bias: bool = True
    """Whether the query, key and value projections have biases."""
    hidden_dropout_prob: float = 0.0
    """Dropout after the embeddings, attention output and MLP (only with a ``key``)."""
    attention_probs_dropout_prob: float = 0.0
    """Dropout on the attention weights (only with a ``key``)."""
    initializer_range: float = 0.02
    """Standard deviation of ``init_params``' truncated-normal draws."""
    model_type: str = "vit"
    """transformers' model_type: "vit" ("deit", "beit" for the subclasses)."""

    def __post_init__(self):
        w = "encoder"
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_channels"):
            v.positive_int(getattr(self, name), f"{w}.{name}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(f"{w}.hidden_size={self.hidden_size} is not a multiple of "
                                  f"num_attention_heads={self.num_attention_heads}")
            _set(self, "head_dim", self.hidden_size // self.num_attention_heads)
        v.positive_int(self.head_dim, f"{w}.head_dim")
        v.one_of(self.hidden_act, f"{w}.hidden_act", ACTIVATION_NAMES)
        _set(self, "layer_norm_eps", v.number(self.layer_norm_eps, f"{w}.layer_norm_eps", low=0.0, low_open=True))
        _set(self, "image_size", v.pair(self.image_size, f"{w}.image_size"))
        _set(self, "patch_size", v.pair(self.patch_size, f"{w}.patch_size"))
        if any(p > s for p, s in zip(self.patch_size, self.image_size)):
            raise ConfigError(f"{w}.patch_size={self.patch_size} is larger than image_size={self.image_size}")
        v.flag(self.qkv_bias, f"{w}.qkv_bias")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            _set(self, name, v.probability(getattr(self, name), f"{w}.{name}"))
        _set(self, "initializer_range", v.number(self.initializer_range, f"{w}.initializer_range", low=0.0))

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along height and width at the configured image size."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class GPT2Config:
    """transformers' GPT2Config fields that change the math (defaults: GPT-2 124M)."""
    vocab_size: int = 50257
    """Vocabulary size V."""
    n_positions: int = 1024
    """Rows of the learned position table: the longest decoder sequence."""
    n_embd: int = 768
    """Width D of the decoder."""
    n_layer: int = 12
    """Transformer layers L."""
    n_head: int = 12
    """Attention heads H per layer (head width K = n_embd // n_head)."""
    n_inner: int | None = None
    """Width of the MLP's hidden layer; None (the default) means ``4 * n_embd``."""
    activation_function: str = "gelu_new"
    """The MLP's activation, by transformers' ``ACT2FN`` name."""
    layer_norm_epsilon: float = 1e-5
    """Epsilon of every layer norm."""
    scale_attn_weights: bool = True
    """Divide attention scores by sqrt(K)."""
    scale_attn_by_inverse_layer_idx: bool = False
    """Also divide the scores of layer i by i + 1."""
    reorder_and_upcast_attn: bool = False
    """transformers' float32 attention option (the scores are float32 here anyway)."""
    tie_word_embeddings: bool = True
    """The LM head is ``wte`` itself (no ``lm_head`` param) when True."""
    resid_pdrop: float = 0.1
    """Dropout on residual branches (only with a ``key``)."""
    embd_pdrop: float = 0.1
    """Dropout on the embeddings (only with a ``key``)."""
    attn_pdrop: float = 0.1
    """Dropout on the attention weights (only with a ``key``)."""
    initializer_range: float = 0.02
    """Standard deviation of ``init_params``' normal draws."""
    bos_token_id: int | None = 50256
    """Beginning-of-sequence id (GPT-2's 50256)."""
    eos_token_id: int | tuple[int, ...] | None = 50256
    """End-of-sequence id, or a tuple of them."""
    pad_token_id: int | None = None
    """Padding id, or None."""
    model_type: str = "gpt2"
    """transformers' model_type: "gpt2"."""

    def __post_init__(self):
        w = "decoder"
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            v.positive_int(getattr(self, name), f"{w}.{name}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"{w}.n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")
        _set(self, "n_inner", 4 * self.n_embd if self.n_inner is None else v.positive_int(self.n_inner, f"{w}.n_inner"))
        v.one_of(self.activation_function, f"{w}.activation_function", ACTIVATION_NAMES)
        _set(self, "layer_norm_epsilon",
             v.number(self.layer_norm_epsilon, f"{w}.layer_norm_epsilon", low=0.0, low_open=True))
        for name in ("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                     "tie_word_embeddings"):
            v.flag(getattr(self, name), f"{w}.{name}")
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            _set(self, name, v.probability(getattr(self, name), f"{w}.{name}"))
        _set(self, "initializer_range", v.number(self.initializer_range, f"{w}.initializer_range", low=0.0))
        v.token_id(self.bos_token_id, f"{w}.bos_token_id")
        v.token_id(self.pad_token_id, f"{w}.pad_token_id")
        eos = v.token_ids(self.eos_token_id, f"{w}.eos_token_id")
        _set(self, "eos_token_id", eos[0] if eos and len(eos) == 1 else eos)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def cross_attention_hidden_size(self) -> int | None:
        return None  # GPT-2's cross-attention always reads width n_embd


@dataclass(frozen=True)
class DeiTConfig(ViTConfig):
    """DeiT: a ViT with a distillation token beside [CLS] (its layers and fields are ViT's)."""
    model_type: str = "deit"


@dataclass(frozen=True)
class BeitConfig(ViTConfig):
    """BEiT: a ViT without key bias (queries and values keep theirs, ``qkv_bias`` is unused),
    with layer scale, relative position biases (per layer and/or shared) and optional absolute
    positions; with mean pooling the final norm moves to the pooler, so the states the decoder
    reads are the last layer's output unnormalised."""
    use_absolute_position_embeddings: bool = False
    use_relative_position_bias: bool = False
    use_shared_relative_position_bias: bool = False
    layer_scale_init_value: float = 0.1
    use_mean_pooling: bool = True
    drop_path_rate: float = 0.1
    model_type: str = "beit"

    def __post_init__(self):
        super().__post_init__()
        for name in ("use_absolute_position_embeddings", "use_relative_position_bias",
                     "use_shared_relative_position_bias", "use_mean_pooling"):
            v.flag(getattr(self, name), f"encoder.{name}")
        _set(self, "layer_scale_init_value",
             v.number(self.layer_scale_init_value, "encoder.layer_scale_init_value", low=0.0))
        _set(self, "drop_path_rate", v.probability(self.drop_path_rate, "encoder.drop_path_rate"))

    @property
    def num_relative_distance(self) -> int:
        """Rows of a relative position bias table: every (dy, dx) between patches, plus 3 for [CLS]."""
        gh, gw = self.grid
        return (2 * gh - 1) * (2 * gw - 1) + 3


@dataclass(frozen=True)
class TrOCRConfig:
    """transformers' TrOCRConfig fields that change the math (defaults: trocr-base's decoder).

    The generic names the rest of the package reads (``n_embd``, ``n_layer``, ``n_head``,
    ``n_positions``, ``initializer_range``) are properties over TrOCR's own."""
    vocab_size: int = 50265
    d_model: int = 1024
    decoder_layers: int = 12
    decoder_attention_heads: int = 16
    decoder_ffn_dim: int = 4096
    activation_function: str = "gelu"
    max_position_embeddings: int = 512
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    decoder_layerdrop: float = 0.0
    init_std: float = 0.02
    scale_embedding: bool = False
    use_learned_position_embeddings: bool = True
    layernorm_embedding: bool = True
    tie_word_embeddings: bool = True
    cross_attention_hidden_size: int | None = None   # the encoder width cross-attention K/V read
    bos_token_id: int | None = 0
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = 1
    model_type: str = "trocr"

    def __post_init__(self):
        w = "decoder"
        for name in ("vocab_size", "d_model", "decoder_layers", "decoder_attention_heads", "decoder_ffn_dim",
                     "max_position_embeddings"):
            v.positive_int(getattr(self, name), f"{w}.{name}")
        if self.d_model % self.decoder_attention_heads:
            raise ConfigError(f"{w}.d_model={self.d_model} is not a multiple of "
                              f"decoder_attention_heads={self.decoder_attention_heads}")
        v.one_of(self.activation_function, f"{w}.activation_function", ACTIVATION_NAMES)
        for name in ("dropout", "attention_dropout", "activation_dropout", "decoder_layerdrop"):
            _set(self, name, v.probability(getattr(self, name), f"{w}.{name}"))
        for name in ("scale_embedding", "use_learned_position_embeddings", "layernorm_embedding",
                     "tie_word_embeddings"):
            v.flag(getattr(self, name), f"{w}.{name}")
        if self.cross_attention_hidden_size is not None:
            v.positive_int(self.cross_attention_hidden_size, f"{w}.cross_attention_hidden_size")
        _set(self, "init_std", v.number(self.init_std, f"{w}.init_std", low=0.0))
        v.token_id(self.bos_token_id, f"{w}.bos_token_id")
        v.token_id(self.pad_token_id, f"{w}.pad_token_id")
        if not self.use_learned_position_embeddings:
            if self.pad_token_id is None:
                raise ConfigError(f"{w}.use_learned_position_embeddings=false needs pad_token_id: sinusoidal "
                                  "positions are counted from the pad id")
            if self.d_model < 4:
                raise ConfigError(f"{w}.d_model={self.d_model} is too small for sinusoidal positions (needs >= 4)")
        eos = v.token_ids(self.eos_token_id, f"{w}.eos_token_id")
        _set(self, "eos_token_id", eos[0] if eos and len(eos) == 1 else eos)

    n_embd = property(lambda self: self.d_model)
    n_layer = property(lambda self: self.decoder_layers)
    n_head = property(lambda self: self.decoder_attention_heads)
    n_inner = property(lambda self: self.decoder_ffn_dim)
    initializer_range = property(lambda self: self.init_std)
    n_positions = property(lambda self: self.max_position_embeddings, doc=(
        "Decoder tokens the position embeddings cover. transformers regrows the sinusoidal table "
        "for a longer uncached forward, but its cached decoding indexes past the table and fails, "
        "so both kinds stop here."))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.decoder_attention_heads

    @property
    def cross_width(self) -> int:
        return self.cross_attention_hidden_size or self.d_model


@jax.tree_util.register_static
@dataclass(frozen=True)
class Config:
    """A whole VisionEncoderDecoder: encoder, decoder, and how they are joined."""
    encoder: ViTConfig = ViTConfig()
    """The image encoder's config: ``ViTConfig``, ``DeiTConfig`` or ``BeitConfig``."""
    decoder: GPT2Config | TrOCRConfig = GPT2Config()
    """The text decoder's config: ``GPT2Config`` or ``TrOCRConfig``."""
    decoder_start_token_id: int | None = None
    """The token every generated sequence starts with (and ``shift_right`` puts first)."""
    pad_token_id: int | None = None
    """The id written after EOS in generated sequences."""
    eos_token_id: int | tuple[int, ...] | None = None
    """End-of-sequence id, or a tuple of them."""
    source: str = dataclasses.field(default="", compare=False, repr=False)
    """The original config.json text, kept so that ``save`` can write back what it read (not compared)."""

    def __post_init__(self):
        if not isinstance(self.encoder, tuple(ENCODER_CONFIG_TYPES)) or not isinstance(
                self.decoder, tuple(DECODER_CONFIG_TYPES)):
            raise ConfigError(f"Config needs an encoder config and a decoder config, got "
                              f"{type(self.encoder).__name__} and {type(self.decoder).__name__}")
        v.token_id(self.decoder_start_token_id, "decoder_start_token_id")
        v.token_id(self.pad_token_id, "pad_token_id")
        eos = v.token_ids(self.eos_token_id, "eos_token_id")
        _set(self, "eos_token_id", eos[0] if eos and len(eos) == 1 else eos)

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


ENCODER_CONFIG_TYPES = (ViTConfig, DeiTConfig, BeitConfig)
DECODER_CONFIG_TYPES = (GPT2Config, TrOCRConfig)


def _warn_unknown(d: Mapping, known: frozenset, where: str) -> None:
    unknown = sorted(str(k) for k in d if k not in known and k not in _INERT_KEYS)
    if unknown:
        warnings.warn(f"{where}: ignoring config keys purevedec does not know: {unknown}", stacklevel=3)


def _fields(cls, d: Mapping, where: str, renames: Mapping[str, str] = {}) -> dict:
    """The dataclass fields set in ``d`` (under their own names or an alias), warning about the rest."""
    d = dict(d)
    for alias, name in renames.items():
        if alias in d:
            if name in d and d[name] != d[alias]:
                raise ConfigError(f"{where}: {alias}={d[alias]!r} contradicts {name}={d[name]!r}")
            d[name] = d.pop(alias)
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: val for k, val in d.items() if k in names and k != "model_type"}


def parse_vit(d: Mapping, where: str = "encoder", cls=ViTConfig, inert: frozenset = _VIT_INERT) -> ViTConfig:
    v.one_of(d.get("pooler_act", "tanh"), f"{where}.pooler_act", ACTIVATION_NAMES)  # unused, still checked
    _warn_unknown(d, frozenset(f.name for f in dataclasses.fields(cls)) | inert, where)
    return cls(**_fields(cls, d, where))


def parse_deit(d: Mapping, where: str = "encoder") -> DeiTConfig:
    return parse_vit(d, where, DeiTConfig)


def parse_beit(d: Mapping, where: str = "encoder") -> BeitConfig:
    # BEiT has no qkv_bias option (its key projection never has a bias); refuse rather than ignore one.
    if "qkv_bias" in d:
        raise ConfigError(f"{where}.qkv_bias is not a BEiT option (BEiT's key projection has no bias, "
                          "its query and value projections always do)")
    return parse_vit(d, where, BeitConfig, _BEIT_INERT)


# transformers' TrOCRConfig.attribute_map.
_TROCR_ALIASES = {"hidden_size": "d_model", "num_attention_heads": "decoder_attention_heads",
                  "num_hidden_layers": "decoder_layers"}


def parse_trocr(d: Mapping, where: str = "decoder") -> TrOCRConfig:
    """TrOCR always has cross-attention inside VisionEncoderDecoder (TrOCRForCausalLM sets
    is_decoder), whatever add_cross_attention says."""
    known = frozenset(f.name for f in dataclasses.fields(TrOCRConfig)) | _TROCR_INERT | frozenset(_TROCR_ALIASES)
    _warn_unknown(d, known, where)
    return TrOCRConfig(**_fields(TrOCRConfig, d, where, _TROCR_ALIASES))


# transformers' GPT2Config.attribute_map: the generic names are aliases of the n_* ones.
_GPT2_ALIASES = {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
                 "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"}


def parse_gpt2(d: Mapping, where: str = "decoder") -> GPT2Config:
    if not v.flag(d.get("add_cross_attention", False), f"{where}.add_cross_attention"):
        raise ConfigError(f"{where}.add_cross_attention is false: a GPT-2 decoder needs cross-attention "
                          "layers to read the image (transformers refuses it the same way)")
    if d.get("pruned_heads"):
        raise ConfigError(f"{where}.pruned_heads={d['pruned_heads']!r:.80} is not supported")
    known = frozenset(f.name for f in dataclasses.fields(GPT2Config)) | _GPT2_INERT | frozenset(_GPT2_ALIASES)
    _warn_unknown(d, known, where)
    return GPT2Config(**_fields(GPT2Config, d, where, _GPT2_ALIASES))


ENCODER_PARSERS = {"vit": parse_vit, "deit": parse_deit, "beit": parse_beit}
DECODER_PARSERS = {"gpt2": parse_gpt2, "trocr": parse_trocr}

# What each model_type is, for the error a user sees when pointing us at the wrong kind of checkpoint.
_OTHER_MODEL_TYPES = {
    "gpt2": "a GPT-2 language model", "vit": "a ViT image classifier or encoder alone",
    "trocr": "a TrOCR decoder alone", "donut-swin": "a Donut Swin encoder alone",
    "bert": "a BERT text model", "clip": "a CLIP model", "blip": "a BLIP model",
}


def _sub(d: Mapping, key: str, parsers: Mapping) -> tuple[str, Mapping]:
    sub = d.get(key)
    if not isinstance(sub, Mapping):
        raise ConfigError(f"config.json has no '{key}' section: is this a VisionEncoderDecoder checkpoint?")
    model_type = sub.get("model_type")
    if model_type not in parsers:
        raise ConfigError(f"{key}.model_type={model_type!r:.80} is not supported; supported: {sorted(parsers)}")
    return model_type, sub


def parse_config(d: Mapping) -> Config:
    """Parse the dict of a VisionEncoderDecoder config.json, refusing what cannot be honoured."""
    model_type = d.get("model_type", "vision-encoder-decoder")
    if model_type != "vision-encoder-decoder":
        what = _OTHER_MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None
        hint = f" ({what}, not an image-to-text checkpoint)" if what else ""
        raise ConfigError(f"model_type={model_type!r:.80}{hint}: purevedec loads VisionEncoderDecoder "
                          "checkpoints (model_type 'vision-encoder-decoder'); compose a separate encoder and "
                          "decoder with from_encoder_decoder_pretrained")
    enc_type, enc_d = _sub(d, "encoder", ENCODER_PARSERS)
    dec_type, dec_d = _sub(d, "decoder", DECODER_PARSERS)
    encoder = ENCODER_PARSERS[enc_type](enc_d)
    decoder = DECODER_PARSERS[dec_type](dec_d)
    if d.get("tie_encoder_decoder") or enc_d.get("tie_encoder_decoder") or dec_d.get("tie_encoder_decoder"):
        raise ConfigError("tie_encoder_decoder=true is not supported (image encoder and text decoder share no layers)")
    _check_cross_size(dec_d.get("cross_attention_hidden_size"), encoder, decoder)
    _warn_unknown({k: val for k, val in d.items() if k not in ("encoder", "decoder")}, frozenset(), "config")
    return Config(
        encoder=encoder, decoder=decoder,
        decoder_start_token_id=d.get("decoder_start_token_id"),
        pad_token_id=d.get("pad_token_id"),
        eos_token_id=d.get("eos_token_id"),
    ).with_source(d)


def _check_cross_size(cross: Any, encoder: ViTConfig, decoder: GPT2Config | TrOCRConfig) -> None:
    if cross is None:
        return
    if cross != encoder.hidden_size:
        raise ConfigError(
            "If `cross_attention_hidden_size` is specified in the decoder's configuration, it has to be "
            f"equal to the encoder's `hidden_size`. Got {cross!r:.40} for `config.decoder.cross_attention_hidden_size` "
            f"and {encoder.hidden_size} for `config.encoder.hidden_size`.")
    if decoder.model_type == "gpt2" and cross != decoder.n_embd:
        # With the size given transformers adds no projection, and GPT-2's cross-attention only
        # reads inputs of width n_embd, so such a model cannot run anywhere.
        raise ConfigError(
            f"decoder.cross_attention_hidden_size={cross} differs from decoder.n_embd={decoder.n_embd}: "
            "GPT-2 cross-attention only accepts encoder states of width n_embd")
