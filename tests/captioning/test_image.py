"""Pixel parity of purevedec.image with transformers' ViT image processor (PIL backend)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from purevedec import ConfigError
from purevedec.captioning.image import to_8bit, ImageConfig, ImageError, load_image_config, parse_image_config, preprocess

TOL = 1e-5

CONFIGS = {
    "legacy_int": {"feature_extractor_type": "ViTFeatureExtractor", "size": 20, "resample": 2,
                   "do_normalize": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                   "image_std": [0.5, 0.5, 0.5]},
    "dict_bicubic_imagenet": {"image_processor_type": "ViTImageProcessor", "size": {"height": 16, "width": 24},
                              "resample": 3, "image_mean": [0.485, 0.456, 0.406],
                              "image_std": [0.229, 0.224, 0.225], "do_rescale": True,
                              "rescale_factor": 1 / 255},
    "nearest_no_normalize": {"image_processor_type": "ViTImageProcessor", "size": {"height": 12, "width": 12},
                             "resample": 0, "do_normalize": False},
    "lanczos_factor_convert": {"image_processor_type": "ViTImageProcessor", "size": {"height": 9, "width": 31},
                               "resample": 1, "rescale_factor": 0.5 / 255, "image_mean": 0.25,
                               "image_std": 0.75, "do_convert_rgb": True},
    "box": {"image_processor_type": "ViTImageProcessor", "size": 8, "resample": 4},
    "hamming_no_rescale": {"image_processor_type": "ViTImageProcessor", "size": 10, "resample": 5,
                           "do_rescale": False, "image_mean": [100.0, 120.0, 140.0], "image_std": [50.0, 60.0, 70.0]},
}
SIZES = [(1, 1), (7, 13), (64, 9), (33, 33), (57, 120)]
MODES = ["RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "I;16", "1", "I", "F", "YCbCr"]


def _write_config(tmp_path, d):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(d))
    return tmp_path


def _reference(tmp_path, d, **overrides):
    from transformers import AutoImageProcessor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proc = AutoImageProcessor.from_pretrained(str(_write_config(tmp_path, d)), **overrides)
    assert proc.backend == "pil"  # the path this module reproduces
    return lambda images: np.asarray(proc(images, return_tensors="np").pixel_values, np.float32)


def _rgb(h, w, seed):
    rs = np.random.RandomState(seed)
    # Smooth ramps plus noise: resampling filters then see real structure, not only noise.
    ramp = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
    return np.clip(ramp + rs.randint(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def _image(mode, h, w, seed=0):
    if mode == "I;16":
        return Image.fromarray(np.random.RandomState(seed).randint(0, 700, (h, w)).astype(np.uint16))
    rgb = Image.fromarray(_rgb(h, w, seed))
    if mode in ("RGBA", "LA", "PA"):
        alpha = Image.fromarray(np.random.RandomState(seed + 1).randint(0, 256, (h, w)).astype(np.uint8))
        rgba = rgb.copy()
        rgba.putalpha(alpha)
        return rgba.convert(mode)
    return rgb.convert(mode)


def _check(ours, theirs):
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.max(np.abs(ours - theirs)) <= TOL


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pil_images_all_modes_and_sizes(tmp_path, name):
    config = load_image_config(_write_config(tmp_path, CONFIGS[name]))
    ref = _reference(tmp_path, CONFIGS[name])
    for i, (h, w) in enumerate(SIZES):
        for mode in MODES:
            im = _image(mode, h, w, seed=i)
            # 16-bit gray is scaled to 8 bits on purpose (transformers clips it to white, see
            # test_cli_robust): the reference sees the same 8-bit image.
            src = to_8bit(im) if mode in ("I;16", "I") else im
            # transformers' processor needs RGB unless it converts itself (do_convert_rgb).
            expected = ref(src if src.mode == "RGB" or config.do_convert_rgb else src.convert("RGB"))
            _check(preprocess(im, config), expected)


@pytest.mark.parametrize("name", ["legacy_int", "dict_bicubic_imagenet", "lanczos_factor_convert"])
def test_files_match_load_image(tmp_path, name):
    from transformers.image_utils import load_image
    config = parse_image_config(CONFIGS[name])
    ref = _reference(tmp_path, CONFIGS[name])
    paths = []
    for i, mode in enumerate(["RGB", "RGBA", "L", "LA", "P", "I;16"]):
        paths.append(str(tmp_path / f"im{i}.png"))
        _image(mode, 23 + i, 41 - 3 * i, seed=i).save(paths[-1])
    paths.append(str(tmp_path / "cmyk.jpg"))
    _image("CMYK", 30, 20).save(paths[-1])
    paths.append(str(tmp_path / "photo.jpg"))
    _image("RGB", 19, 50).save(paths[-1], quality=70)
    # 16-bit gray is scaled to 8 bits on purpose: the reference reads that file's 8-bit version
    _check(preprocess(paths, config), ref([to_8bit(Image.open(p)).convert("RGB") if p.endswith("im5.png")
                                           else load_image(p) for p in paths]))


def test_exif_orientation_is_applied(tmp_path):
    from transformers.image_utils import load_image
    im = _image("RGB", 10, 30)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    path = str(tmp_path / "rot.jpg")
    im.save(path, exif=exif)
    config = parse_image_config(CONFIGS["dict_bicubic_imagenet"])
    _check(preprocess(path, config), _reference(tmp_path, CONFIGS["dict_bicubic_imagenet"])(load_image(path)))


@pytest.mark.parametrize("name", ["vit_default", "dict_bicubic_imagenet"])
def test_camera_sized_files_equal_transformers_bit_for_bit(tmp_path, name):
    """Files are resized by PIL straight from the decoded image (no array round trip, no copies):
    large downscales, an EXIF-rotated JPEG and a PNG with alpha give transformers' pixels exactly."""
    from transformers.image_utils import load_image
    d = {"image_processor_type": "ViTImageProcessor"} if name == "vit_default" else CONFIGS[name]
    config, ref = parse_image_config(d), _reference(tmp_path, d)
    paths = [str(tmp_path / n) for n in ("wide.jpg", "rotated.jpg", "tall.png")]
    Image.fromarray(_rgb(1200, 1900, 1)).save(paths[0], quality=90)
    rotated = Image.fromarray(_rgb(700, 1000, 2))
    exif = rotated.getexif()
    exif[0x0112] = 8
    rotated.save(paths[1], exif=exif, quality=85)
    _image("RGBA", 1500, 400, seed=3).save(paths[2])
    for path in paths:
        assert np.array_equal(preprocess(path, config), ref(load_image(path))), path


