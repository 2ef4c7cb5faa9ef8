"""``purevedec train-shapes`` (train the bundled model's recipe) and ``purevedec render-shapes``
(write captioned scenes as PNG files)."""

from __future__ import annotations

import argparse
import dataclasses
import json
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


def _train(args, out) -> int:
    from .train import train
    recipe = r.Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(r.Recipe)})
    report = train(args.out, recipe, progress=not args.no_progress)
    print(json.dumps(report), file=out)
    return 0


def _render(args, out) -> int:
    from .scenes import scene
    if args.count < 1 or args.first < 0 or args.stream < 0:
        print("render-shapes: --count must be positive, --first and --stream non-negative", file=sys.stderr)
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
