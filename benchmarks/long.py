"""The ``long`` section: mixed-length outputs through continuous batching, against transformers.

Two workloads (``--long-kinds``), random weights (--tiny: tiny ones):

- lines: the OCR section's TrOCR at trocr-base's shapes (benchmarks/ocr.py), 64 text-line crops
  with budgets drawn from 5-60 tokens, 16 slots;
- pages: the documents section's Nougat at nougat-base's shapes (benchmarks/documents.py), 8
  pages with budgets drawn from 200-2,000 tokens, 4 slots.

Each input (N(0,1) pixels) gets a token budget drawn uniformly from its range (seed 0), and EOS
is suppressed (min_new_tokens) so that both libraries generate exactly the budgets, greedily, fp32:

- purevedec: ``purevedec.generation.engine.stream`` with ``slots`` slots (each row stops at its
  budget; its slot takes the next crop): without drafts, with n-gram drafts of 4 tokens on every
  call (greedy speculative decoding; its tokens per decoder step and the fraction of draft tokens
  accepted are reported), and as it runs by default (``speculate="auto"``: drafting where it
  measures faster, generation/draft_policy.py), the row the target reads;
- transformers: batches of ``slots`` crops, each batch generating its longest budget (its best
  batching without continuous batching), in input order and sorted by budget (both reported).

Reported per side: useful tokens/s (the sum of the budgets over the wall time of a warm run,
encoder included), the time to the first record (input 0's tokens), and the fraction of each
crop's tokens equal between the two libraries.

    python -m benchmarks.run --only long [--long-kinds lines,pages] [--long-lines 64] [--long-slots 16]
        [--long-budgets 5,60] [--long-pages 8] [--long-page-slots 4] [--long-page-budgets 200,2000]
"""

from __future__ import annotations

import os
import time

import numpy as np

import purevedec as pv
from purevedec.generation.engine import stream

from . import documents, ocr


def draw_budgets(lines: int, low: int, high: int, seed: int = 0) -> list[int]:
    """Budgets uniform on [low, high] (both included)."""
    return [int(b) for b in np.random.RandomState(seed).randint(low, high + 1, lines)]


def _ours(params, pixels, budgets, slots: int, speculate=0) -> dict:
    t0 = time.perf_counter()
    first, seqs, steps, drafted = None, [], 0, 0
    for out in stream(params, pixels, budgets=budgets, slots=slots, min_new_tokens=max(budgets), speculate=speculate,
                      ngram=2):
        first = first if first is not None else time.perf_counter() - t0
        seqs.append(out.sequence[1:])
        steps, drafted = steps + out.steps, drafted + out.drafted
    tokens = sum(map(len, seqs))
    return dict(seconds=time.perf_counter() - t0, first_record_s=first, sequences=seqs,
                tokens_per_step=tokens / steps, drafts_accepted=(tokens - steps) / drafted if drafted else None)


def _theirs(model, pixels, budgets, slots: int, order) -> dict:
    import torch
    t0 = time.perf_counter()
    first, seqs = None, {}
    for start in range(0, len(order), slots):
        idx = order[start:start + slots]
        longest = max(budgets[i] for i in idx)
        with torch.no_grad():
            out = model.generate(pixel_values=torch.tensor(pixels[idx]), max_new_tokens=longest,
                                 min_new_tokens=longest).numpy()
        for row, i in zip(out, idx):
            seqs[i] = row[1:1 + budgets[i]]
        if first is None and 0 in seqs:
            first = time.perf_counter() - t0
    return dict(seconds=time.perf_counter() - t0, first_record_s=first, sequences=[seqs[i] for i in range(len(order))])


def _agreement(a: list, b: list) -> float:
    equal = sum(int(np.sum(np.asarray(x) == np.asarray(y))) for x, y in zip(a, b))
    return equal / max(1, sum(len(x) for x in a))


# Per workload: what an input is, its result's key and the options that size it.
SUBJECTS = {"lines": dict(what="text-line crops", key="long", inputs="long_lines", slots="long_slots",
                          budgets="long_budgets"),
            "pages": dict(what="pages", key="long_pages", inputs="long_pages", slots="long_page_slots",
                          budgets="long_page_budgets")}


def _subject(kind: str, tiny: bool):
    """(name, torch model) of a workload: TrOCR-base shapes for lines, Nougat-base's for pages."""
    if kind == "pages":
        return (documents.SUBJECTS["nougat"]["name"] if not tiny else "tiny random Donut-Swin + mBART",
                documents.reference("nougat", tiny))
    return ocr.TINY_NAME if tiny else ocr.FULL_NAME, ocr.reference(tiny)


