"""The model families (one module each) and their registry; see ``family.py`` for what a family is.

``encoder_family(cfg)`` / ``decoder_family(cfg)`` give the record of a config's family;
``CONFIG_CLASSES`` lists every family's config class (the package exports them by name).
"""

from __future__ import annotations

from .family import DecoderFamily, EncoderFamily
from .registry import DECODERS, ENCODERS

# Each class once: one config class may serve several model_types (swin and donut-swin, mbart and bart).
CONFIG_CLASSES = tuple(dict.fromkeys(f.config_class for f in (*ENCODERS.values(), *DECODERS.values())))
ENCODER_CONFIG_TYPES = tuple(dict.fromkeys(f.config_class for f in ENCODERS.values()))
DECODER_CONFIG_TYPES = tuple(dict.fromkeys(f.config_class for f in DECODERS.values()))


def encoder_family(cfg) -> EncoderFamily:
    """The record of an encoder config's family (by its ``model_type``)."""
    return ENCODERS[cfg.model_type]


def decoder_family(cfg) -> DecoderFamily:
    """The record of a decoder config's family (by its ``model_type``)."""
    return DECODERS[cfg.model_type]


def image_processor_defaults(kind) -> dict | None:
    """The preprocessor defaults of an ``image_processor_type``, or None when no family reproduces it."""
    for family in ENCODERS.values():
        if kind in family.image_processors:
            return dict(family.image_defaults)
    return None


def image_pipeline(kind) -> str | None:
    """The preprocessing other than ViT's that an ``image_processor_type`` names ("donut"), or None."""
    for family in ENCODERS.values():
        if kind in family.image_pipelines:
            return family.image_pipelines[kind]
    return None


def pipeline_processors(pipeline: str) -> frozenset[str]:
    """Every ``image_processor_type`` that names the preprocessing ``pipeline``."""
    return frozenset(k for f in ENCODERS.values() for k, p in f.image_pipelines.items() if p == pipeline)


__all__ = ["CONFIG_CLASSES", "DECODERS", "DECODER_CONFIG_TYPES", "DecoderFamily", "ENCODERS",
           "ENCODER_CONFIG_TYPES", "EncoderFamily", "decoder_family", "encoder_family", "image_pipeline",
           "image_processor_defaults", "pipeline_processors"]
