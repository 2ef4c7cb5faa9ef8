"""Image files -> ``pixels`` [B,3,H,W] float32, as transformers' ViT (and DeiT) image processor makes them.

DeiT's processor is ViT's with a center crop between the resize and the rescale, and other
defaults (256 px bicubic resize, 224 px crop), applied when its type is named.

The reference is ``ViTImageProcessorPil`` (transformers 5; it is also what ``ViTImageProcessor``
falls back to without torchvision): resize with PIL on uint8 RGB, rescale in float64 then cast
to float32, normalize in float32. Each step below repeats that arithmetic, so the output is
identical, not merely close.

Colour handling, per input kind:

- a path is opened like ``transformers.image_utils.load_image``: EXIF orientation applied,
  then ``convert("RGB")`` (alpha is dropped, palettes expanded);
- 16- and 32-bit integer grayscale (PIL modes ``I;16*`` and ``I``, e.g. scans saved as 16-bit
  PNG or TIFF) is scaled to 8 bits (value / 257, the full 16-bit range onto 0..255) with a
  warning: PIL's ``convert("RGB")`` clips every value above 255 to white, and transformers'
  processor does that too, so such images get a blank-white caption there (a deliberate
  difference from the reference);
- a PIL image in RGB is used as is; another mode is composited onto white when the config
  says ``do_convert_rgb`` (the processor's ``convert_to_rgb``), else ``convert("RGB")`` (where
  transformers' processor would fail on the channel count);
- a numpy array is HWC or CHW (1, 3 or 4 channels, inferred like transformers, channels
  first when ambiguous) or HW gray; 1 and 4 channels become RGB the way ``convert_to_rgb``
  does for arrays (gray repeated, alpha composited onto white). Float arrays in [0, 1] are
  scaled to uint8 for the PIL resize and back, exactly as transformers does (it then applies
  ``rescale_factor`` again: that is its behaviour, kept).

``ImageConfig.grayscale`` (off unless asked for: ``Captioner.from_pretrained(..., grayscale=True)``,
``purevedec caption --grayscale``) first turns every RGB image into 8-bit gray and back to RGB,
as kha-white/manga-ocr's application does (``img.convert("L").convert("RGB")``) before its
processor: PIL's ITU-R 601-2 luma, L = (19595 R + 38470 G + 7471 B + 2^15) >> 16, for files,
PIL images and uint8 arrays; the same weights (0.299, 0.587, 0.114) unrounded for float arrays.
It is no preprocessor_config.json option: the checkpoint does not say it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Union

import numpy as np
from PIL import Image

from ..checkpoints.jsonfile import read_json_object
from .. import validate as v
from ..errors import ConfigError, ImageError
from ..models import ENCODERS, image_processor_defaults
from .image_files import IMAGE_FORMATS, MAX_IMAGE_PIXELS, open_image, to_8bit  # noqa: F401 (re-exported)


ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

# image_processor_type / feature_extractor_type values whose preprocessing this file reproduces
# (each encoder family lists its processors).
_KNOWN_TYPES = frozenset().union(*(f.image_processors for f in ENCODERS.values()))
_INERT_KEYS = frozenset({"image_processor_type", "feature_extractor_type", "processor_class",
                         "default_to_square", "input_data_format", "data_format", "return_tensors"})
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class ImageConfig:
    """What ``preprocessor_config.json`` says, with transformers' ViT defaults."""
    size: tuple[int, int] = (224, 224)
    """(height, width) the image is resized to."""
    do_resize: bool = True
    """Resize to ``size`` (else the image must already have it)."""
    resample: int = 2
    """The resize filter, a ``PIL.Image.Resampling`` value (2 = bilinear)."""
    do_rescale: bool = True
    """Multiply the 0-255 pixel values by ``rescale_factor``."""
    rescale_factor: float = 1 / 255
    """The rescale multiplier (1/255)."""
    do_normalize: bool = True
    """Subtract ``image_mean`` and divide by ``image_std`` per channel."""
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Per-channel mean (after rescaling)."""
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Per-channel standard deviation (after rescaling)."""
    do_convert_rgb: bool = False
    """Convert every image to RGB first (images are RGB either way here)."""
    do_center_crop: bool = False
    """Center-crop to ``crop_size`` after resizing (DeiT's processor)."""
    crop_size: tuple[int, int] = (224, 224)
    """(height, width) of the center crop, used with ``do_center_crop``."""
    grayscale: bool = False
    """Gray and back to RGB before anything else (manga-ocr's preprocessing; not read from the file)."""


