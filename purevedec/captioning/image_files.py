"""Opening image files without trusting them: only the documented formats, a pixel bound checked
before decoding, wide grayscale scaled to 8 bits a block of rows at a time."""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError

_WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_CHUNK_PIXELS = 2 ** 20   # converted a block of rows at a time, so the wide temporaries stay small
# The formats pillow may decode: those of inputs.IMAGE_EXTENSIONS (JPEG also opens the MPO
# files of many cameras, PPM also reads PGM). Others are refused by content, whatever the
# file's name: EPS would run Ghostscript, ICO and ICNS hold payloads their header does not size.
IMAGE_FORMATS = ("BMP", "GIF", "JPEG", "PNG", "PPM", "TIFF", "WEBP")


def to_8bit(im: Image.Image) -> Image.Image:
    """A 16/32-bit integer grayscale image -> mode "L", the 16-bit range scaled onto 0..255 (values
    outside 0..65535 clipped); other images unchanged. Warns (once per process, by the warnings
    module's default rule) that transformers turns such an image white instead."""
    if im.mode not in _WIDE_GRAY_MODES:
        return im
    wide = np.asarray(im)   # uint16 or int32, as decoded: no wider copy of the whole image
    if im.mode == "I" and wide.max(initial=0) <= 255 and wide.min(initial=0) >= 0:
        # a 32-bit image holding 8-bit values (e.g. an 8-bit image converted to "I"): nothing to scale
        return Image.fromarray(wide.astype(np.uint8), "L")
    warnings.warn("a 16-bit grayscale image was scaled to 8 bits (value / 257); transformers clips "
                  "such images to white, so captions differ from its on them", UserWarning, stacklevel=3)
    out = np.empty(wide.shape, np.uint8)
    rows = max(1, _CHUNK_PIXELS // max(1, wide.shape[1]))
    for top in range(0, wide.shape[0], rows):
        chunk = np.clip(wide[top:top + rows], 0, 65535).astype(np.uint32)
        out[top:top + rows] = (chunk + 128) // 257   # round(value / 257): no value is halfway
    return Image.fromarray(out, "L")


def open_image(path: str | os.PathLike) -> Image.Image:
    """Read a file fully (so a truncated file fails here, not later) as an upright RGB image,
    refusing one of more than ``MAX_IMAGE_PIXELS`` pixels before decoding it."""
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as im:
            _check_pixels(im, path)
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # in place: no full-size copy when upright
            im = to_8bit(im)
            return im if im.mode == "RGB" else im.convert("RGB")
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{os.fspath(path)}: cannot read image: not an image in a supported format "
                         f"({', '.join(IMAGE_FORMATS)})") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # PIL reports truncation as OSError, some corrupt headers as SyntaxError/ValueError, and
        # refuses images over twice its own pixel limit with DecompressionBombError at open.
        raise ImageError(f"{os.fspath(path)}: cannot read image ({e})") from None


# Pillow's own threshold for its decompression-bomb warning (89.5 million pixels, a
# 9459 x 9459 image; it refuses only at twice that): a larger image is refused here before it
# is decoded, since decoding and converting it takes several bytes per pixel several times over.
MAX_IMAGE_PIXELS = 89_478_485


def _check_pixels(im: Image.Image, path) -> None:
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageError(f"{os.fspath(path)}: image of {w} x {h} pixels is larger than the "
                         f"{MAX_IMAGE_PIXELS} pixels purevedec decodes (a decompression bomb?)")


class DeferredImage:
    """An input read only when its batch needs it (a PDF page rendered by a worker thread): the
    Captioner calls ``open()`` where it would open a path, and names the input ``name`` in errors.
    Subclasses set ``name`` and implement ``open``, raising ``ImageError`` for an unreadable input."""
    name: str = "deferred image"

    def open(self) -> Image.Image:
        """The input as an RGB image (read now, not before)."""
        raise NotImplementedError
