"""The fine-tuning loop: epochs of shuffled batches through the jitted train step, evaluation,
a jsonl metrics log, and checkpoints that resume exactly.

A checkpoint ``<out>/checkpoint-<step>/`` is an HF directory (``save``: transformers loads it)
plus ``train_state.npz`` (params, optimizer state, step, PRNG key). The last ``keep`` are kept,
and the one with the lowest validation loss is copied to ``<out>/best/``. Restarting with the
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
from ..generation import generate
from .data import Batcher, Dataset
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


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def evaluate(params, data: Dataset, batcher: Batcher, *, decode=None, dtype=jnp.float32,
             max_new_tokens: int = 16) -> tuple[dict, list[dict]]:
    """Validation loss and token accuracy (teacher-forced, no dropout) and, with ``decode``
    (token ids -> text), greedy captions scored by ``exact_match``: the share of images whose
    caption equals one of its references after lowercasing and collapsing spaces."""
    total, tokens, correct, hits, preds = 0.0, 0, 0, 0, []
    for batch in batcher.batches(data):
        s, t, c = eval_sums(params, batch.pixels, batch.labels, None, dtype=dtype)
        total, tokens, correct = total + float(s), tokens + int(t), correct + int(c)
        if decode is not None and batch.images:
            seqs = generate(params, batch.pixels, max_new_tokens=max_new_tokens).sequences
            for img, refs, row in zip(batch.images, batch.references, seqs):
                text = decode([int(x) for x in row])
                hit = _normal(text) in {_normal(r) for r in refs}
                hits += hit
                preds.append({"image": img, "prediction": text, "references": refs, "exact": bool(hit)})
    metrics = {"val_loss": total / max(tokens, 1), "val_accuracy": correct / max(tokens, 1), "val_tokens": tokens}
    if decode is not None:
        metrics["val_exact_match"] = hits / max(len(data.examples), 1)
    return metrics, preds


class _Log:
    def __init__(self, path: str):
        self.f = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()


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
    if run.mesh is not None:
        from .parallel import make_sharded_train_step, shard_state
        state = shard_state(state, run.mesh, cfg, fsdp=run.fsdp)
        step_fn = make_sharded_train_step(cfg, state)
    else:
        step_fn = make_train_step(cfg)
    log = _Log(os.path.join(run.out_dir, "metrics.jsonl"))
    best = _best_loss(run.out_dir)
    last: dict = {}
    start = int(state.step)
    bar = _progress(total, start, run.progress)

    def evaluate_and_save():
        nonlocal best, last
        metrics, preds = evaluate(state.params, val, batcher, decode=decode, dtype=cfg.compute_dtype,
                                  max_new_tokens=run.max_new_tokens) if val.examples else ({}, [])
        last = {"step": int(state.step), **metrics}
        log.write({"event": "eval", **last})
        path = write_checkpoint(run.out_dir, state, run.keep)
        with open(os.path.join(path, "predictions.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(p) + "\n" for p in preds)
        if "val_loss" in metrics and metrics["val_loss"] < best:
            best = metrics["val_loss"]
            shutil.rmtree(os.path.join(run.out_dir, "best"), ignore_errors=True)
            shutil.copytree(path, os.path.join(run.out_dir, "best"))
            with open(os.path.join(run.out_dir, "best", "best.json"), "w") as f:
                json.dump(last, f)

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
    bar.close()
    problems = batcher.problems
    log.write({"event": "end", "step": int(state.step), "truncated_captions": batcher.truncated,
               "skipped": len(train.problems) + len(problems)})
    return {**last, "step": int(state.step), "truncated_captions": batcher.truncated}


def _best_loss(out_dir: str) -> float:
    try:
        with open(os.path.join(out_dir, "best", "best.json")) as f:
            return float(json.load(f)["val_loss"])
    except (OSError, ValueError, KeyError):
        return float("inf")

