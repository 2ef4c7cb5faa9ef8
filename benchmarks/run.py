"""The benchmark suite: purevedec against transformers (PyTorch) in one run, on the same inputs.

    python -m benchmarks.run [--quick] [--tiny] [--out DIR] [--publish]
    python -m benchmarks.run --model NAME_OR_DIR [--images FOLDER] [...]
    python -m benchmarks.run --only ocr [--ocr-batches 1,16] [--ocr-tokens 24]
    python -m benchmarks.run --only long [--long-kinds lines,pages] [--long-lines 64] [--long-slots 16] [...]
    python -m benchmarks.run --only documents [--doc-batches 1,4] [--doc-tokens 128] [--doc-page-tokens 256,1024]
    python -m benchmarks.run --only folder [--folder-images N] [--folder-batches 8,16,32]
    python -m benchmarks.run --only train [--tiny] [--quick] [train_speed options]

Six sections, all by default (--only picks one, --no-folder / --no-train leave one out):
captioning (vit-gpt2 shapes: fidelity, speed, cold start), OCR (benchmarks/ocr.py: TrOCR at
trocr-base's shapes, text-line crops per second), long (benchmarks/long.py: crops with mixed
token budgets through continuous batching, tokens/s), documents (benchmarks/documents.py: Donut
pages/s and Nougat tokens/s at their checkpoints' shapes), folder (benchmarks/folder_speed.py: captioning a
folder of JPEGs end to end) and training (benchmarks/train_speed.py: one AdamW step, images/s
and peak memory).

Without --model it measures random weights of vit-gpt2's shapes (--tiny: a tiny model). With
--model, any checkpoint purevedec loads (a local directory, or a Hub id from the local cache),
with its own image processor, tokenizer and generation defaults on both stacks; --images takes
the images from a folder (else the synthetic N(0,1) pixels). When transformers cannot load the
checkpoint, the run stops with one line naming what is missing (exit status 1, nothing written).

``--only train`` runs the training section alone (benchmarks/train_speed.py; options it does not
know go to that script); a full run ends with it unless ``--no-train`` (not with --model).

Writes results.json, results.md and chart.png into --out (default benchmarks/runs/last, not
tracked by git): fidelity, speed (with each result's
machine-derived lower bound), cold start, peak memory, the seed Flax implementation as a third
column when its side environment exists (benchmarks/seed_env.sh), and the targets met or missed.
The folder section (benchmarks/folder_speed.py) captions a generated folder of JPEGs end to end
with both command lines; ``--only folder`` runs it alone (results in folder.json and folder.md,
the README untouched). Only ``--publish`` changes tracked files: the results go to benchmarks/results and the tables
into the README's results block.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import purevedec as pv  # noqa: E402
from benchmarks import costs, documents, folder_speed, long, machine, ocr, process, report, speed, subject, train_speed  # noqa: E402
from benchmarks.results_md import folder_markdown, markdown  # noqa: E402
from benchmarks import targets  # noqa: E402
from benchmarks.fidelity import caption_agreement, logits_parity, token_agreement  # noqa: E402
from tests.models import make_full_reference, make_reference, save_captioning_checkpoint  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_PYTHON = os.path.join(ROOT, ".seed-venv", "bin", "python")
FIXED_SHAPES = ("ocr", "long", "documents", "train")  # sections of random weights at fixed shapes: no --model
SECTIONS = ("captioning", "ocr", "long", "documents", "folder", "train")


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None,
                    help="results folder (default benchmarks/runs/last; benchmarks/results with --publish)")
    ap.add_argument("--publish", action="store_true",
                    help="write the published results (benchmarks/results) and the README's results block")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (checks the suite itself)")
    ap.add_argument("--model", default=None, help="a checkpoint directory or Hub id (default: random weights)")
    ap.add_argument("--images", default=None, help="a folder of images (default: synthetic pixels)")
    ap.add_argument("--show", type=int, default=4, help="captions shown side by side")
    ap.add_argument("--quick", action="store_true", help="batches 1 and 8 only, no bf16 at batch 32")
    ap.add_argument("--batches", default=None, help="default 1,8,32 (training section: 8,32)")
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per generation")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--seed-python", default=SEED_PYTHON,
                    help="python of the seed Flax side environment (skipped when absent)")
    ap.add_argument("--no-process", action="store_true", help="skip cold start and peak memory")
    ap.add_argument("--only", choices=SECTIONS, default=None,
                    help="run one section: captioning (vit-gpt2 shapes), ocr (trocr-base shapes), long, documents "
                         "(Donut and Nougat shapes), folder (the end-to-end folder job) or train (training speed and memory); default all")
    ap.add_argument("--no-train", action="store_true", help="skip the training section")
    ap.add_argument("--no-folder", action="store_true", help="skip the end-to-end folder job")
    ap.add_argument("--ocr-batches", default="1,16", help="batches of text-line crops in the OCR section")
    ap.add_argument("--ocr-tokens", type=int, default=24, help="new tokens per generation in the OCR section")
    ap.add_argument("--ocr-subject", choices=ocr.SUBJECTS, default="trocr",
                    help="the OCR section's model: trocr-base's shapes (default) or manga-ocr-base's (ViT-B 224 + "
                         "a 2-layer BERT decoder, beams 4 with its config's generation defaults)")
    long.add_arguments(ap)
    ap.add_argument("--doc-batches", default="1,4", help="batches of pages in the documents section's Donut rows")
    ap.add_argument("--doc-tokens", type=int, default=128, help="tokens per Donut page (documents)")
    ap.add_argument("--doc-page-tokens", default="256,1024", help="tokens of the Nougat page rows (documents)")
    ap.add_argument("--folder-images", type=int, default=256, help="JPEGs in the folder job (default 256)")
    ap.add_argument("--folder-batches", default="8,16,32", help="batch sizes tried in the folder job")
    ap.add_argument("--folder-sides", default="320,4000", help="range of the JPEGs' long sides, px")
    ap.add_argument("--readme", default=None,
                    help="README whose results block gets the tables (default: this repository's README.md "
                         "with --publish, else none)")
    args, rest = ap.parse_known_args(argv)
    if rest and args.only != "train":
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    # Given explicitly, --batches and --dtypes apply to the training section too.
    args.train_args = rest + [f"--{k}={getattr(args, k)}" for k in ("batches", "dtypes")
                              if getattr(args, k) != ap.get_default(k)]
    args.batches = args.batches or "1,8,32"
    if args.out is None:
        args.out = os.path.join(ROOT, "benchmarks", "results" if args.publish else os.path.join("runs", "last"))
    if args.readme is None:
        args.readme = os.path.join(ROOT, "README.md") if args.publish else "none"
    return args


def _speed(model, path, config, args, log, images=None) -> list[dict]:
    """Both libraries, every dtype/workload/batch; merged into one record per cell."""
    params, _ = pv.load(path)
    return speed.compare(model, params, config, [int(b) for b in args.batches.split(",")], args.dtypes.split(","),
                         args.tokens, log, images)


_bounds = costs.bounds


def _seed(path, args, log) -> dict:
    """The seed Flax implementation, one fresh side-environment process per (batch, beams): its
    compiled programs embed the weights as constants (its fastest mode), ~4 GB each, so one
    process for the whole grid would not fit in memory. Batches above 8 are left out (a beam-4
    batch-32 compile alone takes minutes)."""
    if not os.path.exists(args.seed_python):
        return {"skipped": f"no side environment at {args.seed_python} (create it with benchmarks/seed_env.sh)"}
    merged = {"generate": [], "encoder": []}
    for batch in [b for b in args.batches.split(",") if int(b) <= 8]:
        for beams in (1, 4):
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                cmd = [args.seed_python, os.path.join(ROOT, "benchmarks", "seed_flax.py"), path, "--out", out.name,
                       "--batches", batch, "--beams", str(beams), "--new-tokens", str(args.tokens), "--repeats", "2"]
                done = subprocess.run(cmd + ([] if beams == 1 else ["--no-encoder"]), capture_output=True, text=True)
                if done.returncode != 0:
                    return {"skipped": "seed run failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]}
                part = json.load(open(out.name))
            log(f"  seed Flax b{batch} beams {beams}: " + ", ".join(f"{g['warm_s']:.3f} s" for g in part["generate"]))
            merged["generate"] += part["generate"]
            merged["encoder"] += part["encoder"]
            merged["versions"], merged["params"] = part["versions"], part["params"]
    return merged


def _merge_seed(cells, seed) -> None:
    runs = {("greedy" if g["beams"] == 1 else f"beam-{g['beams']}", g["batch"]): g for g in seed.get("generate", [])}
    runs.update({("encoder", e["batch"]): e for e in seed.get("encoder", [])})
    for c in cells:
        run = runs.get((c["workload"], c["batch"])) if c["dtype"] == "float32" else None
        if run:
            c["seed_s"], c["seed_first_s"] = run["warm_s"], run["first_s"]
            if "sequences" in run and "hf_sequences" in c:
                c["seed_agreement"] = token_agreement(run["sequences"], c["hf_sequences"])


def _processes(path, image, tokens, log) -> dict:
    """Cold start of both libraries (greedy, batch 1) and peak memory (that and beam-4 batch 8)."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        runs = [("purevedec, no compilation cache", "purevedec", dict()),
                ("purevedec, empty compilation cache", "purevedec", dict(cache=cache)),
                ("purevedec, warm compilation cache", "purevedec", dict(cache=cache)),
                ("transformers", "transformers", dict())]
        for name, lib, kw in runs:
            out[name] = process.run_child(lib, path, image, tokens=tokens, **kw)
            log(f"  {name}: first caption after {out[name]['first_caption_s']:.1f} s")
    for lib in ("purevedec", "transformers"):
        out[f"{lib} beam-4 batch 8"] = process.run_child(lib, path, image, batch=8, beams=4, tokens=tokens)
        log(f"  {lib} beam-4 b8 peak: {out[f'{lib} beam-4 batch 8']['peak_mb']:.0f} MB")
    return out


