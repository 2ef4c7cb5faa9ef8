"""purevedec: a pure-JAX, functional VisionEncoderDecoder (ViT encoder -> GPT-2 decoder).

    params, config = purevedec.load("path/to/checkpoint")
    logits = purevedec.forward(params, pixels, ids, config)      # [B,T,V] float32
"""

from .checkpoint import CheckpointError, build_params, load
from .compose import from_encoder_decoder_pretrained
from .config import Config, ConfigError, GPT2Config, ViTConfig, load_config, parse_config
from .model import EncoderOutput, Output, cross_kv, decode, encode, forward
from .params import check_params, init_params, param_shapes
from .save import save

__all__ = [
    "CheckpointError", "Config", "ConfigError", "EncoderOutput", "GPT2Config", "Output", "ViTConfig",
    "build_params", "check_params", "cross_kv", "decode", "encode", "forward", "from_encoder_decoder_pretrained",
    "init_params", "load",
    "load_config", "param_shapes", "parse_config", "save",
]
__version__ = "0.1.0"
