"""Training: the loss (VisionEncoderDecoderModel's semantics), label shifting, and (with the
``train`` extra, optax) the train step, optimizer, checkpointed state and fine-tuning loop.

Imports the model core, generation, checkpoints and captioning; nothing imports it back.
"""

from .cross_entropy import IGNORE_INDEX, LossOutput, loss, loss_core, shift_right

__all__ = ["IGNORE_INDEX", "LossOutput", "loss", "loss_core", "shift_right"]
