"""The only file that spells Hugging Face tensor names.

Each rule maps one HF tensor (a name template with ``{i}`` for the layer) to one or more
paths of the params tree, with a transform both ways. The loader (HF -> params) and
``save`` (params -> HF) read the same table, so names cannot drift apart.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..config import Config


@dataclass(frozen=True)
class Rule:
    hf: str                      # e.g. "decoder.transformer.h.{i}.attn.c_attn.weight"
    ours: tuple[str, ...]        # e.g. ("decoder.blocks.{i}.attn.q.w", ...)
    kind: str = "copy"           # a key of TRANSFORMS

    @property
    def regex(self) -> re.Pattern:
        return template_regex(self.hf)


@functools.lru_cache(maxsize=None)
def template_regex(template: str) -> re.Pattern:
    """A name template (HF's or our path's) with ``{i}`` as a regex capturing the layer index."""
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(\d+)") + "$")


def _split_t(a: np.ndarray, n: int) -> list[np.ndarray]:
    # Conv1D stores [d_in, n*d_out] and computes x @ W; we keep [d_out, d_in].
    return [np.ascontiguousarray(p.T) for p in np.split(a, n, axis=1)]


# kind -> (HF array -> our arrays, our arrays + HF shape -> HF array)
TRANSFORMS: dict[str, tuple[Callable, Callable]] = {
    "copy": (lambda a: [a], lambda xs, shape: xs[0]),
    "conv1d": (lambda a: [np.ascontiguousarray(a.T)], lambda xs, shape: np.ascontiguousarray(xs[0].T)),
    "conv1d_kv": (lambda a: _split_t(a, 2), lambda xs, shape: np.concatenate([x.T for x in xs], axis=1)),
    "split2": (lambda a: np.split(a, 2), lambda xs, shape: np.concatenate(xs)),
    # cls [1,1,D] -> [D]; pos [1,N,D] -> [N,D]; patch conv [D,C,P,P] -> [D,C*P*P]
    "reshape": (None, lambda xs, shape: xs[0].reshape(shape)),
}

_ENC = "encoder.encoder.layer.{i}."
_DEC = "decoder.transformer.h.{i}."
_VIT_LINEARS = {"attention.attention.query": "attn.q", "attention.attention.key": "attn.k",
                "attention.attention.value": "attn.v", "attention.output.dense": "attn.o",
                "intermediate.dense": "mlp.fc", "output.dense": "mlp.out"}
_NORMS = {"weight": "scale", "bias": "bias"}


def _vit_layer_rules(linears: dict, biased: frozenset | None = None) -> list[Rule]:
    """The per-layer rules ViT, DeiT and BEiT share; ``biased`` limits which linears have a bias."""
    rules = []
    for hf, ours in linears.items():
        rules.append(Rule(f"{_ENC}{hf}.weight", (f"encoder.blocks.{{i}}.{ours}.w",)))
        if biased is None or hf in biased:
            rules.append(Rule(f"{_ENC}{hf}.bias", (f"encoder.blocks.{{i}}.{ours}.b",)))
    for hf_norm, ours in (("layernorm_before", "ln1"), ("layernorm_after", "ln2")):
        rules += [Rule(f"{_ENC}{hf_norm}.{a}", (f"encoder.blocks.{{i}}.{ours}.{b}",)) for a, b in _NORMS.items()]
    return rules


def _embedding_rules() -> list[Rule]:
    return [Rule("encoder.embeddings.cls_token", ("encoder.cls",), "reshape"),
            Rule("encoder.embeddings.patch_embeddings.projection.weight", ("encoder.patch.w",), "reshape"),
            Rule("encoder.embeddings.patch_embeddings.projection.bias", ("encoder.patch.b",))]


_FINAL_NORM = [Rule(f"encoder.layernorm.{a}", (f"encoder.ln_f.{b}",)) for a, b in _NORMS.items()]
_POSITIONS = Rule("encoder.embeddings.position_embeddings", ("encoder.pos",), "reshape")


def _vit_rules(config: Config) -> list[Rule]:
    return _embedding_rules() + [_POSITIONS] + _vit_layer_rules(_VIT_LINEARS) + _FINAL_NORM


def _deit_rules(config: Config) -> list[Rule]:
    return _vit_rules(config) + [Rule("encoder.embeddings.distillation_token", ("encoder.dist",), "reshape")]


def _beit_rules(config: Config) -> list[Rule]:
    """BEiT: no key bias, layer scale (lambda_1/2), relative bias tables per layer and/or shared;
    absolute positions and the final norm only when the config has them."""
    enc = config.encoder
    rules = _embedding_rules() + _vit_layer_rules(_VIT_LINEARS, frozenset(_VIT_LINEARS) - {"attention.attention.key"})
    table = "relative_position_bias.relative_position_bias_table"
    if enc.use_absolute_position_embeddings:
        rules.append(_POSITIONS)
    if enc.use_relative_position_bias:
        rules.append(Rule(f"{_ENC}attention.attention.{table}", ("encoder.blocks.{i}.rel_bias",)))
    if enc.use_shared_relative_position_bias:
        rules.append(Rule(f"encoder.encoder.{table}", ("encoder.rel_bias",)))
    if enc.layer_scale_init_value > 0:
        rules += [Rule(f"{_ENC}lambda_1", ("encoder.blocks.{i}.ls1",)), Rule(f"{_ENC}lambda_2", ("encoder.blocks.{i}.ls2",))]
    return rules if enc.use_mean_pooling else rules + _FINAL_NORM


def _gpt2_rules(config: Config) -> list[Rule]:
    blk = "decoder.blocks.{i}."
    kv = tuple(f"{blk}cross.{n}" for n in "kv")
    rules = [Rule("decoder.transformer.wte.weight", ("decoder.wte",)),
             Rule("decoder.transformer.wpe.weight", ("decoder.wpe",)),
             Rule("decoder.lm_head.weight", ("decoder.lm_head",)),
             Rule(f"{_DEC}attn.c_attn.weight", (f"{blk}attn.qkv.w",), "conv1d"),
             Rule(f"{_DEC}attn.c_attn.bias", (f"{blk}attn.qkv.b",)),
             Rule(f"{_DEC}crossattention.c_attn.weight", tuple(p + ".w" for p in kv), "conv1d_kv"),
             Rule(f"{_DEC}crossattention.c_attn.bias", tuple(p + ".b" for p in kv), "split2")]
    for hf, ours in (("attn.c_proj", "attn.o"), ("crossattention.q_attn", "cross.q"),
                     ("crossattention.c_proj", "cross.o"), ("mlp.c_fc", "mlp.fc"), ("mlp.c_proj", "mlp.out")):
        rules += [Rule(f"{_DEC}{hf}.weight", (f"{blk}{ours}.w",), "conv1d"),
                  Rule(f"{_DEC}{hf}.bias", (f"{blk}{ours}.b",))]
    for hf_norm, ours in (("ln_1", "ln1"), ("ln_cross_attn", "ln_cross"), ("ln_2", "ln2")):
        rules += [Rule(f"{_DEC}{hf_norm}.{a}", (f"{blk}{ours}.{b}",)) for a, b in _NORMS.items()]
    rules += [Rule(f"decoder.transformer.ln_f.{a}", (f"decoder.ln_f.{b}",)) for a, b in _NORMS.items()]
    return rules


_TROCR = "decoder.model.decoder."
_TROCR_LAYER = _TROCR + "layers.{i}."
_TROCR_LINEARS = {f"{hf}_attn.{p}_proj": f"{ours}.{q}" for hf, ours in (("self", "attn"), ("encoder", "cross"))
                  for p, q in (("q", "q"), ("k", "k"), ("v", "v"), ("out", "o"))}
_TROCR_LINEARS.update({"fc1": "mlp.fc", "fc2": "mlp.out"})
_TROCR_NORMS = {"self_attn_layer_norm": "ln1", "encoder_attn_layer_norm": "ln_cross", "final_layer_norm": "ln2"}


def _trocr_rules(config: Config) -> list[Rule]:
    """TrOCR keeps PyTorch Linear layouts: every tensor is a copy. Sinusoidal positions have no tensor."""
    blk = "decoder.blocks.{i}."
    rules = [Rule(f"{_TROCR}embed_tokens.weight", ("decoder.embed",)),
             Rule("decoder.output_projection.weight", ("decoder.lm_head",))]
    if config.decoder.use_learned_position_embeddings:
        rules.append(Rule(f"{_TROCR}embed_positions.weight", ("decoder.pos",)))
    if config.decoder.layernorm_embedding:
        rules += [Rule(f"{_TROCR}layernorm_embedding.{a}", (f"decoder.ln_embed.{b}",)) for a, b in _NORMS.items()]
    for hf, ours in _TROCR_LINEARS.items():
        rules += [Rule(f"{_TROCR_LAYER}{hf}.{a}", (f"{blk}{ours}.{b}",)) for a, b in (("weight", "w"), ("bias", "b"))]
    for hf, ours in _TROCR_NORMS.items():
        rules += [Rule(f"{_TROCR_LAYER}{hf}.{a}", (f"{blk}{ours}.{b}",)) for a, b in _NORMS.items()]
    return rules


# model_type -> the rules for a config of that type (optional parts only when the config has them).
RULES = {"vit": _vit_rules, "deit": _deit_rules, "beit": _beit_rules, "gpt2": _gpt2_rules, "trocr": _trocr_rules}
PROJECTION_RULES = [Rule("enc_to_dec_proj.weight", ("proj.w",)), Rule("enc_to_dec_proj.bias", ("proj.b",))]

# Tensors real checkpoints carry that are not parameters of the captioning model: GPT-2's
# causal-mask buffers (older transformers saved them) and ViT's pooler, which
# VisionEncoderDecoder never uses. Listed so that skipping them is a decision, not an accident.
IGNORED = [re.compile(p) for p in (
    r"^decoder\.transformer\.h\.\d+\.(attn|crossattention)\.(bias|masked_bias)$",
    r"^encoder\.pooler\.dense\.(weight|bias)$",
    r"^encoder\.pooler\.layernorm\.(weight|bias)$",  # BEiT's mean-pooling norm (pooler output only)
    r"^encoder\.encoder\.(layer\.\d+\.attention\.attention\.)?relative_position_bias\.relative_position_index$",
    r"^decoder\.model\.decoder\.embed_positions\._float_tensor$",  # old TrOCR's sinusoid device marker
)]
# The output projection's name, per decoder: skipped on load and save when tied to the embedding.
_HEADS = {"gpt2": "decoder.lm_head.weight", "trocr": "decoder.output_projection.weight"}


def placeholders(config: Config, pooler_size: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """Tensors save() writes as zeros only so that transformers reports nothing missing: the
    pooler that ViTModel/DeiTModel/BeitModel build but VisionEncoderDecoder never runs."""
    d = config.encoder.hidden_size
    if config.encoder.model_type == "beit":
        return [(f"encoder.pooler.layernorm.{a}", (d,)) for a in ("weight", "bias")] \
            if config.encoder.use_mean_pooling else []
    return [("encoder.pooler.dense.weight", (pooler_size or d, d)), ("encoder.pooler.dense.bias", (pooler_size or d,))]


def rules_for(config: Config) -> list[Rule]:
    rules = RULES[config.encoder.model_type](config) + RULES[config.decoder.model_type](config)
    return rules + PROJECTION_RULES if config.has_projection else rules


def is_ignored(name: str, config: Config) -> bool:
    """Known non-parameters, and an output projection that merely repeats the tied embedding."""
    if name == _HEADS[config.decoder.model_type] and config.decoder.tie_word_embeddings:
        return True
    return any(p.match(name) for p in IGNORED)


# The HF shapes of the "reshape" tensors, which our params store flattened (save needs them back).
_HF_SHAPES: dict[str, Callable] = {
    "encoder.embeddings.cls_token": lambda c: (1, 1, c.encoder.hidden_size),
    "encoder.embeddings.distillation_token": lambda c: (1, 1, c.encoder.hidden_size),
    "encoder.embeddings.position_embeddings":
        lambda c: (1, (2 if c.encoder.model_type == "deit" else 1) + c.encoder.num_patches, c.encoder.hidden_size),
    "encoder.embeddings.patch_embeddings.projection.weight":
        lambda c: (c.encoder.hidden_size, c.encoder.num_channels, *c.encoder.patch_size),
}


def hf_shape(rule: Rule, config: Config) -> tuple[int, ...] | None:
    """The shape HF stores a "reshape" tensor in; None for the other kinds (shape follows)."""
    return _HF_SHAPES[rule.hf](config) if rule.kind == "reshape" else None


def expand(rule: Rule, layers: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """(HF name, our paths) for each layer index of a rule (one pair for a rule without {i})."""
    if "{i}" not in rule.hf:
        return [(rule.hf, rule.ours)]
    return [(rule.hf.replace("{i}", i), tuple(p.replace("{i}", i) for p in rule.ours)) for i in layers]


def from_flax(path: tuple[str, ...], array: np.ndarray) -> tuple[str, np.ndarray]:
    """A transformers Flax param (its key path) as the PyTorch-named tensor it stands for.

    transformers' Flax modules name Dense/Conv weights ``kernel``, LayerNorm weights ``scale``
    and Embed weights ``embedding``. Dense kernels are [in, out] (PyTorch Linear is [out, in]);
    GPT-2's FlaxConv1D kernel is [out, in] (PyTorch Conv1D is [in, out]): a transpose both
    times. The patch Conv kernel is HWIO where PyTorch's Conv2d is OIHW."""
    if path[:1] == ("params",):  # a variables dict saved whole rather than its params
        path = path[1:]
    *head, leaf = path
    if leaf == "kernel":
        leaf, array = "weight", (array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T)
    elif leaf in ("scale", "embedding"):
        leaf = "weight"
    return ".".join((*head, leaf)), array


