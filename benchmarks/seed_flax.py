"""Seed-implementation benchmark: transformers 4.57's FlaxVisionEncoderDecoderModel, jitted.

Runs in the side venv made by benchmarks/seed_env.sh (transformers 4.57.3, flax 0.7.0, jax 0.4.13),
never in the main one, and imports nothing from purevedec:

    .seed-venv/bin/python benchmarks/seed_flax.py CHECKPOINT_DIR --out seed.json \
        [--batches 1,8,32] [--beams 1,4] [--new-tokens 16] [--repeats 3] [--params const|arg]

CHECKPOINT_DIR is a transformers `save_pretrained` directory of a ViT + GPT-2 VisionEncoderDecoderModel
(config.json, model.safetensors, optional generation_config.json); the PyTorch weights are converted
on load (from_pt=True).

Inputs, so that other benchmarks can use identical ones: pixel values are
``numpy.random.RandomState(0).randn(max(batches), C, H, W).astype(float32)`` (C, H, W from the encoder
config) and batch ``b`` is its first ``b`` rows.

Generation is greedy (num_beams=1) or beam search, do_sample=False, max_new_tokens new tokens, with
everything else from the checkpoint's generation config (eos, pad, decoder start, early_stopping,
length_penalty). Flax always returns ``1 + max_new_tokens`` tokens per row (the decoder start token
first): rows that finished early are filled with pad_token_id after their eos, while PyTorch stops
at the step where every row has finished, so its output may be shorter. Greedy output is
token-identical to transformers 5's PyTorch generate. Beam search is not always: Flax 4.57's beam
search (the t5x port) returns the best *eos-terminated* hypothesis whenever one exists, lets any of
the 2*num_beams candidates finish, and never counts beams still running at max_length as finished,
whereas PyTorch treats every beam reaching max_length as a finished hypothesis, so PyTorch can return
a higher-scoring full-length row where Flax returns a shorter one ending in eos.

Timings: ``first_s`` is the first call of the jitted function (trace + compile + run), ``warm_s``
the fastest of ``repeats`` further calls; every call ends with block_until_ready.

``--params const`` (default) closes the jitted functions over the weights, which jax 0.4.13 embeds
in the executable as constants; ``--params arg`` passes them as jit arguments (HF's Flax examples'
pattern). With jax 0.4.13 on CPU the latter is about 5x slower at full size (greedy, batch 1,
16 tokens: 9.4 s against 1.8 s warm), the weights apparently being carried through the generation
while_loop, so the default is the faster, fairer baseline; it costs a longer first call (compile)
and more memory.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
import time
import warnings

warnings.filterwarnings("ignore", category=FutureWarning)  # 4.57 warns that Flax support is going away

import jax
import numpy as np
from transformers import FlaxVisionEncoderDecoderModel


def timed(fn, args, repeats):
    """(first call's seconds, fastest of ``repeats`` warm calls, first call's output)."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    warm = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        warm.append(time.perf_counter() - t)
    return first, min(warm), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--beams", default="1,4")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--params", choices=("const", "arg"), default="const",
                    help="weights as jit constants (default) or as jit arguments")
    ap.add_argument("--no-encoder", action="store_true", help="skip the encoder-only timings")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    beams = [int(b) for b in args.beams.split(",")]

    t = time.perf_counter()
    model = FlaxVisionEncoderDecoderModel.from_pretrained(args.checkpoint, from_pt=True)
    params = jax.block_until_ready(model.params)
    load_s = time.perf_counter() - t

    enc = model.config.encoder
    pixels = np.random.RandomState(0).randn(max(batches), enc.num_channels, enc.image_size,
                                            enc.image_size).astype(np.float32)

    def jitted(f):
        """f(params, pixels) jitted as a function of the pixels alone."""
        if args.params == "arg":
            fn = jax.jit(f)
            return lambda x: fn(params, x)
        return jax.jit(lambda x: f(params, x))

    result = {
        "versions": {"python": platform.python_version(), "device": str(jax.devices()[0]),
                     **{p: md.version(p) for p in ("transformers", "flax", "jax", "jaxlib", "numpy", "torch")}},
        "checkpoint": args.checkpoint,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "params": args.params,
        "generation_config": {k: getattr(model.generation_config, k) for k in (
            "decoder_start_token_id", "eos_token_id", "pad_token_id", "early_stopping", "length_penalty")},
        "load_s": load_s,
        "generate": [],
        "encoder": [],
    }

    for nb in beams:
        for b in batches:
            # A fresh jitted function per case (each shape compiles anyway), so that the previous
            # executable, with its embedded copy of the weights, can be freed.
            gen = jitted(lambda p, x: model.generate(
                x, params=p, max_new_tokens=args.new_tokens, num_beams=nb, do_sample=False).sequences)
            first, warm, seqs = timed(gen, (pixels[:b],), args.repeats)
            result["generate"].append({"beams": nb, "batch": b, "first_s": first, "warm_s": warm,
                                       "sequences": np.asarray(seqs).tolist()})
            print(f"generate beams={nb} batch={b}: first {first:.3f}s warm {warm:.4f}s", flush=True)

    if not args.no_encoder:
        for b in batches:
            encode = jitted(lambda p, x: model.encode(x, params=p).last_hidden_state)
            first, warm, _ = timed(encode, (pixels[:b],), args.repeats)
            result["encoder"].append({"batch": b, "first_s": first, "warm_s": warm})
            print(f"encoder batch={b}: first {first:.3f}s warm {warm:.4f}s", flush=True)

    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
