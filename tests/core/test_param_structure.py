"""Issue 34 point 4: one tree structure for params however they were made, and run-time settings
that leave params and optimizer states alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import purevedec as pv
from api_util import init, pixels, tiny_config, with_dropout

CONFIG = tiny_config()
PIXELS, IDS = pixels(2), np.random.RandomState(1).randint(3, 40, (2, 5)).astype(np.int32)
LABELS = np.random.RandomState(2).randint(3, 40, (2, 5)).astype(np.int32)


@pytest.fixture(scope="module")
def params():
    return init(CONFIG)


# --- init_params and load: one structure ----------------------------------------------------------

def test_init_params_and_load_of_a_transformers_checkpoint_have_one_structure(tiny):
    loaded, config = pv.load(tiny[1])
    fresh = pv.init_params(config, jax.random.key(0))
    assert jax.tree.structure(fresh) == jax.tree.structure(loaded)
    # so an optimizer state made on the fresh tree updates the loaded one
    tx = optax.adam(1e-3)
    grads = jax.tree.map(jnp.ones_like, loaded)
    updates, _ = tx.update(grads, tx.init(fresh), loaded)
    assert jax.tree.structure(optax.apply_updates(loaded, updates)) == jax.tree.structure(loaded)


def test_save_then_load_keeps_the_structure(params, tmp_path):
    pv.save(params, tmp_path / "ckpt")
    loaded, _ = pv.load(tmp_path / "ckpt")
    assert jax.tree.structure(loaded) == jax.tree.structure(params)


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
    tx = optax.adam(1e-3)
    state = tx.init(params)
    structure = jax.tree.structure(params)
    key = jax.random.key(3)
    noisy = with_dropout(CONFIG, 0.3)

    def loss(p, config):
        return pv.loss(p, PIXELS, LABELS, config, key=key).loss
    before, after = loss(params, CONFIG), loss(params, noisy)
    assert abs(float(after) - float(before)) > 1e-4  # the new rate is used (same key)
    grads = jax.grad(loss)(params, noisy)
    assert jax.tree.structure(grads) == structure == jax.tree.structure(state[0].mu)
    updates, state = tx.update(grads, state, params)
    stepped = optax.apply_updates(params, updates)
    assert jax.tree.structure(stepped) == structure and stepped["config"] is CONFIG


def test_generation_defaults_change_per_call_not_in_params(params):
    before = jax.tree.structure(params)
    greedy = pv.generate(params, PIXELS, max_new_tokens=3)
    beams = pv.generate(params, PIXELS, generation_config=pv.GenerationConfig(
        num_beams=2, max_new_tokens=3, eos_token_id=(2,), pad_token_id=1, decoder_start_token_id=0))
    assert greedy.sequences.shape[1] <= 4 and beams.sequences.shape[1] <= 4
    assert jax.tree.structure(params) == before
