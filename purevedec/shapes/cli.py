"""``purevedec train-shapes`` (train the bundled model's recipe) and ``purevedec render-shapes``
(write captioned scenes as PNG files)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

from . import recipe as r


def add_parsers(commands) -> None:
    t = commands.add_parser("train-shapes", help="train the purevedec:shapes model from scratch (its recipe)",
                            description="Train the bundled purevedec:shapes captioner from scratch on freshly "
                                        "rendered scenes, with purevedec's own train step.")
    t.add_argument("--out", required=True, help="output folder (an HF checkpoint, metrics.jsonl, report.json, training.png)")
    defaults = r.Recipe()
    for f in dataclasses.fields(r.Recipe):
        t.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name), help=f"(default {getattr(defaults, f.name)})")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(run=lambda args, out, err: _train(args, out))
    s = commands.add_parser("render-shapes", help="render captioned scenes as PNG files",
                            description="Write scenes (stream, first..first+count-1) as PNGs and their "
                                        "captions as captions.jsonl (the layout `purevedec train` reads).")
    s.add_argument("--out", required=True)
    s.add_argument("--count", type=int, default=12)
    s.add_argument("--stream", type=int, default=r.EXAMPLE_STREAM, help=f"scene stream (default {r.EXAMPLE_STREAM})")
    s.add_argument("--first", type=int, default=0)
    s.set_defaults(run=lambda args, out, err: _render(args, out))


def recipe_problem(recipe: r.Recipe) -> str | None:
    """What is wrong with a recipe's values (one line naming the flag), or None."""
    lows = {"steps": 1, "batch_size": 1, "warmup_steps": 0, "seed": 0, "eval_every": 1, "eval_scenes": 1,
            "final_scenes": 1}
    for name, low in lows.items():
        if getattr(recipe, name) < low:
            return f"--{name.replace('_', '-')} {getattr(recipe, name)}: must be at least {low}"
    for name in ("learning_rate", "weight_decay"):
        value = getattr(recipe, name)
        if not (math.isfinite(value) and value >= 0) or (name == "learning_rate" and value == 0):
            return f"--{name.replace('_', '-')} {value}: must be a finite number " + (
                "> 0" if name == "learning_rate" else ">= 0")
    if recipe.warmup_steps > recipe.steps:
        return f"--warmup-steps {recipe.warmup_steps}: more than --steps {recipe.steps}"
    if recipe.seed >= 2 ** 32:
        return f"--seed {recipe.seed}: must be in [0, 2^32)"
    return None


def _out_problem(out: str) -> str | None:
    return f"--out {out}: exists and is not a folder" if os.path.exists(out) and not os.path.isdir(out) else None


def _train(args, out) -> int:
    from .train import train
    recipe = r.Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(r.Recipe)})
    problem = recipe_problem(recipe) or _out_problem(args.out)
    if problem:
        print(f"train-shapes: {problem}", file=sys.stderr)
        return 2
    report = train(args.out, recipe, progress=not args.no_progress)
    print(json.dumps(report), file=out)
    return 0


def _render(args, out) -> int:
    from .scenes import scene
    if args.count < 1 or args.first < 0 or args.stream < 0:
        print("render-shapes: --count must be positive, --first and --stream non-negative", file=sys.stderr)
        return 2
    if _out_problem(args.out):
        print(f"render-shapes: {_out_problem(args.out)}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "captions.jsonl"), "w", encoding="utf-8") as f:
        for i in range(args.first, args.first + args.count):
            s = scene(args.stream, i)
            name = f"scene-{args.stream}-{i:05d}.png"
            s.image.save(os.path.join(args.out, name))
            f.write(json.dumps({"image": name, "caption": s.caption}) + "\n")
    print(f"wrote {args.count} scenes to {args.out}", file=out)
    return 0
