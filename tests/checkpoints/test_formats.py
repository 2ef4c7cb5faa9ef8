"""Round trips of every weights format against transformers on random models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import purevedec as pv
from conftest import make_reference, maxdiff, rand_ids, rand_pixels, save_reference, torch_forward
from formats_util import copy_config, hf_state_dict, old_state_dict, write_bin, write_flax

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _check_logits(model, path, tol=1e-4):
    params, config = pv.load(path)
    pixels, ids = rand_pixels(2), rand_ids(2, 5)
    assert maxdiff(pv.forward(params, pixels, ids, config), torch_forward(model, pixels, ids).logits) < tol
    return params


def test_sharded_safetensors(tmp_path):
    model = make_reference()
    path = str(tmp_path / "m")
    model.save_pretrained(path, max_shard_size="20KB")
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    assert not os.path.exists(os.path.join(path, "model.safetensors"))
    _check_logits(model, path)


def test_missing_shard_is_named(tmp_path):
    path = str(tmp_path / "m")
    make_reference().save_pretrained(path, max_shard_size="20KB")
    shard = json.load(open(os.path.join(path, "model.safetensors.index.json")))["weight_map"]["decoder.transformer.wte.weight"]
    os.remove(os.path.join(path, shard))
    with pytest.raises(pv.CheckpointError, match=f"names shard {shard}, which is not in"):
        pv.load(path)


@pytest.mark.parametrize("shards", [1, 3])
def test_old_bin_checkpoint(tmp_path, shards):
    """A .bin with the buffers and tied head older transformers saved, one file or sharded."""
    model = make_reference()
    src = save_reference(model, tmp_path / "st")
    path = copy_config(src, tmp_path / "bin")
    write_bin(old_state_dict(model, src), path, shards)
    _check_logits(model, path)


def test_safetensors_is_preferred_over_bin(tmp_path):
    model = make_reference()
    path = save_reference(model, tmp_path / "m")
    with open(os.path.join(path, "pytorch_model.bin"), "wb") as f:
        f.write(b"not read")
    _check_logits(model, path)


def test_bin_loads_with_torch_unimportable(tmp_path):
    model = make_reference(dec_kw=dict(tie_word_embeddings=False))
    src = save_reference(model, tmp_path / "st")
    path = copy_config(src, tmp_path / "bin")
    write_bin(hf_state_dict(src), path)
    pixels, ids = rand_pixels(2), rand_ids(2, 5)
    np.save(tmp_path / "pixels.npy", pixels)
    np.save(tmp_path / "ids.npy", ids)
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
sys.path.insert(0, {ROOT!r})
import numpy as np, purevedec as pv
params, config = pv.load({path!r})
assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
np.save({str(tmp_path / "logits.npy")!r}, np.asarray(pv.forward(params, np.load({str(tmp_path / "pixels.npy")!r}),
        np.load({str(tmp_path / "ids.npy")!r}), config)))
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    assert maxdiff(np.load(tmp_path / "logits.npy"), torch_forward(model, pixels, ids).logits) < 1e-4


@pytest.mark.parametrize("dec_kw", [{}, {"tie_word_embeddings": False}])
def test_flax_msgpack(tmp_path, dec_kw):
    model = make_reference(dec_kw=dec_kw)
    src = save_reference(model, tmp_path / "st")
    path = copy_config(src, tmp_path / "flax")
    sd = hf_state_dict(src)
    write_flax(sd, path, chunk="decoder.transformer.wte.embedding")
    params = _check_logits(model, path)
    np.testing.assert_array_equal(np.asarray(params["encoder"]["patch"]["w"]).reshape(32, 3, 4, 4),
                                  sd["encoder.embeddings.patch_embeddings.projection.weight"].numpy())


def test_bf16_bin_casts_on_load(tmp_path):
    import jax.numpy as jnp
    import torch
    model = make_reference()
    src = save_reference(model, tmp_path / "st")
    path = copy_config(src, tmp_path / "bin")
    sd = hf_state_dict(src)
    write_bin({k: v.to(torch.bfloat16) for k, v in sd.items()}, path)
    params, _ = pv.load(path, dtype=jnp.float32)
    want = sd["decoder.transformer.wte.weight"].to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(np.asarray(params["decoder"]["wte"]), want)
    assert params["decoder"]["wte"].dtype == jnp.float32