def run_section(tiny: bool, workdir: str, *, lines: int, slots: int, budget_range=(5, 60), log=print,
                kind: str = "lines") -> dict:
    """Builds the subject in ``workdir`` and returns the section's record (``cells``: one per side
    and order; ``fidelity``; ``targets``). purevedec's runs are timed the second time (the first
    compiles); transformers', which compiles nothing, after a 4-token call on the first batch."""
    name, model = _subject(kind, tiny)
    log(f"long: building {name} ...")
    path = os.path.join(workdir, f"long-{kind}")
    model.save_pretrained(path)
    params, config = pv.load(path)
    h, w = config.encoder.image_size
    pixels = np.random.RandomState(1).randn(lines, config.encoder.num_channels, h, w).astype(np.float32)
    # A tiny model's position table is short: its budgets stop below it (the range used is recorded).
    budget_range = (budget_range[0], min(budget_range[1], config.decoder.n_positions - 1))
    budgets = draw_budgets(lines, *budget_range)
    tokens = sum(budgets)
    by_budget = sorted(range(lines), key=lambda i: budgets[i])
    run_ours = lambda speculate: lambda: _ours(params, pixels, budgets, slots, speculate)  # noqa: E731
    run_theirs = lambda order: lambda: _theirs(model, pixels, budgets, slots, order)  # noqa: E731
    first_batch = list(range(min(slots, lines)))
    warm_theirs = lambda: _theirs(model, pixels, [4] * lines, slots, first_batch)  # noqa: E731
    runs = {"purevedec (continuous batching)": (run_ours(0), run_ours(0)),
            "purevedec (+ n-gram drafts of 4)": (run_ours(4), run_ours(4)),
            "purevedec (default: drafts when faster)": (run_ours("auto"), run_ours("auto")),
            "transformers (input order)": (run_theirs(list(range(lines))), warm_theirs),
            "transformers (sorted by budget)": (run_theirs(by_budget), warm_theirs)}
    cells, seqs = [], {}
    for side, (fn, warm) in runs.items():
        log(f"long: {side} ...")
        warm()
        r = fn()
        seqs[side] = r.pop("sequences")
        cells.append(dict(side=side, tokens_per_s=tokens / r["seconds"], **r))
    ours, best = cells[2], max(cells[3:], key=lambda c: c["tokens_per_s"])  # ours: the default
    ratio = ours["tokens_per_s"] / best["tokens_per_s"]
    names = [c["side"] for c in cells]
    fidelity = {"tokens equal to transformers (fp32)": _agreement(seqs[names[0]], seqs[names[3]]),
                "n-gram drafts: tokens equal to plain greedy": _agreement(seqs[names[1]], seqs[names[0]]),
                "n-gram drafts: tokens per decoder step": cells[1]["tokens_per_step"],
                "n-gram drafts: draft tokens accepted": cells[1]["drafts_accepted"] or 0.0,
                "default (auto): tokens equal to plain greedy": _agreement(seqs[names[2]], seqs[names[0]]),
                "default (auto): tokens per decoder step": cells[2]["tokens_per_step"]}
    return dict(model=name, kind=kind, what=SUBJECTS[kind]["what"], lines=lines, slots=slots, budgets=budgets,
                budget_range=list(budget_range), tokens=tokens, cells=cells, fidelity=fidelity,
                targets=[dict(name=f"long ({kind}): tokens/s vs transformers' best batching", value=ratio,
                              goal=">= 2.0x", met=bool(ratio >= 2.0))])


def add_arguments(ap) -> None:
    ap.add_argument("--long-kinds", default="lines,pages",
                    help="the long section's workloads: lines (trocr-base shapes), pages (nougat-base shapes)")
    ap.add_argument("--long-lines", type=int, default=64, help="text-line crops of the lines workload")
    ap.add_argument("--long-slots", type=int, default=16, help="purevedec's slots / transformers' batch (lines)")
    ap.add_argument("--long-budgets", default="5,60", help="range of the per-crop token budgets (lines)")
    ap.add_argument("--long-pages", type=int, default=8, help="pages of the pages workload")
    ap.add_argument("--long-page-slots", type=int, default=4, help="slots / transformers' batch (pages)")
    ap.add_argument("--long-page-budgets", default="200,2000", help="range of the per-page token budgets (pages)")


def run_workloads(args, workdir: str, log=print) -> dict:
    """The results of each workload --long-kinds names: ``long`` (lines), ``long_pages``."""
    res = {}
    for kind in args.long_kinds.split(","):
        if kind not in SUBJECTS:
            raise SystemExit(f"--long-kinds: {kind!r} is not one of {', '.join(SUBJECTS)}")
        s = SUBJECTS[kind]
        budgets = tuple(int(b) for b in getattr(args, s["budgets"]).split(","))
        res[s["key"]] = run_section(args.tiny, workdir, lines=getattr(args, s["inputs"]),
                                    slots=getattr(args, s["slots"]), budget_range=budgets, log=log, kind=kind)
    return res


def markdown(res: dict) -> list[str]:
    rows = [f"| {c['side']} | {c['tokens_per_s']:.1f} | {c['seconds']:.2f} | {c['first_record_s']:.2f} |"
            for c in res["cells"]]
    return [f"## Long outputs: {res['model']}",
            f"{res['lines']} {res.get('what', 'text-line crops')}, token budgets uniform on {res['budget_range'][0]}-"
            f"{res['budget_range'][1]} (seed 0; {res['tokens']} tokens in all), EOS suppressed, greedy, fp32; "
            f"{res['slots']} slots for purevedec, batches of {res['slots']} for transformers (each to its longest "
            "budget). Tokens/s counts the budgets only. purevedec is timed on its second run (the first "
            "compiles); transformers after a 4-token warm-up call.",
            "\n".join(["| side | tokens/s | wall s | first record s |", "|---|---|---|---|", *rows]),
            "\n".join(f"- {k}: {v:.3f}" for k, v in res["fidelity"].items())]
