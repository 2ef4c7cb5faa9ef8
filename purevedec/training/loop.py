"""The fine-tuning loop: epochs of shuffled batches through the jitted train step, evaluation,
a jsonl metrics log, and checkpoints that resume exactly.

A checkpoint ``<out>/checkpoint-<step>/`` is an HF directory (``save``: transformers loads it)
plus ``train_state.npz`` (params, optimizer state, step, PRNG key) and ``predictions.jsonl`` (the
generated validation captions). The last ``keep`` are kept, and the best by ``best_metric``
(validation loss unless chosen otherwise) is copied to ``<out>/best/``. Restarting with the
same data, seed and options resumes from the newest: the step's epoch is reshuffled from
(seed, epoch) and the batches already seen are skipped, so the run continues as if unbroken.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass

import jax.numpy as jnp

from ..checkpoints import save
from ..errors import ConfigError
from ..generation import generate
from .data import Batcher, Dataset
from .logs import MetricsLog
from .metrics import HIGHER_IS_BETTER, METRICS, exact_normal, score
from .optim import TrainConfig
from .state_io import restore_state, save_state
from .step import eval_sums, init_state, make_train_step

STATE_FILE = "train_state.npz"


@dataclass(frozen=True)
class RunConfig:
    out_dir: str
    epochs: int = 1
    seed: int = 0
    eval_every: int = 0          # steps between evaluations; 0: at the end of each epoch
    keep: int = 2                # checkpoints kept (the best is kept apart)
    max_new_tokens: int = 16     # for the generated validation captions
    progress: bool = True
    mesh: object = None          # a device mesh: state by the sharding rules, batches over "data"
    fsdp: bool = False           # with mesh: also split big tensors over "data" (shard_params' fsdp)
    metrics: tuple = ("exact",)  # scores of the generated captions (metrics.METRICS)
    best_metric: str = "loss"    # "loss" or one of metrics: what picks best/
    tensorboard: bool = False    # also write <out>/tensorboard (needs tensorboardX)

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ConfigError(f"metrics: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(METRICS)}")
        if self.best_metric not in ("loss", *self.metrics):
            raise ConfigError(f"best_metric={self.best_metric!r} is not computed; choose loss or one of "
                              f"the metrics {', '.join(self.metrics)}")


def metric_key(name: str) -> str:
    """The eval record's key for a metric name: loss -> val_loss, exact -> val_exact_match, bleu -> val_bleu."""
    return {"loss": "val_loss", "exact": "val_exact_match"}.get(name, f"val_{name}")


