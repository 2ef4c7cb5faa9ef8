"""Build a random full-size vit-gpt2 model with transformers, load it with purevedec, and print
how closely the two agree (fp32 logits, hidden states; bf16 relative error).

    python benchmarks/parity.py [--tiny]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax.numpy as jnp  # noqa: E402

import purevedec as pv  # noqa: E402
from benchmarks.reference import make_full_reference, make_reference  # noqa: E402


def measure(model, path, batch=2, steps=8) -> dict:
    import torch
    params, config = pv.load(path)
    h, w = config.encoder.image_size
    rng = np.random.RandomState(0)
    px = rng.randn(batch, config.encoder.num_channels, h, w).astype(np.float32)
    ids = rng.randint(0, config.decoder.vocab_size, (batch, steps)).astype(np.int32)
    with torch.no_grad():
        ref = model(pixel_values=torch.tensor(px), decoder_input_ids=torch.tensor(ids, dtype=torch.long),
                    output_hidden_states=True)
    out = pv.forward(params, px, ids, config, output_hidden_states=True)
    bf16 = np.asarray(pv.forward(params, px, ids, config, dtype=jnp.bfloat16))
    ref_logits = ref.logits.numpy()
    diff = lambda a, b: float(np.max(np.abs(np.asarray(a) - b.numpy())))
    return {
        "fp32 logits max |d|": float(np.max(np.abs(np.asarray(out.logits) - ref_logits))),
        "encoder hidden states max |d|": max(diff(a, b) for a, b in zip(out.encoder_hidden_states,
                                                                         ref.encoder_hidden_states)),
        "decoder hidden states max |d|": max(diff(a, b) for a, b in zip(out.decoder_hidden_states,
                                                                         ref.decoder_hidden_states)),
        "bf16 logits relative error": float(np.linalg.norm(bf16 - ref_logits) / np.linalg.norm(ref_logits)),
        "greedy next-token agreement": float(np.mean(np.argmax(out.logits, -1) == np.argmax(ref_logits, -1))),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true", help="a tiny model instead of full vit-gpt2 size")
    args = ap.parse_args()
    t0 = time.time()
    model = make_reference() if args.tiny else make_full_reference()
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        results = measure(model, d)
    print(f"purevedec vs transformers, random {'tiny' if args.tiny else 'vit-gpt2 (239M)'} model "
          f"({time.time() - t0:.0f} s)")
    for k, v in results.items():
        print(f"  {k:34s} {v:.3g}")
    ok = results["fp32 logits max |d|"] <= 1e-4
    print("parity:", "OK" if ok else "FAILED (fp32 logits differ by more than 1e-4)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
