"""The end-to-end job (issue 14): caption a folder of JPEGs of mixed sizes, purevedec's CLI
against transformers doing the same job the way its docs show, each in a fresh process.

- The folder: ``make_folder`` writes photo-like JPEGs (gradients, smooth colour blobs and
  sensor-like noise) whose long side is log-uniform in 320..4000 px, in a few aspect ratios.
- purevedec: ``python -m purevedec caption FOLDER --batch-size B --dtype D ...`` with a
  compilation cache that an earlier run over B of the images has filled (a user's second run:
  programs depend on the batch shape only, and the last batch is padded to it).
- transformers: ``python -m benchmarks.folder_speed transformers ...`` in one process: PIL
  opens each file, the checkpoint's image processor makes the batch, ``generate`` then
  ``batch_decode`` (the documented recipe), batch after batch, each batch's lines printed.

Both print a line per file as soon as its batch is done. The parent timestamps every line, so a
run gives: images/s of the whole job (file count / process start to last line, imports and
loading included), the steady rate after the first batch, and the time to the first caption.
Both generate greedily the same number of new tokens (``tokens``), from the same checkpoint.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASPECTS = (1.0, 4 / 3, 3 / 2, 16 / 9, 3 / 4, 2 / 3)


def photo_like(rng: np.random.Generator, long_side: int) -> np.ndarray:
    """[H,W,3] uint8: a colour gradient, smooth random blobs (a coarse random grid upsampled
    bicubically) and Gaussian-like noise, so JPEG has real texture to code and decode."""
    from PIL import Image
    aspect = ASPECTS[rng.integers(len(ASPECTS))]
    w, h = (long_side, max(16, round(long_side / aspect))) if aspect >= 1 else (max(16, round(long_side * aspect)), long_side)
    coarse = rng.integers(0, 256, (max(2, h // 48), max(2, w // 48), 3), dtype=np.uint8)
    blobs = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.int16)
    ramp = (np.linspace(0, 120, w, dtype=np.float32)[None, :, None]
            + np.linspace(0, 80, h, dtype=np.float32)[:, None, None] * np.array([1, -1, 0.5], np.float32))
    noise = rng.integers(-14, 15, (h, w, 3), dtype=np.int16)
    return np.clip(blobs // 2 + ramp.astype(np.int16) + noise + 40, 0, 255).astype(np.uint8)


def make_folder(folder: str, count: int, *, seed: int = 0, sides: tuple[int, int] = (320, 4000),
                quality: int = 90) -> list[str]:
    """``count`` JPEGs ``img000.jpg``... in ``folder``; long sides log-uniform in ``sides``."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        side = int(round(math.exp(rng.uniform(math.log(sides[0]), math.log(sides[1])))))
        paths.append(os.path.join(folder, f"img{i:03d}.jpg"))
        Image.fromarray(photo_like(rng, side)).save(paths[-1], quality=quality)
    return paths


# --- the two jobs, each a child process ----------------------------------------------------------

def _env() -> dict:
    return {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
            "PYTHONUNBUFFERED": "1"}


def _timed_lines(cmd: list[str], expected: int, timeout: float) -> dict:
    """Run ``cmd``; the time of its first and last stdout line since the spawn, and the lines."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    lines, first = [], None
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if first is None:
                first = time.perf_counter() - start
        last = time.perf_counter() - start
        err = proc.stderr.read()
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0 or len(lines) != expected:
        tail = (err.strip().splitlines() or ["(no stderr)"])[-1]
        raise RuntimeError(f"{cmd[2]} job: exit {proc.returncode}, {len(lines)} of {expected} lines: {tail}")
    return {"first_caption_s": first, "job_s": last, "images_per_s": expected / last,
            "lines": lines}


def purevedec_job(model: str, folder: str, count: int, batch: int, dtype: str, tokens: int, cache: str,
                  timeout: float = 3600) -> dict:
    cmd = [sys.executable, "-m", "purevedec", "caption", folder, "--model", model, "--batch-size", str(batch),
           "--dtype", dtype, "--num-beams", "1", "--max-new-tokens", str(tokens), "--compile-cache", cache,
           "--no-progress"]
    return _timed_lines(cmd, count, timeout)


def transformers_job(model: str, folder: str, count: int, batch: int, dtype: str, tokens: int,
                     timeout: float = 3600) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.folder_speed", "transformers", model, folder, "--batch", str(batch),
           "--dtype", dtype, "--tokens", str(tokens)]
    return _timed_lines(cmd, count, timeout)


def _transformers_main(args) -> None:
    """transformers' documented captioning recipe, batch after batch, one line per file."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = VisionEncoderDecoderModel.from_pretrained(args.model, dtype=dtype).eval()
    processor, tokenizer = AutoImageProcessor.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model)
    files = sorted(os.path.join(args.folder, f) for f in os.listdir(args.folder) if f.endswith(".jpg"))
    for start in range(0, len(files), args.batch):
        names = files[start:start + args.batch]
        images = []
        for name in names:
            with Image.open(name) as im:
                images.append(im.convert("RGB"))
        pixels = processor(images=images, return_tensors="pt").pixel_values.to(dtype)
        with torch.no_grad():
            ids = model.generate(pixel_values=pixels, num_beams=1, max_new_tokens=args.tokens)
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        sys.stdout.write("".join(f"{n}\t{t.strip()}\n" for n, t in zip(names, texts)))
        sys.stdout.flush()


