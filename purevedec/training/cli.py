"""``purevedec train``: fine-tune a checkpoint on a captioned image folder.

``add_parser(subparsers)`` adds the subcommand to the package's command line; ``run(args)``
runs it and returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..captioning import interrupts
from ..captioning.flags import add_mesh_flag, mesh_from
from ..errors import ConfigError, PurevedecError
from ..models import decoder_family


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="fine-tune on a folder of images with captions.jsonl or captions.csv",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                              description="Fine-tune a captioning checkpoint. Every checkpoint written (checkpoint-N/, "
                                          "best/) is a model folder that `purevedec caption` opens. Rerunning the "
                                          "same command resumes from the newest checkpoint; Ctrl-C stops at once.")
    p.add_argument("model", help="checkpoint directory or hub id (with its tokenizer and preprocessor config)")
    p.add_argument("data", help="folder with the images and captions.jsonl / captions.csv")
    p.add_argument("--out", required=True, help="output folder: checkpoints, metrics.jsonl, training.png, best/")
    p.add_argument("--epochs", type=int, default=1, help="passes over the training images")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps (all epochs)")
    p.add_argument("--batch-size", type=int, default=8, help="images per optimizer step")
    p.add_argument("--captions-per-image", type=int, default=1, help="caption rows per image in a batch")
    p.add_argument("--max-length", type=int, default=32,
                   help="longest caption in tokens (with eos; at most the decoder's positions); longer ones are cut")
    p.add_argument("--learning-rate", type=float, default=5e-5, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled weight decay")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warmup from 0")
    p.add_argument("--schedule", choices=("linear", "cosine", "constant"), default="linear",
                   help="learning rate after warmup")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="global-norm clipping; 0 turns clipping off")
    p.add_argument("--accumulation-steps", type=int, default=1, help="micro-batches per step (divides --batch-size)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="in [0, 1)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    p.add_argument("--remat", action="store_true", help="recompute layer activations in the backward pass")
    p.add_argument("--freeze-encoder", action="store_true", help="train the decoder (and projection) only")
    p.add_argument("--freeze-embeddings", action="store_true", help="keep the decoder's token and position tables")
    p.add_argument("--validation-fraction", type=float, default=0.1, help="share of the images held out, in [0, 1)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="steps between evaluations; 0: at each epoch's end (the last step is always evaluated)")
    p.add_argument("--save-every", type=int, default=0,
                   help="steps between checkpoints; 0: at each evaluation (the last step is always saved)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop early after this many evaluations without a better --best-metric")
    p.add_argument("--eval-max-tokens", type=int, default=None,
                   help="longest generated validation caption; default: as many tokens as the decoder's positions hold")
    p.add_argument("--keep", type=int, default=2, help="checkpoints kept besides best/ (at least 1)")
    p.add_argument("--seed", type=int, default=0, help="data split, shuffling and dropout, in [0, 2^32)")
    p.add_argument("--threads", type=int, default=4, help="image decoding threads")
    p.add_argument("--allow-outside-data", action="store_true",
                   help="let caption files name images outside the data folder (absolute paths, ..)")
    p.add_argument("--compile-cache", metavar="DIR", default=os.environ.get("PUREVEDEC_COMPILE_CACHE"),
                   help="reuse compiled programs across runs from DIR (default $PUREVEDEC_COMPILE_CACHE, else "
                        "~/.cache/purevedec/xla); 'none' turns it off")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--metrics", default="auto",
                   help="scores of the generated validation captions, comma-separated from bleu, cider, cer, wer "
                        "(exact match is always scored); auto: cer,wer for a TrOCR decoder, else bleu,cider")
    p.add_argument("--best-metric", default="loss", choices=("loss", "exact", "bleu", "cider", "cer", "wer"),
                   help="what picks best/: lowest loss, cer or wer, highest exact, bleu or cider")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write the metrics as TensorBoard scalars to OUT/tensorboard (needs tensorboardX)")
    add_mesh_flag(p, "the batch", needs=", --batch-size a multiple of N")
    p.add_argument("--fsdp", action="store_true", help="with --mesh: also split big tensors over the data axis")
    return p


def run(args) -> int:
    from .interrupt import INTERRUPTED, InterruptGuard
    guard = InterruptGuard(lambda: interrupted_message(args.out))
    try:
        with guard:
            return _run(args)
    except KeyboardInterrupt:
        guard.exit_now()  # the message, then exit 130 without interpreter teardown
        return INTERRUPTED
    except Exception as e:
        if interrupts.received():  # what a library made of Ctrl-C
            guard.exit_now()
        if not isinstance(e, (PurevedecError, OSError, ImportError)):  # OSError: a full disk, an unreadable file
            raise
        print(f"purevedec train: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2


def interrupted_message(out: str) -> str:
    """Where an interrupted run stands and how to go on."""
    from .loop import checkpoints
    try:
        found = checkpoints(out)
    except (OSError, PurevedecError):
        found = []
    if not found:
        return "purevedec train: interrupted before the first checkpoint; nothing to resume (the same command starts again)"
    step, path = found[-1]
    return (f"purevedec train: interrupted; the last checkpoint is {path} (step {step}). Run the same command "
            "again to resume from it.")


def say(text: str) -> None:
    """One console line, printed above the progress bar rather than through it."""
    from tqdm import tqdm
    tqdm.write(text, file=sys.stderr)
    sys.stderr.flush()


def _mesh(args):
    """``--mesh`` as a mesh over every device (None without it); a ConfigError names a batch size
    the data axis does not divide."""
    mesh = mesh_from(args.mesh)
    if mesh is None:
        return None
    from ..sharding import DATA
    n = mesh.shape.get(DATA, 1)
    if args.batch_size % n:
        raise ConfigError(f"--batch-size {args.batch_size} is not a multiple of the mesh's data axis ({n}): "
                        f"each device takes the same number of images")
    return mesh


def _run(args) -> int:
    from .arguments import check_arguments
    check_arguments(args)
    mesh = _mesh(args)
    if mesh is None and args.fsdp:
        print("purevedec train: --fsdp needs --mesh data=N,model=M", file=sys.stderr)
        return 2
    if args.tensorboard:
        from .logs import tensorboard_writer_class
        tensorboard_writer_class()  # fail before loading anything when the extra is missing
    if args.compile_cache != "none" and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        from ..captioning.compile_cache import enable_compilation_cache
        enable_compilation_cache(args.compile_cache or None)
    say(f"loading {args.model}")
    model = _Model(args.model)
    data = _read_data(args, model.tokenizer)
    if data is None:
        return 2
    return _fit(args, model, data, mesh)


class _Model:
    """The base model: params, config, its folder's tokenizer, image config and side files."""

    def __init__(self, name: str):
        from ..captioning.captioner import check_parts, model_dir
        from ..captioning.image import load_image_config
        from ..captioning.text import load_tokenizer
        from ..checkpoints import load
        from .checkpoint_dir import side_files
        self.path = model_dir(name)
        self.params, self.config = load(self.path)
        self.image_config, self.tokenizer = load_image_config(self.path), load_tokenizer(self.path)
        # As caption refuses them: evaluation and every saved checkpoint caption with these parts.
        check_parts(self.path, self.config, self.image_config, self.tokenizer)
        self.files = tuple(side_files(self.path))
        eos = self.config.eos_token_id if self.config.eos_token_id is not None else self.config.decoder.eos_token_id
        self.eos = int(eos[0] if isinstance(eos, tuple) else eos)


