"""Quick parity check: a random vit-gpt2-sized model (or a tiny one) in transformers and in
purevedec, teacher-forced, compared. The full suite is ``python -m benchmarks.run``.

    python benchmarks/parity.py [--tiny]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.fidelity import logits_parity  # noqa: E402
from tests.models import make_full_reference, make_reference  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiny", action="store_true", help="a tiny model instead of full vit-gpt2 size")
    args = ap.parse_args()
    t0 = time.time()
    model = make_reference() if args.tiny else make_full_reference()
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        results = logits_parity(model, d)
    print(f"purevedec vs transformers, random {'tiny' if args.tiny else 'vit-gpt2 (239M)'} model "
          f"({time.time() - t0:.0f} s)")
    for k, v in results.items():
        print(f"  {k:34s} {v:.3g}")
    ok = results["fp32 logits max |d|"] <= 1e-4
    print("parity:", "OK" if ok else "FAILED (fp32 logits differ by more than 1e-4)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
