"""The type of one Hugging Face tensor-name rule; each family lists its own rules in its module.

A rule maps one HF tensor (a name template with ``{i}`` for the layer) to one or more paths of
the params tree, with a transform (``kind``) both ways. The loader (HF -> params) and ``save``
(params -> HF) read the same rules, so names cannot drift apart; the transforms themselves live
with the checkpoint code (``checkpoints.names.TRANSFORMS``).

Transform kinds: "copy"; "conv1d" (HF's Conv1D stores [d_in, d_out]: transposed); "conv1d_kv"
(a Conv1D [d_in, 2*d_out] split into two transposed kernels); "split2" (a vector split in two
halves); "reshape" (HF's shape differs from ours: the family's ``hf_shapes`` names it).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

KINDS = ("copy", "conv1d", "conv1d_kv", "split2", "reshape")
NORMS = {"weight": "scale", "bias": "bias"}  # nn.LayerNorm's names -> ours


@dataclass(frozen=True)
class Rule:
    """One HF tensor name template and the params paths it fills."""
    hf: str                      # e.g. "decoder.transformer.h.{i}.attn.c_attn.weight"
    ours: tuple[str, ...]        # e.g. ("decoder.blocks.{i}.attn.q.w", ...)
    kind: str = "copy"           # one of KINDS

    @property
    def regex(self) -> re.Pattern:
        return template_regex(self.hf)


@functools.lru_cache(maxsize=None)
def template_regex(template: str) -> re.Pattern:
    """A name template (HF's or our path's) with ``{i}`` as a regex capturing the layer index."""
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(\d+)") + "$")


def norm_rules(hf: str, ours: str) -> list[Rule]:
    """The two rules of a layer norm: HF ``{hf}.weight/.bias`` -> ``{ours}.scale/.bias``."""
    return [Rule(f"{hf}.{a}", (f"{ours}.{b}",)) for a, b in NORMS.items()]


def linear_rules(hf: str, ours: str, kind: str = "copy", bias: bool = True) -> list[Rule]:
    """The rules of a linear layer: HF ``{hf}.weight/.bias`` -> ``{ours}.w/.b``."""
    rules = [Rule(f"{hf}.weight", (f"{ours}.w",), kind)]
    return rules + [Rule(f"{hf}.bias", (f"{ours}.b",))] if bias else rules
