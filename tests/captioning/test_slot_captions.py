"""Captioning through the slot engine: the Captioner and the CLI give the batched path's greedy
captions (texts, token ids, scores) in input order, unreadable inputs keep their place, sampled
captions are generate's with the documented per-image key, and unsupported options are refused."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import purevedec
from cli_util import checkpoint, make_images, run_cli  # noqa: F401 (fixture)
from purevedec.captioning import slot_captions


def _images(tmp_path):
    paths = make_images(tmp_path / "imgs", 5)
    broken = str(tmp_path / "imgs" / "broken.jpg")
    with open(broken, "wb") as f:
        f.write(b"\xff\xd8\xff not really a jpeg")
    return paths[:2] + [broken] + paths[2:]


def test_captioner_slots_equal_batches_greedy(checkpoint, tmp_path, monkeypatch):
    _, path = checkpoint
    cap = purevedec.Captioner.from_pretrained(path)
    inputs = _images(tmp_path)
    want = list(cap.captions(inputs, batch_size=3, errors="return", max_new_tokens=7))
    got = list(cap.captions(inputs, slots=2, errors="return", max_new_tokens=7))
    assert len(got) == len(want) == 6
    assert isinstance(got[2], purevedec.ImageError) and "broken.jpg" in str(got[2])
    for g, w in zip(got, want):
        if isinstance(w, Exception):
            continue
        assert [c.text for c in g] == [c.text for c in w]
        assert [c.token_ids for c in g] == [c.token_ids for c in w]
        np.testing.assert_allclose([c.score for c in g], [c.score for c in w], atol=1e-4)
    assert cap.caption(inputs[:2], slots=3, max_new_tokens=7) == [w[0].text for w in want[:2]]
    monkeypatch.setattr(slot_captions, "CHUNK", 1)   # 1 slot: chunks of 4 inputs, the broken one in the first
    chunked = list(cap.captions(inputs, slots=1, errors="return", max_new_tokens=7))
    assert [r if isinstance(r, Exception) else [c.token_ids for c in r] for r in chunked][:2] + \
        [[c.token_ids for c in r] for r in chunked[3:]] == \
        [[c.token_ids for c in r] for r in want[:2]] + [[c.token_ids for c in r] for r in want[3:]]
    assert isinstance(chunked[2], purevedec.ImageError)
    with pytest.raises(purevedec.ImageError, match="broken.jpg"):
        list(cap.captions(inputs, slots=2, max_new_tokens=3))
    only_broken = list(cap.captions(inputs[2:3], slots=2, errors="return", do_sample=True, max_new_tokens=3))
    assert len(only_broken) == 1 and isinstance(only_broken[0], purevedec.ImageError)


def test_captioner_slots_sampling_uses_a_key_per_image(checkpoint, tmp_path, monkeypatch):
    """Keys fold the input's index in the whole call, across the chunks the inputs go in (4 here)."""
    _, path = checkpoint
    cap = purevedec.Captioner.from_pretrained(path)
    inputs = make_images(tmp_path / "imgs", 5)
    key = jax.random.key(7)
    opts = dict(do_sample=True, top_k=0, temperature=1.5, max_new_tokens=6)
    monkeypatch.setattr(slot_captions, "CHUNK", 1)
    got = list(cap.captions(inputs, slots=1, key=key, **opts))
    assert len(got) == 5
    pixels = cap.pixels(inputs)
    for i, result in enumerate(got):
        out = purevedec.generate(cap.params, pixels[i:i + 1], cap.config,
                                 key=jax.random.fold_in(key, i)[None], **opts)
        row = np.asarray(out.sequences)[0]
        assert result[0].token_ids == tuple(row[1:1 + len(result[0].token_ids)].tolist())
        assert result[0].text == cap.tokenizer.decode(row)


def test_captioner_slots_equal_batches_beams(checkpoint, tmp_path):
    """A slot per image's beam group: the batched path's captions (texts, token ids, beam scores),
    num_return_sequences of them, best first."""
    _, path = checkpoint
    cap = purevedec.Captioner.from_pretrained(path)
    inputs = make_images(tmp_path / "imgs", 3)
    opts = dict(num_beams=4, num_return_sequences=2, max_new_tokens=7)
    want = list(cap.captions(inputs, batch_size=3, **opts))
    got = list(cap.captions(inputs, slots=2, **opts))
    assert len(got) == 3 and all(len(g) == 2 for g in got)
    for g, w in zip(got, want):
        assert [c.text for c in g] == [c.text for c in w]
        assert [c.token_ids for c in g] == [c.token_ids for c in w]
        np.testing.assert_allclose([c.score for c in g], [c.score for c in w], atol=1e-4)
    assert cap.caption(inputs, slots=2, **opts) == [[c.text for c in w] for w in want]


@pytest.mark.parametrize("extra, says", [({"num_return_sequences": 2, "do_sample": True},
                                          "num_return_sequences=2 without beams"),
                                         ({"num_beams": 2, "stop_repeats": (2, 3)},
                                          "stop_repeats cannot be combined with num_beams > 1"),
                                         ({"attention": True}, "attention maps"),
                                         ({"slots": 0}, "positive int")])
def test_captioner_slots_refuses_what_the_engine_cannot_do(checkpoint, tmp_path, extra, says):
    _, path = checkpoint
    cap = purevedec.Captioner.from_pretrained(path)
    kw = {"slots": 2, **extra}
    with pytest.raises(ValueError, match=says):
        list(cap.captions(make_images(tmp_path / "imgs", 1), **kw))


def test_cli_slots_records_equal_batches(checkpoint, tmp_path):
    _, path = checkpoint
    inputs = _images(tmp_path)
    base = ["caption", *inputs, "--model", path, "--format", "jsonl", "--max-new-tokens", "6", "--no-progress"]
    code, want, err_want = run_cli(base + ["--batch-size", "2"])
    code_slots, got, err_got = run_cli(base + ["--slots", "2"])
    assert code == code_slots == 1 and "broken.jpg" in err_got
    want, got = [json.loads(x) for x in want.splitlines()], [json.loads(x) for x in got.splitlines()]
    assert len(got) == 5 and [r["path"] for r in got] == [r["path"] for r in want]
    assert [r["caption"] for r in got] == [r["caption"] for r in want]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=1e-4)
    beams = ["--num-beams", "3", "--num-return-sequences", "2"]
    code, want, _ = run_cli(base + ["--batch-size", "2", *beams])
    code_slots, got, _ = run_cli(base + ["--slots", "2", *beams])
    want, got = [json.loads(x) for x in want.splitlines()], [json.loads(x) for x in got.splitlines()]
    assert code == code_slots == 1 and len(got) == len(want) == 5
    assert [(r["path"], r["captions"]) for r in got] == [(r["path"], r["captions"]) for r in want]
    np.testing.assert_allclose([r["scores"] for r in got], [r["scores"] for r in want], atol=1e-4)
    code, out, err = run_cli(base + ["--slots", "2", "--do-sample", "--num-return-sequences", "2"])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--slots: num_return_sequences=2 without beams" in err
