"""A tiny model built in code, as a JAX researcher would (issue 10): shared by the test_api_* files."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

import purevedec as pv

V = 40          # vocabulary
N_POSITIONS = 16


def tiny_config(*, dropout: float = 0.0, **top) -> pv.Config:
    """ViT 32 wide (S = 4 patches + cls) -> projection -> GPT-2 24 wide, one layer each."""
    encoder = pv.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=40,
                           image_size=16, patch_size=8, hidden_dropout_prob=dropout,
                           attention_probs_dropout_prob=dropout)
    decoder = pv.GPT2Config(vocab_size=V, n_positions=N_POSITIONS, n_embd=24, n_layer=1, n_head=2,
                            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                            bos_token_id=0, eos_token_id=2)
    return pv.Config(encoder=encoder, decoder=decoder, **{"decoder_start_token_id": 0, "pad_token_id": 1,
                                                          "eos_token_id": 2, **top})


def with_dropout(config: pv.Config, rate: float) -> pv.Config:
    enc = dataclasses.replace(config.encoder, hidden_dropout_prob=rate, attention_probs_dropout_prob=rate)
    dec = dataclasses.replace(config.decoder, resid_pdrop=rate, embd_pdrop=rate, attn_pdrop=rate)
    return dataclasses.replace(config, encoder=enc, decoder=dec)


def weights_only(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in ("config", "generation_config")}


def pixels(b: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(b, 3, 16, 16).astype(np.float32)


def ids(b: int, t: int, seed: int = 1) -> np.ndarray:
    return np.random.RandomState(seed).randint(3, V, (b, t)).astype(np.int32)


def init(config: pv.Config, seed: int = 0) -> dict:
    return pv.init_params(config, jax.random.key(seed))
