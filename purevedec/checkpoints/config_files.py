"""A checkpoint's config files: config.json -> ``Config``, generation_config.json (or the legacy
keys of config.json) -> ``GenerationConfig``."""

from __future__ import annotations

import os

from ..config import Config, parse_config
from ..generation.options import GenerationConfig, from_checkpoint
from .jsonfile import read_json_object


def _config_path(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return os.path.join(path, "config.json") if os.path.isdir(path) else path


def load_config(path: str | os.PathLike) -> Config:
    """Read and parse ``path/config.json`` (or a config.json path itself)."""
    return parse_config(read_json_object(_config_path(path)))


def load_generation_config(path: str | os.PathLike) -> GenerationConfig:
    """The generation defaults of the checkpoint in directory ``path``: generation_config.json if
    present, else the legacy generation keys of config.json."""
    config_dict = read_json_object(_config_path(path))
    file = os.path.join(os.fspath(path), "generation_config.json")
    file_dict = read_json_object(file) if os.path.exists(file) else None
    return from_checkpoint(config_dict, file_dict, file)