def _arrays():
    rs = np.random.RandomState(3)
    hwc = _rgb(21, 34, 5)
    return [hwc, np.moveaxis(hwc, -1, 0).copy(), hwc.astype(np.int64), hwc.astype(np.float64),
            rs.rand(17, 26, 3), rs.rand(17, 26, 3).astype(np.float32), np.moveaxis(rs.rand(3, 9, 40), 0, 0)]


@pytest.mark.parametrize("name", ["legacy_int", "nearest_no_normalize", "hamming_no_rescale"])
def test_numpy_inputs(tmp_path, name):
    config = parse_image_config(CONFIGS[name])
    ref = _reference(tmp_path, CONFIGS[name])
    for arr in _arrays():
        _check(preprocess(arr, config), ref(arr))


def test_numpy_gray_and_alpha_convert_like_convert_to_rgb(tmp_path):
    d = CONFIGS["dict_bicubic_imagenet"]
    config = parse_image_config(d)
    ref = _reference(tmp_path, d, do_convert_rgb=True)
    rs = np.random.RandomState(0)
    for arr in [rs.randint(0, 256, (15, 22, 1), np.uint8), rs.randint(0, 256, (15, 22, 4), np.uint8),
                rs.rand(4, 15, 22), rs.randint(0, 256, (1, 9, 9), np.uint8)]:
        _check(preprocess(arr, config), ref(arr))
    gray = rs.randint(0, 256, (15, 22), np.uint8)
    _check(preprocess(gray, config), ref(np.repeat(gray[..., None], 3, -1)))


def test_no_resize_right_sized_inputs(tmp_path):
    d = {"image_processor_type": "ViTImageProcessor", "do_resize": False, "size": 16,
         "image_mean": [0.1, 0.2, 0.3], "image_std": [0.9, 0.8, 0.7]}
    config = parse_image_config(d)
    ims = [_image(m, 16, 16, seed=i) for i, m in enumerate(["RGB", "RGB", "L"])]
    ims = [im.convert("RGB") for im in ims]
    _check(preprocess(ims, config), _reference(tmp_path, d)(ims))
    batch = np.stack([_rgb(16, 16, 1), _rgb(16, 16, 2)])
    _check(preprocess(batch, config), _reference(tmp_path, d)(list(batch)))
    with pytest.raises(ImageError, match="different sizes"):
        preprocess([ims[0], _image("RGB", 8, 16)], config)


def test_defaults_match_vit_processor():
    from transformers import ViTImageProcessorPil
    proc = ViTImageProcessorPil()
    config = parse_image_config({})
    assert config == ImageConfig()
    assert config.size == (proc.size.height, proc.size.width) and config.resample == proc.resample
    assert config.rescale_factor == proc.rescale_factor
    assert config.image_mean == tuple(proc.image_mean) and config.image_std == tuple(proc.image_std)


@pytest.mark.parametrize("d, match", [
    ({"image_processor_type": "CLIPImageProcessor"}, "CLIPImageProcessor"),
    ({"size": {"shortest_edge": 224}}, "size"),
    ({"resample": 7}, "resample"),
    ({"image_mean": [0.5, 0.5]}, "image_mean"),
    ({"do_resize": "yes"}, "do_resize"),
    ({"do_center_crop": True, "crop_size": {"shortest_edge": 10}}, "crop_size"),  # the crop itself is supported
    ({"rescale_factor": "x"}, "rescale_factor"),
])
def test_config_errors(d, match):
    with pytest.raises(ConfigError, match=match):
        parse_image_config(d)


def test_unknown_key_warns_and_missing_file(tmp_path):
    with pytest.warns(UserWarning, match="frobnicate"):
        parse_image_config({"frobnicate": 1})
    with pytest.raises(ConfigError, match="no preprocessor_config.json"):
        load_image_config(tmp_path)


def test_bad_inputs(tmp_path):
    config = ImageConfig()
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageError, match="notes.txt"):
        preprocess(str(tmp_path / "notes.txt"), config)
    good = str(tmp_path / "good.png")
    _image("RGB", 40, 40).save(good)
    data = open(good, "rb").read()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.png"):
        preprocess(str(tmp_path / "cut.png"), config)
    with pytest.raises(ImageError, match="missing.png"):
        preprocess(str(tmp_path / "missing.png"), config)
    with pytest.raises(ImageError, match="channel axis"):
        preprocess(np.zeros((5, 6, 7), np.uint8), config)
    with pytest.raises(ImageError, match="cannot use"):
        preprocess([3.0], config)
