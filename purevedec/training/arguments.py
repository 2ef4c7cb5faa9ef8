"""``purevedec train``'s flags checked before anything loads: each bad value is one line naming
the flag (the command exits 2), never a traceback or a failure after minutes of loading."""

from __future__ import annotations

import math
import os

from ..errors import ConfigError

# flag -> (attribute, smallest allowed value); None values are left to mean "not set"
_INTEGERS = {
    "--epochs": ("epochs", 1), "--batch-size": ("batch_size", 1), "--captions-per-image": ("captions_per_image", 1),
    "--max-length": ("max_length", 2), "--warmup-steps": ("warmup_steps", 0),
    "--accumulation-steps": ("accumulation_steps", 1), "--eval-every": ("eval_every", 0),
    "--save-every": ("save_every", 0), "--keep": ("keep", 1), "--threads": ("threads", 1),
    "--max-steps": ("max_steps", 1), "--patience": ("patience", 1), "--eval-max-tokens": ("eval_max_tokens", 1),
}
# flag -> (attribute, low, high, whether high itself is allowed)
_FRACTIONS = {
    "--learning-rate": ("learning_rate", 0.0, math.inf, False), "--weight-decay": ("weight_decay", 0.0, math.inf, False),
    "--max-grad-norm": ("max_grad_norm", 0.0, math.inf, False), "--label-smoothing": ("label_smoothing", 0.0, 1.0, False),
    "--validation-fraction": ("validation_fraction", 0.0, 1.0, False),
}
SEED_LIMIT = 2 ** 32


def check_arguments(args) -> None:
    """Raise a ConfigError naming the first flag with a value it cannot take."""
    for flag, (name, low) in _INTEGERS.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            raise ConfigError(f"{flag} {value}: must be {'positive' if low == 1 else f'at least {low}'}")
    for flag, (name, low, high, _) in _FRACTIONS.items():
        value = getattr(args, name)
        if not (math.isfinite(value) and low <= value < high):
            where = f"in [{low:g}, {high:g})" if math.isfinite(high) else f"a finite number >= {low:g}"
            raise ConfigError(f"{flag} {value}: must be {where}")
    if args.learning_rate == 0:
        raise ConfigError("--learning-rate 0: nothing would train")
    if not 0 <= args.seed < SEED_LIMIT:
        raise ConfigError(f"--seed {args.seed}: must be in [0, 2^32)")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ConfigError(f"--out {args.out}: exists and is not a folder")
    cache = getattr(args, "compile_cache", None)
    if cache not in (None, "none") and os.path.exists(cache) and not os.path.isdir(cache):
        raise ConfigError(f"--compile-cache {cache}: exists and is not a folder")
    if not os.path.isdir(args.data):
        raise ConfigError(f"{args.data}: not a folder (DATA is a folder of images with captions.jsonl or captions.csv)")
    if args.batch_size % args.accumulation_steps:
        raise ConfigError(f"--batch-size {args.batch_size} is not a multiple of --accumulation-steps "
                          f"{args.accumulation_steps}: each micro-batch takes the same number of images")
