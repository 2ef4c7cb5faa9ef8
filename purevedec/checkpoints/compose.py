"""Compose a pretrained image encoder (ViT, DeiT, BEiT) and a pretrained text decoder (GPT-2,
TrOCR) into one VisionEncoderDecoder.

As transformers' ``from_encoder_decoder_pretrained``: the decoder config becomes a decoder
with cross-attention, the pretrained tensors are copied exactly, and the layers neither
checkpoint has (GPT-2's cross-attention, a TrOCR decoder's when its checkpoint lacks it, and the
encoder->decoder projection) are initialised
from ``key`` the way transformers initialises them (``params.init_params``). The params carry the
composed config, as ``load``'s do.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Iterator

import jax.numpy as jnp
import numpy as np

from . import names as hf_names
from ..config import Config, parse_config
from ..errors import CheckpointError
from ..models import decoder_family, encoder_family
from ..params import flatten, init_params
from .jsonfile import read_json_object
from .loader import build_params, check_fits, local_dir, read_tensors, weight_files

# Params that exist only in the composed model.
_NEW = re.compile(r"^(decoder\.blocks\.\d+\.(ln_cross|cross)\.|proj\.)")


def _config_dict(path: str) -> dict:
    return read_json_object(os.path.join(path, "config.json"), CheckpointError)


def composed_config(encoder: dict, decoder: dict) -> Config:
    """transformers' VisionEncoderDecoderConfig.from_encoder_decoder_configs: the decoder is
    switched to a decoder with cross-attention; the start/pad tokens stay unset."""
    decoder = {**decoder, "is_decoder": True, "add_cross_attention": True}
    return parse_config({"model_type": "vision-encoder-decoder", "is_encoder_decoder": True,
                         "encoder": encoder, "decoder": decoder})


def _renamed(path: str, family) -> Iterator[tuple[str, np.ndarray]]:
    for name, array in read_tensors(*weight_files(path)):
        composed = hf_names.standalone_name(name, family)
        if composed is not None:
            yield composed, array


def from_encoder_decoder_pretrained(encoder: str, decoder: str, *, key, dtype=None) -> tuple[dict, Config]:
    """``(params, config)`` from an encoder checkpoint (ViT/DeiT/BEiT, bare or with a
    classification head) and a decoder checkpoint (GPT2LMHeadModel, GPT2Model or
    TrOCRForCausalLM), local directories or Hub repo ids."""
    enc_path, dec_path = local_dir(encoder), local_dir(decoder)
    config = composed_config(_config_dict(enc_path), _config_dict(dec_path))
    files = [f for path in (enc_path, dec_path) for f in weight_files(path)[1]]
    check_fits(config, files, f"{enc_path} + {dec_path}", skip=_NEW)  # before init_params builds every layer
    dtype = dtype and jnp.dtype(dtype)
    fresh = {p: v for p, v in flatten(init_params(config, key, dtype or jnp.float32)).items() if _NEW.match(p)}
    tensors = itertools.chain(_renamed(enc_path, encoder_family(config.encoder)),
                              _renamed(dec_path, decoder_family(config.decoder)))
    params = build_params(tensors, config, dtype=dtype, where=f"{enc_path} + {dec_path}", defaults=fresh)
    return params, config
