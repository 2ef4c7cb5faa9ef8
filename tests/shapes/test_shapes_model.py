"""The bundled purevedec:shapes model: addressed by name everywhere a model name is accepted,
small, accurate on fresh scenes, equal to transformers on the same files, and the README's
first command captions the bundled examples offline."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import purevedec as pv
from purevedec.commands import main
from purevedec.shapes.scenes import scene

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "purevedec" / "bundled" / "shapes"
EXAMPLES = ROOT / "examples" / "shapes"
FRESH_STREAM = 3_000_000   # never drawn by the recipe (training 0, test 1e6, validation 1e6+1, examples 2e6)
FRESH_SCENES = 200


def _cli_captions(args) -> dict[str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["caption", *args, "--model", "purevedec:shapes", "--format", "jsonl"], out, err)
    assert code == 0, err.getvalue()
    return {os.path.basename(r["path"]): r["caption"] for r in map(json.loads, out.getvalue().splitlines())}


def test_name_resolves_in_load_captioner_and_cli():
    params, config = pv.load("purevedec:shapes")
    assert config.encoder.image_size == (48, 48)
    assert pv.Captioner.from_pretrained("purevedec:shapes") is not None
    with pytest.raises(pv.ModelNotFound, match=r"purevedec:nope.*bundled: purevedec:shapes"):
        pv.load("purevedec:nope")
    with pytest.raises(pv.ModelNotFound, match="not a bundled model"):
        pv.load("purevedec:../bundled/shapes")


def test_checkpoint_is_complete_and_small():
    names = {p.name for p in BUNDLED.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "preprocessor_config.json"} <= names
    assert sum(p.stat().st_size for p in BUNDLED.iterdir()) <= 8 * 2**20


@pytest.fixture(scope="module")
def fresh_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fresh")
    truth = {}
    for i in range(FRESH_SCENES):
        s = scene(FRESH_STREAM, i)
        name = f"{i:04d}.png"
        s.image.save(folder / name)
        truth[name] = s.caption
    return folder, truth


def test_accurate_and_equal_to_transformers(fresh_folder):
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel
    folder, truth = fresh_folder
    ours = _cli_captions([str(folder), "--batch-size", "50"])
    model = VisionEncoderDecoderModel.from_pretrained(BUNDLED).eval()
    processor, tokenizer = AutoImageProcessor.from_pretrained(BUNDLED), AutoTokenizer.from_pretrained(BUNDLED)
    names = sorted(truth)
    theirs = {}
    for start in range(0, len(names), 50):
        chunk = names[start:start + 50]
        pixels = processor([Image.open(folder / n) for n in chunk], return_tensors="pt").pixel_values
        with torch.no_grad():
            ids = model.generate(pixels)
        theirs.update(zip(chunk, tokenizer.batch_decode(ids, skip_special_tokens=True)))
    assert ours == theirs
    accuracy = np.mean([ours[n] == truth[n] for n in names])
    assert accuracy >= 0.95, f"exact match {accuracy:.3f} on {len(names)} fresh scenes"


def test_examples_are_rendered_by_the_generator():
    rows = [json.loads(line) for line in (EXAMPLES / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    for row in rows:
        stream, index = map(int, re.fullmatch(r"scene-(\d+)-(\d+)\.png", row["image"]).groups())
        s = scene(stream, index)
        from PIL import Image
        assert np.array_equal(np.asarray(Image.open(EXAMPLES / row["image"])), np.asarray(s.image))
        assert row["caption"] == s.caption


def test_readme_first_command_captions_the_examples_offline(tmp_path):
    line = (ROOT / "README.md").read_text().splitlines()[0].strip()
    command = line.split("  #")[0].split(" && ")[-1]          # after the set-up steps
    assert command.startswith(".venv/bin/purevedec caption") and "purevedec:shapes" in command
    exe = os.path.join(os.path.dirname(sys.executable), "purevedec")
    # the console script of this environment, else (not installed as a script) the same entry point
    entry = [exe] if os.path.exists(exe) else [sys.executable, "-m", "purevedec.commands"]
    argv = [*entry, *command.split()[1:]]
    # offline: the hub is switched off and any connection attempt goes to a dead proxy
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "PUREVEDEC_COMPILE_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    printed = dict(line.split("\t") for line in run.stdout.splitlines())
    truth = {json.loads(r)["image"]: json.loads(r)["caption"] for r in (EXAMPLES / "captions.jsonl").read_text().splitlines()}
    assert {os.path.basename(k): v for k, v in printed.items()} == truth


def test_train_shapes_command_writes_a_loadable_checkpoint(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    code = main(["train-shapes", "--out", str(tmp_path), "--steps", "3", "--batch-size", "4", "--warmup-steps", "1",
                 "--eval-every", "2", "--eval-scenes", "4", "--final-scenes", "4", "--no-progress"], out, err)
    assert code == 0, err.getvalue()
    report = json.loads(out.getvalue().splitlines()[-1])
    assert report["steps"] == 3 and report["scenes_seen"] == 12 and 0.0 <= report["test_exact_match"] <= 1.0
    events = [json.loads(line)["event"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert events.count("eval") == 2 and events[-1] == "test"
    params, config = pv.load(tmp_path)
    assert pv.load_tokenizer(tmp_path).decode([4, 5, 11, 2], skip_special_tokens=True) == "a red circle"
    assert (tmp_path / "training.png").stat().st_size > 0


def test_captioner_repr_is_one_short_line():
    from safetensors.numpy import load_file
    from purevedec.checkpoints.bundled import bundled_dir
    stored = load_file(os.path.join(bundled_dir("purevedec:shapes"), "model.safetensors"))
    count = sum(a.size for a in stored.values())
    text = repr(pv.Captioner.from_pretrained("purevedec:shapes"))
    assert text == (f"Captioner(vit encoder + gpt2 decoder, {count / 1e6:.1f}M params, image 48x48, "
                    "weights float32, compute float32)")
    assert str(pv.Captioner.from_pretrained("purevedec:shapes")) == text


def test_tokenizer_repr_is_one_short_line():
    from purevedec.checkpoints.bundled import bundled_dir
    vocab = json.load(open(os.path.join(bundled_dir("purevedec:shapes"), "tokenizer.json")))["model"]["vocab"]
    text = repr(pv.load_tokenizer(bundled_dir("purevedec:shapes")))
    assert text == f"TextTokenizer(WordLevel, {len(vocab)} tokens, cleanup=False)"
