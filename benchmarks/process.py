"""Fresh-process measurements: cold start (process start -> first caption) and peak RSS of
loading and of generation, for purevedec and for transformers.

Each measurement runs ``python -m benchmarks.process LIB ...`` in a new interpreter; the child
prints one JSON line. Peak RSS is read from /proc (VmHWM), reset after imports so that the
load and generation peaks are measured from the same baseline."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(key)).split()[1])


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _purevedec(args) -> dict:
    import purevedec as pv
    if args.cache:
        pv.enable_compilation_cache(args.cache)
    import jax
    jax.numpy.zeros(1).block_until_ready()  # backend up before the baseline
    marks = {"imported": time.time()}
    reset_peak()
    base = status_kb("VmRSS:")
    cap = pv.Captioner.from_pretrained(args.model)
    marks["loaded"], load_peak = time.time(), status_kb("VmHWM:")
    text = cap.caption([args.image] * args.batch, num_beams=args.beams, max_new_tokens=args.tokens)
    return dict(marks, captioned=time.time(), base_kb=base, load_peak_kb=load_peak, peak_kb=status_kb("VmHWM:"),
                caption=text[0])


def _transformers(args) -> dict:
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel
    torch.zeros(1)
    marks = {"imported": time.time()}
    reset_peak()
    base = status_kb("VmRSS:")
    model = VisionEncoderDecoderModel.from_pretrained(args.model).eval()
    processor, tokenizer = AutoImageProcessor.from_pretrained(args.model), AutoTokenizer.from_pretrained(args.model)
    marks["loaded"], load_peak = time.time(), status_kb("VmHWM:")
    image = Image.open(args.image).convert("RGB")
    pixels = processor([image] * args.batch, return_tensors="pt").pixel_values
    with torch.no_grad():
        ids = model.generate(pixel_values=pixels, num_beams=args.beams, max_new_tokens=args.tokens)
    text = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return dict(marks, captioned=time.time(), base_kb=base, load_peak_kb=load_peak, peak_kb=status_kb("VmHWM:"),
                caption=text[0])


def run_child(lib: str, model: str, image: str, *, batch=1, beams=1, tokens=16, cache=None,
              python=sys.executable) -> dict:
    """Spawn one measurement; times are seconds since the spawn, memory MB above the baseline."""
    cmd = [python, "-m", "benchmarks.process", lib, model, image, "--batch", str(batch), "--beams", str(beams),
           "--tokens", str(tokens)] + (["--cache", cache] if cache else [])
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    start = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    end = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"{lib} child failed: {done.stderr.strip().splitlines()[-1:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    mb = lambda kb: (kb - r["base_kb"]) / 1024  # noqa: E731
    return {"import_s": r["imported"] - start, "load_s": r["loaded"] - r["imported"],
            "first_caption_s": r["captioned"] - start, "process_s": end - start,
            "load_peak_mb": mb(r["load_peak_kb"]), "peak_mb": mb(r["peak_kb"]), "caption": r["caption"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("lib", choices=["purevedec", "transformers"])
    ap.add_argument("model")
    ap.add_argument("image")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--beams", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--cache", default=None, help="purevedec: persistent compilation cache directory")
    args = ap.parse_args()
    if args.lib == "purevedec":
        sys.modules["torch"] = None  # purevedec must not need torch: prove it by hiding it
    print(json.dumps(_purevedec(args) if args.lib == "purevedec" else _transformers(args)))


if __name__ == "__main__":
    main()
