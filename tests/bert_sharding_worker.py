"""Run by test_bert_sharding in a subprocess with 8 simulated CPU devices: a tiny ViT + BERT and
DeiT + RoBERTa sharded over data=2 x model=4, compared with one device. Prints one JSON line."""

import json
import sys
import tempfile

import jax
import numpy as np
from jax.sharding import AxisType

import purevedec as pv
from bert_models import make_generation_reference
from conftest import rand_pixels


def facts(decoder: str, encoder: str) -> dict:
    with tempfile.TemporaryDirectory() as d:
        make_generation_reference(decoder, encoder).save_pretrained(d)
        params, config = pv.load(d)
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    sharded = pv.shard_params(params, mesh)
    px = rand_pixels(4, seed=3)
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
    sys.path.insert(0, "tests")
    print(json.dumps({f"{d}+{e}": facts(d, e) for d, e in (("bert", "vit"), ("roberta", "deit"))}))
