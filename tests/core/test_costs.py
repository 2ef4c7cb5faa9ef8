"""count_params against transformers' parameter count, flops against XLA's cost analysis."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import purevedec as pv
from conftest import save_reference
from models import make_reference


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    model = make_reference(enc_kw=dict(hidden_size=64, intermediate_size=128, image_size=32),
                           dec_kw=dict(n_embd=64, vocab_size=300))
    params, _ = pv.load(save_reference(model, tmp_path_factory.mktemp("costs") / "small"))
    return model, params


def test_count_params_equals_transformers(small):
    model, params = small
    # transformers' ViTModel carries a pooler the captioning model never uses; purevedec does not load it
    expected = sum(p.numel() for name, p in model.named_parameters() if ".pooler." not in name)
    assert pv.count_params(params) == expected


def test_flops_match_xla_cost_analysis(small):
    _, params = small
    px, ids = jnp.zeros((2, 3, 32, 32)), jnp.zeros((2, 8), jnp.int32)
    calls = {
        "forward": (lambda p, x, i: pv.forward(p, x, i), (params, px, ids)),
        "encode": (lambda p, x: pv.encode(p, x), (params, px)),
        "grad": (jax.grad(lambda p, x, i: jnp.sum(pv.forward(p, x, i))), (params, px, ids)),
    }
    for name, (fn, args) in calls.items():
        xla = jax.jit(fn).lower(*args).compile().cost_analysis()
        xla = (xla[0] if isinstance(xla, list) else xla)["flops"]
        assert abs(pv.flops(fn, *args) / xla - 1) < 0.02, name
    # the encoder's share: a forward costs more than its encoder alone
    assert pv.flops(calls["forward"][0], *calls["forward"][1]) > pv.flops(calls["encode"][0], *calls["encode"][1])
