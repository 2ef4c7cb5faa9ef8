"""Donut's page preprocessing against transformers' DonutImageProcessorPil, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from purevedec.captioning.document_image import DocumentImageConfig, parse_donut_image_config, preprocess_pages
from purevedec.errors import ConfigError

# (height, width) of pages: portrait, landscape, square, smaller and larger than the canvas, odd sides
PAGES = [(90, 70), (50, 120), (64, 64), (31, 17), (300, 211), (47, 200)]
# preprocessor options a Donut checkpoint carries (size given as transformers writes it: [width, height])
OPTIONS = {
    "portrait_canvas": dict(size=[48, 64]),
    "landscape_canvas_aligned": dict(size=[64, 40], do_align_long_axis=True),
    "square_canvas_bicubic": dict(size={"height": 56, "width": 56}, resample=3),
    "portrait_aligned_other_stats": dict(size=[40, 72], do_align_long_axis=True, image_mean=[0.485, 0.456, 0.406],
                                         image_std=[0.229, 0.224, 0.225]),
}


def pages(seed=0):
    rng = np.random.RandomState(seed)
    # smooth content plus noise, so that resampling filters differ visibly
    out = []
    for h, w in PAGES:
        y, x = np.mgrid[0:h, 0:w]
        base = (np.sin(x / 5.0)[..., None] * 80 + np.cos(y / 7.0)[..., None] * 60 + 128)
        out.append(Image.fromarray(np.clip(base + rng.randint(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)))
    return out


@pytest.mark.parametrize("name", list(OPTIONS))
def test_pixels_equal_transformers(name):
    from transformers.models.donut.image_processing_pil_donut import DonutImageProcessorPil
    options = OPTIONS[name]
    ref = DonutImageProcessorPil(**options)
    config = parse_donut_image_config(options)
    for page in pages():
        want = ref(page, return_tensors="np")["pixel_values"]
        got = preprocess_pages(page, config)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_a_page_that_cannot_fit_is_refused():
    from transformers.models.donut.image_processing_pil_donut import DonutImageProcessorPil
    from purevedec.errors import ImageError
    page = pages()[0]  # 90x70 after a resize to a 56 shorter side is 72x56: taller than the canvas
    options = dict(size={"height": 56, "width": 56}, do_thumbnail=False)
    with pytest.raises(ImageError, match="does not fit the 56x56 canvas"):
        preprocess_pages(page, parse_donut_image_config(options))
    with pytest.raises(ValueError):  # transformers fails on it too (a negative pad)
        DonutImageProcessorPil(**options)(page)


def test_size_list_is_width_then_height():
    assert parse_donut_image_config({"size": [1920, 2560]}).size == (2560, 1920)
    assert DocumentImageConfig().size == (2560, 1920)


def test_bad_options_are_named():
    with pytest.raises(ConfigError, match="resample"):
        parse_donut_image_config({"resample": 9})
    with pytest.raises(ConfigError, match="size"):
        parse_donut_image_config({"size": [0, 10]})
    with pytest.raises(ConfigError, match="do_center_crop"):
        parse_donut_image_config({"do_center_crop": True})
    with pytest.raises(ConfigError, match="is not one of"):
        parse_donut_image_config({"image_processor_type": "ViTImageProcessor"})


def framed_pages(seed=1):
    """Pages with white margins around darker content (Nougat crops to the content)."""
    out = []
    for (h, w), page in zip(PAGES, pages(seed)):
        arr = np.full((h + 23, w + 11, 3), 255, np.uint8)
        arr[9:9 + h, 4:4 + w] = np.asarray(page) // 2
        out.append(Image.fromarray(arr))
    out.append(Image.fromarray(np.full((40, 30, 3), 180, np.uint8)))  # one grey level: kept whole
    return out


NOUGAT_OPTIONS = {
    "defaults_small_canvas": dict(size={"height": 64, "width": 48}),
    "no_crop_aligned_bicubic": dict(size={"height": 40, "width": 72}, do_crop_margin=False, do_align_long_axis=True,
                                    resample=3),
}


@pytest.mark.parametrize("name", list(NOUGAT_OPTIONS))
def test_nougat_pixels_equal_transformers(name):
    from transformers.models.nougat.image_processing_pil_nougat import NougatImageProcessorPil
    from purevedec.captioning.document_image import parse_nougat_image_config
    options = NOUGAT_OPTIONS[name]
    ref = NougatImageProcessorPil(**options)
    config = parse_nougat_image_config(options)
    for page in framed_pages():
        want = ref(page, return_tensors="np")["pixel_values"]
        np.testing.assert_array_equal(preprocess_pages(page, config), want)
