"""Issue 34 point 4: one tree structure for params however they were made, run-time settings that
leave params and optimizer states alone, and the extra slot for adapters and heads."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import purevedec as pv
from api_util import init, pixels, tiny_config, with_dropout
from conftest import maxdiff, torch_forward

CONFIG = tiny_config()
PIXELS, IDS = pixels(2), np.random.RandomState(1).randint(3, 40, (2, 5)).astype(np.int32)
LABELS = np.random.RandomState(2).randint(3, 40, (2, 5)).astype(np.int32)


@pytest.fixture(scope="module")
def params():
    return init(CONFIG)


# Optimizer steps jitted: run eagerly, every per-leaf operation compiled once per leaf shape
# (~150 programs for adam on the tiny tree), where one program each does.
ADAM = optax.adam(1e-3)
adam_init = jax.jit(ADAM.init)


@jax.jit
def adam_step(grads, state, params):
    updates, state = ADAM.update(grads, state, params)
    return optax.apply_updates(params, updates), state


# --- init_params and load: one structure ----------------------------------------------------------

def test_init_params_and_load_of_a_transformers_checkpoint_have_one_structure(tiny):
    loaded, config = pv.load(tiny[1])
    fresh = pv.init_params(config, jax.random.key(0))
    assert jax.tree.structure(fresh) == jax.tree.structure(loaded)
    # so an optimizer state made on the fresh tree updates the loaded one
    grads = jax.jit(lambda p: jax.tree.map(jnp.ones_like, p))(loaded)
    stepped, _ = adam_step(grads, adam_init(fresh), loaded)
    assert jax.tree.structure(stepped) == jax.tree.structure(loaded)


def test_save_then_load_keeps_the_structure(params, tmp_path):
    pv.save(params, tmp_path / "ckpt")
    loaded, _ = pv.load(tmp_path / "ckpt")
    assert jax.tree.structure(loaded) == jax.tree.structure(params)


def test_defaults_init_params_derived_follow_an_edited_config_and_a_checkpoints_do_not(params, tmp_path):
    """init_params' generation defaults stand for "what the config says" (transformers'
    _from_model_config): a config edited into the params brings its own start, EOS and pad ids;
    a checkpoint's generation config stays the checkpoint's; the mark is never written."""
    edited = tiny_config(decoder_start_token_id=3, eos_token_id=5, pad_token_id=7)
    kw = dict(max_new_tokens=3, min_new_tokens=3)
    out = pv.generate({**params, "config": edited}, PIXELS, **kw).sequences
    assert np.all(np.asarray(out)[:, 0] == 3)
    pv.save(params, tmp_path / "c")
    assert "from_config" not in (tmp_path / "c" / "generation_config.json").read_text()
    loaded, _ = pv.load(tmp_path / "c")
    assert not loaded["generation_config"].from_config
    kept = pv.generate({**loaded, "config": edited}, PIXELS, **kw).sequences
    assert np.all(np.asarray(kept)[:, 0] == CONFIG.decoder_start_token_id)


def test_init_params_takes_a_checkpoints_generation_defaults(tmp_path):
    beams = pv.GenerationConfig(num_beams=3, max_new_tokens=4, eos_token_id=(2,), pad_token_id=1,
                                decoder_start_token_id=0, bos_token_id=0)
    pv.save(init(CONFIG), tmp_path / "c", generation_config=beams)
    loaded, _ = pv.load(tmp_path / "c")
    fresh = pv.init_params(CONFIG, jax.random.key(1), generation_config=pv.load_generation_config(tmp_path / "c"))
    assert fresh["generation_config"].num_beams == 3
    assert jax.tree.structure(fresh) == jax.tree.structure(loaded)
    with pytest.raises(TypeError, match="generation_config"):
        pv.init_params(CONFIG, jax.random.key(1), generation_config={"num_beams": 3})


# --- run-time settings go beside the params -------------------------------------------------------

def test_a_dropout_change_leaves_params_and_the_adam_state_usable(params):
    """The changed config is passed beside the params (an explicit config wins): the params, the
    gradients and the optimizer state made before keep one structure, and the new rate acts."""
    state = adam_init(params)
    structure = jax.tree.structure(params)
    key = jax.random.key(3)
    noisy = with_dropout(CONFIG, 0.3)

    def loss(p, config):
        return pv.loss(p, PIXELS, LABELS, config, key=key).loss
    before, after = loss(params, CONFIG), loss(params, noisy)
    assert abs(float(after) - float(before)) > 1e-4  # the new rate is used (same key)
    grads = jax.jit(jax.grad(loss), static_argnums=1)(params, noisy)
    assert jax.tree.structure(grads) == structure == jax.tree.structure(state[0].mu)
    stepped, state = adam_step(grads, state, params)
    assert jax.tree.structure(stepped) == structure and stepped["config"] is CONFIG


def test_generation_defaults_change_per_call_not_in_params(params):
    before = jax.tree.structure(params)
    greedy = pv.generate(params, PIXELS, max_new_tokens=3)
    beams = pv.generate(params, PIXELS, generation_config=pv.GenerationConfig(
        num_beams=2, max_new_tokens=3, eos_token_id=(2,), pad_token_id=1, decoder_start_token_id=0))
    assert greedy.sequences.shape[1] <= 4 and beams.sequences.shape[1] <= 4
    assert jax.tree.structure(params) == before


# --- the extra slot -------------------------------------------------------------------------------

def _lora(key, rank=2):
    """A low-rank update of the decoder's first attention output kernel [D,D]: b @ a, b zero at
    the start (LoRA's init), so the adapted model starts as the base model."""
    d = CONFIG.decoder.n_embd
    return {"a": 0.1 * jax.random.normal(key, (rank, d)), "b": jnp.zeros((d, rank))}


def _merged(p):
    """The model's weights with the adapter added (a new tree: the arrays are shared, not copied)."""
    w = jax.tree.map(lambda x: x, p)
    o = w["decoder"]["blocks"][0]["attn"]["o"]
    o["w"] = o["w"] + p["extra"]["lora"]["b"] @ p["extra"]["lora"]["a"]
    return w


def _adapted_loss(extra, base):
    return pv.loss(_merged({**base, "extra": extra}), PIXELS, LABELS).loss


def test_the_model_functions_accept_and_ignore_extra_leaves(params):
    extra = {"lora": _lora(jax.random.key(0)), "probes": [jnp.ones(3), {"w": jnp.zeros((2, 2))}]}
    with_extra = {**params, "extra": extra}
    pv.check_params(with_extra)
    np.testing.assert_array_equal(pv.forward(with_extra, PIXELS, IDS), pv.forward(params, PIXELS, IDS))
    assert pv.count_params(with_extra) == pv.count_params(params) + 2 * 2 * 24 + 3 + 4


@pytest.mark.parametrize("extra, message", [
    ({"lora": {"a": "not an array"}}, r"params\['extra'\]\['lora'\]\['a'\] is str"),
    ({"heads": [np.ones(2), 3.0]}, r"params\['extra'\]\['heads'\]\[1\] is float"),
    ([np.ones(2)], r"params\['extra'\] is list: the extra slot is a dict"),
])
def test_bad_extra_leaves_are_refused_by_path(params, extra, message):
    with pytest.raises(pv.ParamsError, match=message):
        pv.check_params({**params, "extra": extra})


def test_a_lora_adapter_trains_through_grad_and_saves_apart(params, tmp_path):
    base = {**params, "extra": {"lora": _lora(jax.random.key(0))}}
    tx = optax.adam(1e-2)
    extra, state = base["extra"], tx.init(base["extra"])
    step = jax.jit(jax.value_and_grad(_adapted_loss))
    first, _ = step(extra, base)
    for _ in range(5):
        value, grads = step(extra, base)
        updates, state = tx.update(grads, state, extra)
        extra = optax.apply_updates(extra, updates)
    assert float(jnp.abs(grads["lora"]["b"]).max()) > 0
    assert float(step(extra, base)[0]) < float(first) - 1e-3
    trained = {**params, "extra": extra}

    pv.save(trained, tmp_path / "adapted")
    pv.save(params, tmp_path / "plain")
    loaded, _ = pv.load(tmp_path / "adapted")
    assert jax.tree.structure(loaded) == jax.tree.structure(trained)
    for got, want in zip(jax.tree.leaves(loaded["extra"]), jax.tree.leaves(extra)):
        np.testing.assert_array_equal(got, want)
    # the model's files hold the base weights only, exactly as a save without the adapter
    assert (tmp_path / "adapted" / "model.safetensors").read_bytes() == (tmp_path / "plain" / "model.safetensors").read_bytes()
    assert not os.path.exists(tmp_path / "plain" / "extra.safetensors")
    transformers = pytest.importorskip("transformers")
    model = transformers.VisionEncoderDecoderModel.from_pretrained(tmp_path / "adapted")
    assert maxdiff(pv.forward(loaded, PIXELS, IDS), torch_forward(model, PIXELS, IDS).logits) < 1e-4


def test_saving_without_extra_leaves_removes_a_stale_extra_file(params, tmp_path):
    pv.save({**params, "extra": {"head": jnp.ones(3)}}, tmp_path / "c")
    pv.save(params, tmp_path / "c")
    loaded, _ = pv.load(tmp_path / "c")
    assert "extra" not in loaded


def test_extra_keys_that_cannot_be_written_are_named(params, tmp_path):
    with pytest.raises(pv.ParamsError, match="'a/b'"):
        pv.save({**params, "extra": {"a/b": jnp.ones(2)}}, tmp_path / "c")


def test_shard_params_keeps_the_extra_leaves_replicated(params):
    mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    head = jnp.arange(6.0).reshape(2, 3)
    placed = pv.shard_params({**params, "extra": {"head": head}}, mesh)
    np.testing.assert_array_equal(placed["extra"]["head"], head)
    assert placed["extra"]["head"].sharding.is_fully_replicated
    assert jax.tree.structure(placed) == jax.tree.structure({**params, "extra": {"head": head}})
