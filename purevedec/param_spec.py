"""One description of a parameter: its shape, the logical name of each axis, and its initializer.

Every family describes its tree once as nested dicts (lists for per-layer blocks) of ``Param``;
``init_params`` draws from the initializers, validation and loading compare shapes, sharding maps
each logical axis to a mesh axis (``sharding.AXIS_RULES``), so a new family whose tensors name
their axes is sharded correctly without a rule of its own.

Logical axes (None: an axis no rule splits):
  "embed"      a model width D (the encoder's or the decoder's)
  "heads"      H*K attention outputs (q, k, v rows; the o kernel's input columns)
  "mlp"        the MLP's hidden width F
  "vocab"      token rows V (embeddings, LM heads)
  "positions"  rows of a position table
  "patch"      a patch's C*P*P pixel values
"""

from __future__ import annotations

from typing import NamedTuple, Optional

EMBED, HEADS, MLP, VOCAB, POSITIONS, PATCH = "embed", "heads", "mlp", "vocab", "positions", "patch"
INITS = ("normal", "truncated", "zeros", "ones", "full")


class Param(NamedTuple):
    """One leaf of a family's parameter description."""
    shape: tuple[int, ...]
    """The array's shape."""
    axes: tuple[Optional[str], ...]
    """The logical name of each axis (see the module doc), one per dimension."""
    init: str = "normal"
    """"normal" / "truncated" (N(0, scale), truncated at +-2 as transformers' trunc_normal_),
    "zeros", "ones", or "full" (every value ``scale``)."""
    scale: float = 0.0
    """The standard deviation of a normal draw, or the value of a "full" one."""


def dense(d_out: int, d_in: int, axes: tuple[Optional[str], Optional[str]], std: float, bias: bool = True) -> dict:
    """A [d_out, d_in] kernel ``w`` drawn N(0, std), with a zero bias ``b`` [d_out] unless ``bias`` is False."""
    p = {"w": Param((d_out, d_in), axes, "normal", std)}
    if bias:
        p["b"] = Param((d_out,), axes[:1], "zeros")
    return p


def norm(d: int) -> dict:
    """A layer norm over width d: unit ``scale``, zero ``bias``."""
    return {"scale": Param((d,), (EMBED,), "ones"), "bias": Param((d,), (EMBED,), "zeros")}


def is_param(x) -> bool:
    return isinstance(x, Param)


def shapes(tree):
    """The same tree with each ``Param`` replaced by its shape tuple."""
    if isinstance(tree, dict):
        return {k: shapes(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [shapes(v) for v in tree]
    return tuple(tree.shape)
