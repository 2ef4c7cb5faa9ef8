"""Captioner and CLI mechanics on a tiny local checkpoint, with the real ``generate``."""

from __future__ import annotations

import os
import io
import json

import numpy as np
import pytest
from PIL import Image

import purevedec
from purevedec.captioning import attention_map, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from tests.conftest import make_reference

PREPROCESSOR = {"image_processor_type": "ViTImageProcessor", "size": {"height": 16, "width": 16},
                "resample": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def _tokenizer(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["a dog on the grass", "a cat on a red couch"] * 3, trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>").save_pretrained(path)
    return tok.get_vocab_size()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny captioning checkpoint: model, tokenizer and preprocessor config in one folder."""
    path = tmp_path_factory.mktemp("ckpt")
    vocab = _tokenizer(path)
    model = make_reference(dec_kw={"vocab_size": vocab, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0},
                           init_scale=3.0)
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return model, str(path)


def _images(folder, n, size=(20, 30)):
    folder.mkdir(exist_ok=True)
    rs = np.random.RandomState(n)
    paths = []
    for i in range(n):
        paths.append(str(folder / f"im{i}.png"))
        Image.fromarray(rs.randint(0, 256, (size[0] + i, size[1], 3), np.uint8)).save(paths[-1])
    return paths


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so the progress bar shows."""
    def isatty(self):
        return True


def _run(argv, err=None):
    out, err = io.StringIO(), err or io.StringIO()
    code = cli.main(argv, out, err)
    return code, out.getvalue(), err.getvalue()


def test_captioner_batches_and_matches_single(checkpoint, tmp_path):
    cap = purevedec.Captioner.from_pretrained(checkpoint[1])
    paths = _images(tmp_path / "imgs", 5)
    texts = cap.caption(paths, batch_size=2, max_new_tokens=5)
    assert len(texts) == 5 and all(isinstance(t, str) for t in texts)
    singles = [next(cap.captions(p, max_new_tokens=5)) for p in paths]
    assert texts == [c.text for c in singles]
    # Scores differ per image (texts of a random model may not): they pin the batch order.
    batched = [c.score for c in cap.captions(paths, batch_size=2, max_new_tokens=5)]
    assert len(set(batched)) == 5 and np.allclose(batched, [c.score for c in singles], atol=1e-4)
    assert texts[0] == cap.caption(Image.open(paths[0]), max_new_tokens=5)[0]
    c = next(cap.captions(paths[:1], attention=True, max_new_tokens=5))
    assert c.attention.shape == (len(c.token_ids), cap.config.encoder.num_patches)
    assert (c.attention.sum(-1) < 1.0).all()  # the CLS share is dropped


def test_cli_text_jsonl_folder_glob_and_corrupt(checkpoint, tmp_path):
    paths = _images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    data = open(paths[0], "rb").read()
    (tmp_path / "imgs" / "cut.png").write_bytes(data[: len(data) // 2])
    code, out, err = _run(["caption", str(tmp_path / "imgs"), "--model", checkpoint[1], "--format", "jsonl",
                           "--batch-size", "2", "--max-new-tokens", "4"])
    assert code == 1
    assert "broken.jpg" in err and "cut.png" in err and "2 input(s) could not be captioned" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in rows] == paths
    singles = [next(purevedec.Captioner.from_pretrained(checkpoint[1]).captions(p, max_new_tokens=4)) for p in paths]
    expected = [c.text for c in singles]
    assert [r["caption"] for r in rows] == expected
    assert np.allclose([r["score"] for r in rows], [c.score for c in singles], atol=1e-4)
    code, out, _ = _run(["caption", str(tmp_path / "imgs" / "im*.png"), "--model", checkpoint[1],
                         "--max-new-tokens", "4"])
    assert code == 0 and out.splitlines() == [f"{p}\t{t}" for p, t in zip(paths, expected)]


def test_cli_missing_inputs_and_progress(checkpoint, tmp_path):
    paths = _images(tmp_path / "imgs", 3)
    argv = ["caption", *paths, str(tmp_path / "nope.png"), str(tmp_path / "*.gif"),
            "--model", checkpoint[1], "--batch-size", "1", "--max-new-tokens", "3"]
    code, out, err = _run(argv, _Terminal())
    assert code == 1 and len(out.splitlines()) == 3
    assert "nope.png" in err and "*.gif: no file matches" in err
    assert "5/5" in err  # the bar: more inputs than one batch, on a terminal
    assert "error: " in err.splitlines()[0] or any(line.startswith("error: ") for line in err.splitlines())
    _, _, redirected = _run(argv)
    assert "5/5" not in redirected and "\r" not in redirected  # no bar when stderr is a file or pipe


def test_attention_map_png(checkpoint, tmp_path):
    paths = _images(tmp_path / "imgs", 2)
    maps = tmp_path / "maps"
    code, out, _ = _run(["caption", *paths, "--model", checkpoint[1], "--attention-map", str(maps),
                         "--max-new-tokens", "7", "--format", "jsonl"])
    assert code == 0
    cap = purevedec.Captioner.from_pretrained(checkpoint[1])
    for path, c in zip(paths, cap.captions(paths, attention=True, max_new_tokens=7)):
        png = Image.open(maps / (path.rsplit("/", 1)[1]))
        assert png.size == attention_map.map_size(len(c.token_ids))
        assert len(np.unique(np.asarray(png).reshape(-1, 3), axis=0)) > 50  # heat and image, not blank


def test_render_checks_and_layout():
    img = Image.new("RGB", (30, 20), "gray")
    att = np.random.RandomState(0).rand(7, 12)
    out = attention_map.render(img, att, [f"t{i}" for i in range(7)], (3, 4))
    assert out.size == (5 * attention_map.CELL, 2 * (attention_map.CELL + attention_map.LABEL))
    with pytest.raises(ValueError, match="patch grid"):
        attention_map.render(img, att, ["a"], (3, 4))


def test_offline_model_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    code, out, err = _run(["caption", "x.png", "--model", "someone/not-cached-model"])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "offline" in err and "someone/not-cached-model" in err


def test_bad_checkpoint_dir_is_one_line(tmp_path):
    code, _, err = _run(["caption", "x.png", "--model", str(tmp_path)])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot load model" in err


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cli_equals_transformers_generate(checkpoint, tmp_path, num_beams):
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.image_utils import load_image
    model, path = checkpoint
    paths = _images(tmp_path / "imgs", 3)
    pixels = AutoImageProcessor.from_pretrained(path)([load_image(p) for p in paths], return_tensors="pt").pixel_values
    with torch.no_grad():
        seqs = model.generate(pixel_values=pixels, max_new_tokens=6, num_beams=num_beams)
    expected = AutoTokenizer.from_pretrained(path).batch_decode(seqs, skip_special_tokens=True)
    code, out, _ = _run(["caption", *paths, "--model", path, "--max-new-tokens", "6", "--num-beams", str(num_beams),
                         "--format", "jsonl"])
    assert code == 0 and [json.loads(r)["caption"] for r in out.splitlines()] == expected


def test_compile_cache_fills_and_is_reused(checkpoint, tmp_path):
    """The CLI keeps compiled programs in --compile-cache; a second process reads them back and
    captions identically. Run in subprocesses: the setting is process-wide."""
    import subprocess
    import sys
    _, path = checkpoint
    img = _images(tmp_path / "imgs", 1)[0]
    cache = tmp_path / "xla"
    env = {**os.environ, "PUREVEDEC_COMPILE_CACHE": ""}
    cmd = [sys.executable, "-m", "purevedec", "caption", img, "--model", path, "--max-new-tokens", "4",
           "--compile-cache", str(cache)]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    entries = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    assert entries, "no compiled program was written to the cache"
    assert second.returncode == 0 and second.stdout == first.stdout
    # A miss would compile again and rewrite its entry; every entry is untouched.
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == entries
