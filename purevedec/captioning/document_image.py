"""Document pages -> ``pixels`` [B,3,H,W] float32, as transformers' Donut image processor makes them.

The reference is ``DonutImageProcessorPil`` (transformers 5; also what ``DonutImageProcessor``
uses without torchvision). On the uint8 RGB page, in order:

1. align the long axis (optional): a page whose orientation differs from the canvas's is turned
   90 degrees clockwise;
2. resize so that the shorter side equals the canvas's shorter side (the longer side truncated
   to an int, as ``get_resize_output_image_size`` does);
3. thumbnail: shrink, keeping the aspect ratio (truncated), until the page fits the canvas;
4. pad with zeros to the canvas, centred (the odd pixel on the bottom/right);
5. rescale (float64, then float32) and normalise (float32), as the ViT processor does.

Every resize is a PIL resize of the uint8 image with the configured filter, so the output is
identical to transformers', not merely close.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from .. import validate as v
from ..errors import ConfigError, ImageError
from .image import (MAX_SIZE, ImageConfig, ImageInput, _normalize, _rescale, _resize, _side, _triple, as_list,
                    to_rgb_array)

_RESAMPLE_FILTERS = frozenset(range(6))
_KNOWN_TYPES = frozenset({"DonutImageProcessor", "DonutImageProcessorPil", "DonutImageProcessorFast",
                          "DonutFeatureExtractor"})
_KEYS = frozenset({"size", "resample", "do_align_long_axis", "do_resize", "do_thumbnail", "do_pad", "do_rescale",
                   "rescale_factor", "do_normalize", "image_mean", "image_std", "image_processor_type",
                   "feature_extractor_type", "processor_class", "do_convert_rgb", "do_center_crop"})


@dataclass(frozen=True)
class DonutImageConfig:
    """What a Donut ``preprocessor_config.json`` says, with transformers' class defaults."""
    size: tuple[int, int] = (2560, 1920)
    """(height, width) of the canvas."""
    resample: int = 2
    """The PIL filter of both resizes (2 = bilinear)."""
    do_align_long_axis: bool = False
    do_resize: bool = True
    do_thumbnail: bool = True
    do_pad: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)


def _canvas(value: Any) -> tuple[int, int]:
    """Donut's size: a [width, height] list (transformers reverses it), {"height", "width"}, or an int."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        value = {"height": value[1], "width": value[0]}
    if _side(value):
        value = {"height": value, "width": value}
    if isinstance(value, Mapping) and set(value) == {"height", "width"} and all(map(_side, value.values())):
        return (value["height"], value["width"])
    raise ConfigError(f"preprocessor size={value!r:.80} is not supported: expected [width, height], "
                      f'{{"height": H, "width": W}} or an int, sides in [1, {MAX_SIZE}]')


def _flag(d: Mapping, key: str, default: bool) -> bool:
    value = d.get(key, default)
    return default if value is None else v.flag(value, f"preprocessor {key}")


def parse_donut_image_config(d: Mapping) -> DonutImageConfig:
    """Parse a Donut ``preprocessor_config.json`` dict, refusing what would change the pixels unseen."""
    kind = d.get("image_processor_type", d.get("feature_extractor_type"))
    if kind is not None and kind not in _KNOWN_TYPES:
        raise ConfigError(f"preprocessor type {kind!r:.80} is not a Donut image processor")
    if d.get("do_center_crop"):
        raise ConfigError("preprocessor do_center_crop=true is not supported by the Donut preprocessing")
    unknown = sorted(str(k) for k in d if k not in _KEYS)
    if unknown:
        raise ConfigError(f"preprocessor_config.json: keys the Donut preprocessing does not know: {unknown}")
    resample = d.get("resample", 2)
    if type(resample) is not int or resample not in _RESAMPLE_FILTERS:
        raise ConfigError(f"preprocessor resample={resample!r:.40} must be a PIL resampling filter (0-5)")
    flags = {k: _flag(d, k, getattr(DonutImageConfig, k)) for k in
             ("do_align_long_axis", "do_resize", "do_thumbnail", "do_pad", "do_rescale", "do_normalize")}
    return DonutImageConfig(size=_canvas(d.get("size", [1920, 2560])), resample=resample,
                            rescale_factor=v.number(d.get("rescale_factor", 1 / 255), "preprocessor rescale_factor"),
                            image_mean=_triple(d.get("image_mean", 0.5), "image_mean"),
                            image_std=_triple(d.get("image_std", 0.5), "image_std"), **flags)


def shortest_edge_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) with the shorter side ``short`` and the longer one scaled, truncated."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def thumbnail_size(height: int, width: int, canvas: tuple[int, int]) -> tuple[int, int]:
    """(height, width) shrunk to fit ``canvas``: the clipped side sets the other (truncated)."""
    h, w = min(height, canvas[0]), min(width, canvas[1])
    if (h, w) == (height, width):
        return h, w
    if height > width:
        w = int(width * h / height)
    elif width > height:
        h = int(height * w / width)
    return h, w


def page_pixels(image: ImageInput, config: DonutImageConfig) -> np.ndarray:
    """One page -> [3,H,W] float32 on the canvas."""
    arr = to_rgb_array(image, ImageConfig())  # HWC; uint8 for files and PIL images
    (oh, ow), (ih, iw) = config.size, arr.shape[:2]
    if config.do_align_long_axis and ((ow < oh and iw > ih) or (ow > oh and iw < ih)):
        arr = np.ascontiguousarray(np.rot90(arr, 3, axes=(0, 1)))
    if config.do_resize:
        arr = _resize(arr, shortest_edge_size(*arr.shape[:2], min(oh, ow)), config.resample)
    if config.do_thumbnail:
        size = thumbnail_size(*arr.shape[:2], config.size)
        if size != arr.shape[:2]:
            arr = _resize(arr, size, config.resample)
    if config.do_pad:
        dh, dw = oh - arr.shape[0], ow - arr.shape[1]
        if dh < 0 or dw < 0:
            raise ImageError(f"a {arr.shape[0]}x{arr.shape[1]} page does not fit the {oh}x{ow} canvas "
                             "(do_resize and do_thumbnail are off)")
        arr = np.pad(arr, ((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2), (0, 0)))
    if config.do_rescale:
        arr = _rescale(arr, config.rescale_factor)
    if config.do_normalize:
        arr = _normalize(arr, config.image_mean, config.image_std)
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


def preprocess_pages(images: ImageInput | Iterable[ImageInput], config: DonutImageConfig) -> np.ndarray:
    """Pages -> [B,3,H,W] float32 (every page on the same canvas, unless padding is off)."""
    pages = [page_pixels(im, config) for im in as_list(images)]
    shapes = {p.shape for p in pages}
    if len(shapes) > 1:
        raise ImageError(f"pages of different sizes {sorted(shapes)} cannot form one batch: turn do_pad on")
    return np.stack(pages)
