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
    if ``tensorboard``, writes their numbers as scalars."""

    def __init__(self, out_dir: str, tensorboard: bool = False):
        self.file = open(os.path.join(out_dir, "metrics.jsonl"), "a", encoding="utf-8")
        self.board = None
        if tensorboard:
            self.board = tensorboard_writer_class()(logdir=os.path.join(out_dir, "tensorboard"), flush_secs=30)

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.board is not None and "step" in record:
            for key, value in record.items():
                if key not in ("event", "step", "epoch") and _is_number(value):
                    self.board.add_scalar(f"{record['event']}/{key}", float(value), int(record["step"]))

    def close(self) -> None:
        self.file.close()
        if self.board is not None:
            self.board.close()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
