"""The weights formats a checkpoint may ship, in order of preference, and their file names."""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import numpy as np

from .flax_msgpack import read_flax_msgpack
from .safetensors_io import read_safetensors
from .torch_pickle import read_torch_bin


class Format(NamedTuple):
    single: str        # the one-file name
    index: str         # the sharded index, whose weight_map names the shards
    shards: str        # a glob for the shard names (what to download from the Hub)
    reader: Callable[[str], Iterator[tuple[str, np.ndarray]]]


# In order of preference when a checkpoint ships several.
FORMATS = (
    Format("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors", read_safetensors),
    Format("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin", read_torch_bin),
    Format("flax_model.msgpack", "flax_model.msgpack.index.json", "flax_model-*-of-*.msgpack", read_flax_msgpack),
)


def pick_format(files) -> Format | None:
    files = set(files)
    return next((f for f in FORMATS if f.single in files or f.index in files), None)
