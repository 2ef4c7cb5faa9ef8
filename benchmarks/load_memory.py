"""Peak RSS of purevedec.load for the full-size vit-gpt2 in each weights format.

    python -m benchmarks.load_memory [--tiny]

Builds a random full-size model (nlpconnect/vit-gpt2-image-captioning's shapes), writes it
as safetensors and as a torch .bin, then loads each in a fresh subprocess and reports the
peak RSS growth of ``pv.load`` (beyond the RSS after imports) against the params' bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ru_maxrss survives fork+exec on Linux (the child would report the parent's peak), so the
# child resets its high-water mark through /proc/self/clear_refs and reads VmHWM instead.
_CHILD = """
import sys, json
sys.modules["torch"] = None
sys.path.insert(0, {root!r})
import jax, numpy as np, purevedec as pv
from purevedec.params import flatten

def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])

jax.numpy.zeros(1).block_until_ready()  # initialise the backend before the baseline
open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS to the current RSS
base = status("VmRSS:")
params, config = pv.load({path!r})
peak = status("VmHWM:")
sizes = [np.asarray(v).nbytes for v in flatten(params).values()]
print(json.dumps(dict(base_kb=base, peak_kb=peak, params=sum(sizes), largest=max(sizes))))
"""


def _measure(path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD.format(root=ROOT, path=path)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _write(model, root: str) -> dict[str, str]:
    import shutil
    from safetensors.torch import load_file
    import torch
    st = os.path.join(root, "safetensors")
    model.save_pretrained(st)
    binary = os.path.join(root, "bin")
    os.makedirs(binary)
    shutil.copy(os.path.join(st, "config.json"), binary)
    torch.save(load_file(os.path.join(st, "model.safetensors")), os.path.join(binary, "pytorch_model.bin"))
    return {"safetensors": st, "pytorch .bin": binary}


def main(tiny: bool = False) -> None:
    from tests.models import make_full_reference, make_reference
    model = make_reference() if tiny else make_full_reference()
    mb = 2 ** 20
    with tempfile.TemporaryDirectory() as root:
        paths = _write(model, root)
        del model
        print("| format | params MB | largest tensor MB | peak RSS growth MB | growth - params MB |")
        print("|---|---|---|---|---|")
        for name, path in paths.items():
            r = _measure(path)
            growth = (r["peak_kb"] - r["base_kb"]) * 1024
            print(f"| {name} | {r['params'] / mb:.1f} | {r['largest'] / mb:.1f} | {growth / mb:.1f} | "
                  f"{(growth - r['params']) / mb:.1f} |")


if __name__ == "__main__":
    main(tiny="--tiny" in sys.argv)
