"""param_shapes is the single description of the tree: init, eval_shape and loading agree."""

import jax
import jax.numpy as jnp
import numpy as np

import purevedec as pv
from conftest import rand_ids, rand_pixels


def test_init_params_follow_param_shapes(tiny):
    config = pv.load_config(tiny[1])
    params = pv.init_params(config, jax.random.key(0))
    pv.check_params(params, config)
    assert params["decoder"]["blocks"][0]["ln1"]["scale"].tolist() == [1.0] * 24
    assert float(jnp.abs(params["decoder"]["blocks"][0]["attn"]["qkv"]["b"]).max()) == 0.0


def test_init_is_reproducible_and_key_dependent(tiny):
    config = pv.load_config(tiny[1])
    a, b = pv.init_params(config, jax.random.key(0)), pv.init_params(config, jax.random.key(0))
    c = pv.init_params(config, jax.random.key(1))
    np.testing.assert_array_equal(a["decoder"]["wte"], b["decoder"]["wte"])
    assert not np.allclose(a["decoder"]["wte"], c["decoder"]["wte"])


def test_init_std_follows_transformers(tiny):
    config = pv.load_config(tiny[1])
    p = pv.init_params(config, jax.random.key(0))
    std = lambda a: float(np.std(np.asarray(a)))
    assert abs(std(p["decoder"]["wte"]) - 0.02) < 0.003
    # GPT-2 scales residual projections by 1/sqrt(2 * n_layer) = 1/2 here
    assert abs(std(p["decoder"]["blocks"][0]["mlp"]["out"]["w"]) - 0.01) < 0.002


def test_eval_shape_of_forward(tiny):
    config = pv.load_config(tiny[1])
    shapes = jax.eval_shape(lambda k: pv.init_params(config, k), jax.random.key(0))
    pv.check_params(shapes, config)
    params = pv.init_params(config, jax.random.key(0), dtype=jnp.bfloat16)
    out = pv.forward(params, rand_pixels(2), rand_ids(2, 3), config, dtype=jnp.bfloat16)
    assert out.shape == (2, 3, 50) and out.dtype == jnp.float32
