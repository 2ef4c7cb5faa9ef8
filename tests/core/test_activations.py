"""Every activation formula against transformers' ACT2FN (its torch modules), in float64."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from purevedec.layers import ACTIVATIONS, activation

jax.config.update("jax_enable_x64", False)  # the package computes activations in float32

# Points where the formulas differ in shape: the far tails, the kinks at 0 and 6 (relu6,
# hardswish), the gelu_10 clip at +-10, laplace's centre (0.707107), and a dense middle.
X = np.concatenate([np.linspace(-12, 12, 481), [-30.0, -6.0, -3.0, -1e-3, 0.0, 1e-3, 0.707107, 3.0, 6.0, 30.0]])


def _transformers_names():
    from transformers.activations import ACT2FN
    return sorted(n for n in ACTIVATIONS if n in ACT2FN)


def test_every_activation_is_compared():
    """Only names transformers lacks may go untested (none today, as far as it ships them)."""
    missing = sorted(set(ACTIVATIONS) - set(_transformers_names()))
    assert missing == [], f"no transformers reference for {missing}"


@pytest.mark.parametrize("name", _transformers_names())
def test_activation_matches_transformers(name):
    import torch
    from transformers.activations import ACT2FN
    want = ACT2FN[name](torch.tensor(X, dtype=torch.float64)).numpy()
    got = np.asarray(activation(name, jax.numpy.asarray(X, jax.numpy.float32)), np.float64)
    # float32 against float64: a few ulps of the value, plus absolute slack near zero
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6, err_msg=name)
