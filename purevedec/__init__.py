"""purevedec: a pure-JAX, functional VisionEncoderDecoder: an image encoder (ViT, DeiT, BEiT,
Swin / Donut's Swin) -> optional projection -> a text decoder with cross-attention (GPT-2, TrOCR,
BERT, RoBERTa, bert-generation, mBART, BART), loaded straight from Hugging Face checkpoints.

    params, config = purevedec.load("path/to/checkpoint")   # params carry their config
    logits = purevedec.forward(params, pixels, ids)          # [B,T,V] float32

Layers, each importing only those before it: the model core (config, layers, attention, params,
model, sharding) and ``models`` (one module per family, and their registry) at the top;
``generation``; ``checkpoints``; ``captioning``; ``training``. Every family's config class is
exported here under its own name (``ViTConfig``, ``GPT2Config``, ``TrOCRConfig``, ...).
"""

from .config import Config, parse_config
from .models import CONFIG_CLASSES
from .errors import (CheckpointError, ConfigError, GenerationError, ImageError, ModelNotFound, ParamsError,
                     PurevedecError, TokenizerError)
from .decoding import init_cache, step
from .model import EncoderOutput, Output, cross_kv, decode, encode, forward
from .params import check_params, init_params, param_shapes
from .scoring import Score, score
from .costs import count_params, flops
from .sharding import shard_batch, shard_params
from .generation import GenerateOutput, GenerationConfig, GenerationResult, generate, generate_core
from .checkpoints import (build_params, from_encoder_decoder_pretrained, load, load_config, load_generation_config,
                          save)
from .captioning import (Caption, Captioner, ImageConfig, TextTokenizer, enable_compilation_cache, load_image_config,
                         load_tokenizer, parse_image_config, preprocess)
from .training import LossOutput, loss, shift_right

__version__ = "0.1.0"

globals().update({cls.__name__: cls for cls in CONFIG_CLASSES})

__all__ = [
    # model core
    "Config", "EncoderOutput", "Output", "Score", "check_params", "count_params", "cross_kv", "decode", "flops",
    "encode", "forward", "init_cache", "init_params", "param_shapes", "parse_config", "score", "step",
    # every family's config class (ViTConfig, GPT2Config, ...)
    *(cls.__name__ for cls in CONFIG_CLASSES),
    # sharding
    "shard_batch", "shard_params",
    # errors
    "CheckpointError", "ConfigError", "ImageError", "ModelNotFound", "ParamsError", "PurevedecError",
    "GenerationError", "TokenizerError",
    # generation
    "GenerateOutput", "GenerationConfig", "GenerationResult", "generate", "generate_core",
    # checkpoints
    "build_params", "from_encoder_decoder_pretrained", "load", "load_config", "load_generation_config", "save",
    # captioning
    "Caption", "Captioner", "ImageConfig", "TextTokenizer", "enable_compilation_cache", "load_image_config",
    "load_tokenizer", "parse_image_config", "preprocess",
    # training (the train step and loop need the optional extra: pip install purevedec[train])
    "LossOutput", "loss", "shift_right",
]
