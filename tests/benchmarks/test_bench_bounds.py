"""The benchmark's lower bounds, checked against independent counts: the bytes a decode step
reads against the params tree itself, the FLOPs against XLA's own cost analysis of the compiled
programs, and the per-token time of a run that stops early at EOS."""

import math

import jax
import jax.numpy as jnp
import numpy as np

import purevedec as pv
from benchmarks import costs, run, speed
from purevedec.params import flatten

# Matmuls dominate at this width, so XLA's count (which adds norms, softmax, GELU) is close.
CONFIG = pv.Config(
    encoder=pv.ViTConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024,
                         image_size=64, patch_size=16),
    decoder=pv.GPT2Config(vocab_size=512, n_positions=64, n_embd=256, n_layer=2, n_head=4,
                          bos_token_id=0, eos_token_id=1),
    decoder_start_token_id=0)


def test_decode_bytes_equal_the_weights_a_step_reads():
    """One image, an empty self cache: every decoder weight but the position table (one row
    read) and the cross K/V kernels (used once per image, in init_cache), plus the cross K/V."""
    params = pv.init_params(CONFIG, jax.random.key(0))
    read = sum(math.prod(np.shape(x)) for path, x in flatten(params["decoder"]).items()
               if path != "wpe" and not (".cross.k." in f".{path}." or ".cross.v." in f".{path}."))
    read += CONFIG.decoder.n_embd  # the position row
    s = 1 + CONFIG.encoder.num_patches
    cross = CONFIG.decoder.n_layer * 2 * s * CONFIG.decoder.n_embd
    assert costs.decode_bytes(CONFIG, 1, 1, 0, 4) == 4 * (read + cross)
    # each cached token adds K and V per layer and row
    more = costs.decode_bytes(CONFIG, 2, 3, 5, 2) - costs.decode_bytes(CONFIG, 2, 3, 0, 2)
    assert more == 2 * (CONFIG.decoder.n_layer * 2 * 3 * 2 * 5 * CONFIG.decoder.n_embd)


def _xla_flops(fn, *args) -> float:
    return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]


def test_encoder_flops_agree_with_xla():
    params = pv.init_params(CONFIG, jax.random.key(0))
    pixels = jnp.zeros((1, 3, 64, 64), jnp.float32)
    xla = _xla_flops(lambda p, x: pv.encode(p, x), params, pixels)
    ours = costs.encoder_flops(CONFIG)
    assert 1.0 <= xla / ours < 1.15, (xla, ours)


def test_decode_flops_agree_with_xla():
    params = pv.init_params(CONFIG, jax.random.key(0))
    enc = pv.encode(params, jnp.zeros((2, 3, 64, 64), jnp.float32))
    cache = pv.init_cache(params, enc, max_len=8, rows_per_image=3)
    ids = jnp.zeros((6, 1), jnp.int32)
    xla = _xla_flops(lambda p, c, i: pv.step(p, c, i, donate=False)[0], params, cache, ids)
    # the step attends over the whole 8-slot buffer (masked), so count 8 cached tokens
    ours = costs.decode_flops(CONFIG, 2, 3, 8)
    assert 1.0 <= xla / ours < 1.15, (xla, ours)


def test_bound_is_the_larger_of_bandwidth_and_compute():
    cell = {"workload": "greedy", "batch": 1, "dtype": "float32"}
    slow_memory = {"matmul_flops": 1e15, "matmul_flops_bf16": 1e15, "read_bytes_per_s": 1e6}
    run._bounds([cell], CONFIG, slow_memory, 16)
    step = costs.decode_bytes(CONFIG, 1, 1, 8, 4) / 1e6
    assert math.isclose(cell["bound_token_ms"], step * 1e3)
    slow_compute = {"matmul_flops": 1e6, "matmul_flops_bf16": 1e6, "read_bytes_per_s": 1e15}
    run._bounds([cell], CONFIG, slow_compute, 16)
    step = costs.decode_flops(CONFIG, 1, 1, 8) / 1e6
    assert math.isclose(cell["bound_token_ms"], step * 1e3)
    assert math.isclose(cell["bound_s"], costs.encoder_flops(CONFIG) / 1e6 + 16 * step)


class _StopsEarly:
    """A library whose generate takes 1 s per token and stops at EOS after 4 of the 16 asked."""
    name = "fake"

    def encoder(self, px):
        return lambda: None

    def generate(self, px, beams, tokens):
        return lambda: np.zeros((len(px), 1 + min(tokens, 4)), np.int32)


def test_per_token_time_counts_the_tokens_really_generated(monkeypatch):
    def fake_timed(fn):
        out = fn()
        seconds = 0.5 + 1.0 * (0 if out is None else out.shape[1] - 1)
        return seconds, seconds, out
    monkeypatch.setattr(speed, "timed", fake_timed)
    rows = speed.run_library(_StopsEarly(), CONFIG, [1], (1,), 16, log=lambda s: None,
                             images=np.zeros((1, 3, 64, 64), np.float32))
    greedy = next(r for r in rows if r["workload"] == "greedy")
    assert greedy["new_tokens"] == 4
    assert math.isclose(greedy["per_token_s"], 1.0)  # (4.5 - 1.5) / 3, not / 15