_CONFIG_KEYS = (frozenset(ImageConfig.__dataclass_fields__) - {"grayscale"}) | _INERT_KEYS | {"do_pad", "pad_size"}
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, PIL's convert("L") weights


# The largest side a preprocessor may resize to: ViT checkpoints use 224 or 384, and one
# 4096 x 4096 image already takes 400 MB as float64 during rescaling.
MAX_SIZE = 4096


def _side(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIZE


def _size(value: Any, key: str = "size") -> tuple[int, int]:
    """Legacy int (square) or {"height", "width"}; other forms change the ViT input shape."""
    if _side(value):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        value = {"height": value[0], "width": value[1]}
    if isinstance(value, Mapping) and set(value) == {"height", "width"} and all(map(_side, value.values())):
        return (value["height"], value["width"])
    raise ConfigError(f"preprocessor {key}={value!r:.80} is not supported: expected an int or "
                      f'{{"height": H, "width": W}}, sides in [1, {MAX_SIZE}]')


def _triple(value: Any, key: str) -> tuple[float, float, float]:
    """A per-channel statistic; a single number applies to all three channels, as in transformers.
    Finite (a NaN or infinite mean or std would make every pixel NaN), and a std nonzero."""
    values = [value] * 3 if not isinstance(value, (list, tuple)) else value
    if len(values) != 3:
        raise ConfigError(f"preprocessor {key}={value!r:.80} must be a number or a list of 3 numbers")
    out = tuple(v.number(x, f"preprocessor {key}") for x in values)
    if key == "image_std" and 0.0 in out:
        raise ConfigError(f"preprocessor image_std={value!r:.80} has a zero: it divides every pixel")
    return out


def _flag(d: Mapping, key: str, default: bool) -> bool:
    value = d.get(key, default)
    if value is None:   # transformers treats an explicit null as "use the default"
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"preprocessor {key}={value!r} must be true or false")
    return value


def _check_type(d: Mapping) -> None:
    kind = d.get("image_processor_type", d.get("feature_extractor_type"))
    if kind is not None and (not isinstance(kind, str) or kind not in _KNOWN_TYPES):
        raise ConfigError(f"preprocessor type {kind!r} is not supported; supported: {sorted(_KNOWN_TYPES)}")
    for key in ("do_pad",):
        if d.get(key):
            raise ConfigError(f"preprocessor {key}=true is not supported by the ViT preprocessing")
    unknown = sorted(k for k in d if k not in _CONFIG_KEYS)
    if unknown:
        warnings.warn(f"preprocessor_config.json: ignoring keys purevedec does not know: {unknown}",
                      stacklevel=3)


def parse_image_config(d: Mapping) -> ImageConfig:
    """Parse the dict of a ``preprocessor_config.json``, refusing options that change the math."""
    _check_type(d)
    defaults = image_processor_defaults(d.get("image_processor_type", d.get("feature_extractor_type")))
    if defaults:  # the processor class's own defaults, where they differ from ViT's
        d = {**defaults, **{k: v for k, v in d.items() if v is not None}}
    resample = d.get("resample", 2)
    if type(resample) is not int or resample not in _RESAMPLE:
        raise ConfigError(f"preprocessor resample={resample!r} must be a PIL resampling filter "
                          f"{ {k: v for k, v in _RESAMPLE.items()} }")
    factor = v.number(d.get("rescale_factor", 1 / 255), "preprocessor rescale_factor")
    return ImageConfig(
        size=_size(d.get("size", {"height": 224, "width": 224})),
        do_resize=_flag(d, "do_resize", True), resample=resample,
        do_rescale=_flag(d, "do_rescale", True), rescale_factor=factor,
        do_normalize=_flag(d, "do_normalize", True),
        image_mean=_triple(d.get("image_mean", 0.5), "image_mean"),
        image_std=_triple(d.get("image_std", 0.5), "image_std"),
        do_convert_rgb=_flag(d, "do_convert_rgb", False),
        do_center_crop=_flag(d, "do_center_crop", False),
        crop_size=_size(d.get("crop_size", {"height": 224, "width": 224}), "crop_size"),
    )


