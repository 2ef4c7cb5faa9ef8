"""What a model family is: the record each family module exports, and the protocols its code follows.

A family is one module in ``purevedec/models/`` and one line in ``registry.py``. The module
defines its config (a frozen dataclass, validated in ``__post_init__``), a parser for its
``config.json`` section, its parameter description, its Hugging Face tensor names and its model
functions, and exports one ``EncoderFamily`` or ``DecoderFamily`` record naming them. Nothing
outside ``models/`` names a family: config parsing, init, validation, loading, saving,
sharding, freezing, training defaults and captioning read the record.

Shape letters: B images, R decoder rows (B times the rows per image), S encoder tokens, T
decoder tokens, Tmax cache length, D width, C the width cross-attention reads, H heads, K head
width, V vocabulary, L layers.

The encoder protocol
--------------------
``params(cfg) -> tree``: nested dicts (lists for per-layer blocks) of ``param_spec.Param``
    (shape, logical axes, initializer). The params tree has the same layout with arrays.
``apply(p, pixels [B,C,H,W], cfg, *, interpolate_pos_encoding, dtype, key=None, remat=False) -> dict``:
    {"last_hidden_state": [B,S,D] (what the decoder reads, before any projection),
    "hidden_states": the embeddings and each layer's output (L + 1 arrays [B,S,D]),
    "attentions": each layer's weights [B,H,S,S]}. ``key`` turns dropout on; ``remat``
    recomputes each layer in the backward pass (``layers.layer_outputs``).

The decoder protocol
--------------------
``params(cfg) -> tree``: as for an encoder.
``cross_kv(bp, enc [B,S,C], cfg, dtype) -> (k, v)``: one layer's (``bp``: ``p["blocks"][i]``)
    cross-attention keys and values, each [B,H,S,K], computed once per image.
``apply(p, ids [R,T], kv_cross, cfg, *, attention_mask=None, position_ids=None, dtype, key=None,
    remat=False) -> dict``: the teacher-forced pass over ``kv_cross`` (a list of L (k, v) pairs):
    {"logits": [R,T,V] float32, "hidden_states": L + 1 arrays [R,T,D] (transformers' order),
    "attentions": L arrays [R,H,T,T], "cross_attentions": L arrays [R,H,T,S]}. R rows read
    B images, R/B rows per image, image-major (rows are folded into the queries, K/V never copied).
``apply_cached(p, cache, ids [R,t], cfg, *, attention_mask=None, shifted=False, dtype) ->
    (logits [R,t,V] float32, new cache, cross-attention weights per layer [R,H,t,S])``:
    ``t`` new tokens after the ``cache.pos`` already cached (``decoder_cache.DecoderCache``:
    the core initialises it from the config's ``n_layer``/``n_head``/``head_dim`` and provides the
    K/V write and the cached causal mask). Logits past the cache's end come out NaN.

Config protocols
----------------
An encoder config has ``model_type``, ``hidden_size``, ``num_channels``, ``image_size`` and
``patch_size`` ((h, w) pairs), ``grid``, ``num_patches`` and ``initializer_range``. A decoder config
has ``model_type``, ``vocab_size``, ``n_embd``, ``n_layer``, ``n_head``, ``head_dim``,
``n_positions``, ``cross_attention_hidden_size`` (None: reads width ``n_embd``),
``tie_word_embeddings`` and ``bos/eos/pad_token_id``: properties over the family's own names
where transformers spells them differently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Protocol

from ..hf_rules import Rule


class EncoderApply(Protocol):
    def __call__(self, p: dict, pixels, cfg, *, interpolate_pos_encoding: bool = False, dtype=...,
                 key=None, remat: bool = False) -> dict: ...


class DecoderApply(Protocol):
    def __call__(self, p: dict, ids, kv_cross: list, cfg, *, attention_mask=None, position_ids=None, dtype=...,
                 key=None, remat: bool = False) -> dict: ...


class DecoderApplyCached(Protocol):
    def __call__(self, p: dict, cache, ids, cfg, *, attention_mask=None, shifted: bool = False,
                 dtype=...) -> tuple: ...


def config_json(cfg) -> dict:
    """A config's ``config.json`` section rebuilt from its dataclass (tuples written as lists)."""
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass(frozen=True)
class EncoderFamily:
    """Everything the package needs to know about one image-encoder family."""
    model_type: str
    """transformers' ``model_type`` of the encoder section ("vit")."""
    config_class: type
    """The frozen config dataclass."""
    parse: Callable[[Mapping, str], Any]
    """``parse(section, where)``: the config from its ``config.json`` section, strict (``ConfigError``)."""
    params: Callable[[Any], dict]
    """``params(cfg)``: the parameter description (see the module doc)."""
    apply: EncoderApply
    """The forward pass (see the module doc)."""
    hf_rules: Callable[[Any], list[Rule]]
    """``hf_rules(cfg)``: the HF tensor-name rules of this config (optional parts only when it has them)."""
    layers_field: str
    """The config field holding the layer count (the loader bounds a file's claims with it)."""
    special_tokens: int = 1
    """How many special tokens ([CLS], distillation, ...) lead the output before the patches."""
    hf_shapes: Callable[[Any], Mapping[str, tuple]] = lambda cfg: {}
    """``hf_shapes(cfg)``: HF name -> HF shape of each "reshape" rule's tensor."""
    ignored: tuple[str, ...] = ()
    """Regexes of HF tensors checkpoints carry that are not parameters (a pooler), skipped on load."""
    placeholders: Callable[[Any, Optional[int]], list] = lambda cfg, pooler_size: []
    """``placeholders(cfg, pooler_size)``: (HF name, shape) of tensors ``save`` writes as zeros only
    so that transformers reports nothing missing (a pooler VisionEncoderDecoder never runs)."""
    standalone: tuple[tuple[str, Optional[str]], ...] = (("", "encoder."),)
    """(prefix, replacement or None to drop) for a standalone checkpoint's names inside the
    composed model, first match wins; the last prefix should be "" (``from_encoder_decoder_pretrained``)."""
    to_json: Callable[[Any], dict] = config_json
    """``to_json(cfg)``: the config.json section of a config built in code."""
    image_processors: frozenset[str] = frozenset()
    """``image_processor_type`` names whose preprocessing ``captioning.image`` reproduces for it."""
    image_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """preprocessor_config.json defaults of its processor class, where they differ from ViT's."""
    prompt_replaces_start: bool = False
    """transformers' generate feeds a decoder prompt as given, without prepending the decoder start
    token (Donut's encoder: a task token starts the sequence)."""
    image_pipelines: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Other ``image_processor_type`` names -> the preprocessing ``captioning`` runs for them
    instead of ViT's ("donut": align, resize, thumbnail, pad; "nougat": crop the margins first)."""
    page_defaults: Mapping[str, Mapping[str, bool]] = dataclasses.field(default_factory=dict)
    """Per preprocessing pipeline, what ``purevedec read`` does unless told otherwise for a checkpoint
    whose preprocessor names it: "markdown" (clean up generated Markdown as Nougat's processor does),
    "stop_score_variance" (end a repetition loop as Nougat's reference does)."""


