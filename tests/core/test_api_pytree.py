"""Issue 10 section 1: params carry their config as a leafless static pytree node, so the
three-argument call works and every JAX transformation and library sees only the weights.
Also the return-type rule of forward and encode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import purevedec as pv
from purevedec import model as pv_model
from api_util import init, pixels, tiny_config, weights_only, with_dropout

CONFIG = tiny_config()  # no dropout: a key changes nothing unless a config with dropout is passed
PIXELS, IDS = pixels(2), np.random.RandomState(1).randint(3, 40, (2, 5)).astype(np.int32)


@pytest.fixture(scope="module")
def params():
    return init(CONFIG)


@pytest.fixture(scope="module")
def logits(params):
    return np.asarray(pv.forward(params, PIXELS, IDS, CONFIG))


@jax.jit
def _loss(p):
    """Mean next-token cross-entropy of the captions, computed from forward's logits."""
    lp = jax.nn.log_softmax(pv.forward(p, PIXELS, IDS)[:, :-1])
    return -jnp.mean(jnp.take_along_axis(lp, jnp.asarray(IDS)[:, 1:, None], -1))


_loss_and_grad = jax.jit(jax.value_and_grad(_loss))  # one compile, shared by the grad and optax tests


def _map(fn, *trees):
    """jax.tree.map, jitted (eager, each leaf shape would compile its own little kernel)."""
    return jax.jit(lambda *t: jax.tree.map(fn, *t))(*trees)


# --- the params carry the config -----------------------------------------------------------------

def test_params_from_init_load_and_compose_carry_their_config(params, tiny, tmp_path):
    assert params["config"] == CONFIG
    loaded, config = pv.load(tiny[1])  # the two-value form keeps working
    assert loaded["config"] == config and isinstance(loaded["generation_config"], pv.GenerationConfig)
    from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel
    from models import TINY_DECODER, TINY_ENCODER
    ViTModel(ViTConfig(**TINY_ENCODER)).save_pretrained(tmp_path / "enc")
    GPT2LMHeadModel(GPT2Config(**TINY_DECODER)).save_pretrained(tmp_path / "dec")
    composed, config = pv.from_encoder_decoder_pretrained(str(tmp_path / "enc"), str(tmp_path / "dec"),
                                                          key=jax.random.key(0))
    assert composed["config"] == config


def test_the_config_is_a_leafless_node(params):
    leaves = jax.tree.leaves(params)
    assert len(leaves) == len(jax.tree.leaves(weights_only(params)))
    assert not any(isinstance(x, pv.Config) for x in leaves)
    # The config lives in the tree structure (static): unflattening restores it.
    assert jax.tree.unflatten(jax.tree.structure(params), leaves)["config"] is CONFIG


def test_three_arguments_equal_four(params, logits):
    np.testing.assert_array_equal(pv.forward(params, PIXELS, IDS), logits)
    np.testing.assert_array_equal(pv.forward(weights_only(params), PIXELS, IDS, CONFIG), logits)
    with pytest.raises(pv.ParamsError, match="carry no config"):
        pv.forward(weights_only(params), PIXELS, IDS)


def test_every_function_takes_the_config_optionally(params, logits, tmp_path):
    w = weights_only(params)
    enc = pv.encode(params, PIXELS)
    np.testing.assert_array_equal(enc, pv.encode(w, PIXELS, CONFIG))
    np.testing.assert_array_equal(pv.decode(params, IDS, enc), logits)
    np.testing.assert_array_equal(pv.decode(w, IDS, enc, CONFIG), logits)
    cache = pv.init_cache(params, enc, max_len=8)
    step_logits, _ = pv.step(params, cache, IDS)
    np.testing.assert_allclose(step_logits, logits, atol=1e-5)
    cache = pv.init_cache(w, enc, CONFIG, 8)
    np.testing.assert_allclose(pv.step(w, cache, IDS, CONFIG)[0], logits, atol=1e-5)
    pv.save(params, tmp_path / "a")
    pv.save(w, CONFIG, tmp_path / "b")
    assert (tmp_path / "a" / "config.json").read_text() == (tmp_path / "b" / "config.json").read_text()


def test_an_explicit_config_wins(params, logits):
    """params carry a config without dropout; an explicit one with dropout turns it on."""
    key = jax.random.key(7)
    np.testing.assert_array_equal(pv.forward(params, PIXELS, IDS, key=key), logits)
    dropped = pv.forward(params, PIXELS, IDS, with_dropout(CONFIG, 0.5), key=key)
    assert np.isfinite(dropped).all() and np.abs(np.asarray(dropped) - logits).max() > 1e-2


# --- JAX transformations and libraries see only the weights ----------------------------------------

def test_tree_map(params, logits):
    doubled = jax.tree.map(lambda x: 2 * x, params)  # eager, as a user would
    assert doubled["config"] is CONFIG
    np.testing.assert_array_equal(doubled["decoder"]["wte"], 2 * np.asarray(params["decoder"]["wte"]))
    back = _map(lambda x: x / 2, doubled)
    np.testing.assert_allclose(pv.forward(back, PIXELS, IDS), logits, atol=1e-6)


def test_grad(params):
    loss, grads = _loss_and_grad(params)
    assert grads["config"] == CONFIG
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params)):
        assert g.shape == p.shape and g.dtype == p.dtype
    # The gradient is the real one: the loss along -grad falls by about eps * |grad|^2.
    norm2 = sum(float(np.sum(np.square(np.asarray(g)))) for g in jax.tree.leaves(grads))
    eps = 1e-2 / np.sqrt(norm2)
    moved = _map(lambda p, g: p - eps * g, params, grads)
    assert norm2 > 0
    np.testing.assert_allclose(float(loss - _loss(moved)), eps * norm2, rtol=0.05)


