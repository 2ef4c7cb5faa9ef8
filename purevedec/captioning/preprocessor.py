"""The preprocessing a checkpoint's ``preprocessor_config.json`` names: ViT's (``image.py``) or a document
pipeline (``document_image.py``), chosen by its ``image_processor_type`` through the encoder families'
records (``image_pipelines``); a file without a type gets ViT's, as before.

``load_preprocessor`` reads the file into the pipeline's config; ``pixels_of`` and ``preprocess_any``
run whichever pipeline that config belongs to.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping, Union

import numpy as np

from ..checkpoints.jsonfile import read_json_object
from ..errors import ConfigError
from ..models import image_pipeline
from .document_image import (DocumentImageConfig, page_pixels, parse_donut_image_config, parse_nougat_image_config,
                             preprocess_pages)
from .image import ImageConfig, ImageInput, parse_image_config, preprocess, preprocess_one

PreprocessorConfig = Union[ImageConfig, DocumentImageConfig]

_PARSERS = {"donut": parse_donut_image_config, "nougat": parse_nougat_image_config}


def parse_preprocessor(d: Mapping) -> PreprocessorConfig:
    """A ``preprocessor_config.json`` dict -> the config of the pipeline its type names."""
    kind = d.get("image_processor_type", d.get("feature_extractor_type"))
    pipeline = image_pipeline(kind) if isinstance(kind, str) else None
    return _PARSERS[pipeline](d) if pipeline in _PARSERS else parse_image_config(d)


def load_preprocessor(path: str | os.PathLike) -> PreprocessorConfig:
    """Read ``path/preprocessor_config.json`` (or that file itself), errors naming the file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "preprocessor_config.json")
    try:
        return parse_preprocessor(read_json_object(path))
    except ConfigError as e:
        if path in str(e):
            raise
        raise ConfigError(f"{path}: {e}") from None


def output_size(config: PreprocessorConfig) -> tuple[str, tuple[int, int]] | None:
    """(the key that sets it, (height, width)) of every image the pipeline makes, or None when it
    keeps each image's own size."""
    if isinstance(config, DocumentImageConfig):
        return ("size", config.size) if config.do_pad else None
    if config.do_center_crop:
        return ("crop_size", config.crop_size)
    return ("size", config.size) if config.do_resize else None


def pipeline_of(config: PreprocessorConfig) -> str | None:
    """The document pipeline ("donut", "nougat") the checkpoint's preprocessor named, None for ViT's."""
    return config.pipeline if isinstance(config, DocumentImageConfig) else None


def pixels_of(image: ImageInput, config: PreprocessorConfig) -> np.ndarray:
    """One input -> [3,H,W] float32, by the config's pipeline."""
    if isinstance(config, DocumentImageConfig):
        return page_pixels(image, config)
    return preprocess_one(image, config)


def preprocess_any(images: ImageInput | Iterable[ImageInput], config: PreprocessorConfig) -> np.ndarray:
    """Inputs -> [B,3,H,W] float32, by the config's pipeline."""
    if isinstance(config, DocumentImageConfig):
        return preprocess_pages(images, config)
    return preprocess(images, config)