# --- the grid ------------------------------------------------------------------------------------

def _warm_cache(model, files, batch, dtype, tokens, cache) -> None:
    """Fill ``cache`` with the programs of this (batch, dtype): caption ``batch`` of the files."""
    with tempfile.TemporaryDirectory() as few:
        for f in files[:batch]:
            os.symlink(f, os.path.join(few, os.path.basename(f)))
        purevedec_job(model, few, min(batch, len(files)), batch, dtype, tokens, cache)


def _agreement(a: list[str], b: list[str]) -> float:
    """Fraction of files whose captions are equal (lines are PATH<TAB>CAPTION, in file order)."""
    split = lambda lines: dict(line.split("\t", 1) for line in lines)  # noqa: E731
    x, y = split(a), split(b)
    return sum(x[k] == y.get(k) for k in x) / max(1, len(x))


def run(model: str, folder: str, files: list[str], *, batches=(8, 16, 32), dtypes=("float32", "bfloat16"),
        tokens: int = 16, log=print) -> dict:
    """Every (library, dtype, batch) job over ``folder``; per dtype, each library's best batch."""
    runs = []
    with tempfile.TemporaryDirectory() as cache:
        for dtype in dtypes:
            for batch in batches:
                _warm_cache(model, files, batch, dtype, tokens, cache)
                pv = purevedec_job(model, folder, len(files), batch, dtype, tokens, cache)
                hf = transformers_job(model, folder, len(files), batch, dtype, tokens)
                same = _agreement(pv.pop("lines"), hf.pop("lines"))
                for lib, r in (("purevedec", pv), ("transformers", hf)):
                    runs.append(dict(r, library=lib, dtype=dtype, batch=batch))
                    log(f"  folder {lib} {dtype} b{batch}: {r['images_per_s']:.2f} images/s, "
                        f"first caption {r['first_caption_s']:.1f} s")
                runs[-2]["captions_equal"] = runs[-1]["captions_equal"] = same
    best = {}
    for dtype in dtypes:
        for lib in ("purevedec", "transformers"):
            mine = [r for r in runs if r["dtype"] == dtype and r["library"] == lib]
            best[f"{lib} {dtype}"] = max(mine, key=lambda r: r["images_per_s"])
    return {"images": len(files), "tokens": tokens, "runs": runs, "best": best}


def summary_rows(folder: dict) -> list[list]:
    """Per dtype: each library's best batch, images/s, the ratio, and the first-caption times."""
    rows = []
    for dtype in sorted({r["dtype"] for r in folder["runs"]}, reverse=True):
        pv, hf = folder["best"][f"purevedec {dtype}"], folder["best"][f"transformers {dtype}"]
        rows.append([dtype, pv["batch"], pv["images_per_s"], hf["batch"], hf["images_per_s"],
                     pv["images_per_s"] / hf["images_per_s"], pv["first_caption_s"], hf["first_caption_s"],
                     pv.get("captions_equal")])
    return rows


SUMMARY_HEADER = ["dtype", "purevedec best batch", "purevedec images/s", "transformers best batch",
                  "transformers images/s", "speed-up", "purevedec first caption s (warm cache)",
                  "transformers first caption s", "captions equal (same batch)"]
RUNS_HEADER = ["library", "dtype", "batch", "images/s (whole job)", "first caption s", "job s"]


def runs_rows(folder: dict) -> list[list]:
    return [[r["library"], r["dtype"], r["batch"], r["images_per_s"], r["first_caption_s"], r["job_s"]]
            for r in folder["runs"]]


def main() -> None:
    ap = argparse.ArgumentParser(description="the transformers side of the folder job (a child process)")
    ap.add_argument("lib", choices=["transformers"])
    ap.add_argument("model")
    ap.add_argument("folder")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tokens", type=int, default=16)
    _transformers_main(ap.parse_args())


if __name__ == "__main__":
    main()
