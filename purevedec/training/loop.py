"""The fine-tuning loop: epochs of shuffled batches through the jitted train step, evaluation,
a jsonl metrics log with its plot, and checkpoints that resume exactly.

A checkpoint ``<out>/checkpoint-<step>/`` is a complete model folder (``checkpoint_dir``: weights,
config, generation config and the base model's tokenizer and preprocessor files, so ``caption``
and transformers open it) plus ``train_state.npz`` (params, optimizer state, step, PRNG key) and,
when written at an evaluation, ``predictions.jsonl`` (the generated validation captions). The last
``keep`` are kept; the best evaluation by ``best_metric`` (validation loss unless chosen otherwise)
is written to ``<out>/best/`` with ``best.json``. Every folder is replaced atomically.

When: an evaluation every ``eval_every`` steps (0: at each epoch's end), a checkpoint every
``save_every`` steps (0: at each evaluation); the last step is always evaluated and saved.
Training stops after ``epochs``, after ``max_steps``, or when ``patience`` evaluations in a row
brought no better ``best_metric``. Restarting with the same data, seed and options resumes from
the newest checkpoint: the step's epoch is reshuffled from (seed, epoch) and the batches already
seen are skipped, so the run continues as if unbroken.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Callable

import jax.numpy as jnp

from ..captioning import interrupts
from ..errors import CheckpointError, ConfigError
from ..generation import generate
from .checkpoint_dir import copy_folder, recover, remove_folder, write_model_folder
from .data import Batcher, Dataset
from .logs import MetricsLog
from .metrics import HIGHER_IS_BETTER, METRICS, exact_normal, score
from .optim import TrainConfig
from .plot import write_plot
from .state_io import restore_state, save_state
from .step import eval_sums, init_state, make_train_step

STATE_FILE = "train_state.npz"
PLOT_FILE = "training.png"


@dataclass(frozen=True)
class RunConfig:
    out_dir: str
    epochs: int = 1
    seed: int = 0
    eval_every: int = 0          # steps between evaluations; 0: at the end of each epoch
    save_every: int = 0          # steps between checkpoints; 0: at each evaluation
    keep: int = 2                # checkpoints kept (the best is kept apart)
    max_new_tokens: int | None = None  # validation caption length; None: all the decoder's positions
    max_steps: int | None = None       # stop after this many optimizer steps (all epochs together)
    patience: int | None = None        # stop after this many evaluations without a better best_metric
    progress: bool = True
    mesh: object = None          # a device mesh: state by the sharding rules, batches over "data"
    fsdp: bool = False           # with mesh: also split big tensors over "data" (shard_params' fsdp)
    metrics: tuple = ("exact",)  # scores of the generated captions (metrics.METRICS)
    best_metric: str = "loss"    # "loss" or one of metrics: what picks best/
    tensorboard: bool = False    # also write <out>/tensorboard (needs tensorboardX)
    model_files: tuple = ()      # tokenizer / preprocessor files copied into every checkpoint

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ConfigError(f"metrics: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(METRICS)}")
        if self.best_metric not in ("loss", *self.metrics):
            raise ConfigError(f"best_metric={self.best_metric!r} is not computed; choose loss or one of "
                              f"the metrics {', '.join(self.metrics)}")
        for name, low, none_ok in (("epochs", 1, False), ("keep", 1, False), ("eval_every", 0, False),
                                   ("save_every", 0, False), ("max_new_tokens", 1, True), ("max_steps", 1, True),
                                   ("patience", 1, True)):
            value = getattr(self, name)
            if not (value is None and none_ok) and (not isinstance(value, int) or isinstance(value, bool)
                                                    or value < low):
                raise ConfigError(f"{name}={value!r}: must be an integer >= {low}" + (" or None" if none_ok else ""))


def metric_key(name: str) -> str:
    """The eval record's key for a metric name: loss -> val_loss, exact -> val_exact_match, bleu -> val_bleu."""
    return {"loss": "val_loss", "exact": "val_exact_match"}.get(name, f"val_{name}")


