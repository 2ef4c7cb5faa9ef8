"""Hostile configs: config.json against the weights on disk, fields of the wrong type, generation
options, and weights that are NaN, infinite or overflow the dtype asked: each the package's
one-line error naming the file and field."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest

import purevedec as pv
from hostile_util import (assert_refused, captioning_dir, edit_json, run_bounded,
                          write_json, write_tiny, write_tokenizer)


@pytest.fixture
def tiny(tmp_path):
    return write_tiny(tmp_path)


# ----- config.json against the weights on disk -----

def test_config_is_checked_against_the_weights_before_building(tiny, tmp_path):
    """10**8 layers, or 10**12 positions, in config.json: refused from the file sizes before any
    description of the layers is built; the true config still loads."""
    _, path = tiny
    edits = {"decoder layers": lambda d: d["decoder"].__setitem__("n_layer", 10 ** 8),
             "encoder layers": lambda d: d["encoder"].__setitem__("num_hidden_layers", 10 ** 8),
             "alias layers": lambda d: d["decoder"].__setitem__("num_hidden_layers", 10 ** 8) or d["decoder"].pop("n_layer"),
             "positions": lambda d: d["decoder"].__setitem__("n_positions", 10 ** 12)}
    dirs = {}
    for i, (label, edit) in enumerate(edits.items()):
        dirs[label] = shutil.copytree(path, tmp_path / f"c{i}")
        edit_json(os.path.join(dirs[label], "config.json"), edit)
    attacks = {k: f"pv.load({str(d)!r})" for k, d in dirs.items()}
    # Composing a ViT and a GPT-2 checkpoint: the decoder's 10**8 layers would be initialised first.
    with open(os.path.join(path, "config.json")) as f:
        whole = json.load(f)
    for part, config in (("enc", whole["encoder"]), ("dec", {**whole["decoder"], "n_layer": 10 ** 8})):
        shutil.copytree(path, tmp_path / part)
        write_json(tmp_path / part / "config.json", config)
    attacks["compose"] = (f"pv.from_encoder_decoder_pretrained({str(tmp_path / 'enc')!r}, {str(tmp_path / 'dec')!r}, "
                          "key=__import__('jax').random.PRNGKey(0))")
    results = run_bounded(attacks)
    assert_refused(results, {k: ("CheckpointError", r"model\.safetensors: config\.json describes \d+ parameter values "
                                                    r"in \d+ tensors .* more than the \d+ bytes of weights on disk")
                             for k in dirs})
    assert_refused(results, {"compose": ("CheckpointError", r"enc \+ .*dec: config\.json describes \d+ parameter "
                                                            r"values .* more than")})
    # The check is not looser than the truth: the real config's needs, counted independently.
    from purevedec.checkpoints.loader import needed_size
    params, config = pv.load(path)
    leaves = [x for x in __import__("jax").tree.leaves({k: v for k, v in params.items() if k != "config"})]
    assert needed_size(config) == (sum(x.size for x in leaves), len(leaves))


# ----- errors of the wrong type become the library's one-line errors -----

@pytest.mark.parametrize("section, key, value, message", [
    ("encoder", "patch_size", 0, r"encoder\.patch_size must be a positive int"),
    ("encoder", "patch_size", -8, r"encoder\.patch_size must be a positive int"),
    ("encoder", "image_size", -16, r"encoder\.image_size must be a positive int"),
    ("encoder", "layer_norm_eps", float("nan"), r"encoder\.layer_norm_eps must be a finite number, got nan"),
    ("encoder", "layer_norm_eps", -1e-5, r"encoder\.layer_norm_eps must be > 0"),
    ("decoder", "activation_function", ["gelu"], r"decoder\.activation_function=\['gelu'\] is not supported"),
    ("decoder", "n_layer", 0, r"decoder\.n_layer must be a positive int"),
    ("decoder", "n_layer", "9" * 5000, r"config\.json is not valid JSON: Exceeds the limit"),  # a 5000-digit number
])
def test_bad_config_fields_are_config_errors(tiny, section, key, value, message):
    _, path = tiny
    file = os.path.join(path, "config.json")
    with open(file) as f:
        text = f.read()
    d = json.loads(text)
    d[section][key] = value
    text = json.dumps(d).replace(f'"{value}"', value) if isinstance(value, str) else json.dumps(d)
    with open(file, "w") as f:
        f.write(text)
    with pytest.raises(pv.ConfigError, match=message):
        pv.load(path)


@pytest.mark.parametrize("config, message", [
    ({"additional_special_tokens": 5}, r"tokenizer_config\.json: additional_special_tokens=5 must be a list"),
    ({"added_tokens_decoder": [1]}, r"tokenizer_config\.json: added_tokens_decoder=\[1\] must be a map"),
    ({"added_tokens_decoder": {"x": {"content": "a"}}}, r"added_tokens_decoder entry 'x'"),
    ({"added_tokens_decoder": {"3": "ab"}}, r"added_tokens_decoder entry '3'"),
    ({"eos_token": 7}, r"tokenizer_config\.json: eos_token=7 must be a token string"),
])
def test_bad_tokenizer_config_is_a_tokenizer_error(tmp_path, config, message):
    write_tokenizer(tmp_path, with_json=False)
    write_json(tmp_path / "tokenizer_config.json", config)
    with pytest.raises(pv.TokenizerError, match=message):
        pv.load_tokenizer(tmp_path)


def test_negative_ids_reaching_the_tokenizer(tmp_path):
    write_tokenizer(tmp_path, with_json=True)
    tok = pv.load_tokenizer(tmp_path)
    assert tok.decode([0, 1, 2]) == tok.backend.decode([0, 1, 2]) == "a b"  # eos "ab" skipped, as the backend does
    for ids in ([0, -1], [2 ** 32]):
        with pytest.raises(pv.TokenizerError, match=f"cannot decode token id {ids[-1]}"):
            tok.decode(ids)
    with pytest.raises(pv.TokenizerError, match="cannot decode token id -1"):
        tok.token_text(-1)


@pytest.mark.parametrize("name, shape", [
    ("decoder.transformer.h.0.crossattention.c_attn.weight", (24 * 48,)),   # 1-D
    ("decoder.transformer.h.0.crossattention.c_attn.weight", (24, 47)),     # odd: no K/V halves
    ("decoder.transformer.h.0.crossattention.c_attn.bias", (47,)),
    ("decoder.transformer.h.0.attn.c_attn.weight", (72,)),
])
def test_misshaped_split_tensors_are_checkpoint_errors(tiny, name, shape):
    from safetensors.numpy import load_file, save_file
    _, path = tiny
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    tensors[name] = np.zeros(shape, np.float32)
    save_file(tensors, file)
    with pytest.raises(pv.CheckpointError, match=rf"model\.safetensors: tensor {re.escape(name)} has shape "
                                                 rf"{re.escape(str(list(shape)))}, which does not give"):
        pv.load(path)


def test_path_like_names_fail_fast(tmp_path, monkeypatch):
    """Names that cannot be repo ids fail without asking the Hub (no file list, no download)."""
    from hub_server import HubServer, use_hub
    with HubServer({}) as hub:
        use_hub(monkeypatch, hub.url, str(tmp_path / "hub-cache"))
        for name in ("no/such/x", str(tmp_path / "missing"), "./ckpt", "a/../b"):
            with pytest.raises(pv.CheckpointError, match="is not a directory, and cannot be a Hub repo id"):
                pv.load(name)
    assert hub.requests == []


# ----- generation options, from a file or keywords (validated in generation/options.py) -----

@pytest.mark.parametrize("option, value, message", [
    ("temperature", 0, r"temperature must be > 0"), ("temperature", float("nan"), r"temperature must be a finite"),
    ("top_p", -0.1, r"top_p must be >= 0"), ("top_p", 1.5, r"top_p must be <= 1"),
    ("top_k", -1, r"top_k must be an int >= 0"), ("repetition_penalty", 0, r"repetition_penalty must be > 0"),
    ("length_penalty", float("nan"), r"length_penalty must be a finite"),
    ("pad_token_id", 2 ** 31, r"pad_token_id must be a token id in \[0, 2\^31\)"),
    ("decoder_start_token_id", -1, r"decoder_start_token_id must be a token id"),
    ("num_beams", 2_000_000, r"num_beams=2000000 is more than"),
    ("bad_words_ids", [[-1]], r"bad_words_ids must be a token id"),
])
def test_bad_generation_options_name_the_file_and_option(tiny, option, value, message):
    _, path = tiny
    # NaN is written as NaN, which Python's json (and transformers) read
    write_json(os.path.join(path, "generation_config.json"), {option: value})
    with pytest.raises(pv.ConfigError, match=rf"generation_config\.json: {message}"):
        pv.load_generation_config(path)


def test_generation_ids_outside_the_vocabulary_are_refused(tiny):
    _, path = tiny
    params, _ = pv.load(path)
    pixels = np.zeros((1, 3, 16, 16), np.float32)
    for kwargs, message in [({"bad_words_ids": [[50]]}, r"bad_words_ids holds \[50\], outside the vocabulary \[0, 50\)"),
                            ({"forced_bos_token_id": 99}, r"forced_bos_token_id holds \[99\]"),
                            ({"forced_eos_token_id": 50}, r"forced_eos_token_id holds \[50\]"),
                            ({"temperature": 0.0, "do_sample": True}, r"temperature must be > 0")]:
        with pytest.raises(pv.ConfigError, match=message):
            pv.generate(params, pixels, max_new_tokens=2, **kwargs)


# ----- weights that are NaN or infinite -----

def _poison(path, name: str, value: float) -> None:
    from safetensors.numpy import load_file, save_file
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    tensors[name] = tensors[name].copy()
    tensors[name].flat[3] = value
    save_file(tensors, file)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_weights_are_refused_at_load(tiny, value):
    _, path = tiny
    name = "decoder.transformer.h.1.mlp.c_fc.weight"
    _poison(path, name, value)
    with pytest.raises(pv.CheckpointError, match=rf"model\.safetensors: tensor {re.escape(name)} holds 1 NaN or "
                                                 r"infinite value.*allow_nonfinite=True"):
        pv.load(path)
    with pytest.warns(UserWarning, match=rf"tensor {re.escape(name)} holds 1 NaN or infinite"):
        params, _ = pv.load(path, allow_nonfinite=True)
    assert not np.isfinite(np.asarray(params["decoder"]["blocks"][1]["mlp"]["fc"]["w"])).all()


def test_weights_that_overflow_the_requested_dtype_are_refused(tiny):
    _, path = tiny
    name = "encoder.encoder.layer.0.intermediate.dense.weight"
    _poison(path, name, 1e6)                     # finite in float32, infinite in float16
    pv.load(path)
    with pytest.raises(pv.CheckpointError, match=rf"tensor {re.escape(name)} holds 1 NaN or infinite value "
                                                 r"after the cast to float16"):
        pv.load(path, dtype="float16")


def test_rows_that_turn_nonfinite_are_reported_per_input(tiny):
    """A float16 run whose activations overflow (finite weights, an input scale that fits float16
    but whose products do not): every input's result is its GenerationError, not an empty caption."""
    _, path = tiny
    captioning_dir(path)
    _poison(path, "decoder.transformer.ln_f.weight", 60000.0)
    cap = pv.Captioner.from_pretrained(path, dtype="float16")
    images = [np.full((16, 16, 3), v, np.uint8) for v in (0, 128)]
    results = list(cap.captions(images, errors="return", max_new_tokens=3))
    assert all(isinstance(r, pv.GenerationError) for r in results), results
    assert "image 1: generation turned non-finite (NaN or infinite scores)" in str(results[1])
    with pytest.raises(pv.GenerationError, match="image 0"):
        cap.caption(images[0], max_new_tokens=3)


