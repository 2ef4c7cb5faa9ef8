"""Training: the loss (VisionEncoderDecoderModel's semantics), label shifting, and (with the
``train`` extra, optax) the train step, optimizer, checkpointed state and fine-tuning loop.

Imports the model core, generation, checkpoints and captioning; nothing imports it back.
The optax-based names (``TrainConfig``, ``TrainState``, ``init_state``, ``make_train_step``,
``save_state``, ...; documented in the ``optim``, ``step`` and ``state_io`` modules) load on first
use, so ``import purevedec`` works without optax; ``__all__`` lists only what loads at import.
"""

import importlib

from .cross_entropy import IGNORE_INDEX, LossOutput, loss, loss_core, shift_right
from .labels import caption_labels

_NEEDS_OPTAX = {
    "TrainConfig": "optim", "learning_rate_schedule": "optim", "make_optimizer": "optim",
    "TrainState": "step", "StepMetrics": "step", "init_state": "step", "make_train_step": "step",
    "train_step": "step", "save_state": "state_io", "restore_state": "state_io",
}

__all__ = ["IGNORE_INDEX", "LossOutput", "caption_labels", "loss", "loss_core", "shift_right"]


def __getattr__(name):
    if name in _NEEDS_OPTAX:
        return getattr(importlib.import_module(f".{_NEEDS_OPTAX[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
