"""Writers for the checkpoint formats transformers 5 no longer writes itself (test-only)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np


def copy_config(src, dst) -> str:
    os.makedirs(dst, exist_ok=True)
    shutil.copy(os.path.join(src, "config.json"), dst)
    return str(dst)


def hf_state_dict(path) -> dict:
    """The checkpoint's tensors under their on-disk HF names (transformers 5 renames some
    modules internally, so model.state_dict() is not the file layout)."""
    from safetensors.torch import load_file
    return load_file(os.path.join(path, "model.safetensors"))


def old_state_dict(model, path):
    """The state dict as older transformers saved it: GPT-2 mask buffers and the tied head
    (sharing the embedding's storage, as torch.save writes tied tensors)."""
    import torch
    sd = hf_state_dict(path)
    sd.setdefault("decoder.lm_head.weight", sd["decoder.transformer.wte.weight"])
    n = model.config.decoder.n_positions
    for i in range(model.config.decoder.n_layer):
        sd[f"decoder.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
        sd[f"decoder.transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return sd


def write_bin(sd, path, shards=1):
    """torch.save the state dict as pytorch_model.bin, or as `shards` files with an index."""
    import torch
    if shards == 1:
        torch.save(sd, os.path.join(path, "pytorch_model.bin"))
        return
    names = list(sd)
    weight_map = {}
    for k in range(shards):
        part = names[k::shards]
        file = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        torch.save({n: sd[n] for n in part}, os.path.join(path, file))
        weight_map.update({n: file for n in part})
    json.dump({"metadata": {}, "weight_map": weight_map}, open(os.path.join(path, "pytorch_model.bin.index.json"), "w"))


def _flax_leaf(name: str, t: np.ndarray) -> tuple[str, np.ndarray]:
    """PyTorch name/array -> transformers Flax key/array (kernel/scale/embedding conventions)."""
    if not name.endswith(".weight"):
        return name, t
    base = name[: -len(".weight")]
    if t.ndim == 4:
        return base + ".kernel", t.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if t.ndim == 1:
        return base + ".scale", t
    if base.endswith(("wte", "wpe")):
        return base + ".embedding", t
    return base + ".kernel", t.T


def _ext(a: np.ndarray):
    import msgpack
    a = np.ascontiguousarray(a)
    return msgpack.ExtType(1, msgpack.packb((list(a.shape), a.dtype.name, a.tobytes()), use_bin_type=True))


def write_flax(sd, path, chunk: str | None = None):
    """flax_model.msgpack as FlaxVisionEncoderDecoderModel.save_pretrained wrote it, from an
    HF state dict without a tied head (Flax GPT-2 reads it from wte); the param named `chunk`
    is stored in flax's chunked form."""
    import msgpack
    tree: dict = {}
    for name, t in sd.items():
        key, a = _flax_leaf(name, t.numpy())
        *head, leaf = key.split(".")
        node = tree
        for h in head:
            node = node.setdefault(h, {})
        if key == chunk:
            flat = a.reshape(-1)
            node[leaf] = {"__msgpack_chunked_array__": True,
                          "shape": {str(i): d for i, d in enumerate(a.shape)},
                          "chunks": {"0": _ext(flat[: flat.size // 2]), "1": _ext(flat[flat.size // 2:])}}
        else:
            node[leaf] = _ext(a)
    with open(os.path.join(path, "flax_model.msgpack"), "wb") as f:
        f.write(msgpack.packb(tree, use_bin_type=True))
