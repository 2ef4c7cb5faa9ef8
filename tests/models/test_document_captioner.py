"""A Donut- or Nougat-style checkpoint's preprocessor_config.json picks the document preprocessing in the
Captioner and the caption command: pixels and tokens equal to transformers' processor and generate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import purevedec as pv
from cli_util import run_cli
from models import save_captioning_checkpoint
from test_document_models import make_pair

# pair -> (processor class, its options); the canvases are the encoders' image sizes (32x24, 40x56)
PROCESSORS = {"donut_swin_mbart": ("DonutImageProcessor", dict(size=[24, 32], do_align_long_axis=True)),
              "swin_bart": ("NougatImageProcessor", dict(size={"height": 40, "width": 56}))}


def page(h, w, seed):
    """A light page with dark marks away from the edges (Nougat crops to them)."""
    rng = np.random.RandomState(seed)
    arr = np.full((h, w, 3), 235, np.uint8)
    arr[h // 5:h - h // 4, w // 6:w - w // 5] = rng.randint(0, 255, (h - h // 4 - h // 5, w - w // 5 - w // 6, 3))
    return Image.fromarray(arr)


@pytest.fixture(scope="module", params=list(PROCESSORS))
def checkpoint(request, tmp_path_factory):
    import transformers
    path = tmp_path_factory.mktemp(request.param)
    model = make_pair(request.param)
    model.config.decoder_start_token_id, model.config.pad_token_id, model.config.eos_token_id = 0, 1, 2
    save_captioning_checkpoint(model, path)
    kind, options = PROCESSORS[request.param]
    processor = getattr(transformers, kind)(**options)
    processor.save_pretrained(path)  # replaces the ViT preprocessor written above
    return model, processor, str(path), request.param


def test_the_checkpoint_names_the_document_processor(checkpoint):
    _, processor, path, name = checkpoint
    with open(f"{path}/preprocessor_config.json") as f:
        assert json.load(f)["image_processor_type"] == PROCESSORS[name][0]


def test_captioner_pixels_and_tokens_equal_transformers(checkpoint):
    model, processor, path, _ = checkpoint
    pages = [page(90, 70, 1), page(50, 120, 2), page(61, 47, 3)]
    want = processor(pages, return_tensors="np")["pixel_values"]
    cap = pv.Captioner.from_pretrained(path)
    np.testing.assert_array_equal(cap.pixels(pages), want)
    with torch.no_grad():
        ref = model.generate(pixel_values=torch.tensor(want), max_new_tokens=6, num_beams=1, do_sample=False)
    got = [c[0].token_ids for c in cap.captions(pages, max_new_tokens=6, num_beams=1)]
    for row, ids in zip(ref.tolist(), got):
        row = row[1:]
        assert tuple(row[:len(ids)]) == ids and all(t == 1 for t in row[len(ids):])


def test_caption_command_reads_a_page_file(checkpoint, tmp_path):
    model, processor, path, _ = checkpoint
    file = tmp_path / "page.png"
    page(90, 70, 4).save(file)
    cap = pv.Captioner.from_pretrained(path)
    want = cap.caption([str(file)], max_new_tokens=5)[0]
    with torch.no_grad():
        pixels = torch.tensor(processor(Image.open(file), return_tensors="np")["pixel_values"])
        ref = model.generate(pixel_values=pixels, max_new_tokens=5, num_beams=1, do_sample=False)
    assert want == cap.tokenizer.decode(ref[0].tolist(), skip_special_tokens=True)
    code, out, err = run_cli(["caption", "--model", path, str(file), "--max-new-tokens", "5", "--no-progress"])
    assert code == 0, err
    assert want in out


def test_a_task_prompt_and_bad_words_generate_as_transformers(checkpoint):
    model, processor, path, _ = checkpoint
    pages = [page(90, 70, 5), page(50, 120, 6)]
    cap = pv.Captioner.from_pretrained(path)
    prompt_ids = cap.tokenizer.encode("t7 t9")
    assert prompt_ids == [7, 9]
    with torch.no_grad():
        ref = model.generate(pixel_values=torch.tensor(processor(pages, return_tensors="np")["pixel_values"]),
                             decoder_input_ids=torch.tensor([[7, 9]] * 2), bad_words_ids=[[5]],
                             max_new_tokens=6, num_beams=1, do_sample=False)
    got = [c[0] for c in cap.captions(pages, prompt="t7 t9", bad_words_ids=[[5]], max_new_tokens=6, num_beams=1)]
    # transformers feeds a Donut encoder's prompt as given, and prepends the start token to another's
    first = 2 if model.config.encoder.model_type == "donut-swin" else 3
    for row, c in zip(ref.tolist(), got):
        assert row[first - 2:first] == [7, 9] and 5 not in row[first:]
        assert tuple(row[first:first + len(c.token_ids)]) == c.token_ids
        assert all(t == 1 for t in row[first + len(c.token_ids):])
        assert c.text == cap.tokenizer.decode(row)
        assert c.prompt_ids == tuple(row[:first])   # what generate's row began with, start token and prompt


def test_the_prompt_reaches_generate_as_decoder_input_ids_alone(checkpoint, monkeypatch):
    """Whether the start token goes before the prompt is generate's rule (transformers': a Donut
    encoder's prompt is used as given, its first token the start), not the Captioner's: it passes
    no decoder_start_token_id of its own, and the tokens stay transformers' (test above)."""
    from purevedec.captioning import captioner
    _, processor, path, _ = checkpoint
    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)
    real = captioner.generate
    monkeypatch.setattr(captioner, "generate", recording)
    cap = pv.Captioner.from_pretrained(path)
    got = list(cap.captions([page(90, 70, 5)], prompt="t7 t9", max_new_tokens=3, num_beams=1))
    assert [kw["decoder_input_ids"] for kw in seen] == [[[7, 9]]]
    assert all("decoder_start_token_id" not in kw for kw in seen)
    assert got[0][0].prompt_ids[-2:] == (7, 9)


def test_caption_command_prompt_flag(checkpoint, tmp_path):
    _, _, path, _ = checkpoint
    file = tmp_path / "page.png"
    page(70, 90, 8).save(file)
    cap = pv.Captioner.from_pretrained(path)
    want = [c[0].text for c in cap.captions([str(file)], prompt="t7 t9", max_new_tokens=4)][0]
    assert want.startswith("t7 t9")   # word-level tokens: the prompt is plain text here
    code, out, err = run_cli(["caption", "--model", path, str(file), "--max-new-tokens", "4", "--prompt", "t7 t9",
                              "--no-progress"])
    assert code == 0, err
    assert want in out
