"""Run by test_bert_sharding in a subprocess with 8 simulated CPU devices: a tiny ViT + BERT and
DeiT + RoBERTa, saved by the test as NAME=FOLDER arguments, sharded over data=2 x model=4 and
compared with one device. Prints one JSON line. The test process builds the checkpoints (torch
is already loaded there), so this process never imports torch or transformers."""

import json
import sys

import jax
import numpy as np
from jax.sharding import AxisType

import purevedec as pv


def facts(folder: str) -> dict:
    params, config = pv.load(folder)
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    sharded = pv.shard_params(params, mesh)
    px = np.random.RandomState(3).randn(4, 3, 16, 16).astype(np.float32)  # conftest's rand_pixels(4, seed=3)
    ids = np.random.RandomState(4).randint(4, 60, (4, 6)).astype(np.int32)
    one = np.asarray(pv.forward(params, px, ids))
    many = pv.forward(sharded, pv.shard_batch(px, mesh), pv.shard_batch(ids, mesh))
    kw = dict(max_new_tokens=8, num_beams=3)
    same = np.array_equal(pv.generate(params, px, **kw).sequences,
                          pv.generate(sharded, pv.shard_batch(px, mesh), **kw).sequences)
    return dict(forward_diff=float(np.abs(np.asarray(many) - one).max()), beam_equal=bool(same),
                embed_spec=[str(a) for a in sharded["decoder"]["embed"].sharding.spec],
                fc_spec=[str(a) for a in sharded["decoder"]["blocks"][0]["mlp"]["fc"]["w"].sharding.spec],
                devices=len(jax.devices()))


if __name__ == "__main__":
    print(json.dumps({name: facts(folder) for name, folder in (a.split("=", 1) for a in sys.argv[1:])}))