def _read_data(args, tokenizer):
    """(train, validation) of DATA, its problems and unknown words reported; None when nothing
    is usable."""
    from .data import read_folder, split
    from .vocabulary import unknown_words
    data = read_folder(args.data, allow_outside=args.allow_outside_data)
    for problem in data.problems:
        say(f"skipped: {problem}")
    train, val = split(data, args.validation_fraction, args.seed)
    if not train.examples:
        print(f"purevedec train: {args.data}: no usable captioned image", file=sys.stderr)
        return None
    unknown = unknown_words(tokenizer, (c for ex in data.examples for c in ex.captions))
    if unknown.affected:
        say(f"warning: {unknown.summary()}")
    return train, val


def _fit(args, model: _Model, data, mesh) -> int:
    from ..captioning.image import preprocess_one
    from .data import Batcher
    from .loop import RunConfig, eval_length, fit, planned_steps
    from .metrics import parse_metrics
    from .optim import TrainConfig
    train, val = data
    config = model.config
    eval_length(model.params, args.eval_max_tokens)  # a ConfigError now rather than at the first evaluation
    h, w = config.encoder.image_size
    batcher = Batcher(encode=model.tokenizer.encode, load=lambda p: preprocess_one(p, model.image_config),
                      image_shape=(config.encoder.num_channels, h, w), eos_token_id=model.eos,
                      batch_size=args.batch_size, captions_per_image=args.captions_per_image,
                      max_length=min(args.max_length, config.decoder.n_positions), threads=args.threads,
                      report=lambda problem: say(f"skipped: {problem}"))
    total = planned_steps(train, args.batch_size, args.epochs, args.max_steps)
    cfg = TrainConfig(learning_rate=args.learning_rate, weight_decay=args.weight_decay, warmup_steps=min(
        args.warmup_steps, total), total_steps=total, schedule=args.schedule,
        max_grad_norm=args.max_grad_norm or None, accumulation_steps=args.accumulation_steps,
        label_smoothing=args.label_smoothing, dtype=args.dtype, remat=args.remat,
        freeze_encoder=args.freeze_encoder, freeze_embeddings=args.freeze_embeddings)
    metrics = parse_metrics(default_metrics(config) if args.metrics == "auto" else args.metrics)
    run = RunConfig(out_dir=args.out, epochs=args.epochs, seed=args.seed, eval_every=args.eval_every,
                    save_every=args.save_every, keep=args.keep, max_new_tokens=args.eval_max_tokens,
                    max_steps=args.max_steps, patience=args.patience, progress=not args.no_progress,
                    metrics=metrics, best_metric=args.best_metric, tensorboard=args.tensorboard, mesh=mesh,
                    fsdp=args.fsdp, model_files=model.files)
    result = fit(model.params, train, val, batcher, cfg, run,
                 decode=lambda ids: model.tokenizer.decode(ids, skip_special_tokens=True), say=say)
    if batcher.truncated:
        say(f"warning: {batcher.truncated} captions were longer than --max-length and were cut")
    print(json.dumps(result))
    return 0


def default_metrics(config) -> str:
    """The decoder family's default: text reading is scored by error rates, captioning by n-gram overlap."""
    return decoder_family(config.decoder).default_metrics
