"""Forward-mode autodiff (jvp, jacfwd, linearize, Hessian-vector products) through attention's
written-out derivative and through every public model function, against the same math with
attention computed plainly (softmax, then the value product) and differentiated by JAX."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purevedec as pv
from purevedec import attention
from conftest import rand_ids, rand_pixels, save_reference
from models import make_reference


def _plain_softmax_attention(q, k, v, mask, bias, scale, group):
    scores = jnp.einsum("bhtk,bhuk->bhtu", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = jnp.where(mask, scores, attention.MASKED)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhtu,bhuk->bhtk", weights, v, preferred_element_type=jnp.float32).astype(v.dtype)


def _case(rng, heads=4):
    """q/k/v of 2 images, a per-image mask with one fully masked query row, a bias shared by the
    images, and a tangent for each differentiable input."""
    normal = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    q, k, v = normal(2, heads, 20, 8), normal(2, heads, 18, 8), normal(2, heads, 18, 8)
    mask = jnp.asarray(rng.random((2, 1, 20, 18)) > 0.3).at[1, 0, 3].set(False)
    bias = normal(1, heads, 20, 18)
    tangents = tuple(normal(*x.shape) for x in (q, k, v, bias))
    return (q, k, v, bias), mask, tangents


def _close(a, b, tol=2e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)  # numpy: eager jnp compiled two programs per leaf shape
        scale = max(1.0, float(np.max(np.abs(y))))
        np.testing.assert_allclose(x, y, rtol=0, atol=tol * scale)


def _hvp(f, args, tangents):
    loss = lambda *a: jnp.sum(jnp.sin(f(*a)))  # noqa: E731  (a curved loss: the Hessian is not zero)
    return jax.jvp(jax.grad(loss, argnums=(0, 1, 2, 3)), args, tangents)[1]


@pytest.mark.parametrize("group", [None, 1, 2])
def test_attention_forward_mode_equals_the_plain_math(group):
    """jvp, jacfwd, linearize and a Hessian-vector product (forward over reverse) through the
    written-out derivative, in one pass and in groups of 1 and 2 heads, equal those of the plain
    computation."""
    args, mask, tangents = _case(np.random.default_rng(0))
    ours = lambda q, k, v, b: attention.softmax_attention(q, k, v, mask, b, 0.3, group)  # noqa: E731
    plain = lambda q, k, v, b: _plain_softmax_attention(q, k, v, mask, b, 0.3, group)  # noqa: E731

    # Each side's first-order transforms in one jitted program: run eagerly, every operation of
    # every transform compiled on its own. The Hessian-vector products stay eager (computed once
    # each): jitted at the suite's O0 settings, ours gave NaNs with all heads in one pass (not
    # with the shipped optimisations, nor eagerly).
    @jax.jit
    def our_modes(args, tangents):
        out, linear = jax.linearize(ours, *args)
        return jax.jvp(ours, args, tangents), (out, linear(*tangents)), jax.jacfwd(ours)(*args)[0, :2, :3]

    @jax.jit
    def plain_modes(args, tangents):
        return jax.jvp(plain, args, tangents), jax.jacrev(plain)(*args)[0, :2, :3]

    (jvp, linearized, jac), (plain_jvp, plain_jac) = our_modes(args, tangents), plain_modes(args, tangents)
    _close(jvp, plain_jvp)
    _close(linearized, plain_jvp)
    _close(jac, plain_jac)
    hvp = _hvp(ours, args, tangents)
    _close(hvp, _hvp(plain, args, tangents), tol=1e-4)
    assert float(np.max(np.abs(np.asarray(hvp[0])))) > 1e-3


@pytest.fixture(scope="module")
def tiny_params(tmp_path_factory):
    return pv.load(save_reference(make_reference(), tmp_path_factory.mktemp("fwd") / "tiny"))


@pytest.fixture
def plain_attention(monkeypatch):
    """Runs a function with attention computed plainly; JAX's trace caches are cleared around it,
    so neither version reuses the other's traced programs."""
    def run(fn, *args):
        jax.clear_caches()
        with monkeypatch.context() as patch:
            patch.setattr(attention, "softmax_attention", _plain_softmax_attention)
            out = fn(*args)
        jax.clear_caches()
        return out
    return run


@jax.jit  # one program: drawn eagerly, each leaf shape compiled its own random kernel
def _param_tangent(params, key):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def test_model_functions_forward_mode_equals_the_plain_math(tiny_params, plain_attention):
    """jvp of forward / encode / decode / step in the params, jacfwd of encode in the pixels and
    linearize of decode in the encoder states: the same values as with plain attention."""
    params, _ = tiny_params
    px, ids = jnp.asarray(rand_pixels(2)), jnp.asarray(rand_ids(2, 5))
    dp = _param_tangent(params, jax.random.key(0))

    def all_modes():  # eager: jitted as one program, it compiled no faster than its parts
        enc = pv.encode(params, px)
        cache = pv.init_cache(params, enc, max_len=8)
        step = lambda p: pv.step(p, cache, ids, donate=False)[0]  # noqa: E731
        return (jax.jvp(lambda p: pv.forward(p, px, ids), (params,), (dp,)),
                jax.jvp(lambda p: pv.encode(p, px), (params,), (dp,)),
                jax.jvp(lambda p: pv.decode(p, ids, enc), (params,), (dp,)),
                jax.jvp(step, (params,), (dp,)),
                jax.jacfwd(lambda x: pv.encode(params, x)[:, :2, :3])(px[:1]),
                jax.linearize(lambda e: pv.decode(params, ids, e), enc)[1](jnp.ones_like(enc)))

    ours = all_modes()
    _close(ours, plain_attention(all_modes), tol=1e-4)
    assert float(np.max(np.abs(np.asarray(ours[0][1])))) > 1e-2  # the tangents are not all zero


def test_hessian_vector_product_of_a_loss_equals_the_plain_math(tiny_params, plain_attention):
    """Forward over reverse through the whole model: d/dt grad(loss)(params + t v)."""
    params, _ = tiny_params
    px, ids = jnp.asarray(rand_pixels(2, seed=3)), jnp.asarray(rand_ids(2, 6, seed=4))
    v = _param_tangent(params, jax.random.key(1))

    @jax.jit  # one program per side, not the transforms' glue op by op
    def hvp(params, v, px, ids):
        loss = lambda p: jnp.mean(jax.nn.log_softmax(pv.forward(p, px, ids[:, :-1]))[..., 0] ** 2)  # noqa: E731
        return jax.jvp(jax.grad(loss), (params,), (v,))[1]

    ours = hvp(params, v, px, ids)
    _close(ours, plain_attention(hvp, params, v, px, ids), tol=1e-4)
