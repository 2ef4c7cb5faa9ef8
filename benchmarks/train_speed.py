"""Training speed and memory: purevedec's jitted train step against transformers + torch.optim.AdamW,
on the same random model and the same batches.

    python -m benchmarks.train_speed [--tiny] [--batches 8,32] [--dtypes float32,bfloat16] [--out DIR]
    python -m benchmarks.run --only train [...]

Both sides do the same update: the captioning loss of 16-token labels, its gradients, global-norm
clipping at 1.0, AdamW (weight decay 0.01 on all but biases and layer norms, lr 5e-5), with float32
master weights; bf16 is purevedec's ``dtype="bfloat16"`` against torch's CPU autocast to bf16. Both
train with dropout on (the model's config rates). Remat is purevedec's per-layer ``jax.checkpoint``
against transformers' ``gradient_checkpointing_enable()``.

Each (library, batch, dtype, remat) runs in a fresh process (``python -m benchmarks.train_speed
child ...``), so its peak RSS is its own: VmHWM above the RSS after imports, so it counts the
loaded model, gradients, optimizer moments and activations. The first ``--warmup`` steps (JAX's
compilation, torch's allocator warm-up) are not timed; images/s is the batch over the median of
the timed steps. The two libraries of a cell run back to back, so machine load hits both alike.
purevedec's children also report XLA's memory analysis of the compiled step with and without
remat (compile only): the temp buffers are the activations and intermediates the step holds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.process import reset_peak, status_kb  # noqa: E402  (peak RSS of a fresh child)

LEARNING_RATE, WEIGHT_DECAY, MAX_GRAD_NORM, TOKENS = 5e-5, 0.01, 1.0, 16
MB = 2 ** 20


def batch_arrays(config_path: str, batch: int):
    """(pixels [B,C,H,W] float32, labels [B,T] int32): N(0,1) pixels and uniform token ids from
    fixed seeds, read from the checkpoint's config.json (no library needed)."""
    import numpy as np
    with open(os.path.join(config_path, "config.json")) as f:
        cfg = json.load(f)
    enc, dec = cfg["encoder"], cfg["decoder"]
    size = enc.get("image_size", 224)
    pixels = np.random.RandomState(0).randn(batch, enc.get("num_channels", 3), size, size).astype(np.float32)
    labels = np.random.RandomState(1).randint(0, dec["vocab_size"], (batch, TOKENS)).astype(np.int32)
    return pixels, labels


def _timed_steps(step, warmup: int, steps: int) -> tuple[list[float], list[float], list[float]]:
    """(warm-up step seconds, timed step seconds, losses of every step); ``step()`` blocks."""
    times, losses = [], []
    for _ in range(warmup + steps):
        t = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t)
    return times[:warmup], times[warmup:], losses


def _purevedec(args) -> dict:
    import jax
    import jax.numpy as jnp
    jnp.zeros(1).block_until_ready()  # backend up before the baseline
    import purevedec as pv
    from purevedec.training.optim import TrainConfig
    from purevedec.training.step import init_state, train_step
    reset_peak()
    base = status_kb("VmRSS:")
    params, _ = pv.load(args.model)
    pixels, labels = batch_arrays(args.model, args.batch)
    pixels, labels = jnp.asarray(pixels), jnp.asarray(labels)
    cfg = TrainConfig(learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM,
                      dtype=args.dtype, remat=args.remat, schedule="constant")
    state = init_state(params, cfg, 0)
    del params
    # make_train_step's program (train_step jitted with cfg static, the state donated), lowered
    # here so that XLA's memory analysis describes the very executable that is timed.
    jitted = jax.jit(train_step, static_argnames=("cfg",), donate_argnums=(0,))
    t = time.perf_counter()
    compiled = jitted.lower(state, pixels, labels, None, cfg=cfg).compile()
    compile_s = time.perf_counter() - t
    temp = {args.remat: compiled.memory_analysis().temp_size_in_bytes}
    if args.both_remat:  # the other variant, compiled only (no steps run)
        other = cfg.replace(remat=not args.remat)
        temp[not args.remat] = jitted.lower(state, pixels, labels, None, cfg=other).compile() \
            .memory_analysis().temp_size_in_bytes
    box = [state]

    def step():
        box[0], metrics = compiled(box[0], pixels, labels, None)
        return float(metrics.loss)  # blocks until the step is done
    warm, timed, losses = _timed_steps(step, args.warmup, args.steps)
    return dict(base_kb=base, peak_kb=status_kb("VmHWM:"), warmup_s=warm, step_s=timed, losses=losses,
                compile_s=compile_s, temp_bytes={("remat" if k else "plain"): v for k, v in temp.items()})


def _decays(name: str) -> bool:
    """torch's side of purevedec's weight-decay mask: no decay on biases and layer norms."""
    return not (name.endswith(".bias") or "norm" in name or ".ln_" in name)


