"""The optimizer, the train step and exact resume (needs the train extra: optax)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purevedec as pv

optax = pytest.importorskip("optax")
from purevedec.training import (TrainConfig, init_state, learning_rate_schedule, make_optimizer,  # noqa: E402
                                make_train_step, restore_state, save_state)
from purevedec.training.optim import decays, leaf_flags  # noqa: E402

V, T = 20, 6


def tiny_config(dropout=0.0):
    return pv.Config(
        encoder=pv.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                             image_size=8, patch_size=4, hidden_dropout_prob=dropout,
                             attention_probs_dropout_prob=dropout),
        decoder=pv.GPT2Config(vocab_size=V, n_positions=8, n_embd=16, n_layer=1, n_head=2, resid_pdrop=dropout,
                              embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=0, eos_token_id=1),
        decoder_start_token_id=0, pad_token_id=1, eos_token_id=1)


def task(n_images=4, k=1, seed=0):
    """Images of random pixels, each with its own fixed caption (k copies), -100 after the eos."""
    rs = np.random.RandomState(seed)
    pixels = rs.randn(n_images, 3, 8, 8).astype(np.float32)
    labels = np.full((n_images, T), -100, np.int32)
    for i in range(n_images):
        n = rs.randint(2, T)
        labels[i, :n] = rs.randint(2, V, n)
        labels[i, n] = 1
    return pixels, np.repeat(labels, k, axis=0)


# Shared so that tests reuse one compiled step (static cfg + model config + shapes).
SCHEDULED = TrainConfig(learning_rate=3e-3, warmup_steps=20, total_steps=300, weight_decay=0.01, schedule="cosine")


def run(cfg, params, batch, steps, key=0, state=None):
    state = state or init_state(params, cfg, key)
    step = make_train_step(cfg)
    metrics = []
    for _ in range(steps):
        state, m = step(state, *batch)
        metrics.append(m)
    return state, metrics


def test_loss_falls_below_a_bound_on_a_synthetic_task():
    params = pv.init_params(tiny_config(dropout=0.1), jax.random.key(0))
    cfg = SCHEDULED
    batch = task(n_images=4, k=2)
    first = float(pv.loss(params, *batch).loss)
    state, metrics = run(cfg, params, batch, 300)
    last = float(pv.loss(state.params, *batch).loss)  # evaluation: no dropout
    assert first > 2.5  # about log(20) at random init
    assert last < 0.1, (first, last)
    assert int(state.step) == 300 and float(metrics[-1].learning_rate) < 1e-6
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))


def _leaves(params, part):
    return jax.tree.leaves(params[part])


def test_frozen_encoder_and_embeddings_stay_bit_identical():
    """In bf16 compute (float32 master weights), with weight decay on."""
    params = pv.init_params(tiny_config(), jax.random.key(1))
    cfg = TrainConfig(learning_rate=1e-2, weight_decay=0.1, total_steps=5, freeze_encoder=True,
                      freeze_embeddings=True, dtype="bfloat16")
    state, _ = run(cfg, params, task(), 5)
    for a, b in zip(_leaves(params, "encoder"), _leaves(state.params, "encoder")):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for name in ("wte", "wpe"):
        np.testing.assert_array_equal(np.asarray(params["decoder"][name]), np.asarray(state.params["decoder"][name]))
    before, after = pv.params.flatten(params), pv.params.flatten(state.params)
    trained = [n for n in before if not n.startswith(("encoder.", "decoder.wte", "decoder.wpe"))]
    assert len(trained) > 10 and all(not np.array_equal(before[n], after[n]) for n in trained)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))  # master weights stay float32


def test_weight_decay_skips_biases_and_norms():
    """With zero gradients AdamW's update is the decoupled decay alone: w <- w - lr*wd*w for
    kernels, embeddings and position tables; biases and norm parameters do not move."""
    params = pv.init_params(tiny_config(), jax.random.key(2))
    params = jax.tree.map(lambda x: x + 0.5, params)  # non-zero biases, norms != 1
    cfg = TrainConfig(learning_rate=0.1, weight_decay=0.2, total_steps=10, schedule="constant")
    opt = make_optimizer(cfg)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zeros, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    flat_new = pv.params.flatten(new)
    checked = {"decay": 0, "keep": 0}
    for name, old in pv.params.flatten(params).items():
        leaf = name.split(".")[-1]
        if leaf in ("b", "bias", "scale"):
            np.testing.assert_array_equal(flat_new[name], old)
            checked["keep"] += 1
        else:
            np.testing.assert_allclose(flat_new[name], np.asarray(old) * (1 - 0.1 * 0.2), rtol=1e-6)
            checked["decay"] += 1
    assert checked["keep"] > 10 and checked["decay"] > 10
    assert sum(jax.tree.leaves(leaf_flags(params, decays))) == checked["decay"]


def test_schedules_by_hand():
    lin = learning_rate_schedule(TrainConfig(learning_rate=1.0, warmup_steps=10, total_steps=110))
    assert [float(lin(s)) for s in (0, 5, 10, 60, 110)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    cos = learning_rate_schedule(TrainConfig(learning_rate=2.0, warmup_steps=0, total_steps=100, schedule="cosine"))
    assert [float(cos(s)) for s in (0, 50, 100)] == pytest.approx([2.0, 1.0, 0.0], abs=1e-6)
    const = learning_rate_schedule(TrainConfig(learning_rate=0.3, warmup_steps=4, total_steps=8, schedule="constant"))
    assert [float(const(s)) for s in (2, 4, 7)] == pytest.approx([0.15, 0.3, 0.3])


def test_bad_train_config_is_refused():
    with pytest.raises(pv.ConfigError, match="warmup_steps"):
        TrainConfig(warmup_steps=20, total_steps=10)
    with pytest.raises(pv.ConfigError, match="schedule"):
        TrainConfig(schedule="exponential")
    with pytest.raises(pv.ConfigError, match="accumulation_steps"):
        TrainConfig(accumulation_steps=0)


def test_accumulation_equals_one_big_batch():
    """Token-weighted: two micro-batches with different padding give the big batch's gradient."""
    params = pv.init_params(tiny_config(), jax.random.key(3))
    batch = task(n_images=4, k=2, seed=4)
    # eps=0.1: AdamW's step follows the gradient rather than its sign, so the exactly-zero
    # attention key-bias gradients (round-off on both sides) are not blown up to steps of lr
    one = TrainConfig(learning_rate=1e-2, total_steps=3, max_grad_norm=None, schedule="constant", eps=0.1)
    two = one.replace(accumulation_steps=2)
    a, ma = run(one, params, batch, 2)
    b, mb = run(two, params, batch, 2)
    assert float(ma[0].loss) == pytest.approx(float(pv.loss(params, *batch).loss), abs=1e-6)
    assert float(mb[0].loss) == pytest.approx(float(ma[0].loss), abs=1e-6)
    assert int(mb[0].tokens) == int((batch[1] != -100).sum())
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-7)