def steps_per_epoch(data: Dataset, batch_size: int) -> int:
    return -(-len(data.examples) // batch_size)


def _checkpoints(out_dir: str) -> list[tuple[int, str]]:
    found = []
    for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        m = re.fullmatch(r"checkpoint-(\d+)", name)
        if m and os.path.isfile(os.path.join(out_dir, name, STATE_FILE)):
            found.append((int(m.group(1)), os.path.join(out_dir, name)))
    return sorted(found)


def write_checkpoint(out_dir: str, state, keep: int) -> str:
    step = int(state.step)
    path = os.path.join(out_dir, f"checkpoint-{step}")
    save(state.params, path)
    save_state(os.path.join(path, STATE_FILE), state)
    for _, old in _checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def evaluate(params, data: Dataset, batcher: Batcher, *, decode=None, dtype=jnp.float32,
             max_new_tokens: int = 16, metrics=("exact",)) -> tuple[dict, list[dict]]:
    """Validation loss and token accuracy (teacher-forced, no dropout) and, with ``decode``
    (token ids -> text), greedy captions scored by each of ``metrics`` (``metrics.score``; the
    record's keys are ``metric_key(name)``). Returns the record and one prediction per image."""
    total, tokens, correct, preds = 0.0, 0, 0, []
    for batch in batcher.batches(data):
        s, t, c = eval_sums(params, batch.pixels, batch.labels, None, dtype=dtype)
        total, tokens, correct = total + float(s), tokens + int(t), correct + int(c)
        if decode is not None and batch.images:
            seqs = generate(params, batch.pixels, max_new_tokens=max_new_tokens).sequences
            for img, refs, row in zip(batch.images, batch.references, seqs):
                text = decode([int(x) for x in row])
                hit = exact_normal(text) in {exact_normal(r) for r in refs}
                preds.append({"image": img, "prediction": text, "references": refs, "exact": bool(hit)})
    record = {"val_loss": total / max(tokens, 1), "val_accuracy": correct / max(tokens, 1), "val_tokens": tokens}
    if preds:
        scores = score(metrics, [p["prediction"] for p in preds], [p["references"] for p in preds])
        record.update({metric_key(name): value for name, value in scores.items()})
    return record, preds


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


def fit(params, train: Dataset, val: Dataset, batcher: Batcher, cfg: TrainConfig, run: RunConfig, *,
        decode=None) -> dict:
    """Train ``params`` on ``train`` for run.epochs, evaluating on ``val``; resumes from the newest
    checkpoint in run.out_dir. Returns the last evaluation's metrics (and the step)."""
    os.makedirs(run.out_dir, exist_ok=True)
    per_epoch = steps_per_epoch(train, batcher.batch_size)
    total = per_epoch * run.epochs
    state = init_state(params, cfg, run.seed)
    found = _checkpoints(run.out_dir)
    if found:
        state = restore_state(os.path.join(found[-1][1], STATE_FILE), state)
    if decode is None and run.best_metric != "loss":
        raise ConfigError(f"best_metric={run.best_metric!r} scores generated captions: pass decode")
    if run.mesh is not None:
        from .parallel import make_sharded_train_step, shard_state
        state = shard_state(state, run.mesh, cfg, fsdp=run.fsdp)
        step_fn = make_sharded_train_step(cfg, state)
    else:
        step_fn = make_train_step(cfg)
    log = MetricsLog(run.out_dir, tensorboard=run.tensorboard)
    best_key, higher = metric_key(run.best_metric), HIGHER_IS_BETTER[run.best_metric]
    best = _best_value(run.out_dir, best_key, higher)
    last: dict = {}
    start = int(state.step)
    bar = _progress(total, start, run.progress)

    def evaluate_and_save():
        nonlocal best, last
        metrics, preds = evaluate(state.params, val, batcher, decode=decode, dtype=cfg.compute_dtype,
                                  max_new_tokens=run.max_new_tokens, metrics=run.metrics) if val.examples else ({}, [])
        last = {"step": int(state.step), **metrics}
        log.write({"event": "eval", **last})
        path = write_checkpoint(run.out_dir, state, run.keep)
        with open(os.path.join(path, "predictions.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(p) + "\n" for p in preds)
        if best_key in metrics and (metrics[best_key] > best if higher else metrics[best_key] < best):
            best = metrics[best_key]
            shutil.rmtree(os.path.join(run.out_dir, "best"), ignore_errors=True)
            shutil.copytree(path, os.path.join(run.out_dir, "best"))
            with open(os.path.join(run.out_dir, "best", "best.json"), "w") as f:
                json.dump(last, f)

    try:
        for epoch in range(start // per_epoch, run.epochs):
            skip = start - epoch * per_epoch if epoch == start // per_epoch else 0
            for n, batch in enumerate(batcher.batches(train, seed=run.seed, epoch=epoch)):
                if n < skip:
                    continue
                t0 = time.perf_counter()
                state, m = step_fn(state, batch.pixels, batch.labels)
                loss = float(m.loss)  # waits for the step
                rate = len(batch.images) / (time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}")
                log.write({"event": "train", "step": int(state.step), "epoch": epoch, "loss": loss,
                           "accuracy": float(m.accuracy), "grad_norm": float(m.grad_norm),
                           "learning_rate": float(m.learning_rate), "images_per_s": rate})
                if run.eval_every and int(state.step) % run.eval_every == 0:
                    evaluate_and_save()
            if not run.eval_every or int(state.step) % run.eval_every:
                evaluate_and_save()
        problems = batcher.problems
        log.write({"event": "end", "step": int(state.step), "truncated_captions": batcher.truncated,
                   "skipped": len(train.problems) + len(problems)})
    finally:
        bar.close()
        log.close()
    return {**last, "step": int(state.step), "truncated_captions": batcher.truncated}


def _best_value(out_dir: str, key: str, higher: bool) -> float:
    """The best/ checkpoint's ``key`` (a resumed run keeps its best), or the worst value if none."""
    try:
        with open(os.path.join(out_dir, "best", "best.json")) as f:
            return float(json.load(f)[key])
    except (OSError, ValueError, KeyError, TypeError):
        return -float("inf") if higher else float("inf")