def _folder(path, args, workdir, log) -> dict:
    """The end-to-end folder job: generated JPEGs, purevedec's CLI against transformers' recipe."""
    folder = os.path.join(workdir, "folder")
    lo, hi = (int(x) for x in args.folder_sides.split(","))
    log(f"folder job: writing {args.folder_images} JPEGs ...")
    files = folder_speed.make_folder(folder, args.folder_images, sides=(lo, hi))
    out = folder_speed.run(path, folder, files, batches=[int(b) for b in args.folder_batches.split(",")],
                           dtypes=args.dtypes.split(","), tokens=args.tokens, log=log)
    out["sides"] = [lo, hi]
    return out


def _versions() -> dict:
    import jax
    import torch
    import transformers
    return {"purevedec": pv.__version__, "jax": jax.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": sys.version.split()[0]}


def _train_argv(args) -> list[str]:
    return args.train_args + ["--out", args.out] + (["--tiny"] if args.tiny else []) + (
        ["--quick"] if args.quick else [])


def _subject(args, workdir):
    """(reference model, checkpoint dir, identity): the user's checkpoint, else random weights
    saved into ``workdir``."""
    if args.model:
        path = subject.resolve(args.model)
        return subject.load_reference(path, args.model), path, subject.model_identity(args.model, path)
    model = make_reference(init_scale=2.0) if args.tiny else make_full_reference()
    save_captioning_checkpoint(model, workdir)
    return model, workdir, {"name": "tiny random" if args.tiny else "vit-gpt2 shapes (239M), random weights"}


def _images(args, path, config, workdir):
    """(purevedec's pixels, transformers' pixels, identity, one image file for the process runs)."""
    if args.images:
        files = subject.readable_images(subject.image_files(args.images), log=print)
        ours, theirs = subject.pixels_both(path, files)
        ident = subject.images_identity(args.images, files)
        ident["pixels max |d|"] = float(np.max(np.abs(ours - theirs))) if ours.shape == theirs.shape else None
        return ours, theirs, ident, files[0]
    from PIL import Image
    image = os.path.join(workdir, "image.png")
    Image.fromarray((np.random.RandomState(1).rand(240, 320, 3) * 255).astype(np.uint8)).save(image)
    px = speed.pixels(config, 2)
    return px, px, {"synthetic": "N(0,1) pixels from RandomState(0)", "count": 2}, image


def _captions(model, path, ours, theirs, tokens, show) -> dict:
    """Greedy and beam-4 captions of every image by both stacks (each on its own processor's
    pixels, with the checkpoint's generation defaults and ``tokens`` new tokens)."""
    import torch
    params, config = pv.load(path)
    pad = model.generation_config.pad_token_id
    pad = -1 if pad is None else pad
    tok_pv, tok_hf = subject.tokenizers(path)
    out = {}
    for beams in (1, 4):
        name = "greedy" if beams == 1 else f"beam-{beams}"
        a = np.asarray(pv.generate(params, ours, config, num_beams=beams, max_new_tokens=tokens).sequences)
        with torch.no_grad():
            b = model.generate(pixel_values=torch.tensor(theirs), num_beams=beams, max_new_tokens=tokens).numpy()
        agree = caption_agreement(a.tolist(), b.tolist(), pad)
        text = ((tok_pv.batch_decode(a[:show].tolist()), tok_hf.batch_decode(b[:show], skip_special_tokens=True))
                if tok_pv else ([str(r) for r in a[:show].tolist()], [str(r) for r in b[:show].tolist()]))
        out[name] = {**agree, "purevedec": text[0], "transformers": text[1]}
    return out


def _only_folder(args, log) -> dict:
    """``--only folder``: the folder job alone, written to folder.json and folder.md."""
    t0 = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        _, path, model_id = _subject(args, workdir)
        os.makedirs(args.out, exist_ok=True)
        folder = _folder(path, args, workdir, log)
        goals = targets.goals_apply(args, pv.load_config(path)) if args.model else True
    res = dict(model=model_id["name"], model_identity=model_id, date=datetime.date.today().isoformat(),
               versions=_versions(), folder=folder, targets=targets.targets([], {}, folder) if goals else [],
               seconds=time.time() - t0, **({} if goals else {"goals_note": targets.GOALS_NOTE}))
    with open(os.path.join(args.out, "folder.json"), "w") as f:
        json.dump(res, f, indent=1)
    text = "\n\n".join([f"# purevedec vs transformers: a folder ({res['model']}, {res['date']})",
                         "## Targets", report.targets_table(res["targets"]) if goals else targets.GOALS_NOTE,
                         *folder_markdown(folder)]) + "\n"
    with open(os.path.join(args.out, "folder.md"), "w") as f:
        f.write(text)
    log(text)
    log(f"wrote {args.out}/folder.json, folder.md in {time.time() - t0:.0f} s")
    return res


def _captioning(args, limits, workdir, log) -> tuple[dict, str]:
    """The captioning section (vit-gpt2 shapes, or the user's checkpoint): its part of the results,
    and the checkpoint directory (the folder job reuses it)."""
    model, path, model_id = _subject(args, workdir)
    config = pv.load_config(path)
    ours, theirs, images_id, image = _images(args, path, config, workdir)
    log("fidelity ...")
    fidelity = logits_parity(model, path, px=ours[:8])
    if "pixels max |d|" in images_id:
        fidelity["pixels max |d| (the two image processors)"] = images_id["pixels max |d|"]
    captions = _captions(model, path, ours, theirs, args.tokens, args.show)
    for name, c in captions.items():
        fidelity[f"{name} differing captions (of {c['images']} images)"] = c["differing captions"]
    log("speed ...")
    user_px = ours if args.images else None
    cells = _speed(model, path, config, args, log, user_px)
    _bounds(cells, config, limits, args.tokens)
    for c in cells:
        if "pv_sequences" in c and c["dtype"] == "float32":
            agree = token_agreement(c["pv_sequences"], c["hf_sequences"])
            fidelity[f"{c['workload']} b{c['batch']} tokens equal to transformers"] = agree["tokens"]
    log("seed Flax ...")
    seed = _seed(path, args, log) if not args.model else {"skipped": "not run on a user checkpoint (--model)"}
    _merge_seed(cells, seed)
    proc = {}
    if not args.no_process:
        log("fresh processes ...")
        proc = _processes(path, image, args.tokens, log)
    return dict(model=model_id["name"], model_identity=model_id, images=images_id, fidelity=fidelity,
                captions=captions, speed=cells, seed=seed, processes=proc,
                targets=targets.targets(cells, proc) if targets.goals_apply(args, config) else []), path


def _sections(args) -> tuple[str, ...]:
    """Every section (less --no-folder / --no-train), or the one --only names; with a user's
    checkpoint (--model) only the captioning and folder jobs run (on it)."""
    if args.model and args.only in FIXED_SHAPES:
        raise SystemExit(f"--only {args.only} measures random weights of fixed shapes; it takes no --model")
    chosen = SECTIONS if args.only is None else (args.only,)
    skipped = {"folder"} if args.no_folder else set()
    skipped |= {"train"} if args.no_train else set()
    skipped |= set(FIXED_SHAPES) if args.model else set()
    return tuple(s for s in chosen if s not in skipped)


def _chart_cells(res: dict) -> list[dict]:
    ocr_cells = res.get("ocr", {}).get("cells", [])
    return res.get("speed", []) + [dict(c, workload=f"ocr {c['workload']}") for c in ocr_cells]


def main(argv=None) -> dict:
    args = _args(argv)
    subject.quiet_third_party()
    if args.only == "train":
        return train_speed.main(_train_argv(args))
    if args.quick:
        args.batches = "1,8"
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.only == "folder":
        return _only_folder(args, log)
    t0 = time.time()
    sections = _sections(args)
    res = dict(date=datetime.date.today().isoformat(), versions=_versions(), tokens=args.tokens)
    with tempfile.TemporaryDirectory() as workdir:
        os.makedirs(args.out, exist_ok=True)
        log("machine limits ...")
        res["machine"] = limits = machine.measure(args.tiny)
        if "captioning" in sections:
            captioning, path = _captioning(args, limits, workdir, log)
            res.update(captioning)
        if "folder" in sections:
            res["folder"] = _folder(path, args, workdir, log)
        if "ocr" in sections:
            batches = [int(b) for b in args.ocr_batches.split(",")]
            res["ocr"] = ocr.run_section(args.tiny, limits, workdir, batches=batches, dtypes=args.dtypes.split(","),
                                         tokens=args.ocr_tokens, log=log, subject=args.ocr_subject)
        if "long" in sections:
            res.update(long.run_workloads(args, workdir, log))
        if "documents" in sections:
            res["documents"] = documents.run_section(
                args.tiny, limits, workdir, batches=[int(b) for b in args.doc_batches.split(",")],
                tokens=args.doc_tokens, page_tokens=[int(t) for t in args.doc_page_tokens.split(",")],
                dtypes=args.dtypes.split(","), log=log)
    if "train" in sections:
        res["training"] = train_speed.main(_train_argv(args))
    goals = not args.model or targets.goals_apply(args, pv.load_config(path))
    res["targets"] = (res.get("targets", []) + res.get("ocr", {}).get("targets", [])
                      + [t for k in ("long", "long_pages", "documents") for t in res.get(k, {}).get("targets", [])]
                      + (targets.targets([], {}, res["folder"]) if res.get("folder") and goals else []))
    if not goals:
        res["goals_note"] = targets.GOALS_NOTE
    res["seconds"] = time.time() - t0
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    text = markdown(res)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    report.chart(_chart_cells(res), os.path.join(args.out, "chart.png"))
    if args.readme != "none":
        report.update_readme(args.readme, text)
    log(text)
    log(f"wrote {args.out}/results.json, results.md, chart.png in {time.time() - t0:.0f} s")
    return res


if __name__ == "__main__":
    main()
