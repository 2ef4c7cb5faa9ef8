"""Captioning through the slot engine (``Captioner.captions(..., slots=N)``).

The inputs are read (by the read-ahead threads) and encoded, then stream through ``slots``
decoding slots (``purevedec.generation.engine.stream``): a slot whose caption has ended takes
the next image at once, so a long caption does not hold a batch of short ones. Records come back
in input order, each as soon as every earlier one has ended. The inputs are handed to the
engine ``CHUNK`` at a time (memory stays bounded on a folder of any size; the reader threads
read the next chunk while one decodes).

Greedy captions are token-identical to the batched path's. Sampling draws each image's tokens
from its own key, ``fold_in(key, input index)`` (generate's per-image key form), so an image's
caption does not depend on the others; the batched path draws with one key per batch, so sampled
captions differ between the two paths (each is reproducible). Beam search (and beam sampling)
decodes one image's beams in one slot: its captions, num_return_sequences of them, best first,
are the batched path's. Several sampled sequences per image (without beams), attention maps and
a device mesh are refused.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional

import numpy as np

from ..errors import GenerationError

CHUNK = 64  # inputs handed to the engine at a time (its slots drain at the end of each)
# options the engine takes beside generate's (its stopping rules), given to it as they are
ENGINE_OPTIONS = frozenset({"stop_repeats", "stop_score_variance"})


def generate_options(options: dict) -> dict:
    """``options`` less the engine's own ones: what ``generate``'s option checks read."""
    return {k: v for k, v in options.items() if k not in ENGINE_OPTIONS and v is not None}


def check_slot_options(captioner, slots, options: dict, attention: bool) -> None:
    """``slots`` and the options merged with the checkpoint's defaults must suit the engine:
    a one-line ``ValueError`` naming the option otherwise."""
    from ..generation.options import with_options
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ValueError(f"slots must be a positive int, got {slots!r}")
    if attention:
        raise ValueError("slots: attention maps are not available from the slot engine (use batches)")
    if captioner.mesh is not None:
        raise ValueError("slots: the slot engine runs on one device (no mesh)")
    gen = with_options(captioner.generation_config, generate_options(options))
    if gen.num_return_sequences != 1 and gen.num_beams == 1:
        raise ValueError(f"slots: num_return_sequences={gen.num_return_sequences} without beams: the slot engine "
                         "samples one caption per image")


def _budget(captioner, options: dict) -> int:
    """New tokens per image, as generate derives them (max_new_tokens, else max_length - 1, else 20)."""
    from ..generation.options import with_options
    from ..generation.plan import lengths
    gen = with_options(captioner.generation_config, generate_options(options))
    return lengths(gen, 1, captioner.config)[0] - 1


def slot_captions(captioner, images: list, *, slots: int, errors: str, key, workers: int,
                  options: dict, read, caption) -> Iterator:
    """Per input, in order, what ``Captioner.captions`` yields (its ``errors`` modes). The
    inputs go through the engine ``CHUNK`` (at least 4 x slots) at a time, so memory holds two
    chunks of pixels whatever the number of inputs; the reader threads read the next chunk
    while this one decodes. ``read(image, index)`` reads one input as the Captioner does;
    ``caption(decoded, eos)`` turns one engine output into its list of ``Caption``."""
    from .loader_pipeline import read_ahead
    options = {k: v for k, v in options.items() if v is not None}
    options.pop("dtype", None)
    chunk, slots = max(CHUNK, 4 * slots), min(slots, len(images))
    with contextlib.closing(read_ahead(images, read, workers=workers, window=chunk)) as loaded:
        pending, first = [], 0
        for item in loaded:
            if item.error is not None:   # not an image's fault: a bug
                raise item.error
            pending.append(item.value)
            stop = errors == "raise" and item.value.error is not None  # the inputs before it first
            if stop or len(pending) == chunk or item.index == len(images) - 1:
                yield from _decode(captioner, pending, first, slots, errors, key, options, caption)
                pending, first = [], item.index + 1
            if stop:
                return


def _decode(captioner, pending: list, first: int, slots: int, errors: str, key, options: dict,
            caption) -> Iterator:
    """The results of ``pending`` (inputs ``first``... of the call) through the engine."""
    import jax

    from ..generation.engine import stream
    good = [i for i, p in enumerate(pending) if p.pixels is not None]
    eos = options.get("eos_token_id", captioner.generation_config.eos_token_id)
    if not good:   # nothing to decode: only the inputs' errors
        yield from _in_order(captioner, pending, iter(()), eos, errors, caption)
        return
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(np.asarray(good, np.int32) + first)
    decoded = stream(captioner.params, [pending[i].pixels for i in good], captioner.config,
                     budgets=[_budget(captioner, options)] * len(good), keys=keys, slots=slots,
                     dtype=captioner.dtype if captioner.dtype is not None else np.float32, **options)
    yield from _in_order(captioner, pending, decoded, eos, errors, caption)


def _in_order(captioner, pending, decoded, eos, errors: str, caption) -> Iterator:
    for p in pending:
        if p.pixels is not None:
            result: Optional[list] = caption(next(decoded), eos)
            if not all(math.isfinite(c.score) for c in result):
                p.error = GenerationError(f"{p.name}: generation turned non-finite (NaN or infinite scores): the "
                                          "weights or the compute dtype overflow (try float32)")
            p.result = result
        yield from captioner._results([p], errors)
