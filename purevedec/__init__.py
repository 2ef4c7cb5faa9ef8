"""purevedec: a pure-JAX, functional VisionEncoderDecoder (ViT encoder -> GPT-2 decoder).

    params, config = purevedec.load("path/to/checkpoint")   # params carry their config
    logits = purevedec.forward(params, pixels, ids)          # [B,T,V] float32

Layers, each importing only those before it: the model core (config, layers, vit, gpt2, params,
model, sharding) at the top; ``generation``; ``checkpoints``; ``captioning``; ``training``.
"""

from .config import Config, GPT2Config, ViTConfig, parse_config
from .errors import (CheckpointError, ConfigError, ImageError, ModelNotFound, ParamsError, PurevedecError,
                     TokenizerError)
from .model import EncoderOutput, Output, cross_kv, decode, encode, forward, init_cache, step
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

__all__ = [
    # model core
    "Config", "EncoderOutput", "GPT2Config", "Output", "ViTConfig", "check_params", "count_params", "cross_kv",
    "decode", "flops",
    "encode", "forward", "init_cache", "init_params", "param_shapes", "parse_config", "Score", "score", "step",
    # sharding
    "shard_batch", "shard_params",
    # errors
    "CheckpointError", "ConfigError", "ImageError", "ModelNotFound", "ParamsError", "PurevedecError",
    "TokenizerError",
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