# A standalone checkpoint's names inside the composed model (from_encoder_decoder_pretrained):
# ViTModel ("embeddings.*") or ViTForImageClassification ("vit.*" plus a classifier we drop),
# the same for DeiT ("deit.*", with or without the teacher's two heads) and BEiT ("beit.*");
# GPT2LMHeadModel ("transformer.*", "lm_head.weight") or GPT2Model ("h.*", "wte.weight", ...);
# TrOCRForCausalLM ("model.decoder.*", "output_projection.weight").
_STANDALONE = {
    "vit": (("classifier.", None), ("vit.", "encoder."), ("", "encoder.")),
    "deit": (("classifier.", None), ("cls_classifier.", None), ("distillation_classifier.", None),
             ("deit.", "encoder."), ("", "encoder.")),
    "beit": (("classifier.", None), ("pooler.", None), ("beit.pooler.", None), ("beit.", "encoder."),
             ("", "encoder.")),
    "gpt2": (("transformer.", "decoder.transformer."), ("lm_head.", "decoder.lm_head."),
             ("", "decoder.transformer.")),
    "trocr": (("model.decoder.", "decoder.model.decoder."), ("output_projection.", "decoder.output_projection."),
              ("", "decoder.model.decoder.")),
}


def standalone_name(name: str, model_type: str) -> str | None:
    """The composed-model name of a tensor of a standalone encoder/decoder of ``model_type``;
    None to drop it (a classification head, an unused pooler)."""
    for prefix, repl in _STANDALONE[model_type]:
        if name.startswith(prefix):
            return None if repl is None else repl + name[len(prefix):]
    raise AssertionError("unreachable: the empty prefix matches every name")


def match(name: str, rules: list[Rule]) -> tuple[Rule, tuple[str, ...]] | None:
    """The rule for one HF tensor name and our concrete paths for it, or None."""
    for rule in rules:
        m = rule.regex.match(name)
        if m:
            layer = m.group(1) if m.groups() else None
            return rule, tuple(p.replace("{i}", layer) if layer is not None else p for p in rule.ours)
    return None
