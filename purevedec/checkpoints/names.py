"""Hugging Face tensor names: each family's rules (in its module) assembled for a whole model,
and the transforms between HF's layouts and ours.

Each rule maps one HF tensor (a name template with ``{i}`` for the layer) to one or more
paths of the params tree, with a transform both ways. The loader (HF -> params) and
``save`` (params -> HF) read the same rules, so names cannot drift apart.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from ..config import Config
from ..hf_rules import Rule, template_regex  # noqa: F401 (the loader and writer read them from here)
from ..models import decoder_family, encoder_family


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

PROJECTION_RULES = [Rule("enc_to_dec_proj.weight", ("proj.w",)), Rule("enc_to_dec_proj.bias", ("proj.b",))]


def placeholders(config: Config, pooler_size: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """Tensors save() writes as zeros only so that transformers reports nothing missing (the
    encoder's pooler that VisionEncoderDecoder never runs)."""
    return encoder_family(config.encoder).placeholders(config.encoder, pooler_size)


def rules_for(config: Config) -> list[Rule]:
    rules = encoder_family(config.encoder).hf_rules(config.encoder) + \
        decoder_family(config.decoder).hf_rules(config.decoder)
    return rules + PROJECTION_RULES if config.has_projection else rules


def is_ignored(name: str, config: Config) -> bool:
    """Known non-parameters (the families' ``ignored`` patterns: poolers, mask buffers), and an
    output projection that merely repeats the tied embedding."""
    dec = decoder_family(config.decoder)
    if name == dec.tied_head and config.decoder.tie_word_embeddings:
        return True
    return any(re.match(p, name) for p in (*encoder_family(config.encoder).ignored, *dec.ignored))


def hf_shape(rule: Rule, config: Config) -> tuple[int, ...] | None:
    """The shape HF stores a "reshape" tensor in; None for the other kinds (shape follows)."""
    return encoder_family(config.encoder).hf_shapes(config.encoder)[rule.hf] if rule.kind == "reshape" else None


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


def standalone_name(name: str, family) -> str | None:
    """The composed-model name of a tensor of a standalone encoder or decoder of ``family`` (its
    registry record); None to drop it (a classification head, an unused pooler)."""
    for prefix, repl in family.standalone:
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
