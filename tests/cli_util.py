"""What the captioning-CLI tests share: the tiny checkpoint fixture, image files, and ways to
run ``purevedec`` (in this process, or in a subprocess for pipes, FIFOs and signals)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from models import make_reference, save_captioning_checkpoint
from purevedec.commands import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = EOS = 0  # the tokenizer's <|endoftext|>: start, end and pad, as in GPT-2 captioners


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny captioning checkpoint (model, word-level tokenizer, preprocessor config), with
    scaled-up weights so that logits are decisive (no near-ties between implementations) and an
    untied head (a tied one mostly repeats its input token, whatever the image)."""
    model = make_reference(dec_kw={"bos_token_id": START, "eos_token_id": EOS, "pad_token_id": EOS,
                                   "tie_word_embeddings": False}, init_scale=3.0, seed=1)
    return model, save_captioning_checkpoint(model, tmp_path_factory.mktemp("ckpt"))


def make_images(folder, n, size=(20, 30)) -> list[str]:
    """``n`` random RGB PNGs ``im0.png``... in ``folder``, heights size[0] + i (RandomState(n))."""
    folder.mkdir(exist_ok=True)
    rs = np.random.RandomState(n)
    paths = []
    for i in range(n):
        paths.append(str(folder / f"im{i}.png"))
        Image.fromarray(rs.randint(0, 256, (size[0] + i, size[1], 3), np.uint8)).save(paths[-1])
    return paths


def caption_folder(folder, n: int = 8) -> str:
    """n random 16x16 images with captions of the tiny tokenizer's words ("t5 t9 ..."), in a
    captions.jsonl, as `purevedec train` reads them."""
    os.makedirs(folder, exist_ok=True)
    rs = np.random.RandomState(11)
    with open(os.path.join(folder, "captions.jsonl"), "w") as f:
        for i in range(n):
            Image.fromarray(rs.randint(0, 256, (16, 16, 3), np.uint8)).save(os.path.join(folder, f"im{i}.png"))
            f.write(json.dumps({"image": f"im{i}.png", "caption": " ".join(f"t{w}" for w in rs.randint(3, 50, 4))}) + "\n")
    return str(folder)


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so the progress bar shows."""
    def isatty(self):
        return True


def run_cli(argv, err=None) -> tuple[int, str, str]:
    """``purevedec ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), err or io.StringIO()
    code = main(argv, out, err)
    return code, out.getvalue(), err.getvalue()


def _command(args, cache: str | None) -> tuple[list[str], dict]:
    env = dict(os.environ)
    if cache is not None:  # the CLI's own cache under test: JAX's variable would take precedence
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        env["PUREVEDEC_COMPILE_CACHE"] = cache
    return [sys.executable, "-m", "purevedec", *args], env


def run_subprocess(*args, timeout=300, cache=None, **kw) -> subprocess.CompletedProcess:
    """``python -m purevedec ARGS`` in a subprocess: by default with the test run's compilation
    cache (conftest), else with $PUREVEDEC_COMPILE_CACHE set to ``cache`` and only that."""
    cmd, env = _command(args, cache)
    kw = {"capture_output": True, **kw}
    return subprocess.run(cmd, text=True, env=env, cwd=ROOT, timeout=timeout, **kw)


def start_subprocess(*args, **kw) -> subprocess.Popen:
    """``python -m purevedec ARGS`` started in a subprocess with the test run's compilation cache, stderr piped."""
    cmd, env = _command(args, None)
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env, cwd=ROOT, **kw)


def torch_pixels(path, paths):
    """The files through transformers' own image loading and the checkpoint's image processor."""
    from transformers import AutoImageProcessor
    from transformers.image_utils import load_image
    return AutoImageProcessor.from_pretrained(path)([load_image(p) for p in paths], return_tensors="pt").pixel_values
