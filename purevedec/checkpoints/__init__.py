"""Checkpoint I/O: HF names, the weights formats, the Hub, load, save and compose.
Imports the model core and generation's options (to read and write generation defaults)."""

from .compose import from_encoder_decoder_pretrained
from .config_files import load_config, load_generation_config
from .loader import build_params, load
from .writer import save

__all__ = ["build_params", "from_encoder_decoder_pretrained", "load", "load_config", "load_generation_config",
           "save"]
