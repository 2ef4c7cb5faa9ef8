"""The training run's metrics log: one JSON object a line in ``<out>/metrics.jsonl`` and, with the
``tensorboard`` extra (tensorboardX: the event-file writer alone, without TensorFlow or torch), the
same numbers as TensorBoard scalars under ``<out>/tensorboard``.

A record ``{"event": "train", "step": 3, "loss": 2.1, ...}`` becomes the scalars ``train/loss``, ...
at step 3; ``step`` and ``epoch`` are the x axis, not scalars, and non-numbers are skipped.
"""

from __future__ import annotations

import json
import math
import os

TENSORBOARD_HINT = "--tensorboard needs tensorboardX: pip install 'purevedec[tensorboard]'"


def tensorboard_writer_class():
    """tensorboardX's SummaryWriter, or an ImportError naming the extra that brings it."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError(TENSORBOARD_HINT) from None
    return SummaryWriter


class MetricsLog:
    """Appends records to ``<out_dir>/metrics.jsonl`` (flushed each time: a crash keeps them) and,
    if ``tensorboard``, writes their numbers as scalars.

    ``resume_step``: the step the run starts from. Records of later steps (written by a run that
    went on past its last checkpoint before it stopped) are dropped from the file, and TensorBoard
    purges its events after that step, so a resumed run writes no duplicate rows. ``records``
    holds what the plot draws: the kept and new train losses and evaluation records."""

    def __init__(self, out_dir: str, tensorboard: bool = False, resume_step: int = 0):
        path = os.path.join(out_dir, "metrics.jsonl")
        self.records: list[dict] = _keep_until(path, resume_step) if os.path.isfile(path) else []
        self.file = open(path, "a", encoding="utf-8")
        self.board = None
        if tensorboard:
            self.board = tensorboard_writer_class()(logdir=os.path.join(out_dir, "tensorboard"), flush_secs=30,
                                                    purge_step=resume_step + 1 if resume_step else None)

    def write(self, record: dict) -> None:
        self._remember(record)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.board is not None and "step" in record:
            for key, value in record.items():
                if key not in ("event", "step", "epoch") and _is_number(value):
                    self.board.add_scalar(f"{record['event']}/{key}", float(value), int(record["step"]))

    def _remember(self, record: dict) -> None:
        kept = _plot_record(record)
        if kept is not None:
            self.records.append(kept)

    def close(self) -> None:
        self.file.close()
        if self.board is not None:
            self.board.close()


def _keep_until(path: str, step: int) -> list[dict]:
    """Rewrite ``path`` (atomically) without the records after ``step`` and without broken lines
    (a partial last line from a killed run); returns the kept train and eval records, trimmed."""
    kept: list[dict] = []
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(path, encoding="utf-8", errors="replace") as src, open(tmp, "w", encoding="utf-8") as dst:
        for line in src:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or not _is_number(record.get("step", 0)) or record.get("step", 0) > step:
                continue
            dst.write(json.dumps(record) + "\n")
            if _plot_record(record) is not None:
                kept.append(_plot_record(record))
    os.replace(tmp, path)
    return kept


def _plot_record(record: dict) -> dict | None:
    """What the plot needs of a record: a train row's step and loss, an eval row whole."""
    if record.get("event") == "train":
        return {"event": "train", "step": record.get("step"), "loss": record.get("loss")}
    return record if record.get("event") == "eval" else None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
