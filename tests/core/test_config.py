"""Configs and the family registry: every registered family's config round-trips through its
config.json section, dispatch and its errors follow the registry, and every family's parameter
description is well formed (an axis name per dimension, a known initializer)."""

from __future__ import annotations

import dataclasses

import pytest

import purevedec as pv
from purevedec.errors import ConfigError
from purevedec.models import DECODERS, ENCODERS
from purevedec.param_spec import INITS, Param
from purevedec.params import flatten

FAMILIES = {**{f"encoder:{k}": f for k, f in ENCODERS.items()}, **{f"decoder:{k}": f for k, f in DECODERS.items()}}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_config_round_trips_through_its_section(name):
    family = FAMILIES[name]
    cfg = family.config_class()
    section = family.to_json(cfg)
    if name.startswith("decoder"):
        section.update(add_cross_attention=True, is_decoder=True)  # as the writer saves a decoder
    assert section["model_type"] == family.model_type
    assert family.parse(section, name.split(":")[0]) == cfg


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_parameter_names_its_axes_and_initializer(name):
    family = FAMILIES[name]
    leaves = flatten(family.params(family.config_class()))
    assert leaves and all(isinstance(p, Param) for p in leaves.values())
    for path, p in leaves.items():
        assert len(p.axes) == len(p.shape) and p.init in INITS, (path, p)
    if name.startswith("decoder"):
        assert set(family.embedding_leaves) <= {path.split(".")[0] for path in leaves}
        assert any("vocab" in p.axes for p in leaves.values())


def test_config_defaults_and_dispatch_come_from_the_registry():
    cfg = pv.Config()
    assert cfg.encoder.model_type in ENCODERS and cfg.decoder.model_type in DECODERS
    section = {"model_type": "vision-encoder-decoder", "encoder": {"model_type": "no-such-encoder"},
               "decoder": {"model_type": "gpt2", "add_cross_attention": True}}
    with pytest.raises(ConfigError, match=r"encoder\.model_type='no-such-encoder' is not supported; supported: "
                                          + repr(sorted(ENCODERS)).replace("[", r"\[").replace("]", r"\]")):
        pv.parse_config(section)
    with pytest.raises(ConfigError, match="needs an encoder config and a decoder config"):
        pv.Config(encoder=pv.GPT2Config(), decoder=pv.GPT2Config())


def test_a_decoders_own_cross_width_rule_is_applied():
    """GPT-2 reads encoder states of its own width only (its family's check); TrOCR reads any."""
    enc = dataclasses.asdict(pv.ViTConfig(hidden_size=48, num_attention_heads=4, image_size=8, patch_size=4))
    enc["image_size"], enc["patch_size"] = list(enc["image_size"]), list(enc["patch_size"])

    def parse(decoder):
        return pv.parse_config({"model_type": "vision-encoder-decoder", "encoder": enc,
                                "decoder": {**decoder, "cross_attention_hidden_size": 48}})
    with pytest.raises(ConfigError, match="GPT-2 cross-attention only accepts encoder states of width n_embd"):
        parse({"model_type": "gpt2", "n_embd": 32, "n_head": 4, "add_cross_attention": True})
    config = parse({"model_type": "trocr", "d_model": 32, "decoder_attention_heads": 4})
    assert config.decoder.cross_width == 48 and not config.has_projection
