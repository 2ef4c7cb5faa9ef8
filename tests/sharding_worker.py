"""Sharded runs on 8 simulated CPU devices, for tests/core/test_sharding.py.

Run as ``python -m tests.sharding_worker CASE`` with
XLA_FLAGS=--xla_force_host_platform_device_count=8 in the subprocess's environment only (the
flag must be set before JAX starts, and the other tests run on one device). It computes facts
(output shardings, the collectives in compiled programs, differences from one device) and
prints them as one JSON line; the test asserts on them.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import purevedec as pv

# A tiny model whose every sharded size (heads, MLP width, vocabulary) divides 8.
ENCODER = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=8, intermediate_size=64, image_size=8,
               patch_size=4)
DECODER = dict(n_embd=32, n_layer=1, n_head=8, vocab_size=64, n_positions=16, n_inner=64, bos_token_id=0,
               eos_token_id=2)
KEY = jax.random.key(3)

_COLLECTIVE = re.compile(r"=\s*(.+?)\s+(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)"
                         r"(?:-start)?\(")


@functools.cache
def tiny_params():
    """Random params scaled so that logits are decisive (no near-ties to flip between programs);
    made once per process and shared by the cases (jax arrays are immutable, nothing donates)."""
    config = pv.Config(encoder=pv.ViTConfig(**ENCODER), decoder=pv.GPT2Config(**DECODER), decoder_start_token_id=0,
                       pad_token_id=1, eos_token_id=2)
    params = pv.init_params(config, jax.random.key(0))
    return jax.tree.map(lambda a: a * 4.0, params)


def pixels(batch: int) -> np.ndarray:
    return np.random.RandomState(batch).randn(batch, 3, 8, 8).astype(np.float32)


def collectives(hlo: str) -> list[list]:
    """[op, result type, largest element count] of every collective in a compiled program."""
    found = []
    for result, op in _COLLECTIVE.findall(hlo):
        sizes = [math.prod(int(d) for d in dims.split(",") if d) for dims in re.findall(r"\[([\d,]*)\]", result)]
        found.append([op, result.split("{")[0], max(sizes, default=1)])
    return found


def spec(x) -> list:
    """A jax.Array's PartitionSpec as JSON (None for a sharding that is not named)."""
    s = x.sharding
    return [list(a) if isinstance(a, tuple) else a for a in s.spec] if isinstance(s, NamedSharding) else None


def maxdiff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def compiled(fn, *args):
    """(outputs, compiled HLO text) of jax.jit(fn) run on ``args``: one compile serves both."""
    exe = jax.jit(fn).lower(*args).compile()
    return exe(*args), exe.as_text()


GENERATE_MODES = {"greedy": {}, "beam": dict(num_beams=2), "sample": dict(do_sample=True, top_k=8),
                  "beam_sample": dict(do_sample=True, num_beams=2, num_return_sequences=2, top_k=8)}


def generate_facts(params, x, ref_pixels, mode: str) -> dict:
    """generate_core under jit on sharded ``x``, against one device."""
    def run(p, px):
        return pv.generate_core(p, px, max_new_tokens=4, key=KEY, **GENERATE_MODES[mode])
    out, hlo = compiled(run, params, x)
    ref = run(params, ref_pixels)
    return {"spec": spec(out.sequences), "collectives": collectives(hlo),
            "tokens_equal": bool(np.array_equal(np.asarray(out.sequences), np.asarray(ref.sequences))),
            "lengths_equal": bool(np.array_equal(np.asarray(out.lengths), np.asarray(ref.lengths))),
            "scores_diff": maxdiff(out.scores, ref.scores)}


def data_parallel() -> dict:
    """The batch split over 8 devices, params whole on each: encode (16 and 24 images: strided
    chunks of 8), init_cache, generate in every mode; and a 3-device split (no chunking)."""
    params = tiny_params()
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    facts = {}
    for batch in (16, 24):
        px = pixels(batch)
        x = jax.device_put(px, NamedSharding(mesh, P("data")))
        enc, hlo = compiled(lambda p, v: pv.encode(p, v), params, x)
        facts[f"encode{batch}"] = {"spec": spec(enc), "collectives": collectives(hlo),
                                   "diff": maxdiff(enc, pv.encode(params, px)),
                                   "public_spec": spec(pv.encode(params, x))}
    px = pixels(16)
    x = jax.device_put(px, NamedSharding(mesh, P("data")))
    cache = pv.init_cache(params, pv.encode(params, x), max_len=6, rows_per_image=2)
    facts["init_cache"] = {"self_k": spec(cache.self_kv[0][0]), "mask": spec(cache.mask),
                           "cross_k": spec(cache.cross_kv[0][0])}
    for mode in GENERATE_MODES:
        facts[mode] = generate_facts(params, x, px, mode)
    # Three devices do not divide a chunk of 8: the public encode runs one pass, still split.
    mesh3 = jax.make_mesh((3,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:3])
    px = pixels(12)
    x = jax.device_put(px, NamedSharding(mesh3, P("data")))
    from purevedec.model import _encode_jit, encoder_chunk
    weights = {k: v for k, v in params.items() if k != "config"}
    exe = _encode_jit.lower(weights, x, None, config=params["config"], interpolate_pos_encoding=False,
                            dtype=jnp.float32, output_hidden_states=False, output_attentions=False,
                            chunk=encoder_chunk(x)).compile()
    facts["encode12_on3"] = {"chunk": encoder_chunk(x), "spec": spec(pv.encode(params, x)),
                             "collectives": collectives(exe.as_text()),
                             "diff": maxdiff(pv.encode(params, x), pv.encode(params, px))}
    return facts


