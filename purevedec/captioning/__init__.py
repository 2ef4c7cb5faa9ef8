"""The captioning application: image preprocessing, the tokenizer, the Captioner, attention
maps and the command line. May import every layer below it."""

from .captioner import Caption, Captioner
from .compile_cache import enable_compilation_cache
from .image import ImageConfig, load_image_config, parse_image_config, preprocess
from .text import TextTokenizer, load_tokenizer

__all__ = ["Caption", "Captioner", "ImageConfig", "TextTokenizer", "enable_compilation_cache", "load_image_config",
           "load_tokenizer", "parse_image_config", "preprocess"]