def test_grad_norm_and_clipping():
    params = pv.init_params(tiny_config(), jax.random.key(5))
    batch = task(seed=6)
    grads = jax.jit(jax.grad(lambda p: pv.loss(p, *batch).loss))(params)  # jitted: eager ran op by op
    norm = float(np.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads))))
    # eps=0.1 makes AdamW's step depend on the gradient's scale, so clipping shows in the params
    cfg = TrainConfig(learning_rate=1e-2, total_steps=3, max_grad_norm=norm / 10, schedule="constant", eps=0.1)
    got, m = run(cfg, params, batch, 1)
    assert float(m[0].grad_norm) == pytest.approx(norm, rel=1e-4)  # reported before clipping

    @jax.jit
    def by_hand(scale):
        opt = optax.adamw(1e-2, eps=0.1, weight_decay=0.0)
        upd, _ = opt.update(jax.tree.map(lambda g: g * scale, grads), opt.init(params), params)
        return optax.apply_updates(params, upd)
    clipped, unclipped = by_hand(0.1), by_hand(1.0)  # clipping to norm/10 divides the gradients by 10
    for x, y, z in zip(jax.tree.leaves(clipped), jax.tree.leaves(got.params), jax.tree.leaves(unclipped)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-8)
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(got.params),
                                                          jax.tree.leaves(unclipped))) > 1e-4


def test_resume_equals_an_uninterrupted_run(tmp_path):
    """With dropout on: 6 steps straight == 3 steps, save, restore into a fresh state, 3 more."""
    params = pv.init_params(tiny_config(dropout=0.1), jax.random.key(7))
    cfg = SCHEDULED
    batch = task(k=2, seed=8)
    straight, _ = run(cfg, params, batch, 6, key=11)
    half, _ = run(cfg, params, batch, 3, key=11)
    save_state(str(tmp_path / "state.npz"), half)
    template = init_state(params, cfg, 99)  # another seed: the key must come from the file
    resumed = restore_state(str(tmp_path / "state.npz"), template)
    assert int(resumed.step) == 3
    resumed, _ = run(cfg, params, batch, 3, state=resumed)
    for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    # a different seed gives other dropout masks, so the check above could fail
    other, _ = run(cfg, params, batch, 6, key=12)
    assert not np.array_equal(other.params["decoder"]["wte"], straight.params["decoder"]["wte"])


def test_restore_refuses_another_layout(tmp_path):
    params = pv.init_params(tiny_config(), jax.random.key(7))
    cfg = TrainConfig(total_steps=4)
    save_state(str(tmp_path / "s.npz"), init_state(params, cfg, 0))
    frozen = init_state(params, cfg.replace(freeze_encoder=True), 0)
    with pytest.raises(pv.CheckpointError, match="does not match"):
        restore_state(str(tmp_path / "s.npz"), frozen)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(pv.CheckpointError, match="bad.npz"):
        restore_state(str(tmp_path / "bad.npz"), init_state(params, cfg, 0))


def test_freeze_embeddings_freezes_a_trocr_decoders_tables():
    """freeze_embeddings names no leaves itself: a TrOCR decoder's token and position tables
    (``embed``, ``pos``) get zero updates, while its layers still train."""
    from purevedec import TrOCRConfig
    config = pv.Config(encoder=tiny_config().encoder,
                       decoder=TrOCRConfig(vocab_size=V, d_model=16, decoder_layers=1, decoder_attention_heads=2,
                                           decoder_ffn_dim=24, max_position_embeddings=8),
                       decoder_start_token_id=2, pad_token_id=1, eos_token_id=2)
    params = pv.init_params(config, jax.random.key(3))
    opt = make_optimizer(TrainConfig(learning_rate=0.1, total_steps=10, schedule="constant", freeze_embeddings=True))
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    for name in ("embed", "pos"):
        assert not np.any(np.asarray(updates["decoder"][name])), name
    assert np.all(np.asarray(updates["decoder"]["blocks"][0]["mlp"]["fc"]["w"]) != 0)