def test_stop_gradient(params, logits):
    frozen = jax.lax.stop_gradient(params)
    assert frozen["config"] is CONFIG
    np.testing.assert_array_equal(pv.forward(frozen, PIXELS, IDS), logits)
    grads = jax.jit(jax.grad(lambda p: _loss(jax.lax.stop_gradient(p))))(params)
    assert all(not np.asarray(g).any() for g in jax.tree.leaves(grads))


def test_cast_to_bf16(params, logits):
    bf16 = _map(lambda x: x.astype(jnp.bfloat16), params)
    assert {x.dtype for x in jax.tree.leaves(bf16)} == {jnp.dtype(jnp.bfloat16)} and bf16["config"] is CONFIG
    out = pv.forward(bf16, PIXELS, IDS, dtype=jnp.bfloat16)
    assert out.dtype == jnp.float32 and out.shape == logits.shape
    assert np.abs(np.asarray(out) - logits).max() < 0.05 * np.abs(logits).max()


def test_optax_adamw_steps_lower_the_loss(params):
    import optax
    opt = optax.adamw(1e-2)
    state = opt.init(params)

    @jax.jit
    def train_step(p, state):
        loss, grads = _loss_and_grad(p)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss
    p, losses = params, []
    for _ in range(3):
        p, state, loss = train_step(p, state)
        losses.append(float(loss))
    assert p["config"] is CONFIG
    assert float(_loss(p)) < losses[0] and losses[2] < losses[0]


def test_vmap_over_stacked_params(params, logits):
    other = init(CONFIG, seed=1)
    stacked = _map(lambda a, b: jnp.stack([a, b]), params, other)
    assert stacked["config"] is CONFIG and stacked["decoder"]["wte"].shape == (2, 40, 24)
    both = jax.vmap(lambda p: pv.forward(p, PIXELS, IDS))(stacked)
    np.testing.assert_allclose(both[0], logits, atol=1e-5)
    np.testing.assert_allclose(both[1], pv.forward(other, PIXELS, IDS), atol=1e-5)
    assert np.abs(np.asarray(both[0] - both[1])).max() > 1e-3


def test_sharding_specs_from_tree_map(params, logits):
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    specs = jax.tree.map(lambda x: NamedSharding(mesh, PartitionSpec(*[None] * x.ndim)), params)
    assert specs["config"] is CONFIG
    placed = jax.device_put(params, specs)
    assert placed["config"] is CONFIG
    assert placed["decoder"]["wte"].sharding == specs["decoder"]["wte"]
    np.testing.assert_allclose(pv.forward(placed, PIXELS, IDS), logits, atol=1e-6)


def test_a_users_jit_takes_the_config_as_an_ordinary_argument(params, logits):
    @jax.jit
    def f(weights, config, pixels, ids):
        return pv.forward(weights, pixels, ids, config)
    np.testing.assert_allclose(f(weights_only(params), CONFIG, PIXELS, IDS), logits, atol=1e-5)
    # A config that differs only in dropout is a different static value: compiled anew, no error.
    np.testing.assert_allclose(f(weights_only(params), with_dropout(CONFIG, 0.3), PIXELS, IDS), logits, atol=1e-5)
    assert f._cache_size() == 2
    # The whole params, config inside, through a jit with no static arguments.
    np.testing.assert_allclose(jax.jit(lambda p: pv.forward(p, PIXELS, IDS))(params), logits, atol=1e-5)


def test_generation_defaults_do_not_recompile_the_model(params, logits):
    pv.forward(params, PIXELS, IDS)
    pv.encode(params, PIXELS)
    forward_before, encode_before = pv_model._forward_jit._cache_size(), pv_model._encode_jit._cache_size()
    for beams in (2, 3):
        changed = {**params, "generation_config": pv.GenerationConfig(num_beams=beams, max_new_tokens=beams)}
        np.testing.assert_array_equal(pv.forward(changed, PIXELS, IDS), logits)
        pv.encode(changed, PIXELS)
    assert pv_model._forward_jit._cache_size() == forward_before
    assert pv_model._encode_jit._cache_size() == encode_before


# --- the return-type rule ----------------------------------------------------------------------------

@pytest.mark.parametrize("flags, kind", [
    ({}, "array"), ({"key": True}, "array"),
    ({"output_hidden_states": True}, "tuple"), ({"output_attentions": True}, "tuple"),
    ({"output_hidden_states": True, "key": True}, "tuple"),
])
def test_return_types(params, flags, kind):
    """forward/encode return an array unless hidden states or attentions are asked for; a
    dropout key never changes the type."""
    kw = {k: (jax.random.key(0) if k == "key" else v) for k, v in flags.items()}
    out, enc = pv.forward(params, PIXELS, IDS, **kw), pv.encode(params, PIXELS, **kw)
    if kind == "array":
        assert isinstance(out, jax.Array) and out.shape == (2, 5, 40)
        assert isinstance(enc, jax.Array) and enc.shape == (2, 5, 24)
    else:
        assert isinstance(out, pv.Output) and out.logits.shape == (2, 5, 40)
        assert isinstance(enc, pv.EncoderOutput) and enc.hidden.shape == (2, 5, 24)
        asked = "hidden_states" if flags.get("output_hidden_states") else "attentions"
        assert getattr(enc, asked) is not None and getattr(out, "decoder_" + asked) is not None