@dataclass(frozen=True)
class DecoderFamily:
    """Everything the package needs to know about one text-decoder family."""
    model_type: str
    """transformers' ``model_type`` of the decoder section ("gpt2")."""
    config_class: type
    """The frozen config dataclass."""
    parse: Callable[[Mapping, str], Any]
    """``parse(section, where)``: the config from its ``config.json`` section, strict (``ConfigError``)."""
    params: Callable[[Any], dict]
    """``params(cfg)``: the parameter description (see the module doc)."""
    apply: DecoderApply
    """The teacher-forced pass (see the module doc)."""
    cross_kv: Callable
    """``cross_kv(bp, enc, cfg, dtype) -> (k, v)`` of one layer (see the module doc)."""
    apply_cached: DecoderApplyCached
    """The cached decoding step (see the module doc)."""
    hf_rules: Callable[[Any], list[Rule]]
    """``hf_rules(cfg)``: the HF tensor-name rules of this config."""
    layers_field: str
    """The config field holding the layer count."""
    embedding_leaves: tuple[str, ...]
    """The token and position tables under ``params["decoder"]`` (``freeze_embeddings`` freezes them)."""
    tied_head: Optional[str] = None
    """HF name of the output projection, skipped on load and save when it is tied to the embedding."""
    tied_copies: tuple[str, ...] = ()
    """Other HF tensors that only repeat a parameter when the head is tied (BERT's output
    projection bias, tied to the vocabulary bias), skipped on load and save like ``tied_head``."""
    ignored: tuple[str, ...] = ()
    """Regexes of HF tensors checkpoints carry that are not parameters (mask buffers), skipped on load."""
    standalone: tuple[tuple[str, Optional[str]], ...] = (("", "decoder."),)
    """As ``EncoderFamily.standalone``, for a standalone decoder checkpoint."""
    to_json: Callable[[Any], dict] = config_json
    """``to_json(cfg)``: the config.json section of a config built in code."""
    check_cross_width: Callable[[int, Any], None] = lambda cross, cfg: None
    """``check_cross_width(cross_attention_hidden_size, cfg)``: raise ``ConfigError`` when the
    decoder cannot read encoder states of that width without a projection."""
    default_metrics: str = "bleu,cider"
    """The ``train`` command's validation metrics for this decoder."""
