"""Public functions and types no other test reaches directly: ``cross_kv`` against transformers'
cross-attention keys and values, the error hierarchy, ``enable_compilation_cache``."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

import purevedec as pv
from conftest import maxdiff, rand_pixels

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cross_kv_equals_transformers_cross_attention_keys_and_values(tiny):
    """Per decoder layer, GPT-2's crossattention.c_attn over the projected encoder states, split
    into K and V and into heads [B,H,S,K]."""
    import torch
    model, path = tiny
    params, config = pv.load(path)
    px = rand_pixels(2)
    kv = pv.cross_kv(params, pv.encode(params, px, config), config)
    with torch.no_grad():
        enc = model.enc_to_dec_proj(model.encoder(pixel_values=torch.tensor(px)).last_hidden_state)
        heads, width = model.config.decoder.n_head, model.config.decoder.n_embd
        assert len(kv) == len(model.decoder.transformer.h) == 2
        for (k, v), block in zip(kv, model.decoder.transformer.h):
            want_k, want_v = block.crossattention.c_attn(enc).split(width, dim=2)
            for got, want in ((k, want_k), (v, want_v)):
                want = want.view(2, -1, heads, width // heads).transpose(1, 2)
                assert got.shape == tuple(want.shape)
                assert maxdiff(got, want) < 1e-5


def test_cross_kv_refuses_states_of_the_wrong_width(tiny):
    params, config = pv.load(tiny[1])
    with pytest.raises(ValueError, match=r"\b24\b"):
        pv.cross_kv(params, np.zeros((1, 17, 23), np.float32), config)


def test_every_package_error_is_a_purevedec_error_and_a_builtin_one():
    """One ``except pv.PurevedecError`` catches any of them, and code catching ValueError keeps
    working; ModelNotFound is a CheckpointError."""
    errors = {name: cls for name, cls in vars(pv).items()
              if inspect.isclass(cls) and issubclass(cls, Exception) and cls.__module__.startswith("purevedec")}
    assert set(errors) == {"CheckpointError", "ConfigError", "GenerationError", "ImageError", "ModelNotFound",
                           "ParamsError", "PurevedecError", "TokenizerError"}
    for name, cls in errors.items():
        assert issubclass(cls, pv.PurevedecError), name
        if cls is not pv.PurevedecError:
            assert issubclass(cls, ValueError), name
    assert issubclass(pv.ModelNotFound, pv.CheckpointError)
    assert not issubclass(pv.PurevedecError, ValueError)  # the base does not claim every ValueError


def test_errors_raised_by_the_package_are_caught_by_the_base(tmp_path):
    for call, error in ((lambda: pv.load(str(tmp_path / "missing")), pv.CheckpointError),
                        (lambda: pv.parse_config({"model_type": "vision-encoder-decoder"}), pv.ConfigError)):
        with pytest.raises(pv.PurevedecError) as caught:
            call()
        assert type(caught.value) is error


def test_enable_compilation_cache_stores_and_reuses_programs(tmp_path):
    """In two fresh processes: the first writes the compiled program under the directory it was
    given (and returns that directory), the second finds it there instead of compiling."""
    code = ("import sys, jax, jax.numpy as jnp, purevedec as pv; "
            "from jax._src import monitoring; hits = []; "
            "monitoring.register_event_listener(lambda e, **k: hits.append(e) if e.endswith('cache_hits') else None); "
            "print(pv.enable_compilation_cache(sys.argv[1])); "
            "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready(); "
            "print(len(hits))")
    cache = tmp_path / "xla"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}  # nothing but this call turns it on
    runs = [subprocess.run([sys.executable, "-c", code, str(cache)], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    (first_dir, first_hits), (_, second_hits) = (run.stdout.split() for run in runs)
    assert first_dir == str(cache) and any(cache.iterdir())
    assert int(first_hits) == 0 and int(second_hits) >= 1  # the jitted program (and jnp.ones's) read back
