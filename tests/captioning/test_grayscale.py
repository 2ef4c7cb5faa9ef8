"""The grayscale preprocessing option (manga-ocr's application turns every image gray and back to
RGB before its processor): pixels identical to transformers' processor on the grayed image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from purevedec.captioning.image import ImageConfig, preprocess


def _photo(seed: int = 0, size=(23, 17)) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (*size, 3), dtype=np.uint8))


def _reference(images: list[Image.Image]) -> np.ndarray:
    from transformers import ViTImageProcessor
    grayed = [im.convert("L").convert("RGB") for im in images]  # manga-ocr's own preprocessing
    return ViTImageProcessor(size={"height": 16, "width": 16})(grayed, return_tensors="np")["pixel_values"]


GRAY = ImageConfig(size=(16, 16), grayscale=True)


@pytest.mark.parametrize("kind", ["pil", "path", "uint8_array", "rgba_pil"])
def test_grayscale_equals_transformers_on_the_grayed_image(kind, tmp_path):
    im = _photo(1)
    if kind == "rgba_pil":
        im = im.convert("RGBA")
    if kind == "path":
        im.save(tmp_path / "a.png")
        given = str(tmp_path / "a.png")
    else:
        given = np.asarray(im) if kind == "uint8_array" else im
    ours = preprocess([given], GRAY)
    np.testing.assert_array_equal(ours, _reference([im.convert("RGB")]))
    # the three channels are equal, and the option changed something on this colour image
    np.testing.assert_array_equal(ours[:, 0], ours[:, 1])
    assert np.abs(preprocess([given], dataclasses.replace(GRAY, grayscale=False)) - ours).max() > 0.1


def test_float_arrays_use_the_luma_weights():
    rgb = np.random.RandomState(2).rand(16, 16, 3).astype(np.float32)
    cfg = dataclasses.replace(GRAY, do_resize=False)
    ours = preprocess([rgb], cfg)
    gray = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(ours[0, 2], ((gray / 255) - 0.5) / 0.5, atol=1e-6)


def test_grayscale_is_not_read_from_preprocessor_config():
    from purevedec.captioning.image import parse_image_config
    with pytest.warns(UserWarning, match="grayscale"):
        assert parse_image_config({"grayscale": True}).grayscale is False


def test_captioner_and_cli_option(tmp_path):
    from models import make_reference, save_captioning_checkpoint
    import purevedec as pv
    from purevedec.captioning import cli, program
    path = save_captioning_checkpoint(make_reference(), tmp_path / "m")
    assert pv.Captioner.from_pretrained(path).image_config.grayscale is False
    cap = pv.Captioner.from_pretrained(path, grayscale=True)
    assert cap.image_config.grayscale is True
    np.testing.assert_array_equal(cap.pixels([_photo(3)]), _reference([_photo(3)]))
    args = program._parser([cli.add_caption_command]).parse_args(["caption", "x.png", "--model", path, "--grayscale"])
    assert cli._load(args).image_config.grayscale is True