def _transformers(args) -> dict:
    import torch
    from transformers import VisionEncoderDecoderModel
    torch.zeros(1)
    reset_peak()
    base = status_kb("VmRSS:")
    model = VisionEncoderDecoderModel.from_pretrained(args.model)
    model.set_attn_implementation("sdpa")  # its default, fastest attention
    model.train()
    if args.remat:
        model.gradient_checkpointing_enable()
    named = list(model.named_parameters())  # tied weights appear once
    groups = [{"params": [p for n, p in named if _decays(n)], "weight_decay": WEIGHT_DECAY},
              {"params": [p for n, p in named if not _decays(n)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LEARNING_RATE)
    pixels, labels = (torch.from_numpy(a) for a in batch_arrays(args.model, args.batch))
    labels = labels.long()
    bf16 = args.dtype == "bfloat16"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(pixel_values=pixels, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        opt.step()
        return float(loss)
    warm, timed, losses = _timed_steps(step, args.warmup, args.steps)
    return dict(base_kb=base, peak_kb=status_kb("VmHWM:"), warmup_s=warm, step_s=timed, losses=losses)


def run_child(lib: str, model: str, *, batch: int, dtype: str, remat: bool, warmup: int, steps: int,
              both_remat: bool = False, tunables: str = "") -> dict:
    """One subject in a fresh interpreter: images/s (median timed step), peak RSS MB above the
    post-import baseline, the losses, and (purevedec) XLA's temp bytes. ``tunables``: the
    child's GLIBC_TUNABLES (both libraries get the same)."""
    cmd = [sys.executable, "-m", "benchmarks.train_speed", "child", lib, model, "--batch", str(batch),
           "--dtype", dtype, "--warmup", str(warmup), "--steps", str(steps)]
    cmd += (["--remat"] if remat else []) + (["--both-remat"] if both_remat else [])
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "GLIBC_TUNABLES": tunables}
    start = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{lib} b{batch} {dtype} remat={remat} child failed: "
                           f"{done.stderr.strip().splitlines()[-3:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    median = statistics.median(r["step_s"])
    return {**r, "images_per_s": batch / median, "median_step_s": median,
            "peak_mb": (r["peak_kb"] - r["base_kb"]) / 1024, "process_s": time.time() - start}


def _cell_rows(args) -> list[tuple[int, str, bool]]:
    """Batch by batch (a run cut short keeps whole batches): the dtypes, then the remat cells."""
    return [(b, d, remat) for b in args.batches
            for d, remat in [(d, False) for d in args.dtypes] + [(d, True) for bb, d in args.remat_cells if bb == b]]


def measure(args, model_dir: str, log, partial=lambda res: None) -> dict:
    """Every (batch, dtype, remat) cell, both libraries back to back; XLA's temp bytes with and
    without remat wherever both programs were compiled. ``partial`` gets the results so far after
    each cell (a long run that is cut short keeps its finished cells)."""
    cells, temps = [], {}
    for batch, dtype, remat in _cell_rows(args):
        steps = args.steps_large if batch >= 32 else args.steps
        kw = dict(batch=batch, dtype=dtype, remat=remat, warmup=args.warmup, steps=steps, tunables=args.tunables)
        both = not remat and (batch, dtype) in args.xla_remat_cells
        pv_r = run_child("purevedec", model_dir, both_remat=both, **kw)
        hf_r = run_child("transformers", model_dir, **kw)
        cell = dict(batch=batch, dtype=dtype, remat=remat, steps=steps, purevedec=pv_r, transformers=hf_r,
                    ratio=pv_r["images_per_s"] / hf_r["images_per_s"])
        cells.append(cell)
        temps.setdefault((batch, dtype), {}).update(pv_r["temp_bytes"])
        log(f"  b{batch} {dtype}{' remat' if remat else ''}: purevedec {pv_r['images_per_s']:.3g} img/s "
            f"(peak {pv_r['peak_mb']:.0f} MB), transformers {hf_r['images_per_s']:.3g} img/s "
            f"(peak {hf_r['peak_mb']:.0f} MB), ratio {cell['ratio']:.2f}x")
        partial(dict(cells=cells, xla=_xla_rows(temps)))
    return dict(cells=cells, xla=_xla_rows(temps))


def _xla_rows(temps: dict) -> list[dict]:
    return [dict(batch=b, dtype=d, plain_mb=t["plain"] / MB, remat_mb=t["remat"] / MB,
                 saved_mb=(t["plain"] - t["remat"]) / MB) for (b, d), t in temps.items() if len(t) == 2]


def markdown(res: dict) -> str:
    from benchmarks import report
    rows = []
    for c in res["cells"]:
        p, h = c["purevedec"], c["transformers"]
        rows.append([c["batch"], c["dtype"], "yes" if c["remat"] else "no", p["images_per_s"], h["images_per_s"],
                     f"{c['ratio']:.2f}x", p["peak_mb"], h["peak_mb"], p["losses"][0], h["losses"][0]])
    speed = report.table(["batch", "dtype", "remat / checkpointing", "purevedec img/s", "transformers img/s",
                          "ratio", "purevedec peak RSS MB", "transformers peak RSS MB", "purevedec first loss",
                          "transformers first loss"], rows)
    xla = report.table(["batch", "dtype", "XLA temp MB", "with remat MB", "saved by remat MB"],
                       [[x["batch"], x["dtype"], x["plain_mb"], x["remat_mb"], x["saved_mb"]] for x in res["xla"]])
    return "\n\n".join([
        f"## Training speed and memory ({res['model']})",
        f"One AdamW step (weight decay {WEIGHT_DECAY}, clip {MAX_GRAD_NORM}, {TOKENS}-token labels, dropout on, "
        f"float32 master weights; bf16: purevedec dtype=bfloat16, torch CPU autocast). Images/s: the batch over the "
        f"median of {res['steps']} timed steps ({res['steps_large']} at batch 32+) after {res['warmup']} untimed; "
        f"each library and cell in a fresh process (peak RSS: VmHWM above the post-import RSS: model, gradients, "
        f"moments, activations). Ratio: purevedec / transformers images/s (above 1: purevedec is faster). "
        f"{res['cpu_count']} CPUs; section took {res['seconds']:.0f} s. "
        + (f"Both libraries ran with GLIBC_TUNABLES={res['tunables']} (what `purevedec train` sets for itself)."
           if res.get("tunables") else "Both libraries ran without GLIBC_TUNABLES (`purevedec train` would add "
           "glibc.malloc.hugetlb=1 for itself: --huge-pages)."),
        speed, "### Activation memory that remat saves (XLA memory analysis of the compiled step)", xla]) + "\n"


def _parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (checks the section itself)")
    ap.add_argument("--quick", action="store_true", help="batch 8 only, one timed step")
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--remat-cells", default="8:float32,32:float32",
                    help="BATCH:DTYPE cells also run with remat / gradient checkpointing ('' for none)")
    ap.add_argument("--xla-remat-cells", default="",
                    help="BATCH:DTYPE cells whose remat program is also compiled (not run) for XLA's memory analysis")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps below batch 32")
    ap.add_argument("--steps-large", type=int, default=2, help="timed steps at batch 32 and above")
    ap.add_argument("--huge-pages", action="store_true",
                    help="both libraries run with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (purevedec/training/huge_pages.py)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "runs", "last"))
    args = ap.parse_args(argv)
    from purevedec.training.huge_pages import TUNABLE
    args.tunables = f"{TUNABLE}=1" if args.huge_pages else ""
    if args.quick:
        args.batches, args.steps, args.steps_large, args.remat_cells = "8", 1, 1, "8:float32"
        args.xla_remat_cells = ""
    args.batches = [int(b) for b in args.batches.split(",")]
    args.dtypes = args.dtypes.split(",")
    args.remat_cells, args.xla_remat_cells = (
        [(int(b), d) for b, d in (c.split(":") for c in cells.split(",") if c)]
        for cells in (args.remat_cells, args.xla_remat_cells))
    return args


def main(argv=None) -> dict:
    """Runs the section; writes train.json and train.md into --out; returns the results."""
    args = _parse(argv)
    from tests.models import make_full_reference, make_reference
    log = lambda s: print(s, flush=True)  # noqa: E731
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)

    def write(res: dict) -> dict:
        res.update(model="tiny random" if args.tiny else "vit-gpt2 shapes (239M), random weights",
                   warmup=args.warmup, steps=args.steps, steps_large=args.steps_large, cpu_count=os.cpu_count(),
                   tunables=args.tunables,
                   seconds=time.time() - t0)
        with open(os.path.join(args.out, "train.json"), "w") as f:
            json.dump(res, f, indent=1)
        with open(os.path.join(args.out, "train.md"), "w") as f:
            f.write(markdown(res))
        return res
    with tempfile.TemporaryDirectory() as model_dir:
        model = make_reference() if args.tiny else make_full_reference()
        model.save_pretrained(model_dir)
        del model
        log("training speed and memory ...")
        res = write(measure(args, model_dir, log, write))
    log(markdown(res))
    return res


def _child(argv) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("lib", choices=["purevedec", "transformers"])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], required=True)
    ap.add_argument("--remat", action="store_true")
    ap.add_argument("--both-remat", action="store_true")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    if args.lib == "purevedec":
        sys.modules["torch"] = None  # purevedec trains without torch: prove it by hiding it
    print(json.dumps(_purevedec(args) if args.lib == "purevedec" else _transformers(args)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        _child(sys.argv[2:])
    else:
        main()
