"""``purevedec train``: fine-tune a checkpoint on a captioned image folder.

``add_parser(subparsers)`` adds the subcommand to the package's command line; ``run(args)``
runs it and returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ConfigError, PurevedecError
from ..models import decoder_family


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="fine-tune on a folder of images with captions.jsonl or captions.csv")
    p.add_argument("model", help="checkpoint directory or hub id (with its tokenizer and preprocessor config)")
    p.add_argument("data", help="folder with the images and captions.jsonl / captions.csv")
    p.add_argument("--out", required=True, help="output folder: checkpoints, metrics.jsonl, best/")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8, help="images per optimizer step")
    p.add_argument("--captions-per-image", type=int, default=1, help="caption rows per image in a batch")
    p.add_argument("--max-length", type=int, default=32, help="longest caption in tokens (with eos); longer ones are cut")
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--schedule", choices=("linear", "cosine", "constant"), default="linear")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="0 turns clipping off")
    p.add_argument("--accumulation-steps", type=int, default=1)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    p.add_argument("--remat", action="store_true", help="recompute layer activations in the backward pass")
    p.add_argument("--freeze-encoder", action="store_true")
    p.add_argument("--freeze-embeddings", action="store_true")
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (0: each epoch's end)")
    p.add_argument("--keep", type=int, default=2, help="checkpoints kept besides best/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=4, help="image decoding threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--metrics", default="auto",
                   help="scores of the generated validation captions, comma-separated from bleu, cider, cer, wer "
                        "(exact match is always scored); auto: cer,wer for a TrOCR decoder, else bleu,cider")
    p.add_argument("--best-metric", default="loss", choices=("loss", "exact", "bleu", "cider", "cer", "wer"),
                   help="what picks best/: lowest loss, cer or wer, highest exact, bleu or cider (default loss)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write the metrics as TensorBoard scalars to OUT/tensorboard (needs tensorboardX)")
    p.add_argument("--mesh", metavar="data=N,model=M", default=None,
                   help="train on a device mesh: the batch split over N devices, attention heads, MLP width and "
                        "vocabulary over M (N*M must be the device count; --batch-size a multiple of N)")
    p.add_argument("--fsdp", action="store_true", help="with --mesh: also split big tensors over the data axis")
    return p


def run(args) -> int:
    try:
        return _run(args)
    except (PurevedecError, FileNotFoundError, ImportError) as e:
        print(f"purevedec train: {e}", file=sys.stderr)
        return 2


def _mesh(args):
    """``--mesh`` as a mesh over every device (None without it); a ConfigError names a bad mesh or
    a batch size the data axis does not divide."""
    if args.mesh is None:
        return None
    from ..sharding import DATA, make_mesh, parse_mesh
    try:
        mesh = make_mesh(parse_mesh(args.mesh))
    except ValueError as e:
        raise ConfigError(f"--mesh: {e}") from None
    n = mesh.shape.get(DATA, 1)
    if args.batch_size % n:
        raise ConfigError(f"--batch-size {args.batch_size} is not a multiple of the mesh's data axis ({n}): "
                        f"each device takes the same number of images")
    return mesh


def _run(args) -> int:
    from ..captioning.captioner import model_dir
    from ..captioning.image import load_image_config, preprocess_one
    from ..captioning.text import load_tokenizer
    from ..checkpoints import load
    from .data import Batcher, read_folder, split
    from .logs import tensorboard_writer_class
    from .loop import RunConfig, fit, steps_per_epoch
    from .metrics import parse_metrics
    from .optim import TrainConfig

    mesh = _mesh(args)
    if mesh is None and args.fsdp:
        print("purevedec train: --fsdp needs --mesh data=N,model=M", file=sys.stderr)
        return 2
    if args.tensorboard:
        tensorboard_writer_class()  # fail before loading anything when the extra is missing
    path = model_dir(args.model)
    params, config = load(path)
    metrics = parse_metrics(default_metrics(config) if args.metrics == "auto" else args.metrics)
    image_config, tokenizer = load_image_config(path), load_tokenizer(path)
    data = read_folder(args.data)
    for problem in data.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    train, val = split(data, args.validation_fraction, args.seed)
    if not train.examples:
        print(f"purevedec train: {args.data}: no usable captioned image", file=sys.stderr)
        return 2
    eos = config.eos_token_id if config.eos_token_id is not None else config.decoder.eos_token_id
    eos = eos[0] if isinstance(eos, tuple) else eos
    h, w = config.encoder.image_size
    batcher = Batcher(encode=tokenizer.encode, load=lambda p: preprocess_one(p, image_config),
                      image_shape=(config.encoder.num_channels, h, w), eos_token_id=int(eos),
                      batch_size=args.batch_size, captions_per_image=args.captions_per_image,
                      max_length=min(args.max_length, config.decoder.n_positions), threads=args.threads)
    total = steps_per_epoch(train, args.batch_size) * args.epochs
    cfg = TrainConfig(learning_rate=args.learning_rate, weight_decay=args.weight_decay, warmup_steps=min(
        args.warmup_steps, total), total_steps=total, schedule=args.schedule,
        max_grad_norm=args.max_grad_norm or None, accumulation_steps=args.accumulation_steps,
        label_smoothing=args.label_smoothing, dtype=args.dtype, remat=args.remat,
        freeze_encoder=args.freeze_encoder, freeze_embeddings=args.freeze_embeddings)
    result = fit(params, train, val, batcher, cfg,
                 RunConfig(out_dir=args.out, epochs=args.epochs, seed=args.seed, eval_every=args.eval_every,
                           keep=args.keep, progress=not args.no_progress, metrics=metrics,
                           best_metric=args.best_metric, tensorboard=args.tensorboard, mesh=mesh, fsdp=args.fsdp),
                 decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    for problem in batcher.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    if batcher.truncated:
        print(f"warning: {batcher.truncated} captions were longer than --max-length and were cut", file=sys.stderr)
    print(json.dumps(result))
    return 0


def default_metrics(config) -> str:
    """The decoder family's default: text reading is scored by error rates, captioning by n-gram overlap."""
    return decoder_family(config.decoder).default_metrics