# ----- images: only the documented formats, bounded conversions -----

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
       b"newpath 0 0 moveto 8 8 lineto stroke showpage\n%%EOF\n")


def test_formats_that_run_interpreters_or_hide_payloads_are_not_opened(tmp_path, monkeypatch):
    """EPS (pillow hands it to Ghostscript), ICO (its PNG payload's size is not the header's):
    refused by content whatever the file is called, before any decoder runs."""
    import subprocess as sp
    from PIL import Image
    called = []
    monkeypatch.setattr(sp, "Popen", lambda *a, **k: called.append(a) or pytest.fail("a subprocess was started"))
    (tmp_path / "doc.png").write_bytes(EPS)
    big = Image.new("L", (300, 300))
    big.save(tmp_path / "icon.ico", format="ICO", sizes=[(256, 256)])
    for name in ("doc.png", "icon.ico"):
        with pytest.raises(pv.ImageError, match=rf"{name.replace('.', '[.]')}: cannot read image: not an image in a "
                                                r"supported format \(BMP, GIF, JPEG, .*\)"):
            pv.preprocess([str(tmp_path / name)], pv.ImageConfig(size=(16, 16)))
    assert not called


def test_wide_images_convert_without_full_size_wide_copies(tmp_path):
    """A 9000 x 9000 16-bit grayscale PNG (81 M pixels, under the pixel bound; 162 MB decoded):
    int64 and float64 copies of it would take 650 MB each; the conversion stays within the
    child's 1.5 GB and gives value / 257 rounded, as before."""
    from PIL import Image
    file = str(tmp_path / "wide.png")
    Image.fromarray(np.full((9000, 9000), 65535, np.uint16)).save(file)
    results = run_bounded({"wide": f"open_image({file!r})"})
    assert results["wide"]["type"] is None, results["wide"]
    values = np.array([0, 128, 129, 385, 386, 65535, 30000], np.uint16)
    small = tmp_path / "small.png"
    Image.fromarray(values[None, :]).save(small)
    from purevedec.captioning.image import open_image
    with pytest.warns(UserWarning, match="16-bit"):
        got = np.asarray(open_image(str(small)))[0, :, 0]
    assert got.tolist() == np.round(values / 257).astype(np.uint8).tolist()


# ----- config fields of the wrong type, and parts that disagree -----

@pytest.mark.parametrize("section", ["encoder", "decoder"])
@pytest.mark.parametrize("value", [["vit"], {"a": 1}])
def test_model_type_of_the_wrong_type_is_a_config_error(tiny, section, value):
    _, path = tiny
    edit_json(os.path.join(path, "config.json"), lambda d: d[section].__setitem__("model_type", value))
    with pytest.raises(pv.ConfigError, match=rf"{section}\.model_type={re.escape(repr(value))} is not supported"):
        pv.load_config(path)


def test_image_size_disagreeing_with_the_preprocessor_is_a_config_error(tiny):
    _, path = tiny
    captioning_dir(path)
    write_json(os.path.join(path, "preprocessor_config.json"), {"size": {"height": 24, "width": 16}})
    with pytest.raises(pv.ConfigError, match=r"preprocessor_config\.json: size \(24, 16\) .* config\.json's "
                                             r"encoder\.image_size \(16, 16\)"):
        pv.Captioner.from_pretrained(path)
