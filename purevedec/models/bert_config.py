"""The configs of the BERT-style decoders (``bert``, ``roberta``, ``bert-generation``; the
model is ``bert.py``): one frozen dataclass with transformers' BertConfig fields that change the
math, a subclass per type holding that type's defaults, and the strict parser of their
``config.json`` section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .. import validate as v
from ..config_fields import ACTIVATION_NAMES, field_names, fields, warn_unknown
from ..errors import ConfigError

MODEL_TYPES = ("bert", "roberta", "bert-generation")
# Keys of these configs that change nothing an image-to-text decoder computes.
_INERT = frozenset({"classifier_dropout", "position_embedding_type"})


@dataclass(frozen=True)
class BertConfig:
    """transformers' BertConfig / RobertaConfig / BertGenerationConfig fields that change the
    math (defaults: bert-base's; ``RobertaConfig`` and ``BertGenerationConfig`` hold the other
    types' defaults)."""
    vocab_size: int = 30522
    """Vocabulary size V."""
    hidden_size: int = 768
    """Width D of the decoder (cross-attention reads states of this width too)."""
    num_hidden_layers: int = 12
    """Transformer layers L."""
    num_attention_heads: int = 12
    """Attention heads H per layer."""
    intermediate_size: int = 3072
    """Width of the MLP's hidden layer."""
    hidden_act: str = "gelu"
    """The MLP's activation (and BERT's head transform's), by transformers' ``ACT2FN`` name."""
    hidden_dropout_prob: float = 0.1
    """Dropout after the embeddings and each sublayer (only with a ``key``)."""
    attention_probs_dropout_prob: float = 0.1
    """Dropout on the attention weights (only with a ``key``)."""
    max_position_embeddings: int = 512
    """Rows P of the position table (RoBERTa's first pad + 1 rows hold no real position)."""
    type_vocab_size: int = 2
    """Rows of the token-type table (only row 0 is read); 0 for bert-generation, which has none."""
    initializer_range: float = 0.02
    """Standard deviation of ``init_params``' normal draws."""
    layer_norm_eps: float = 1e-12
    """Epsilon of every layer norm."""
    tie_word_embeddings: bool = True
    """The output projection is the token embedding (and its bias the vocabulary bias) when True."""
    bos_token_id: int | None = None
    """Beginning-of-sequence id."""
    eos_token_id: int | tuple[int, ...] | None = None
    """End-of-sequence id, or a tuple of them."""
    pad_token_id: int | None = 0
    """Padding id: its embedding row gets no gradient; RoBERTa numbers positions from it."""
    model_type: str = "bert"
    """transformers' model_type: "bert", "roberta" or "bert-generation"."""

    def __post_init__(self):
        w = "decoder"
        v.one_of(self.model_type, f"{w}.model_type", MODEL_TYPES)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings"):
            v.positive_int(getattr(self, name), f"{w}.{name}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"{w}.hidden_size={self.hidden_size} is not a multiple of "
                              f"num_attention_heads={self.num_attention_heads}")
        if self.model_type == "bert-generation":
            if self.type_vocab_size != 0:
                raise ConfigError(f"{w}.type_vocab_size={self.type_vocab_size!r}: bert-generation has no "
                                  "token-type embeddings (leave it 0)")
        else:
            v.positive_int(self.type_vocab_size, f"{w}.type_vocab_size")
        v.one_of(self.hidden_act, f"{w}.hidden_act", ACTIVATION_NAMES)
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            object.__setattr__(self, name, v.probability(getattr(self, name), f"{w}.{name}"))
        object.__setattr__(self, "layer_norm_eps",
                           v.number(self.layer_norm_eps, f"{w}.layer_norm_eps", low=0.0, low_open=True))
        object.__setattr__(self, "initializer_range",
                           v.number(self.initializer_range, f"{w}.initializer_range", low=0.0))
        v.flag(self.tie_word_embeddings, f"{w}.tie_word_embeddings")
        v.token_id(self.bos_token_id, f"{w}.bos_token_id")
        v.token_id(self.pad_token_id, f"{w}.pad_token_id")
        eos = v.token_ids(self.eos_token_id, f"{w}.eos_token_id")
        object.__setattr__(self, "eos_token_id", eos[0] if eos and len(eos) == 1 else eos)
        if self.model_type == "roberta":
            if self.pad_token_id is None:
                raise ConfigError(f"{w}.pad_token_id is None: RoBERTa numbers positions from the pad id")
            if self.max_position_embeddings <= self.pad_token_id + 1:
                raise ConfigError(f"{w}.max_position_embeddings={self.max_position_embeddings} leaves no position "
                                  f"after RoBERTa's offset pad_token_id + 1 = {self.pad_token_id + 1}")

    n_embd = property(lambda self: self.hidden_size)
    n_layer = property(lambda self: self.num_hidden_layers)
    n_head = property(lambda self: self.num_attention_heads)
    n_inner = property(lambda self: self.intermediate_size)
    head_dim = property(lambda self: self.hidden_size // self.num_attention_heads)
    cross_attention_hidden_size = property(lambda self: None, doc="Cross-attention always reads width D.")

    @property
    def position_offset(self) -> int:
        """Row of the position table that position 0 reads: pad + 1 for RoBERTa, else 0."""
        return self.pad_token_id + 1 if self.model_type == "roberta" else 0

    @property
    def n_positions(self) -> int:
        """Decoder tokens the position table covers."""
        return self.max_position_embeddings - self.position_offset

    @property
    def has_head_transform(self) -> bool:
        return self.model_type != "bert-generation"


@dataclass(frozen=True)
class RobertaConfig(BertConfig):
    """RobertaConfig's defaults (roberta-base's decoder); the fields are BertConfig's."""
    vocab_size: int = 50265
    """Vocabulary size V."""
    bos_token_id: int | None = 0
    """<s>."""
    eos_token_id: int | tuple[int, ...] | None = 2
    """</s>."""
    pad_token_id: int | None = 1
    """<pad>: pad tokens read position row pad, the others start at pad + 1."""
    model_type: str = "roberta"
    """transformers' model_type: "roberta"."""


@dataclass(frozen=True)
class BertGenerationConfig(BertConfig):
    """BertGenerationConfig's defaults (no token types, no head transform); the fields are BertConfig's."""
    vocab_size: int = 50358
    """Vocabulary size V."""
    hidden_size: int = 1024
    """Width D of the decoder."""
    num_hidden_layers: int = 24
    """Transformer layers L."""
    num_attention_heads: int = 16
    """Attention heads H per layer."""
    intermediate_size: int = 4096
    """Width of the MLP's hidden layer."""
    type_vocab_size: int = 0
    """No token-type table."""
    bos_token_id: int | None = 2
    """Beginning-of-sequence id."""
    eos_token_id: int | tuple[int, ...] | None = 1
    """End-of-sequence id."""
    model_type: str = "bert-generation"
    """transformers' model_type: "bert-generation"."""


CONFIG_CLASSES = {"bert": BertConfig, "roberta": RobertaConfig, "bert-generation": BertGenerationConfig}


def parse_bert(d: Mapping, where: str = "decoder") -> BertConfig:
    """A bert / roberta / bert-generation decoder section of config.json, refusing what
    transformers would not run as an image-conditioned causal decoder."""
    model_type = d.get("model_type")
    v.one_of(model_type, f"{where}.model_type", MODEL_TYPES)
    position_type = d.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ConfigError(f"{where}.position_embedding_type={position_type!r:.40} is not supported: only "
                          "'absolute' positions are implemented (relative_key* need distance embeddings)")
    for flag in ("is_decoder", "add_cross_attention"):
        if not v.flag(d.get(flag, False), f"{where}.{flag}"):
            raise ConfigError(f"{where}.{flag} is false: a {model_type} decoder needs causal self-attention and "
                              "cross-attention layers to read the image (is_decoder and add_cross_attention true)")
    cross = d.get("cross_attention_hidden_size")
    if cross is not None and cross != d.get("hidden_size", BertConfig.hidden_size):
        raise ConfigError(f"{where}.cross_attention_hidden_size={cross!r:.40} differs from hidden_size: "
                          f"{model_type} cross-attention only reads states of width hidden_size")
    if d.get("pruned_heads"):
        raise ConfigError(f"{where}.pruned_heads={d['pruned_heads']!r:.80} is not supported")
    cls = CONFIG_CLASSES[model_type]
    warn_unknown(d, field_names(cls) | _INERT, where)
    return cls(**fields(cls, d, where))
