"""The Swin encoder (``swin`` and Donut's ``donut-swin``) against transformers' models, tensor by tensor."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import maxdiff, rand_pixels
from purevedec.errors import ConfigError
from purevedec.param_spec import shapes
from purevedec.models import swin
from purevedec.params import flatten, map_with_path

# (model_type, config overrides, pixel height, pixel width). Tiny widths; each case exercises a knob.
CASES = {
    # shifted windows in both stages of a square grid (8x8 then 4x4, window 2)
    "donut_square": ("donut-swin", dict(image_size=32, window_size=2), 32, 32),
    # rectangular grid 10x14 padded to windows of 3; merging an odd 5x7 grid; a last stage whose
    # 3x4 grid equals the window, where transformers drops the shift
    "swin_rect_pad_clamp": ("swin", dict(image_size=[40, 56], window_size=3, depths=[2, 2, 2], num_heads=[2, 2, 4]),
                            40, 56),
    # pixels that do not fill whole patches (padded), no q/k/v bias, other activation, eps and MLP ratio
    "donut_odd_pixels": ("donut-swin", dict(image_size=[30, 45], window_size=4, qkv_bias=False, hidden_act="gelu_new",
                                            layer_norm_eps=1e-6, mlp_ratio=2.5, num_heads=[1, 2]), 30, 45),
    # absolute positions, a rectangular patch, a single stage (no merging, final norm over stage 0)
    "swin_absolute_rect_patch": ("swin", dict(image_size=32, patch_size=[4, 2], window_size=4, depths=[3],
                                              num_heads=[2], use_absolute_embeddings=True), 32, 32),
    # an image larger than the configured size (no absolute positions: any size works)
    "donut_other_size": ("donut-swin", dict(image_size=32, window_size=2), 48, 40),
}
BASE = dict(patch_size=4, embed_dim=8, depths=[2, 2], num_heads=[2, 4], drop_path_rate=0.0)


def make_torch(model_type: str, overrides: dict, seed: int):
    from transformers import DonutSwinConfig, DonutSwinModel, SwinConfig, SwinModel
    config_cls, model_cls = {"swin": (SwinConfig, SwinModel), "donut-swin": (DonutSwinConfig, DonutSwinModel)}[model_type]
    config = config_cls(**{**BASE, **overrides})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # transformers zeroes bias tables and positions: randomise every tensor
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith("norm.weight") or "layernorm" in name
                    and name.endswith("weight") else 0.5 * torch.randn_like(p))
    return model


def to_params(model, cfg: swin.SwinConfig, tmp_path) -> dict:
    """Our encoder params from the model's saved tensors through ``swin.hf_rules``; the only
    tensors left over must be Donut's relative_position_index buffers, equal to ours."""
    from safetensors.numpy import load_file
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    flat = {rule.ours[0][len("encoder."):]: state.pop(rule.hf[len("encoder."):]) for rule in swin.hf_rules(cfg)}
    for name, index in state.items():
        assert name.endswith("relative_position_index"), name
        np.testing.assert_array_equal(index, swin.relative_position_index(cfg.window_size))
    tree_shapes = shapes(swin.params(cfg))
    assert set(flat) == set(flatten(tree_shapes))
    return map_with_path(tree_shapes, lambda path, shape: jnp.asarray(flat[path].reshape(shape)))


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    model_type, overrides, h, w = CASES[request.param]
    model = make_torch(model_type, overrides, seed=list(CASES).index(request.param))
    cfg = swin.parse_swin(model.config.to_dict())
    return model, cfg, rand_pixels(2, 3, h, w, seed=3), to_params(model, cfg, tmp_path_factory.mktemp("swin"))


def test_config_is_parsed_from_transformers(case):
    model, cfg, _, _ = case
    assert cfg.model_type == model.config.model_type
    assert cfg.hidden_size == model.config.hidden_size
    assert cfg.depths == tuple(model.config.depths) and cfg.window_size == model.config.window_size


# Jitted as purevedec's model functions run it: one compile per case instead of one per operation.
_apply = jax.jit(swin.apply, static_argnums=2, static_argnames="dtype")


def test_hidden_states_match(case):
    model, cfg, px, params = case
    with torch.no_grad():
        ref = model(torch.tensor(px), output_hidden_states=True)
    out = _apply(params, jnp.asarray(px), cfg)
    assert maxdiff(out["last_hidden_state"], ref.last_hidden_state) <= 1e-4
    assert len(out["hidden_states"]) == len(ref.hidden_states)
    for ours, theirs in zip(out["hidden_states"], ref.hidden_states):
        assert maxdiff(ours, theirs) <= 1e-4


def test_bfloat16_stays_close(case):
    _, cfg, px, params = case
    full = _apply(params, jnp.asarray(px), cfg)["last_hidden_state"]
    half = _apply(params, jnp.asarray(px), cfg, dtype=jnp.bfloat16)["last_hidden_state"]
    assert half.dtype == jnp.bfloat16
    # bf16 rounding through every block: the mean error, as torch's own bf16 run shows (its mean error
    # 0.2-0.5% of the largest value on these cases, ours the same; single entries near a cancellation vary more)
    assert float(jnp.mean(jnp.abs(half.astype(jnp.float32) - full))) <= 0.01 * float(jnp.max(jnp.abs(full)))


def test_grid_shorter_than_the_window_is_refused(tmp_path):
    model = make_torch("donut-swin", dict(image_size=32, window_size=2), seed=0)
    cfg = swin.parse_swin(model.config.to_dict())
    px = jnp.asarray(rand_pixels(1, 3, 32, 4))  # a 8x1 token grid against windows of 2
    with pytest.raises(ValueError, match="shorter than window_size=2"):
        swin.apply(to_params(model, cfg, tmp_path), px, cfg)
    with pytest.raises(RuntimeError):  # transformers fails on it too
        model(torch.tensor(np.asarray(px)))


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="num_heads has 1"):
        swin.SwinConfig(depths=(2, 2), num_heads=(2,))
    with pytest.raises(ConfigError, match=r"num_heads\[1\]=3 does not divide"):
        swin.SwinConfig(embed_dim=8, depths=(2, 2), num_heads=(2, 3))
    with pytest.raises(ConfigError, match="use_absolute_embeddings"):
        swin.SwinConfig(model_type="donut-swin", use_absolute_embeddings=True)
    with pytest.raises(ConfigError, match="hidden_size"):
        swin.parse_swin({"model_type": "swin", "embed_dim": 8, "depths": [2, 2], "num_heads": [2, 2],
                         "hidden_size": 8})
