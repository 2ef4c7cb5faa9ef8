"""remat on forward / encode / decode: the same gradients as without, in less memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purevedec as pv
from conftest import rand_ids, rand_pixels, save_reference
from models import make_reference


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    model = make_reference(enc_kw=dict(num_hidden_layers=6, image_size=32), dec_kw=dict(n_layer=6))
    return pv.load(save_reference(model, tmp_path_factory.mktemp("remat") / "deep"))[0]


def test_remat_gives_the_same_gradients_in_less_memory(deep):
    px, ids = jnp.asarray(rand_pixels(8, h=32, w=32)), jnp.asarray(rand_ids(8, 12))
    enc = pv.encode(deep, px)
    losses = {
        "forward": lambda p, remat: jnp.sum(jnp.sin(pv.forward(p, px, ids, remat=remat))),
        "encode": lambda p, remat: jnp.sum(jnp.sin(pv.encode(p, px, remat=remat))),
        "decode": lambda p, remat: jnp.sum(jnp.sin(pv.decode(p, ids, enc, remat=remat))),
    }
    grads = {name: jax.jit(jax.grad(loss), static_argnums=1) for name, loss in losses.items()}  # one program each
    for name, grad in grads.items():
        plain, remat = (grad(deep, r) for r in (False, True))
        for a, b in zip(jax.tree.leaves(remat), jax.tree.leaves(plain), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5, err_msg=name)
    temp = {r: grads["forward"].lower(deep, r).compile().memory_analysis().temp_size_in_bytes for r in (False, True)}
    assert temp[True] < 0.8 * temp[False], temp