def steps_per_epoch(data: Dataset, batch_size: int) -> int:
    return -(-len(data.examples) // batch_size)


def planned_steps(data: Dataset, batch_size: int, epochs: int, max_steps: int | None = None) -> int:
    """The optimizer steps a run makes: its epochs', or ``max_steps`` if fewer (the schedule's length)."""
    total = steps_per_epoch(data, batch_size) * epochs
    return min(total, max_steps) if max_steps else total


def eval_length(params, max_new_tokens: int | None) -> int:
    """Tokens generated per validation caption: ``max_new_tokens``, by default as many as the
    decoder's positions hold after the decoder start token; more is a ConfigError."""
    limit = params["config"].decoder.n_positions - 1
    if max_new_tokens is None:
        return limit
    if max_new_tokens > limit:
        raise ConfigError(f"max_new_tokens={max_new_tokens}: the decoder has {limit + 1} positions, so a "
                          f"caption after its start token has at most {limit} tokens")
    return max_new_tokens


def checkpoints(out_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the finished checkpoints in ``out_dir``, oldest first. A ``checkpoint-N``
    folder without its train state is a CheckpointError: resuming past it would retrain silently."""
    found = []
    for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        m = re.fullmatch(r"checkpoint-(\d+)", name)
        if m:
            path = os.path.join(out_dir, name)
            if not os.path.isfile(os.path.join(path, STATE_FILE)):
                raise CheckpointError(f"{os.path.join(path, STATE_FILE)}: missing, so the run cannot resume from "
                                      f"{name} (remove that folder to resume from an earlier one)")
            found.append((int(m.group(1)), path))
    return sorted(found)


def write_checkpoint(out_dir: str, state, keep: int, model_files=(), predictions: list[dict] | None = None) -> str:
    """Write ``checkpoint-<step>/`` (atomically) and delete all but the newest ``keep``."""
    if keep < 1:
        raise ConfigError(f"keep={keep}: at least the checkpoint just written is kept")

    def add_state(folder):
        save_state(os.path.join(folder, STATE_FILE), state)
        if predictions is not None:
            _write_jsonl(os.path.join(folder, "predictions.jsonl"), predictions)
    path = write_model_folder(os.path.join(out_dir, f"checkpoint-{int(state.step)}"), state.params,
                              list(model_files), add_state)
    for _, old in checkpoints(out_dir)[:-keep]:
        remove_folder(old)
    return path


def _write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def evaluate(params, data: Dataset, batcher: Batcher, *, decode=None, dtype=jnp.float32,
             max_new_tokens: int | None = None, metrics=("exact",)) -> tuple[dict, list[dict]]:
    """Validation loss and token accuracy (teacher-forced, no dropout) and, with ``decode``
    (token ids -> text), greedy captions of ``max_new_tokens`` tokens at most (``eval_length``)
    scored by each of ``metrics`` (``metrics.score``; the record's keys are ``metric_key(name)``).
    Returns the record and one prediction per image."""
    max_new_tokens = eval_length(params, max_new_tokens)
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
    # smoothing=0: the rate (and the ETA) is the average since ``restart_clock``, not an average
    # that the first step's compilation keeps inflating
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, smoothing=0)


def _restart_clock(bar, skipped_seconds: float | None = None) -> None:
    """Leave compilation (``skipped_seconds`` None: everything so far) or an evaluation's
    ``skipped_seconds`` out of the progress bar's rate and ETA."""
    if bar.disable:
        return
    if skipped_seconds is None:
        bar.initial, bar.start_t = bar.n, bar._time()
    else:
        bar.start_t += skipped_seconds


class _Run:
    """One fit's moving parts: the state, the log, the best so far and the console."""

    def __init__(self, state, run: RunConfig, val: Dataset, batcher: Batcher, cfg: TrainConfig, decode, say):
        self.state, self.run, self.val, self.batcher, self.cfg, self.decode = state, run, val, batcher, cfg, decode
        self.say = say or (lambda text: None)
        self.log = MetricsLog(run.out_dir, tensorboard=run.tensorboard, resume_step=int(state.step))
        self.key, self.higher = metric_key(run.best_metric), HIGHER_IS_BETTER[run.best_metric]
        self.best, self.best_step = _best_record(run.out_dir, self.key, self.higher)
        self.since_best = sum(1 for r in self.log.records if r.get("event") == "eval" and r.get("step", 0) > self.best_step)
        self.last: dict = {}
        self.train_loss = float("nan")
        self.evaluated_at = self.saved_at = -1
        self.predictions: list[dict] = []
        self.best_pending = False

    @property
    def step(self) -> int:
        return int(self.state.step)

    def evaluate(self) -> bool:
        """Evaluate, log, update best/; True when patience has run out."""
        self.say(f"evaluating at step {self.step}")
        metrics, preds = ({}, [])
        if self.val.examples:
            metrics, preds = evaluate(self.state.params, self.val, self.batcher, decode=self.decode,
                                      dtype=self.cfg.compute_dtype, max_new_tokens=self.run.max_new_tokens,
                                      metrics=self.run.metrics)
        self.last, self.evaluated_at, self.predictions = {"step": self.step, **metrics}, self.step, preds
        self.log.write({"event": "eval", **self.last})
        value = metrics.get(self.key)
        if value is not None and (value > self.best if self.higher else value < self.best):
            self.best, self.best_step, self.since_best = value, self.step, 0
            self.best_pending = True
        elif value is not None:
            self.since_best += 1
        self.say(self._eval_line(metrics))
        write_plot(self.log.records, os.path.join(self.run.out_dir, PLOT_FILE))
        return self.run.patience is not None and self.since_best >= self.run.patience

    def write_best(self) -> None:
        """Write best/ if the last evaluation was the best so far (after any checkpoint of its step:
        then best/ is a copy of it)."""
        if not self.best_pending:
            return
        self.say(f"saving best (step {self.step})")
        record, preds = self.last, self.predictions

        def add_record(folder):
            with open(os.path.join(folder, "best.json"), "w", encoding="utf-8") as f:
                json.dump(record, f)
            _write_jsonl(os.path.join(folder, "predictions.jsonl"), preds)
        target = os.path.join(self.run.out_dir, "best")
        if self.saved_at == self.step:  # the checkpoint of this step is on disk: copy it
            copy_folder(os.path.join(self.run.out_dir, f"checkpoint-{self.step}"), target, add_record, skip=(STATE_FILE,))
        else:
            write_model_folder(target, self.state.params, list(self.run.model_files), add_record)
        self.best_pending = False

    def _eval_line(self, metrics: dict) -> str:
        shown = " ".join(f"{k[4:]} {v:.4g}" for k, v in metrics.items() if k != "val_tokens")
        best = f"best {self.key[4:]} {self.best:.4g} at step {self.best_step}" if self.best_step >= 0 else "no best yet"
        return f"step {self.step}: train loss {self.train_loss:.4g} | validation: {shown or 'no images'} | {best}"

    def save(self) -> None:
        self.say(f"saving checkpoint-{self.step}")
        preds = self.predictions if self.evaluated_at == self.step else None
        write_checkpoint(self.run.out_dir, self.state, self.run.keep, self.run.model_files, preds)
        self.saved_at = self.step


def fit(params, train: Dataset, val: Dataset, batcher: Batcher, cfg: TrainConfig, run: RunConfig, *,
        decode=None, say: Callable[[str], None] | None = None) -> dict:
    """Train ``params`` on ``train``, evaluating on ``val``; resumes from the newest checkpoint in
    run.out_dir. ``say`` receives one line per phase and per evaluation. Returns the last
    evaluation's metrics (and the step)."""
    if decode is None and run.best_metric != "loss":
        raise ConfigError(f"best_metric={run.best_metric!r} scores generated captions: pass decode")
    if run.patience is not None and not val.examples:
        raise ConfigError("patience stops on the validation metric: it needs validation images")
    eval_length(params, run.max_new_tokens)
    os.makedirs(run.out_dir, exist_ok=True)
    restored = recover(run.out_dir)
    per_epoch, total = steps_per_epoch(train, batcher.batch_size), planned_steps(
        train, batcher.batch_size, run.epochs, run.max_steps)
    state = init_state(params, cfg, run.seed)
    found = checkpoints(run.out_dir)
    if found:
        state = restore_state(os.path.join(found[-1][1], STATE_FILE), state)
        if say is not None:
            say(f"resuming from {found[-1][1]} (step {int(state.step)} of {total}, epoch "
                f"{min(int(state.step) // per_epoch + 1, run.epochs)})" + (f"; restored {', '.join(restored)}" if restored else ""))
    if run.mesh is not None:
        from .parallel import make_sharded_train_step, shard_state
        state = shard_state(state, run.mesh, cfg, fsdp=run.fsdp)
        step_fn = make_sharded_train_step(cfg, state)
    else:
        step_fn = make_train_step(cfg)
    r = _Run(state, run, val, batcher, cfg, decode, say)
    bar, start = _progress(total, min(r.step, total), run.progress), r.step
    try:
        try:
            _train(r, step_fn, train, bar, per_epoch, total)
        except Exception:  # an error after training steps: keep what they trained, then report it
            if interrupts.received():  # what a library made of Ctrl-C: stop at once, as for Ctrl-C
                raise KeyboardInterrupt from None
            if r.step > max(r.saved_at, start):
                r.say(f"saving checkpoint-{r.step} before stopping on an error")
                r.save()
            raise
        if r.step > start:  # a rerun of a finished run trains nothing and logs nothing
            r.log.write({"event": "end", "step": r.step, "truncated_captions": batcher.truncated,
                         "skipped": len(train.problems) + len(batcher.problems)})
    finally:
        bar.close()
        r.log.close()
    return {**r.last, "step": r.step, "truncated_captions": batcher.truncated}


def _train(r: _Run, step_fn, train: Dataset, bar, per_epoch: int, total: int) -> None:
    run, start, stop, first = r.run, r.step, False, True
    for epoch in range(start // per_epoch, run.epochs):
        skip = start - epoch * per_epoch if epoch == start // per_epoch else 0
        for n, batch in enumerate(r.batcher.batches(train, seed=run.seed, epoch=epoch)):
            if n < skip:
                continue
            if r.step >= total:
                break
            if first:
                r.say("compiling the train step (the first step)")
            t0 = time.perf_counter()
            r.state, m = step_fn(r.state, batch.pixels, batch.labels)
            r.train_loss = float(m.loss)  # waits for the step
            seconds = time.perf_counter() - t0
            bar.update(1)
            if first:
                r.say(f"training: first step took {seconds:.1f} s (compilation included)")
                _restart_clock(bar)
                first = False
            bar.set_postfix(loss=f"{r.train_loss:.4f}", img_s=f"{len(batch.images) / seconds:.1f}")
            r.log.write({"event": "train", "step": r.step, "epoch": epoch, "loss": r.train_loss,
                         "accuracy": float(m.accuracy), "grad_norm": float(m.grad_norm),
                         "learning_rate": float(m.learning_rate), "images_per_s": len(batch.images) / seconds})
            stop = _after_step(r, bar, at_epoch_end=False)
            if stop:
                break
        if not stop and run.eval_every == 0 and r.evaluated_at != r.step and r.step > start:
            stop = _after_step(r, bar, at_epoch_end=True)
        if stop or r.step >= total:
            break
    if stop:
        r.say(f"early stop at step {r.step}: no better {r.key[4:]} in {run.patience} evaluations "
              f"(best {r.best:.4g} at step {r.best_step})")
    if r.evaluated_at != r.step and r.step > start:
        r.evaluate()
    if r.saved_at != r.step and r.step > start:
        r.save()
    r.write_best()


def _after_step(r: _Run, bar, at_epoch_end: bool) -> bool:
    """Evaluate and save as the schedule asks after a step (or at an epoch's end); True to stop."""
    run, stop = r.run, False
    if at_epoch_end or (run.eval_every and r.step % run.eval_every == 0):
        t0 = time.perf_counter()
        stop = r.evaluate()
        if not run.save_every:
            r.save()
        _restart_clock(bar, time.perf_counter() - t0)
    if run.save_every and r.step % run.save_every == 0 and r.saved_at != r.step:
        r.save()
    r.write_best()
    return stop


def _best_record(out_dir: str, key: str, higher: bool) -> tuple[float, int]:
    """The best/ checkpoint's ``key`` and step (a resumed run keeps its best), or the worst value and -1."""
    try:
        with open(os.path.join(out_dir, "best", "best.json"), encoding="utf-8") as f:
            record = json.load(f)
        return float(record[key]), int(record.get("step", -1))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return (-float("inf") if higher else float("inf")), -1
