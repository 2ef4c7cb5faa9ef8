"""The OCR section of the suite: TrOCR at trocr-base's shapes against transformers, same run.

The subject is a random VisionEncoderDecoder with trocr-base's shapes (ViT-B/16 at 384 px: 577
tokens, no qkv bias; a TrOCR decoder of 12 layers, width 1024, 16 heads, vocabulary 50265;
tests/ocr_models.py: FULL_ENCODER, FULL_TROCR), built and saved in the run. Both libraries read
a batch of text-line crops (N(0,1) pixels) and decode ``tokens`` new tokens greedily and with
4 beams; the result is line crops per second, each cell's time over the machine's bound (the
same cost model as the captioning rows: benchmarks/costs.py), and whether purevedec is ahead.

    python -m benchmarks.run --only ocr [--ocr-batches 1,16] [--ocr-tokens 24] [--dtypes float32,bfloat16]

``--ocr-subject manga-ocr`` runs the same rows on kha-white/manga-ocr-base's shapes instead: ViT-B/16
at 224 and a 2-layer BERT decoder (width 768, 12 heads, 6144 characters; tests/bert_models.py:
MANGA_ENCODER, MANGA_DECODER), random weights, with manga-ocr's generation defaults as its config
gives them to both libraries (no-repeat 3, length penalty 2, early stopping; "beam-4" is its own
num_beams 4).
"""

from __future__ import annotations

import os
import sys

import jax

import purevedec as pv

from . import costs, speed
from .fidelity import token_agreement

FULL_NAME = "trocr-base shapes (334M), random weights"
TINY_NAME = "tiny random TrOCR"
MANGA_FULL_NAME = "manga-ocr-base shapes (ViT-B 224 + 2-layer BERT), random weights"
MANGA_TINY_NAME = "tiny random ViT + BERT (manga-ocr options)"
SUBJECTS = ("trocr", "manga-ocr")


def reference(tiny: bool, subject: str = "trocr"):
    """The torch model both libraries run: trocr-base's or manga-ocr-base's shapes, or a tiny
    one (--tiny). Weights N(0, 0.05) at full size, so that activations stay in range."""
    if subject == "manga-ocr":
        return _manga_reference(tiny)
    from tests.ocr_models import FULL_ENCODER, FULL_TROCR, make_ocr_reference
    if tiny:
        return make_ocr_reference(seed=0, scale=0.6)
    return make_ocr_reference(seed=0, scale=0.05, enc_base=FULL_ENCODER, dec_base=FULL_TROCR)


def _manga_reference(tiny: bool):
    # tests/bert_models.py imports its sibling modules by their plain names, as pytest runs them
    tests_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    if tests_dir not in sys.path:
        sys.path.append(tests_dir)
    from tests.bert_models import MANGA_DECODER, MANGA_ENCODER, MANGA_GENERATION, make_bert_reference
    shapes = {} if tiny else dict(enc_base=MANGA_ENCODER, dec_base=MANGA_DECODER)
    model = make_bert_reference("bert", "vit", seed=0, scale=0.6 if tiny else 0.05, **shapes)
    for k, v in MANGA_GENERATION.items():
        if k != "max_length":  # each cell asks for its own number of new tokens
            setattr(model.generation_config, k, v)
    return model


def _targets(cells: list[dict]) -> list[dict]:
    """The issue's goal: ahead of transformers in every cell (time ratio below 1)."""
    return [dict(name=f"ocr {c['workload']} b{c['batch']} {c['dtype']} time vs transformers",
                 value=c["pv_s"] / c["hf_s"], goal="< 1.0x", met=bool(c["pv_s"] < c["hf_s"])) for c in cells]


def run_section(tiny: bool, limits: dict, workdir: str, *, batches, dtypes, tokens: int, log=print,
                subject: str = "trocr") -> dict:
    """Builds the subject in ``workdir``, times both libraries, and returns the section's record:
    ``cells`` (one per workload, batch and dtype, with ``pv_lines_per_s``/``hf_lines_per_s``
    and the bounds), ``fidelity`` (fp32 tokens equal to transformers per cell) and ``targets``."""
    manga = subject == "manga-ocr"
    name = (MANGA_TINY_NAME if tiny else MANGA_FULL_NAME) if manga else (TINY_NAME if tiny else FULL_NAME)
    log(f"OCR: building {name} ...")
    model = reference(tiny, subject)
    path = os.path.join(workdir, subject)
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