MESHES = {"data8": ((8,), ("data",)), "model8": ((8,), ("model",)), "data2_model4": ((2, 4), ("data", "model")),
          "data4_model2": ((4, 2), ("data", "model"))}


def auto_mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))


def placement(params) -> dict:
    """Per weight: [spec, bytes of the whole tensor, largest bytes any one device holds]."""
    from purevedec.params import flatten
    out = {}
    for path, leaf in flatten({k: v for k, v in params.items() if k not in ("config", "generation_config")}).items():
        out[path] = [spec(leaf), leaf.nbytes, max(s.data.nbytes for s in leaf.addressable_shards)]
    return out


def mesh_facts(params, mesh, px, ids, ref, **shard_kw) -> dict:
    sharded = pv.shard_params(params, mesh, **shard_kw)
    x, i = pv.shard_batch(px, mesh), pv.shard_batch(ids, mesh)
    logits = pv.forward(sharded, x, i)
    facts = {"placement": placement(sharded), "logits_spec": spec(logits),
             "forward_diff": maxdiff(logits, ref["forward"]),
             "encode_diff": maxdiff(pv.encode(sharded, x), ref["encode"])}
    for mode in ("greedy", "beam", "sample"):
        out = pv.generate_core(sharded, x, max_new_tokens=4, key=KEY, **GENERATE_MODES[mode])
        facts[mode] = bool(np.array_equal(np.asarray(out.sequences), ref[mode]))
    return facts


def tensor_parallel() -> dict:
    """shard_params/shard_batch on four meshes (and fsdp on one): placement of every weight, and
    forward, encode and generate (greedy, beam, sampling) against one device."""
    params = tiny_params()
    px, ids = pixels(8), np.random.RandomState(1).randint(0, 64, (8, 5)).astype(np.int32)
    ref = {"forward": pv.forward(params, px, ids), "encode": pv.encode(params, px)}
    for mode in ("greedy", "beam", "sample"):
        out = pv.generate_core(params, px, max_new_tokens=4, key=KEY, **GENERATE_MODES[mode])
        ref[mode] = np.asarray(out.sequences)
    facts = {name: mesh_facts(params, auto_mesh(*m), px, ids, ref) for name, m in MESHES.items()}
    facts["data4_model2_fsdp"] = mesh_facts(params, auto_mesh(*MESHES["data4_model2"]), px, ids, ref, fsdp=True)
    try:
        pv.shard_params(params, jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2))
        facts["explicit_error"] = None
    except ValueError as e:
        facts["explicit_error"] = str(e)
    try:
        pv.shard_batch(pixels(6), auto_mesh(*MESHES["data8"]))
        facts["batch_error"] = None
    except ValueError as e:
        facts["batch_error"] = str(e)
    return facts


def collective_shapes(hlo: str) -> list[list]:
    """[op, [every result shape, as a list of dims]] of every collective (tuple results included)."""
    return [[op, [[int(d) for d in dims.split(",") if d] for dims in re.findall(r"\[([\d,]*)\]", result)]]
            for result, op in _COLLECTIVE.findall(hlo)]


def train_batch():
    """16 images, 2 caption rows each (image-major), padded with -100: 32 rows of 6 tokens. With 2
    micro-batches of 8 images, every micro-batch still splits over 8 devices."""
    rs = np.random.RandomState(7)
    labels = rs.randint(3, 64, (32, 6)).astype(np.int32)
    labels[:, 4:] = -100
    labels[1::2, 3:] = -100
    return pixels(16), labels


def gathered_shapes(params) -> list:
    """Each weight's shape on a device once whole along "data": its "model"-split axes divided."""
    from purevedec.params import flatten
    out = set()
    for leaf in flatten(dict(params)).values():
        s, mesh = leaf.sharding.spec, leaf.sharding.mesh
        out.add(tuple(d // mesh.shape["model"] if i < len(s) and "model" in str(s[i]) else d
                      for i, d in enumerate(leaf.shape)))
    return sorted(out)


