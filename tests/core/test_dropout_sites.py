"""Each layer draws its own dropout masks: a model whose layers add only ``dropout(ones)`` to
the residual stream shows each layer's mask in the difference of consecutive hidden states."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import purevedec as pv
from conftest import rand_ids, rand_pixels, save_reference
from models import make_reference

RATE = 0.5


def residual_only_ones(model, blocks, zeroed, mlp_out) -> None:
    """In every block: the named output projections give zero, the MLP's output projection gives
    a vector of ones whatever its input (weight 0, bias 1)."""
    import torch
    with torch.no_grad():
        for block in blocks:
            for name in zeroed:
                layer = block.get_submodule(name)
                layer.weight.zero_()
                layer.bias.zero_()
            out = block.get_submodule(mlp_out)
            out.weight.zero_()
            out.bias.fill_(1.0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Three ViT layers and three GPT-2 layers, residual dropout only (rate 0.5)."""
    model = make_reference(dict(num_hidden_layers=3, hidden_dropout_prob=RATE, attention_probs_dropout_prob=0.0),
                           dict(n_layer=3, resid_pdrop=RATE, attn_pdrop=0.0, embd_pdrop=0.0))
    residual_only_ones(model, model.encoder.layers, ["attention.o_proj"], "mlp.fc2")
    residual_only_ones(model, model.decoder.transformer.h, ["attn.c_proj", "crossattention.c_proj"], "mlp.c_proj")
    return save_reference(model, tmp_path_factory.mktemp("dropout") / "ckpt")


def layer_masks(hidden_states) -> list[np.ndarray]:
    """Each layer's added residual (ones through dropout: 0 or 1 / (1 - rate)), as keep masks;
    the last hidden state (after a final norm in GPT-2) is left out."""
    hs = [np.asarray(h, np.float64) for h in hidden_states[:-1]]
    deltas = [b - a for a, b in zip(hs, hs[1:])]
    for d in deltas:  # the construction holds: every entry dropped or kept and scaled
        assert np.all(np.isclose(d, 0.0, atol=1e-4) | np.isclose(d, 1 / (1 - RATE), atol=1e-4))
    return [d > 0.5 for d in deltas]


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_layers_draw_independent_masks(checkpoint, part):
    """Masks of different layers agree on about half their entries (independent draws at rate
    0.5), never on all of them as one key shared by every layer would make them."""
    params, config = pv.load(checkpoint)
    out = pv.forward(params, rand_pixels(2), rand_ids(2, 6), config, output_hidden_states=True,
                     key=jax.random.key(3))
    masks = layer_masks(out.encoder_hidden_states if part == "encoder" else out.decoder_hidden_states)
    assert len(masks) == 2
    for m in masks:
        assert 0.35 < m.mean() < 0.65
    agreement = (masks[0] == masks[1]).mean()
    assert 0.35 < agreement < 0.65, f"layers 0 and 1 share {agreement:.0%} of their dropout mask"
