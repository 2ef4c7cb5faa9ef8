"""The OCR section of the suite: TrOCR at trocr-base's shapes against transformers, same run.

The subject is a random VisionEncoderDecoder with trocr-base's shapes (ViT-B/16 at 384 px: 577
tokens, no qkv bias; a TrOCR decoder of 12 layers, width 1024, 16 heads, vocabulary 50265;
tests/ocr_models.py: FULL_ENCODER, FULL_TROCR), built and saved in the run. Both libraries read
a batch of text-line crops (N(0,1) pixels) and decode ``tokens`` new tokens greedily and with
4 beams; the result is line crops per second, each cell's time over the machine's bound (the
same cost model as the captioning rows: benchmarks/costs.py), and whether purevedec is ahead.

    python -m benchmarks.run --only ocr [--ocr-batches 1,16] [--ocr-tokens 24] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import os

import jax

import purevedec as pv

from . import costs, speed
from .fidelity import token_agreement

FULL_NAME = "trocr-base shapes (334M), random weights"
TINY_NAME = "tiny random TrOCR"


def reference(tiny: bool):
    """The torch model both libraries run: trocr-base's shapes, or a tiny one (--tiny).
    Weights N(0, 0.05) at full size, so that activations stay in range through 24 layers."""
    from tests.ocr_models import FULL_ENCODER, FULL_TROCR, make_ocr_reference
    if tiny:
        return make_ocr_reference(seed=0, scale=0.6)
    return make_ocr_reference(seed=0, scale=0.05, enc_base=FULL_ENCODER, dec_base=FULL_TROCR)


def _targets(cells: list[dict]) -> list[dict]:
    """The issue's goal: ahead of transformers in every cell (time ratio below 1)."""
    return [dict(name=f"ocr {c['workload']} b{c['batch']} {c['dtype']} time vs transformers",
                 value=c["pv_s"] / c["hf_s"], goal="< 1.0x", met=bool(c["pv_s"] < c["hf_s"])) for c in cells]


def run_section(tiny: bool, limits: dict, workdir: str, *, batches, dtypes, tokens: int, log=print) -> dict:
    """Builds the subject in ``workdir``, times both libraries, and returns the section's record:
    ``cells`` (one per workload, batch and dtype, with ``pv_lines_per_s``/``hf_lines_per_s``
    and the bounds), ``fidelity`` (fp32 tokens equal to transformers per cell) and ``targets``."""
    name = TINY_NAME if tiny else FULL_NAME
    log(f"OCR: building {name} ...")
    model = reference(tiny)
    path = os.path.join(workdir, "trocr")
    model.save_pretrained(path)
    params, config = pv.load(path)
    cells = speed.compare(model, params, config, batches, dtypes, tokens, log, with_encoder=False)
    costs.bounds(cells, config, limits, tokens)
    fidelity = {}
    for c in cells:
        c["pv_lines_per_s"], c["hf_lines_per_s"] = c["batch"] / c["pv_s"], c["batch"] / c["hf_s"]
        if c["dtype"] == "float32":
            agree = token_agreement(c["pv_sequences"], c["hf_sequences"])
            fidelity[f"{c['workload']} b{c['batch']} tokens equal to transformers"] = agree["tokens"]
    return dict(model=name, tokens=tokens, params=sum(x.size for x in jax.tree.leaves(params)),
                cells=cells, fidelity=fidelity, targets=_targets(cells))
