"""The ``purevedec:shapes`` model: its architecture, tokenizer, image preprocessing and training
schedule, as one fixed recipe (re-running it reproduces the shipped model's accuracy).

Choices and why (measured on this project's 2-core CPU; see docs/shapes.md):
- 48 px input, 8 px patches (36 tokens): shapes are 0.20-0.32 of the canvas, 10-15 px after the
  resize, still telling a disc from a square; the encoder's cost is quadratic in the tokens.
- Every batch is freshly generated: a fixed set of scenes was memorised (the issue's probe
  plateaued near 75% exact match at a training loss of 0.05).
- A 64-wide model (4 encoder layers, 2 decoder layers): a 128-wide one learned no more per
  step (46% vs 43% exact match after 1,000 steps) at 2.5x the cost per step; steps are what
  this task needs.
- The encoder's position table starts as a fixed 2D sine-cosine table (MAE's), half the channels
  for x and half for y: where a shape is matters from the first step (the captions' relations).
- A word-level vocabulary of the 13 caption words plus 4 specials: captions are at most 9 words.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..config import Config, parse_config
from ..params import init_params
from .scenes import vocabulary

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID, START_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
MAX_CAPTION_TOKENS = 10      # 9 words + eos
IMAGE_SIDE = 48
PATCH = 8


@dataclass(frozen=True)
class Recipe:
    """The training schedule; defaults are the shipped model's."""
    steps: int = 7000
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    seed: int = 0                 # params init, dropout and the training scene stream
    eval_every: int = 500
    eval_scenes: int = 256        # held-out scenes scored at each evaluation
    final_scenes: int = 1000      # held-out scenes scored at the end


# Scene streams: training draws (seed, i); evaluation streams never meet a training one.
EVAL_STREAM = 1_000_000
EXAMPLE_STREAM = 2_000_000


def vocab() -> dict[str, int]:
    return {w: i for i, w in enumerate([*SPECIAL_TOKENS, *vocabulary()])}


def config_dict() -> dict:
    """The model's config.json content (a VisionEncoderDecoder: ViT encoder, GPT-2 decoder)."""
    width = 64
    encoder = {"model_type": "vit", "hidden_size": width, "num_hidden_layers": 4, "num_attention_heads": 4,
               "intermediate_size": 4 * width, "image_size": IMAGE_SIDE, "patch_size": PATCH,
               "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    decoder = {"model_type": "gpt2", "n_embd": width, "n_layer": 2, "n_head": 4, "vocab_size": len(vocab()),
               "n_positions": 16, "add_cross_attention": True, "is_decoder": True, "bos_token_id": START_ID,
               "eos_token_id": EOS_ID, "pad_token_id": PAD_ID, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
               "resid_pdrop": 0.0}
    return {"model_type": "vision-encoder-decoder", "is_encoder_decoder": True, "encoder": encoder,
            "decoder": decoder, "decoder_start_token_id": START_ID, "pad_token_id": PAD_ID, "eos_token_id": EOS_ID}


def model_config() -> Config:
    return parse_config(config_dict())


def sincos_positions(grid: int, width: int, scale: float = 0.5) -> np.ndarray:
    """[grid*grid, width] 2D sine-cosine positions: the first half of the channels encode the
    patch column, the second half its row, each as sin then cos at geometric frequencies."""
    quarter = width // 4
    omega = 1.0 / 10000 ** (np.arange(quarter) / quarter)
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

    def encode(pos):
        angle = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(angle), np.cos(angle)], axis=1)
    return (scale * np.concatenate([encode(cols), encode(rows)], axis=1)).astype(np.float32)


def initial_params(seed: int) -> dict:
    """Random params (``init_params``) with the patch positions set to ``sincos_positions``
    (the class token's row stays random)."""
    params = init_params(model_config(), jax.random.key(seed))
    pos = np.array(params["encoder"]["pos"])
    pos[1:] = sincos_positions(IMAGE_SIDE // PATCH, pos.shape[1])
    return {**params, "encoder": {**params["encoder"], "pos": jnp.asarray(pos)}}


def preprocessor_dict() -> dict:
    """ViTImageProcessor's settings at the model's input size (bilinear resize, [-1, 1] pixels)."""
    return {"image_processor_type": "ViTImageProcessor", "do_resize": True,
            "size": {"height": IMAGE_SIDE, "width": IMAGE_SIDE}, "resample": 2, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5]}


def generation_dict() -> dict:
    return {"decoder_start_token_id": START_ID, "bos_token_id": START_ID, "eos_token_id": EOS_ID,
            "pad_token_id": PAD_ID, "max_length": MAX_CAPTION_TOKENS + 1}


def build_tokenizer():
    """A word-level ``tokenizers.Tokenizer`` over the caption words (decoding joins with spaces)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel(vocab(), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def write_side_files(folder: str) -> None:
    """tokenizer.json, tokenizer_config.json and preprocessor_config.json beside a saved model."""
    build_tokenizer().save(os.path.join(folder, "tokenizer.json"))
    names = dict(zip(("pad_token", "bos_token", "eos_token", "unk_token"), SPECIAL_TOKENS))
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": MAX_CAPTION_TOKENS + 1,
                        "clean_up_tokenization_spaces": False, **names}
    for name, content in (("tokenizer_config.json", tokenizer_config), ("special_tokens_map.json", names),
                          ("preprocessor_config.json", preprocessor_dict())):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)
            f.write("\n")