def load_image_config(path: str | os.PathLike) -> ImageConfig:
    """Read ``path/preprocessor_config.json`` (or that file itself)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "preprocessor_config.json")
    try:
        return parse_image_config(read_json_object(path))
    except ConfigError as e:
        if path in str(e):
            raise
        raise ConfigError(f"{path}: {e}") from None


def _composite_on_white(im: Image.Image) -> Image.Image:
    """transformers' ``convert_to_rgb`` for PIL images: transparency is blended onto white."""
    if "A" not in im.getbands() and im.info.get("transparency") is None:
        return im.convert("RGB")
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")


def _pil_rgb(im: Image.Image, config: ImageConfig) -> Image.Image:
    im = to_8bit(im)
    if im.mode != "RGB":
        im = _composite_on_white(im) if config.do_convert_rgb else im.convert("RGB")
    return im


def _channels_last(arr: np.ndarray) -> np.ndarray:
    """HW, HWC or CHW -> HWC; channels first when both ends could be channels (as transformers)."""
    if arr.ndim == 2:
        return arr[..., None]
    if arr.ndim != 3:
        raise ImageError(f"an image array must be HW, HWC or CHW, got shape {arr.shape}")
    if arr.shape[0] in (1, 3, 4):
        return np.moveaxis(arr, 0, -1)
    if arr.shape[-1] in (1, 3, 4):
        return arr
    raise ImageError(f"cannot tell the channel axis of an image array of shape {arr.shape}")


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    """transformers' ``convert_to_rgb`` for HWC arrays: gray repeated, alpha composited on white."""
    channels = arr.shape[-1]
    if channels == 3:
        return arr
    if channels == 1:
        return np.repeat(arr, 3, axis=-1)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise ImageError(f"an RGBA float array must lie in [0, 1], got [{arr.min()}, {arr.max()}]")
        alpha = arr[..., 3:4]
        return (alpha * arr[..., :3] + (1 - alpha) * 1.0).astype(arr.dtype)
    alpha = arr[..., 3:4] / 255
    return np.round(alpha * arr[..., :3] + (1 - alpha) * 255).astype(arr.dtype)


def _rgb_image(image: Union[str, os.PathLike, Image.Image], config: ImageConfig) -> Image.Image:
    """A path or PIL image -> an RGB PIL image (grayed first when ``config.grayscale``)."""
    im = open_image(image) if isinstance(image, (str, os.PathLike)) else _pil_rgb(image, config)
    return im.convert("L").convert("RGB") if config.grayscale else im


def _gray_array(arr: np.ndarray) -> np.ndarray:
    """An HWC RGB array in gray and back (``ImageConfig.grayscale``): uint8 through PIL, exactly
    as an image; other dtypes with the same luma weights, unrounded."""
    if arr.dtype == np.uint8:
        return np.asarray(Image.fromarray(np.ascontiguousarray(arr)).convert("L").convert("RGB"))
    gray = (arr.astype(np.float64) @ _LUMA).astype(arr.dtype)
    return np.repeat(gray[..., None], 3, axis=-1)


def to_rgb_array(image: ImageInput, config: ImageConfig) -> np.ndarray:
    """Any accepted input -> an HWC RGB array (dtype as given: uint8 for files and PIL images)."""
    if isinstance(image, (str, os.PathLike, Image.Image)):
        return np.array(_rgb_image(image, config))
    if isinstance(image, np.ndarray):
        if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer)
                                       or np.issubdtype(image.dtype, np.floating)):
            raise ImageError(f"an image array must hold numbers, got dtype {image.dtype}")
        rgb = _array_to_rgb(_channels_last(image))
        return _gray_array(rgb) if config.grayscale else rgb
    raise ImageError(f"cannot use a {type(image).__name__} as an image: pass a path, a PIL image or an array")


