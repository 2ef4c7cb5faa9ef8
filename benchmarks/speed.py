"""Speed of purevedec and transformers (PyTorch, eager) on the same inputs, in this process:
the encoder alone, and greedy / beam generation of a fixed number of tokens.

Decode time per token is (time for N tokens - time for 1 token) / (N - 1), N being the tokens the
call really generated (fewer than asked when every row stops at EOS): the encoder, the prompt step
and the per-call overheads cancel, for both libraries alike."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import purevedec as pv

from .timing import timed


def pixels(config, batch: int, images: np.ndarray | None = None) -> np.ndarray:
    """The benchmark's images: the user's preprocessed ``images`` repeated to fill the batch, else
    N(0,1) pixels from RandomState(0), the largest batch sliced (the seed-Flax script draws the
    same ones)."""
    if images is not None:
        return np.resize(images, (batch,) + images.shape[1:]).astype(np.float32)
    h, w = config.encoder.image_size
    return np.random.RandomState(0).randn(batch, config.encoder.num_channels, h, w).astype(np.float32)


class Purevedec:
    name = "purevedec"

    def __init__(self, params, config, dtype):
        self.config, self.dtype = config, jnp.dtype(dtype)
        self.params = jax.tree.map(lambda a: a.astype(self.dtype), params)  # cast once, not per call

    def encoder(self, px):
        x = jnp.asarray(px, self.dtype)
        return lambda: pv.encode(self.params, x, self.config, dtype=self.dtype).block_until_ready()

    def generate(self, px, beams, tokens):
        x = jnp.asarray(px, self.dtype)
        return lambda: pv.generate(self.params, x, self.config, num_beams=beams, max_new_tokens=tokens,
                                   dtype=self.dtype).sequences


class Transformers:
    name = "transformers"

    def __init__(self, model, dtype):
        import torch
        self.torch = torch
        self.tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[jnp.dtype(dtype).name]
        # Its default (and fastest) attention: the reference models are built with the eager
        # one, which returns attention weights for the parity tests.
        model.set_attn_implementation("sdpa")
        self.model = model.to(self.tdtype)

    def encoder(self, px):
        x = self.torch.tensor(px, dtype=self.tdtype)

        def run():
            with self.torch.no_grad():
                return self.model.encoder(pixel_values=x).last_hidden_state
        return run

    def generate(self, px, beams, tokens):
        x = self.torch.tensor(px, dtype=self.tdtype)

        def run():
            with self.torch.no_grad():
                return self.model.generate(pixel_values=x, num_beams=beams, max_new_tokens=tokens).numpy()
        return run


def restore_reference(model) -> None:
    """The torch model back as the parity tests use it (``Transformers`` casts it and sets sdpa)."""
    import torch
    model.to(torch.float32)
    model.set_attn_implementation("eager")


# Below this a per-token difference of two timed calls is noise (perf_counter's resolution, or
# less than a microsecond of difference between the two calls).
TIMER_RESOLUTION_S = max(time.get_clock_info("perf_counter").resolution, 1e-6)


def run_library(lib, config, batches, beams_list, tokens: int, log=print, images=None,
                with_encoder: bool = True) -> list[dict]:
    """Rows of results: one per (workload, batch) for this library and dtype (the encoder alone
    too unless ``with_encoder`` is False)."""
    rows = []
    for batch in batches:
        px = pixels(config, batch, images)
        if with_encoder:
            first, warm, _ = timed(lib.encoder(px))
            rows.append(dict(workload="encoder", batch=batch, first_s=first, warm_s=warm))
            log(f"  {lib.name} encoder b{batch}: {warm:.3f} s (first {first:.1f} s)")
        for beams in beams_list:
            first, warm, seqs = timed(lib.generate(px, beams, tokens))
            _, one, _ = timed(lib.generate(px, beams, 1))
            name = "greedy" if beams == 1 else f"beam-{beams}"
            generated = int(np.shape(seqs)[1] - 1)
            per_token = (warm - one) / (generated - 1) if generated > 1 else None
            shown = f"{per_token * 1e3:.1f} ms/token" if per_token is not None else "stopped after one token"
            if per_token is not None and per_token <= TIMER_RESOLUTION_S:
                # the N-token call was not measurably slower than the one-token call: noise, not a time
                per_token, shown = None, "per-token time below the timer's resolution (not measurable here)"
            rows.append(dict(workload=name, batch=batch, first_s=first, warm_s=warm, per_token_s=per_token,
                             new_tokens=generated, sequences=np.asarray(seqs).tolist()))
            log(f"  {lib.name} {name} b{batch}: {warm:.3f} s, {shown} (first {first:.1f} s)")
    return rows


def compare(model, params, config, batches, dtypes, tokens: int, log=print, images=None,
            with_encoder: bool = True) -> list[dict]:
    """Both libraries, every dtype / workload (encoder, greedy, beam-4) / batch, merged into one
    record per cell: ``pv_s``/``hf_s`` (best warm call), ``*_first_s``, ``*_token_ms`` and the
    generated ``*_sequences``. Leaves ``model`` in float32 with eager attention."""
    cells = {}
    for dtype in dtypes:
        for lib in (Purevedec(params, config, dtype), Transformers(model, dtype)):
            for r in run_library(lib, config, batches, (1, 4), tokens, log, images, with_encoder):
                key = (r["workload"], r["batch"], dtype)
                tag = "pv" if lib.name == "purevedec" else "hf"
                cell = cells.setdefault(key, {"workload": r["workload"], "batch": r["batch"], "dtype": dtype})
                cell.update({f"{tag}_s": r["warm_s"], f"{tag}_first_s": r["first_s"]})
                if "per_token_s" in r:  # None when every row stopped after one token
                    ms = None if r["per_token_s"] is None else r["per_token_s"] * 1e3
                    cell.update({f"{tag}_token_ms": ms, f"{tag}_sequences": r["sequences"]})
    restore_reference(model)
    return list(cells.values())
