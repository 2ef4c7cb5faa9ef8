"""Captioner and CLI on a tiny local checkpoint: token ids, scores and attention against
``purevedec.generate`` called directly, and captions, tokens, scores and attention against
transformers (generate, batch_decode, and the forward pass's cross-attention)."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

import purevedec
from conftest import torch_forward
from cli_util import EOS, ROOT, Terminal, checkpoint, make_images, run_cli, run_subprocess, torch_pixels  # noqa: F401 (fixture)
from purevedec.captioning import attention_map, cli, flags, output_file, program

def _cut(row, eos) -> tuple[int, ...]:
    """The generated tokens of a sequence (start token dropped), up to and including the first EOS."""
    out = []
    for token in np.asarray(row)[1:].tolist():
        out.append(token)
        if token == eos:
            break
    return tuple(out)


def _hf_generate(model, path, paths, **kw):
    """transformers on the same images: (pixels, sequences, per-row scores, captions). Greedy
    scores are summed log-softmaxes of the processed logits of each token up to EOS; beam
    scores are its sequences_scores."""
    from transformers import AutoTokenizer
    pixels = torch_pixels(path, paths)
    with torch.no_grad():
        out = model.generate(pixel_values=pixels, output_scores=True, return_dict_in_generate=True, **kw)
    seqs = out.sequences.numpy()
    eos = kw.get("eos_token_id", EOS)
    if kw.get("num_beams", 1) > 1:
        scores = out.sequences_scores.numpy()
    else:
        logp = torch.log_softmax(torch.stack(out.scores, 1), -1).numpy()  # [B,G,V]
        scores = np.array([sum(logp[i, t, tok] for t, tok in enumerate(_cut(row, eos))) for i, row in enumerate(seqs)])
    texts = AutoTokenizer.from_pretrained(path).batch_decode(out.sequences, skip_special_tokens=True)
    return pixels.numpy(), seqs, scores, texts


def _hf_patch_attention(model, pixels, seqs, lengths):
    """Per row, [n, P]: transformers' forward cross-attention on the finished sequences, query
    position t being the input that produced generated token t; averaged over layers and heads,
    CLS dropped (what a Caption carries)."""
    ref = torch_forward(model, pixels, seqs, output_attentions=True)
    mean = torch.stack(ref.cross_attentions).mean(dim=(0, 2)).numpy()  # [L,B,H,T,S] -> [B,T,S]
    return [mean[i, :n, 1:] for i, n in enumerate(lengths)]


def _frequent_token(model, path, paths, **kw) -> int:
    """A token the same search emits early for image 0: used as EOS so rows end at different steps."""
    return int(_hf_generate(model, path, paths, **kw)[1][0, 2])


@pytest.mark.parametrize("num_beams", [1, 3])
def test_captioner_equals_generate_and_transformers(checkpoint, tmp_path, num_beams):
    model, path = checkpoint
    cap = purevedec.Captioner.from_pretrained(path)
    paths = make_images(tmp_path / "imgs", 5)
    # beams rank by summed log-probs (length_penalty 0), so hypotheses that end early win
    kw = dict(max_new_tokens=6, num_beams=num_beams, **({"length_penalty": 0.0} if num_beams > 1 else {}))
    kw["eos_token_id"] = _frequent_token(model, path, paths, **kw)
    # One image per call: each row is trimmed to its own length. (In a batch, a row that ended
    # early is padded to the longest row, with this EOS when beams pad, as transformers does;
    # its text then depends on the batch. The CLI tests cover batches, with the special EOS.)
    caps = [c for [c] in cap.captions(paths, batch_size=1, attention=True, **kw)]
    # purevedec.generate on all five images at once
    out = purevedec.generate(cap.params, cap.pixels(paths), output_cross_attentions=True, **kw)
    ids = [_cut(row, kw["eos_token_id"]) for row in out.sequences]
    assert len({len(t) for t in ids}) > 1, "no row ended early: the EOS cut is not exercised"
    assert [c.token_ids for c in caps] == ids
    np.testing.assert_allclose([c.score for c in caps], out.scores, atol=1e-4)
    for c, cross, t in zip(caps, out.cross_attentions, ids):
        np.testing.assert_allclose(c.attention, cross[:len(t)].mean(axis=(1, 2))[:, 1:], atol=1e-5)
    # transformers: captions, token ids, scores, and the attention of its forward pass
    pixels, seqs, scores, _ = _hf_generate(model, path, paths, **kw)
    from transformers import AutoTokenizer
    texts = AutoTokenizer.from_pretrained(path).batch_decode(
        [row[:1 + len(_cut(row, kw["eos_token_id"]))] for row in seqs], skip_special_tokens=True)
    assert [c.text for c in caps] == texts
    assert [c.token_ids for c in caps] == [_cut(row, kw["eos_token_id"]) for row in seqs]
    np.testing.assert_allclose([c.score for c in caps], scores, atol=1e-4)
    for c, want in zip(caps, _hf_patch_attention(model, pixels, seqs, [len(t) for t in ids])):
        np.testing.assert_allclose(c.attention, want, atol=1e-4)
    assert caps[0].text == cap.caption(Image.open(paths[0]), **kw)[0]  # a PIL image as input


def test_cli_text_jsonl_folder_glob_and_corrupt(checkpoint, tmp_path):
    model, path = checkpoint
    paths = make_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    data = open(paths[0], "rb").read()
    (tmp_path / "imgs" / "cut.png").write_bytes(data[: len(data) // 2])
    code, out, err = run_cli(["caption", str(tmp_path / "imgs"), "--model", path, "--format", "jsonl",
                           "--batch-size", "2", "--max-new-tokens", "4"])
    assert code == 1
    assert "broken.jpg" in err and "cut.png" in err and "2 input(s) could not be captioned" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in rows] == paths
    _, _, scores, expected = _hf_generate(model, path, paths, max_new_tokens=4)
    assert [r["caption"] for r in rows] == expected
    np.testing.assert_allclose([r["score"] for r in rows], scores, atol=1e-4)
    code, out, _ = run_cli(["caption", str(tmp_path / "imgs" / "im*.png"), "--model", path, "--max-new-tokens", "4"])
    assert code == 0 and out.splitlines() == [f"{p}\t{t}" for p, t in zip(paths, expected)]


def test_cli_missing_inputs_and_progress(checkpoint, tmp_path):
    paths = make_images(tmp_path / "imgs", 3)
    argv = ["caption", *paths, str(tmp_path / "nope.png"), str(tmp_path / "*.gif"),
            "--model", checkpoint[1], "--batch-size", "1", "--max-new-tokens", "3"]
    code, out, err = run_cli(argv, Terminal())
    assert code == 1 and len(out.splitlines()) == 3
    assert "nope.png" in err and "*.gif: no file matches" in err
    # the bar counts the 4 files (nope.png fails when read), not the pattern that named none
    assert "4/4" in err and "5/5" not in err
    assert "error: " in err.splitlines()[0] or any(line.startswith("error: ") for line in err.splitlines())
    _, _, redirected = run_cli(argv)
    assert "4/4" not in redirected and "\r" not in redirected  # no bar when stderr is a file or pipe


def test_attention_map_png_draws_generate_attention(checkpoint, tmp_path):
    """The PNG the CLI writes is the rendering of purevedec.generate's own cross-attention for
    that image, cut at EOS, with the token texts as labels."""
    from purevedec.captioning.image import open_image
    _, path = checkpoint
    paths = make_images(tmp_path / "imgs", 2)
    maps = tmp_path / "maps"
    code, _, _ = run_cli(["caption", *paths, "--model", path, "--attention-map", str(maps), "--max-new-tokens", "7"])
    assert code == 0
    cap = purevedec.Captioner.from_pretrained(path)
    out = purevedec.generate(cap.params, cap.pixels(paths), max_new_tokens=7, output_cross_attentions=True)
    for p, row, cross in zip(paths, out.sequences, out.cross_attentions):
        ids = _cut(row, EOS)
        labels = [cap.tokenizer.token_text(t).strip() or repr(cap.tokenizer.token_text(t)) for t in ids]
        special = [t in cap.special_token_ids() for t in ids]
        want = attention_map.render(open_image(p), cross[:len(ids)].mean(axis=(1, 2))[:, 1:], labels,
                                    cap.config.encoder.grid, special=special)
        png = Image.open(maps / (os.path.basename(p) + ".png"))
        assert png.size == attention_map.map_size(len(ids), Image.open(p).size)
        # PNG is lossless; the attention may differ from this call's in the last bits only
        assert np.max(np.abs(np.asarray(png, np.int16) - np.asarray(want, np.int16))) <= 1


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (5, 2)])
def test_render_heat_lands_on_the_heaviest_patch(grid):
    """In each token's cell the hottest pixel (most red + green over a grey image) lies in the
    patch with the largest weight, row-major over a (rows, columns) grid: a transposed or
    flipped grid puts it elsewhere."""
    rows, cols = grid
    rs = np.random.RandomState(rows * 10 + cols)
    att = rs.rand(6, rows * cols) * 0.5
    heaviest = rs.permutation(rows * cols)[:6]  # a different patch for each token
    att[np.arange(6), heaviest] = 0.9
    img = attention_map.render(Image.new("RGB", (40, 30), (128, 128, 128)), att, [f"t{i}" for i in range(6)], grid)
    pixels = np.asarray(img, np.int32)
    ncols = attention_map.grid_shape(6)[1]
    cw, ch = attention_map.cell_size((40, 30))
    for i, k in enumerate(heaviest):
        x0, y0 = (i % ncols) * cw, (i // ncols) * (ch + attention_map.LABEL)
        cell = pixels[y0:y0 + ch, x0:x0 + cw]
        heat = cell[..., 0] + cell[..., 1]
        y, x = np.unravel_index(np.argmax(heat), heat.shape)
        assert (y * rows // ch, x * cols // cw) == divmod(int(k), cols), (i, k)


def test_render_checks_and_layout():
    img = Image.new("RGB", (30, 20), "gray")
    att = np.random.RandomState(0).rand(7, 12)
    out = attention_map.render(img, att, [f"t{i}" for i in range(7)], (3, 4))
    cell_h = round(attention_map.CELL * 20 / 30)  # the image's aspect ratio, 160 pixels wide
    assert out.size == (5 * attention_map.CELL, 2 * (cell_h + attention_map.LABEL) + attention_map.SCALE)
    with pytest.raises(ValueError, match="patch grid"):
        attention_map.render(img, att, ["a"], (3, 4))


def test_offline_model_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(["caption", "x.png", "--model", "someone/not-cached-model"])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "offline" in err and "someone/not-cached-model" in err


def test_bad_checkpoint_dir_is_one_line(tmp_path):
    code, _, err = run_cli(["caption", "x.png", "--model", str(tmp_path)])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot load model" in err


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cli_equals_transformers_generate(checkpoint, tmp_path, num_beams):
    model, path = checkpoint
    paths = make_images(tmp_path / "imgs", 3)
    _, _, scores, expected = _hf_generate(model, path, paths, max_new_tokens=6, num_beams=num_beams)
    code, out, _ = run_cli(["caption", *paths, "--model", path, "--max-new-tokens", "6", "--num-beams", str(num_beams),
                         "--format", "jsonl"])
    rows = [json.loads(r) for r in out.splitlines()]
    assert code == 0 and [r["caption"] for r in rows] == expected
    np.testing.assert_allclose([r["score"] for r in rows], scores, atol=1e-4)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cli_and_captioner_low_precision(checkpoint, tmp_path, dtype):
    """--dtype casts the parameters and computes in that dtype: the scores are generate's on
    cast params in that dtype (not float32's), and on this confident model the captions are
    still transformers' float32 ones."""
    model, path = checkpoint
    paths = make_images(tmp_path / "imgs", 3)
    code, out, _ = run_cli(["caption", *paths, "--model", path, "--max-new-tokens", "6", "--dtype", dtype,
                         "--format", "jsonl"])
    rows = [json.loads(r) for r in out.splitlines()]
    cap = purevedec.Captioner.from_pretrained(path, dtype=dtype)
    assert cap.params["decoder"]["wte"].dtype == jnp.dtype(dtype)
    params, _ = purevedec.load(path, dtype=dtype)
    low = purevedec.generate(params, cap.pixels(paths), max_new_tokens=6, dtype=dtype)
    fp32 = purevedec.generate(purevedec.load(path)[0], cap.pixels(paths), max_new_tokens=6)
    assert code == 0
    np.testing.assert_allclose([r["score"] for r in rows], low.scores, atol=1e-5)
    assert np.max(np.abs(low.scores - fp32.scores)) > 1e-5  # really computed in low precision
    assert [r["caption"] for r in rows] == _hf_generate(model, path, paths, max_new_tokens=6)[3]


def test_compile_cache_fills_and_is_reused(checkpoint, tmp_path):
    """The CLI keeps compiled programs in --compile-cache; a second process reads them back and
    captions identically. Run in subprocesses: the setting is process-wide."""
    _, path = checkpoint
    img = make_images(tmp_path / "imgs", 1)[0]
    cache = tmp_path / "xla"
    cmd = ["caption", img, "--model", path, "--max-new-tokens", "4", "--compile-cache", str(cache)]
    first = run_subprocess(*cmd, cache="")
    entries = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    second = run_subprocess(*cmd, cache="")
    assert first.returncode == 0, first.stderr
    assert entries, "no compiled program was written to the cache"
    assert second.returncode == 0 and second.stdout == first.stdout
    # A miss would compile again and rewrite its entry; every entry is untouched.
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == entries


# --- issue 20: the small things ------------------------------------------------------------------

def test_last_batch_is_padded_and_does_not_compile_again(checkpoint, tmp_path):
    """5 images in batches of 2: the last image is padded to 2 rows, so one program serves the run."""
    from purevedec.generation.search import _generate_jit
    paths = make_images(tmp_path / "imgs", 5)
    before = _generate_jit._cache_size()
    code, out, _ = run_cli(["caption", *paths, "--model", checkpoint[1], "--batch-size", "2",
                         "--max-new-tokens", "11", "--format", "jsonl"])  # a length no other test compiles
    assert code == 0 and [json.loads(r)["path"] for r in out.splitlines()] == paths
    assert _generate_jit._cache_size() - before == 1


def test_captioner_errors_raise_skip_return(checkpoint, tmp_path):
    cap = purevedec.Captioner.from_pretrained(checkpoint[1])
    good = make_images(tmp_path / "imgs", 2)
    bad = str(tmp_path / "imgs" / "bad.png")
    open(bad, "wb").write(b"\x89PNG\r\n\x1a\n not a png")
    expected = cap.caption(good, max_new_tokens=4)
    with pytest.warns(UserWarning, match="bad.png"):
        assert cap.caption([good[0], bad, good[1]], errors="skip", max_new_tokens=4) == [expected[0], None, expected[1]]
    returned = cap.caption([good[0], bad, good[1]], errors="return", max_new_tokens=4)
    assert returned[0::2] == expected and isinstance(returned[1], purevedec.ImageError) and "bad.png" in str(returned[1])
    with pytest.raises(purevedec.ImageError, match="bad.png"):
        cap.caption([good[0], bad, good[1]], max_new_tokens=4)
    stream = cap.captions([good[0], bad, good[1]], max_new_tokens=4)   # errors="raise": earlier items come first
    assert next(stream)[0].text == expected[0]
    with pytest.raises(purevedec.ImageError, match="bad.png"):
        next(stream)
    with pytest.raises(ValueError, match="errors must be one of"):
        cap.caption(good, errors="ignore")


def test_captioner_groups_top_n_per_image(checkpoint, tmp_path):
    """num_return_sequences=2 over 3 images in batches of 2: a list of 2 captions per image, equal
    to transformers' flat B*N output regrouped (texts and beam scores)."""
    import torch
    from transformers import AutoTokenizer
    model, path = checkpoint
    paths = make_images(tmp_path / "imgs", 3)
    with torch.no_grad():
        ref = model.generate(pixel_values=torch_pixels(path, paths), max_new_tokens=5, num_beams=3,
                             num_return_sequences=2, output_scores=True, return_dict_in_generate=True)
    texts = AutoTokenizer.from_pretrained(path).batch_decode(ref.sequences, skip_special_tokens=True)
    cap = purevedec.Captioner.from_pretrained(path)
    grouped = cap.caption(paths, batch_size=2, num_beams=3, num_return_sequences=2, max_new_tokens=5)
    assert grouped == [texts[0:2], texts[2:4], texts[4:6]]
    scores = [c.score for caps in cap.captions(paths, batch_size=2, num_beams=3, num_return_sequences=2,
                                               max_new_tokens=5) for c in caps]
    assert np.allclose(scores, ref.sequences_scores.numpy(), atol=1e-4)
    assert isinstance(cap.caption(paths[:1], max_new_tokens=5)[0], str)   # one sequence: plain strings


def test_sampled_captions_belong_to_their_image(checkpoint, tmp_path):
    """Sampling 2 captions per image in padded batches: each caption's score is the summed
    log-probability transformers' model gives its tokens for *that* image (top_k off, T=1)."""
    import torch
    model, path = checkpoint
    paths = make_images(tmp_path / "imgs", 3, size=(12, 40))
    pixels = torch_pixels(path, paths)
    cap = purevedec.Captioner.from_pretrained(path)
    opts = dict(batch_size=2, do_sample=True, top_k=0, num_return_sequences=2, max_new_tokens=6)
    results = list(cap.captions(paths, **opts))
    assert [len(r) for r in results] == [2, 2, 2]
    for i, caps in enumerate(results):
        for c in caps:
            ids = torch.tensor([[0, *c.token_ids[:-1]]])
            with torch.no_grad():
                logp = torch.log_softmax(model(pixel_values=pixels[i:i + 1], decoder_input_ids=ids).logits[0], -1)
            assert abs(float(logp[torch.arange(len(c.token_ids)), list(c.token_ids)].sum()) - c.score) < 1e-3
    again = list(cap.captions(paths, **opts))
    assert [[c.token_ids for c in r] for r in again] == [[c.token_ids for c in r] for r in results]
    import jax
    other = list(cap.captions(paths, key=jax.random.key(7), **opts))
    assert [[c.token_ids for c in r] for r in other] != [[c.token_ids for c in r] for r in results]


def test_sixteen_bit_gray_is_scaled_and_warned_once(checkpoint, tmp_path):
    """A 16-bit grayscale PNG is read as value/257 (not clipped to white as PIL's convert and
    transformers do), with one warning for several images."""
    import warnings
    from purevedec.captioning.image import ImageConfig, preprocess_one
    ramp = (np.arange(24 * 32).reshape(24, 32) * 85).astype(np.uint16)     # 0 .. 65195
    wide = tmp_path / "wide.png"
    Image.fromarray(ramp).save(wide)
    narrow = tmp_path / "narrow.png"
    Image.fromarray(np.round(ramp / 257).astype(np.uint8), "L").save(narrow)   # the 8-bit image it should be
    config = ImageConfig(size=(16, 16))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        got = preprocess_one(str(wide), config)
        preprocess_one(str(wide), config)
    assert Image.open(wide).mode.startswith("I")
    assert np.array_equal(got, preprocess_one(str(narrow), config))
    assert len([w for w in seen if "16-bit" in str(w.message)]) == 1
    from transformers import AutoImageProcessor
    from transformers.image_utils import load_image
    white = AutoImageProcessor.from_pretrained(checkpoint[1])([load_image(str(wide))]).pixel_values[0]
    assert (np.asarray(white) == 1.0).mean() > 0.95   # what transformers does: (nearly) all white


def test_render_keeps_aspect_draws_scale_and_marks_special():
    img = Image.new("RGB", (60, 20), "gray")
    att = np.random.RandomState(1).rand(2, 12)
    out = np.asarray(attention_map.render(img, att, ["dog", "eos"], (3, 4), special=[False, True]))
    cw, ch = attention_map.cell_size((60, 20))
    assert (cw, ch) == (160, 53)
    assert out.shape == (ch + attention_map.LABEL + attention_map.SCALE, 2 * cw, 3)
    bar = out[ch + attention_map.LABEL + 8]             # a row through the colour scale
    assert tuple(bar[0]) == (0, 0, 127) and tuple(bar[-1]) == (255, 255, 0)
    labels = out[ch:ch + attention_map.LABEL]
    red = (labels[..., 0] > 150) & (labels[..., 1] < 60) & (labels[..., 2] < 60)
    assert red[:, cw:].sum() > 5 and red[:, :cw].sum() == 0   # only the special token's label is red


def test_special_labels_mark_eos(checkpoint):
    cap = purevedec.Captioner.from_pretrained(checkpoint[1])
    labels, special = cli._special_labels(cap, [5, 0])
    assert special == [False, True] and labels[1] == "<|endoftext|>"


def test_version_and_docstrings():
    import inspect
    import tomllib
    code, out, _ = run_cli(["--version"])
    version = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]["version"]
    assert code == 0 and out.strip() == f"purevedec {version}"
    public = [f for module in (cli, flags, output_file, program) for name, f in vars(module).items()
              if inspect.isfunction(f) and not name.startswith("_") and f.__module__ == module.__name__]
    assert public and all(f.__doc__ for f in public), [f.__name__ for f in public if not f.__doc__]
    for obj in (purevedec.Captioner, purevedec.Caption, purevedec.Captioner.caption, purevedec.Captioner.captions):
        assert obj.__doc__ and len(obj.__doc__) > 40


def test_attention_maps_of_same_names_kept_apart(checkpoint, tmp_path):
    """a/x.png, b/x.png and b/x.jpg get three maps, each the size of its own image's map."""
    rs = np.random.RandomState(3)
    sizes = {"a/x.png": (40, 20), "b/x.png": (20, 40), "b/x.jpg": (30, 30)}
    for name, (w, h) in sizes.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rs.randint(0, 256, (h, w, 3), np.uint8)).save(tmp_path / name)
    paths = [str(tmp_path / n) for n in sizes]
    maps = tmp_path / "maps"
    code, out, _ = run_cli(["caption", *paths, "--model", checkpoint[1], "--attention-map", str(maps),
                         "--max-new-tokens", "7", "--format", "jsonl"])
    assert code == 0
    rows = [json.loads(r) for r in out.splitlines()]
    assert [r["attention_map"] for r in rows] == [str(maps / (n + ".png")) for n in sizes]
    cap = purevedec.Captioner.from_pretrained(checkpoint[1])
    for (name, size), [c] in zip(sizes.items(), cap.captions(paths, attention=True, max_new_tokens=7)):
        assert Image.open(maps / (name + ".png")).size == attention_map.map_size(len(c.token_ids), size)