def train_facts(params, mesh, ref, cfg, batch, fsdp=False) -> dict:
    """One sharded train step (dropout on, the same rbg key) against one device's: params after
    the update, the loss, every leaf's layout kept, optimizer moments laid out as their params,
    and the compiled program's collectives."""
    from purevedec.params import flatten
    from purevedec.training import init_state
    from purevedec.training.parallel import make_sharded_train_step, shard_state
    state = shard_state(init_state(params, cfg, 0), mesh, cfg, fsdp=fsdp)
    before = {path: spec(x) for path, x in flatten(dict(state.params)).items()}
    step = make_sharded_train_step(cfg, state, donate=False)
    px, lb = pv.shard_batch(batch[0], mesh), pv.shard_batch(batch[1], mesh)
    new, metrics = step(state, px, lb)
    after, want, start = flatten(dict(new.params)), flatten(dict(ref["params"])), flatten(dict(ref["start"]))
    mu = flatten(dict(new.opt_state[1][0].mu))  # clip_by_global_norm, then AdamW's (scale_by_adam, ...)
    return {"params_diff": max(maxdiff(after[p], want[p]) for p in want),
            "moved": max(maxdiff(want[p], start[p]) for p in want),
            "loss_diff": abs(float(metrics.loss) - ref["loss"]),
            "layout_changed": [p for p in after if spec(after[p]) != before[p]],
            "mu_differs": [p for p in mu if spec(mu[p]) != before[p]],
            "mu_split": sum(1 for p in mu if any(spec(mu[p]) or [])),
            "collectives": collective_shapes(step.program.lower(state, px, lb, None).compile().as_text()),
            "weight_shapes": sorted({tuple(x.shape) for x in start.values()}),
            "gathered_shapes": gathered_shapes(state.params)}


def train() -> dict:
    """The sharded train step on the four meshes and with fsdp, against one device's step."""
    from purevedec.training import TrainConfig, init_state, make_train_step
    params = tiny_params()
    # eps=0.1: AdamW's first step follows the gradient, not its sign (exactly-zero key-bias
    # gradients are round-off on both sides, which eps=1e-8 would blow up to steps of lr).
    cfg = TrainConfig(learning_rate=1e-2, weight_decay=0.01, eps=0.1, accumulation_steps=2, total_steps=10)
    batch = train_batch()
    state = init_state(params, cfg, 0)
    new, metrics = make_train_step(cfg, donate=False)(state, *batch)
    ref = {"params": new.params, "start": state.params, "loss": float(metrics.loss)}
    facts = {name: train_facts(params, auto_mesh(*m), ref, cfg, batch) for name, m in MESHES.items()}
    facts["data4_model2_fsdp"] = train_facts(params, auto_mesh(*MESHES["data4_model2"]), ref, cfg, batch, fsdp=True)
    return facts


def _cli(argv: list[str]) -> tuple[int, str, str]:
    import contextlib
    import io

    from purevedec.commands import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):  # `train` writes to sys.std*
        code = main(argv, out, err)
    return code, out.getvalue(), err.getvalue()


def cli(model: str, data: str, out_dir: str) -> dict:
    """`purevedec caption` and `purevedec train` with and without --mesh, in this 8-device process."""
    import glob
    import os

    from purevedec.params import flatten
    images = sorted(glob.glob(os.path.join(data, "*.png")))
    caption = ["caption", *images, "--model", model, "--format", "jsonl", "--no-progress", "--batch-size", "4",
               "--num-beams", "2", "--max-new-tokens", "4", "--compile-cache", "none"]
    facts = {"caption": _cli(caption)}
    for mesh in ("data=2,model=4", "data=8", "data=3,model=2", "data=8,gpu=1"):
        facts[f"caption {mesh}"] = _cli(caption + ["--mesh", mesh])
    train = ["train", model, data, "--epochs", "1", "--batch-size", "8", "--validation-fraction", "0",
             "--no-progress", "--max-length", "8", "--learning-rate", "1e-3"]
    runs = {"plain": [], "data4_model2_fsdp": ["--mesh", "data=4,model=2", "--fsdp"], "bad_batch": ["--mesh", "data=8",
            "--batch-size", "6"], "fsdp_alone": ["--fsdp"]}
    params = {}
    for name, extra in runs.items():
        target = os.path.join(out_dir, name)
        facts[f"train {name}"] = _cli(train + ["--out", target] + extra)
        if os.path.isdir(os.path.join(target, "checkpoint-1")):
            params[name] = flatten(pv.load(os.path.join(target, "checkpoint-1"))[0])
            with open(os.path.join(target, "metrics.jsonl")) as f:
                facts[f"loss {name}"] = [json.loads(line)["loss"] for line in f if '"train"' in line]
    sharded = params["data4_model2_fsdp"]
    facts["train_params_diff"] = max(maxdiff(sharded[p], params["plain"][p]) for p in params["plain"])
    return facts


def every_case(model: str, data: str, out_dir: str) -> dict:
    """All four cases in this one process (the CLI's last: it installs signal handlers)."""
    return {"data_parallel": data_parallel(), "tensor_parallel": tensor_parallel(), "train": train(),
            "cli": cli(model, data, out_dir)}


CASES = {"data_parallel": data_parallel, "tensor_parallel": tensor_parallel, "train": train, "cli": cli,
         "all": every_case}

if __name__ == "__main__":
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    print(json.dumps(CASES[sys.argv[1]](*sys.argv[2:])))
