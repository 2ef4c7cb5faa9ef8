"""params + config -> a Hugging Face checkpoint directory that transformers loads as is.

Writes ``config.json`` (the text the config was read from, so nothing is lost; rebuilt from
the dataclasses when the config was made by hand), ``generation_config.json`` and
``model.safetensors`` under the original HF tensor names, produced by the same rule table the
loader reads.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np

from ..config import Config
from ..generation.options import FIELDS, GenerationConfig
from ..generation_config import defaults_of
from ..models import decoder_family, encoder_family
from ..params import EXTRA_KEY, flatten, unpack
from . import names as hf_names
from .extra_file import named_leaves, write_extra


def _layers(template: str, flat: dict) -> list[str]:
    """The layer indices present in ``flat`` for a path template with ``{i}``."""
    if "{i}" not in template:
        return []
    found = {m.group(1) for m in map(hf_names.template_regex(template).match, flat) if m}
    return sorted(found, key=int)


def hf_tensors(params: dict, config: Config) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, numpy array) for every tensor of the checkpoint, one at a time."""
    flat = flatten(params)
    dtype = np.asarray(next(iter(flat.values()))).dtype
    pooler = config_dict(config)["encoder"].get("pooler_output_size")
    for name, shape in hf_names.placeholders(config, pooler):
        yield name, np.zeros(shape, dtype)
    for rule in hf_names.rules_for(config):
        for name, paths in hf_names.expand(rule, _layers(rule.ours[0], flat)):
            if hf_names.is_ignored(name, config):
                continue  # a tied lm_head: transformers ties it back itself
            xs = [np.asarray(flat[p]) for p in paths]
            yield name, np.ascontiguousarray(hf_names.TRANSFORMS[rule.kind][1](xs, hf_names.hf_shape(rule, config)))


def config_dict(config: Config) -> dict:
    """The config.json dict: the one it was read from, else one rebuilt from the dataclasses."""
    if config.source:
        return json.loads(config.source)
    decoder = decoder_family(config.decoder).to_json(config.decoder)
    decoder.update(add_cross_attention=True, is_decoder=True)
    return {"model_type": "vision-encoder-decoder", "is_encoder_decoder": True,
            "encoder": encoder_family(config.encoder).to_json(config.encoder), "decoder": decoder,
            "decoder_start_token_id": config.decoder_start_token_id,
            "pad_token_id": config.pad_token_id, "eos_token_id": config.eos_token_id}


def _json_value(v):
    return [_json_value(x) for x in v] if isinstance(v, tuple) else v


def generation_dict(config: Config, gen: GenerationConfig) -> dict:
    """generation_config.json: the options that differ from transformers' defaults, plus the
    special tokens generation starts and stops on."""
    default = GenerationConfig()
    d = {f: getattr(gen, f) for f in FIELDS if getattr(gen, f) != getattr(default, f)}
    fallback = {"decoder_start_token_id": config.decoder_start_token_id, "bos_token_id": config.decoder.bos_token_id,
                "eos_token_id": config.eos_token_id if config.eos_token_id is not None else config.decoder.eos_token_id,
                "pad_token_id": config.pad_token_id}
    for k, v in fallback.items():
        if d.get(k) is None and v is not None:
            d[k] = v
    # A single eos id is written as a plain int, the way transformers writes it.
    d = {k: v[0] if k.endswith("eos_token_id") and isinstance(v, tuple) and len(v) == 1 else v for k, v in d.items()}
    return {k: _json_value(v) for k, v in d.items() if v is not None}


def _write_json(d: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(d, f, indent=2, sort_keys=True)
        f.write("\n")


def _stored_dtype(weights: dict) -> str:
    """The params' dtype name as transformers writes it ("float32", "bfloat16", ...)."""
    return str(np.asarray(next(iter(flatten(weights).values()))).dtype)


def save(params: dict, config_or_path, path: str | os.PathLike | None = None, *,
         generation_config: GenerationConfig | None = None) -> None:
    """Write ``params`` as an HF VisionEncoderDecoder checkpoint directory: ``save(params, path)``
    with the config the params carry, or ``save(params, config, path)`` with an explicit one.

    config.json records the dtype the weights are stored in; generation_config.json holds
    ``generation_config``, else the params' own (``params["generation_config"]``), else the
    config's special ids. The extra leaves (``params["extra"]``: adapters, heads) are not part of
    the model: they go to extra.safetensors, a file transformers does not read, and ``load``
    puts them back."""
    from safetensors.numpy import save_file
    if path is None:
        config, path = None, config_or_path
    else:
        config = config_or_path
    weights, config = unpack(params, config)
    extra = named_leaves(params.get(EXTRA_KEY) or {})  # before any file is written: its keys may be refused
    gen = generation_config or defaults_of(params, config)
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    config_json = config_dict(config)
    config_json["dtype"] = _stored_dtype(weights)
    config_json.pop("torch_dtype", None)  # transformers 5 reads "dtype"; an old copy would contradict it
    _write_json(config_json, os.path.join(path, "config.json"))
    _write_json(generation_dict(config, gen), os.path.join(path, "generation_config.json"))
    # transformers refuses safetensors files whose metadata does not name a known format.
    save_file(dict(hf_tensors(weights, config)), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    write_extra(extra, path)
