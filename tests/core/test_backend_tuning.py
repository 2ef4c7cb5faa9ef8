"""The speed tricks are chosen per backend in one place (backend_tuning): with the plain math
(what GPU and TPU run) every switch is honoured and the results equal the CPU tricks' results."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purevedec import attention, backend_tuning, layers


def test_gpu_and_tpu_run_the_plain_math():
    assert backend_tuning.BACKENDS["gpu"] == backend_tuning.PLAIN == backend_tuning.BACKENDS["tpu"]
    assert backend_tuning.BACKENDS["cpu"] == backend_tuning.CPU
    assert not any(vars(backend_tuning.PLAIN).values()) and all(vars(backend_tuning.CPU).values())


def _products(rng):
    x = jnp.asarray(rng.standard_normal((3, 48)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((40, 48)), jnp.float32)
    return x, w


def test_plain_backend_skips_the_grouped_attention_and_matches_it(monkeypatch):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 4, 300, 8)), jnp.float32) for _ in range(3))
    tricks = attention.attention(q, k, v, None, 0.3)
    assert attention.heads_per_group(q.shape, k.shape) is not None
    monkeypatch.setitem(backend_tuning.BACKENDS, jax.default_backend(), backend_tuning.PLAIN)
    assert attention.heads_per_group(q.shape, k.shape) is None
    for a, b in zip(attention.attention(q, k, v, None, 0.3), tricks, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_plain_backend_products_and_remat_gradients_match(monkeypatch):
    x, w = _products(np.random.default_rng(1))
    layer = lambda p, x: jnp.tanh(layers.rows_product(x, p))  # noqa: E731
    grads = lambda: jax.grad(lambda p, x: layers.checkpointed(layer, p, x).sum(), argnums=(0, 1))(w, x)  # noqa: E731
    cpu_out, cpu_grads = layers.rows_product(x, w), grads()
    seen = []
    monkeypatch.setattr(layers, "_few_rows_product", lambda *a: seen.append(a) or pytest.fail("trick ran"))
    monkeypatch.setitem(backend_tuning.BACKENDS, jax.default_backend(), backend_tuning.PLAIN)
    np.testing.assert_allclose(layers.rows_product(x, w), cpu_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(), cpu_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not seen