def _scaled_for_pil(arr: np.ndarray) -> bool:
    """transformers' rule for turning an array into a uint8 PIL image: floats that are not
    whole numbers are taken to be in [0, 1] and multiplied by 255 first."""
    if arr.dtype == np.uint8:
        return False
    if np.allclose(arr, arr.astype(int)):
        if arr.min() < 0 or arr.max() > 255:
            raise ImageError(f"image values [{arr.min()}, {arr.max()}] do not fit in [0, 255]")
        return False
    if arr.min() < 0 or arr.max() > 1:
        raise ImageError(f"float image values [{arr.min()}, {arr.max()}] are neither in [0, 1] nor whole numbers")
    return True


def _rescale(arr: np.ndarray, factor: float) -> np.ndarray:
    # transformers multiplies in float64, then casts to float32.
    return (arr.astype(np.float64) * factor).astype(np.float32)


def _resize(arr: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """HWC -> HWC of ``size`` through a uint8 PIL image, as transformers' ``resize``."""
    scaled = _scaled_for_pil(arr)
    if scaled:
        arr = _rescale(arr, 255)
    resized = np.array(Image.fromarray(arr.astype(np.uint8)).resize((size[1], size[0]), resample=resample))
    return _rescale(resized, 1 / 255) if scaled else resized


def _normalize(arr: np.ndarray, mean, std) -> np.ndarray:
    # Integer images are cast to float32; float images keep their precision (as transformers).
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    return (arr - np.array(mean, arr.dtype)) / np.array(std, arr.dtype)


def center_crop(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H,W,C] -> [h,w,C] around the centre (top = (H - h) // 2), as transformers' center_crop; a
    side shorter than the crop is first zero-padded, ceil((h - H) / 2) before it."""
    (height, width), (h, w) = arr.shape[:2], size
    pad_top, pad_left = max(0, -(-(h - height) // 2)), max(0, -(-(w - width) // 2))
    if pad_top or pad_left:
        canvas = np.zeros((max(h, height), max(w, width), arr.shape[2]), arr.dtype)
        canvas[pad_top:pad_top + height, pad_left:pad_left + width] = arr
        arr = canvas
    top, left = (height - h) // 2 + pad_top, (width - w) // 2 + pad_left
    return arr[max(0, top):top + h, max(0, left):left + w]


def _resized_pil(image: Union[str, os.PathLike, Image.Image], config: ImageConfig) -> np.ndarray:
    """A path or PIL image -> HWC uint8 of ``size``, resized by PIL straight from the decoded image.
    transformers goes image -> array -> PIL image -> resize; uint8 RGB survives that round trip
    unchanged, so the result is the same, without three copies of a full-size photo."""
    return np.asarray(_rgb_image(image, config).resize((config.size[1], config.size[0]), resample=config.resample))


def preprocess_one(image: ImageInput, config: ImageConfig) -> np.ndarray:
    """One input -> [3,H,W] float32."""
    if config.do_resize and isinstance(image, (str, os.PathLike, Image.Image)):
        arr = _resized_pil(image, config)
    else:
        arr = to_rgb_array(image, config)
        if config.do_resize:
            arr = _resize(arr, config.size, config.resample)
    if config.do_center_crop:
        arr = center_crop(arr, config.crop_size)
    if config.do_rescale:
        arr = _rescale(arr, config.rescale_factor)
    if config.do_normalize:
        arr = _normalize(arr, config.image_mean, config.image_std)
    return np.ascontiguousarray(np.moveaxis(arr, -1, 0), dtype=np.float32)


def as_list(images: ImageInput | Iterable[ImageInput]) -> list:
    """One input or many -> a list of inputs (a 4-D array is a stacked batch of images)."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        return [images]
    return list(images)


def preprocess(images: ImageInput | Iterable[ImageInput], config: ImageConfig) -> np.ndarray:
    """Inputs (one, or a list) -> pixels [B,3,H,W] float32, ready for ``purevedec.encode``."""
    out = [preprocess_one(im, config) for im in as_list(images)]
    shapes = sorted({o.shape for o in out})
    if len(shapes) > 1:
        raise ImageError(f"images of different sizes {shapes} cannot form a batch (do_resize is false)")
    if not out:
        raise ImageError("no images given")
    return np.stack(out)
