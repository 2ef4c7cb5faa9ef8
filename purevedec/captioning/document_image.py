"""Document pages -> ``pixels`` [B,3,H,W] float32, as transformers' Donut and Nougat image processors make them.

The references are ``DonutImageProcessorPil`` and ``NougatImageProcessorPil`` (transformers 5; also
what the plain classes use without torchvision). On the uint8 RGB page, in order:

0. crop the margins (Nougat, optional): the bounding box of the pixels darker than 200 after the
   page's grey levels are stretched to 0..255 (a page of one grey level is kept whole);
1. align the long axis (optional): a page whose orientation differs from the canvas's is turned
   90 degrees clockwise;
2. resize so that the shorter side equals the canvas's shorter side (the longer side truncated
   to an int, as ``get_resize_output_image_size`` does);
3. thumbnail: shrink, keeping the aspect ratio (truncated), until the page fits the canvas (Donut
   with the configured filter; Nougat always bicubic with PIL's reducing_gap of 2);
4. pad with zeros to the canvas, centred (the odd pixel on the bottom/right);
5. rescale (float64, then float32) and normalise (float32), as the ViT processor does.

Every resize is a PIL resize of the uint8 image with the configured filter, so the output is
identical to transformers', not merely close.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
from PIL import Image

from .. import validate as v
from ..errors import ConfigError, ImageError
from ..models import pipeline_processors
from .image import (MAX_SIZE, ImageConfig, ImageInput, _normalize, _rescale, _resize, _side, _triple, as_list,
                    to_rgb_array)

_RESAMPLE_FILTERS = frozenset(range(6))
_DONUT_TYPES = pipeline_processors("donut")    # the encoder families name the processors
_NOUGAT_TYPES = pipeline_processors("nougat")
_KEYS = frozenset({"size", "resample", "do_align_long_axis", "do_resize", "do_thumbnail", "do_pad", "do_rescale",
                   "rescale_factor", "do_normalize", "image_mean", "image_std", "image_processor_type",
                   "feature_extractor_type", "processor_class", "do_convert_rgb", "do_center_crop", "do_crop_margin"})
GRAY_THRESHOLD = 200  # Nougat's margin: stretched grey levels at or above it are background
BICUBIC = 3


@dataclass(frozen=True)
class DocumentImageConfig:
    """What a Donut or Nougat ``preprocessor_config.json`` says, with Donut's class defaults
    (``nougat_defaults`` holds Nougat's)."""
    size: tuple[int, int] = (2560, 1920)
    """(height, width) of the canvas."""
    resample: int = 2
    """The PIL filter of the shorter-side resize (2 = bilinear), and of Donut's thumbnail."""
    nougat_thumbnail: bool = False
    """The thumbnail resize is Nougat's: bicubic with reducing_gap 2, whatever ``resample`` says."""
    do_crop_margin: bool = False
    do_align_long_axis: bool = False
    do_resize: bool = True
    do_thumbnail: bool = True
    do_pad: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    grayscale: bool = False
    """Gray and back to RGB first, as ``ImageConfig.grayscale`` (not read from the file)."""
    pipeline: str = "donut"
    """The preprocessing the file's type names ("donut", "nougat"): the encoder family's record says
    what else a checkpoint of that kind wants (``EncoderFamily.page_defaults``)."""


# transformers' NougatImageProcessor class defaults (ImageNet's default mean and std).
NOUGAT_DEFAULTS = {"size": {"height": 896, "width": 672}, "do_crop_margin": True,
                   "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def _canvas(value: Any, width_first: bool) -> tuple[int, int]:
    """The canvas size: a [width, height] list for Donut (its processor reverses it; Nougat's reads
    [height, width]), {"height", "width"}, or an int."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        value = {"height": value[1], "width": value[0]} if width_first else {"height": value[0], "width": value[1]}
    if _side(value):
        value = {"height": value, "width": value}
    if isinstance(value, Mapping) and set(value) == {"height", "width"} and all(map(_side, value.values())):
        return (value["height"], value["width"])
    raise ConfigError(f"preprocessor size={value!r:.80} is not supported: expected [width, height], "
                      f'{{"height": H, "width": W}} or an int, sides in [1, {MAX_SIZE}]')


def _flag(d: Mapping, key: str, default: bool) -> bool:
    value = d.get(key, default)
    return default if value is None else v.flag(value, f"preprocessor {key}")


def parse_donut_image_config(d: Mapping) -> DocumentImageConfig:
    """Parse a Donut ``preprocessor_config.json`` dict, refusing what would change the pixels unseen."""
    return _parse(d, _DONUT_TYPES, {}, nougat=False)


def parse_nougat_image_config(d: Mapping) -> DocumentImageConfig:
    """Parse a Nougat ``preprocessor_config.json`` dict (Nougat's class defaults)."""
    return _parse(d, _NOUGAT_TYPES, NOUGAT_DEFAULTS, nougat=True)


def _parse(d: Mapping, types: frozenset, defaults: Mapping, nougat: bool) -> DocumentImageConfig:
    kind = d.get("image_processor_type", d.get("feature_extractor_type"))
    if kind is not None and kind not in types:
        raise ConfigError(f"preprocessor type {kind!r:.80} is not one of {sorted(types)}")
    d = {**defaults, **{k: val for k, val in d.items() if val is not None}}
    if d.get("do_center_crop"):
        raise ConfigError("preprocessor do_center_crop=true is not supported by the Donut preprocessing")
    unknown = sorted(str(k) for k in d if k not in _KEYS)
    if unknown:
        raise ConfigError(f"preprocessor_config.json: keys the Donut preprocessing does not know: {unknown}")
    resample = d.get("resample", 2)
    if type(resample) is not int or resample not in _RESAMPLE_FILTERS:
        raise ConfigError(f"preprocessor resample={resample!r:.40} must be a PIL resampling filter (0-5)")
    if d.get("do_crop_margin") and not nougat:
        raise ConfigError("preprocessor do_crop_margin is a Nougat option, not a Donut one")
    flags = {k: _flag(d, k, getattr(DocumentImageConfig, k)) for k in
             ("do_crop_margin", "do_align_long_axis", "do_resize", "do_thumbnail", "do_pad", "do_rescale",
              "do_normalize")}
    return DocumentImageConfig(size=_canvas(d.get("size", [1920, 2560]), width_first=not nougat), resample=resample,
                               nougat_thumbnail=nougat, pipeline="nougat" if nougat else "donut",
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


def crop_margin(arr: np.ndarray) -> np.ndarray:
    """HWC uint8 -> the bounding box of its dark pixels (grey levels stretched to 0..255, below
    GRAY_THRESHOLD), as Nougat's processor finds it; a page of one grey level comes back whole."""
    gray = np.array(Image.fromarray(arr).convert("L")).astype(np.uint8)
    low, high = gray.min(), gray.max()
    if low == high:
        return arr
    rows, cols = np.nonzero((gray - low) / (high - low) * 255 < GRAY_THRESHOLD)
    return arr[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _thumbnail(arr: np.ndarray, size: tuple[int, int], config: DocumentImageConfig) -> np.ndarray:
    if not config.nougat_thumbnail:
        return _resize(arr, size, config.resample)
    return np.array(Image.fromarray(_as_uint8(arr)).resize((size[1], size[0]), resample=BICUBIC, reducing_gap=2.0))


def page_pixels(image: ImageInput, config: DocumentImageConfig) -> np.ndarray:
    """One page -> [3,H,W] float32 on the canvas."""
    arr = to_rgb_array(image, ImageConfig(grayscale=config.grayscale))  # HWC; uint8 for files and PIL images
    if config.do_crop_margin:
        arr = crop_margin(_as_uint8(arr))
    (oh, ow), (ih, iw) = config.size, arr.shape[:2]
    if config.do_align_long_axis and ((ow < oh and iw > ih) or (ow > oh and iw < ih)):
        arr = np.ascontiguousarray(np.rot90(arr, 3, axes=(0, 1)))
    if config.do_resize:
        arr = _resize(arr, shortest_edge_size(*arr.shape[:2], min(oh, ow)), config.resample)
    if config.do_thumbnail:
        size = thumbnail_size(*arr.shape[:2], config.size)
        if size != arr.shape[:2]:
            arr = _thumbnail(arr, size, config)
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


def _as_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise ImageError(f"margin cropping needs 8-bit pages (a file or a PIL image), got an array of {arr.dtype}")
    return arr


def preprocess_pages(images: ImageInput | Iterable[ImageInput], config: DocumentImageConfig) -> np.ndarray:
    """Pages -> [B,3,H,W] float32 (every page on the same canvas, unless padding is off)."""
    pages = [page_pixels(im, config) for im in as_list(images)]
    shapes = {p.shape for p in pages}
    if len(shapes) > 1:
        raise ImageError(f"pages of different sizes {sorted(shapes)} cannot form one batch: turn do_pad on")
    return np.stack(pages)
