"""The DeiT image encoder: ViT with a distillation token after [CLS].

Parameter tree (``params``): ViT's, plus ``dist`` [D], with ``pos`` [2 + N, D] (the class
and distillation tokens, then the patches). The layers and the final norm are ViT's own; the
decoder reads all 2 + N states, as transformers' VisionEncoderDecoder does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import jax
import jax.numpy as jnp

from ..hf_rules import Rule
from ..layers import dropout, site_key
from ..param_spec import EMBED, Param
from . import vit
from .family import EncoderFamily

SPECIAL_TOKENS = 2  # [CLS], distillation


@dataclass(frozen=True)
class DeiTConfig(vit.ViTConfig):
    """DeiT: a ViT with a distillation token beside [CLS] (its layers and fields are ViT's)."""
    model_type: str = "deit"
    """transformers' model_type: "deit"."""


def parse(d: Mapping, where: str = "encoder") -> DeiTConfig:
    return vit.parse(d, where, DeiTConfig)


def params(cfg: DeiTConfig) -> dict:
    """ViT's description with the distillation token (zero at init) and its position row."""
    return {**vit.params(cfg, SPECIAL_TOKENS), "dist": Param((cfg.hidden_size,), (EMBED,), "zeros")}


def embed(p: dict, pixels: jax.Array, cfg: DeiTConfig, *, interpolate_pos_encoding: bool, dtype,
          key=None) -> jax.Array:
    """[B,C,H,W] -> [B,2+N,D]"""
    x = vit.patch_tokens(p, pixels, cfg, [p["cls"], p["dist"]], dtype)
    pos = vit.position_embeddings(p, cfg, *pixels.shape[2:], interpolate_pos_encoding, special=SPECIAL_TOKENS)
    return dropout(x + pos.astype(dtype), cfg.hidden_dropout_prob, key)


def apply(p: dict, pixels: jax.Array, cfg: DeiTConfig, *, interpolate_pos_encoding: bool = False,
          dtype=jnp.float32, key=None, remat: bool = False) -> dict:
    """Same outputs as ``vit.apply`` with S = 2 + N (``remat`` as there)."""
    x = embed(p, pixels, cfg, interpolate_pos_encoding=interpolate_pos_encoding, dtype=dtype, key=site_key(key, 0))
    return vit.encode_tokens(p, x, cfg, dtype=dtype, key=key, remat=remat)


def hf_rules(cfg: DeiTConfig) -> list[Rule]:
    return vit.hf_rules(cfg) + [Rule("encoder.embeddings.distillation_token", ("encoder.dist",), "reshape")]


FAMILY = EncoderFamily(
    model_type="deit", config_class=DeiTConfig, parse=parse, params=params, apply=apply, hf_rules=hf_rules,
    layers_field="num_hidden_layers", special_tokens=SPECIAL_TOKENS,
    hf_shapes=lambda cfg: vit.hf_shapes(cfg, SPECIAL_TOKENS), ignored=(vit.POOLER,), placeholders=vit.placeholders,
    # DeiTModel, or DeiTForImageClassification(WithTeacher) with its heads dropped.
    standalone=(("classifier.", None), ("cls_classifier.", None), ("distillation_classifier.", None),
                ("deit.", "encoder."), ("", "encoder.")),
    image_processors=frozenset({"DeiTImageProcessor", "DeiTImageProcessorPil", "DeiTImageProcessorFast",
                                "DeiTFeatureExtractor"}),
    # transformers' DeiTImageProcessor class defaults, where they differ from ViT's.
    image_defaults={"size": {"height": 256, "width": 256}, "resample": 3, "do_center_crop": True,
                    "crop_size": {"height": 224, "width": 224}})
