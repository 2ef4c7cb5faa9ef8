"""purevedec: a pure-JAX, functional VisionEncoderDecoder (ViT encoder -> GPT-2 decoder).

    params, config = purevedec.load("path/to/checkpoint")
    logits = purevedec.forward(params, pixels, ids, config)      # [B,T,V] float32
"""

from .checkpoint import CheckpointError, build_params, load
from .compile_cache import enable_compilation_cache
from .compose import from_encoder_decoder_pretrained
from .config import Config, ConfigError, GPT2Config, ViTConfig, load_config, parse_config
from .generate import GenerateOutput, generate
from .generation_config import GenerationConfig
from .model import EncoderOutput, Output, cross_kv, decode, encode, forward, init_cache, step
from .params import check_params, init_params, param_shapes
from .save import save

__all__ = [
    "CheckpointError", "Config", "ConfigError", "EncoderOutput", "GPT2Config", "GenerateOutput",
    "GenerationConfig", "Output", "ViTConfig", "build_params", "check_params", "cross_kv", "decode", "encode",
    "enable_compilation_cache",
    "forward", "from_encoder_decoder_pretrained", "generate", "init_cache", "init_params", "load", "step",
    "load_config", "param_shapes", "parse_config", "save",
]
__version__ = "0.1.0"

# Image files and text (issue 6).
from .image import ImageConfig, ImageError, load_image_config, parse_image_config, preprocess  # noqa: E402
from .text import TextTokenizer, TokenizerError, load_tokenizer  # noqa: E402
from .captioner import Caption, Captioner, ModelNotFound  # noqa: E402

__all__ += ["Caption", "Captioner", "ImageConfig", "ImageError", "ModelNotFound", "TextTokenizer", "TokenizerError",
            "load_image_config", "load_tokenizer", "parse_image_config", "preprocess"]
