"""Records what COCO's own caption scorers (pycocoevalcap: CIDEr-D and BLEU-4) give on a few
fixed corpora, into tests/data/coco_scorers.json.

pycocoevalcap is not a test dependency (its wheel carries 100 MB of Java jars), so the suite
compares purevedec's metrics with these recorded values on every run, and with the scorers
themselves where the package is installed. Run again (pip install pycocoevalcap) to re-record:

    python scripts/coco_scorer_values.py
"""

from __future__ import annotations

import json
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "coco_scorers.json")
WORDS = ("a", "dog", "cat", "runs")


def corpus(seed: int) -> tuple[list[str], list[list[str]]]:
    """12 predictions (one empty) and 1-4 references each, of words from WORDS: texts already in
    the scorers' form (lower case, no punctuation), so that tokenisation plays no part."""
    rng = random.Random(seed)
    sentence = lambda lo: " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, 12)))  # noqa: E731
    preds = [sentence(5) for _ in range(12)]
    preds[1] = ""
    refs = [[sentence(5) for _ in range(rng.randint(1, 4))] for _ in range(12)]
    return preds, refs


def scores(preds: list[str], refs: list[list[str]]) -> dict:
    """{"cider_d", "bleu_4"} of COCO's scorers (BLEU with the "closest" reference length)."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer
    from pycocoevalcap.cider.cider_scorer import CiderScorer
    cider, bleu = CiderScorer(n=4, sigma=6.0), BleuScorer(n=4)
    for p, rs in zip(preds, refs):
        cider += (p, list(rs))
        bleu += (p, list(rs))
    return {"cider_d": float(cider.compute_score()[0]), "bleu_4": float(bleu.compute_score(option="closest")[0][3])}


def main() -> int:
    from importlib.metadata import version
    cases = []
    for seed in range(20, 26):
        preds, refs = corpus(seed)
        cases.append({"predictions": preds, "references": refs, **scores(preds, refs)})
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"scorer": f"pycocoevalcap {version('pycocoevalcap')}", "cases": cases}, f, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
