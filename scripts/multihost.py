"""Caption and train as several JAX processes on this machine, over localhost (a multi-host rehearsal).

    python scripts/multihost.py CHECKPOINT DATA_FOLDER --num-processes 2 --devices-per-process 2

launches ``--num-processes`` copies of itself, each with its own CPU devices
(``--xla_force_host_platform_device_count``), joined by ``jax.distributed.initialize`` through a
coordinator on a free localhost port. Every process then runs the same program, as each host
of a real cluster would:

1. one mesh over all processes' devices (``--mesh``, default: all of them on "data"), devices
   ordered process by process, so each process holds a contiguous share of every batch;
2. the checkpoint loaded and placed by ``shard_params`` (every host reads the weights);
3. captioning: the images of DATA_FOLDER's captions file, in order; each process reads and
   preprocesses only its share of each batch and ``jax.make_array_from_process_local_data``
   assembles the global batch; ``generate_core`` runs on it (greedy and beam search);
4. training: ``--steps`` sharded train steps (``training.parallel``) on batches of the same
   folder; the ``Batcher`` of each process loads only its share (``process_index`` of
   ``process_count``).

Process 0 prints one JSON line: the generated tokens and the losses, gathered from all
processes. ``--num-processes 1`` runs the same program in one process (the reference a
multi-process run must equal). A child is one call with ``--process-id`` and ``--coordinator``
(on a real cluster, start one per host with the coordinator's address instead of this launcher).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="checkpoint directory (weights, tokenizer, preprocessor config)")
    p.add_argument("data", help="folder with images and captions.jsonl / captions.csv")
    p.add_argument("--num-processes", type=int, default=2)
    p.add_argument("--devices-per-process", type=int, default=2, help="CPU devices each process simulates")
    p.add_argument("--mesh", default=None, help="data=N,model=M over all devices (default data=<all devices>)")
    p.add_argument("--batch-size", type=int, default=4, help="images per global batch (caption and train)")
    p.add_argument("--steps", type=int, default=2, help="train steps")
    p.add_argument("--max-new-tokens", type=int, default=4)
    p.add_argument("--max-length", type=int, default=8, help="caption tokens in training (with eos)")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--timeout", type=float, default=300, help="seconds the launcher waits for its children")
    p.add_argument("--process-id", type=int, default=None, help="(child) this process's index")
    p.add_argument("--coordinator", default=None, help="(child) host:port of process 0's coordinator")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, argv: list[str]) -> int:
    """Start the children, wait for all of them (killing the rest if one fails or time runs out),
    and pass process 0's JSON line on. Their stderr goes to temporary files, shown on failure."""
    import tempfile
    import time
    coordinator = f"127.0.0.1:{free_port()}"
    # The caller's XLA_FLAGS (dumps, compiler settings) are kept; the device count, last, wins.
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices_per_process}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags.strip()}
    logs = [tempfile.TemporaryFile("w+") for _ in range(args.num_processes)]
    children = [subprocess.Popen([sys.executable, __file__, *argv, "--process-id", str(i), "--coordinator",
                                  coordinator], env=env, stdout=subprocess.PIPE, stderr=log, text=True)
                for i, log in enumerate(logs)]
    deadline = time.monotonic() + args.timeout
    try:
        out = children[0].communicate(timeout=args.timeout)[0]
        for child in children[1:]:
            child.wait(timeout=max(deadline - time.monotonic(), 1))
        failed = [i for i, c in enumerate(children) if c.returncode]
        why = "exited with an error"
    except subprocess.TimeoutExpired:
        failed, why, out = list(range(len(children))), f"ran past --timeout {args.timeout}s", ""
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    for i in failed:
        logs[i].seek(0)
        print(f"multihost: process {i} {why}:\n{logs[i].read()[-3000:]}", file=sys.stderr)
    if failed:
        return 124 if why.startswith("ran") else 1
    print(out.strip().splitlines()[-1])
    return 0


def log(message: str) -> None:
    """A progress line on this process's stderr (shown when the launcher reports a failure)."""
    import jax
    print(f"[process {jax.process_index()}] {message}", file=sys.stderr, flush=True)


def _global_batch(local, mesh, batch: int):
    """This process's rows -> the global array split over "data"."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from purevedec.sharding import DATA
    sharding = NamedSharding(mesh, PartitionSpec(DATA))
    return jax.make_array_from_process_local_data(sharding, local, (batch, *local.shape[1:]))


def _gathered(x):
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(x, tiled=True)


def caption(params, mesh, image_config, paths: list[str], batch: int, max_new_tokens: int) -> dict:
    """Greedy and beam-search tokens of ``paths``, each process reading only its share."""
    import numpy as np

    import purevedec as pv
    from purevedec.captioning.image import preprocess_one
    from purevedec.sharding import host_share
    index, count = host_share(mesh, batch)
    share = batch // count
    tokens = {"greedy": [], "beam": []}
    for start in range(0, len(paths) - batch + 1, batch):
        mine = paths[start + index * share:start + (index + 1) * share]
        pixels = _global_batch(np.stack([preprocess_one(p, image_config) for p in mine]), mesh, batch)
        for mode, beams in (("greedy", 1), ("beam", 2)):
            log(f"generate {mode}, images {start}..{start + batch - 1}")
            out = pv.generate_core(params, pixels, max_new_tokens=max_new_tokens, num_beams=beams)
            tokens[mode].extend(np.asarray(_gathered(out.sequences)).tolist())
    return tokens


def train(params, mesh, tokenizer, image_config, config, args) -> list[float]:
    """``args.steps`` sharded train steps from ``params`` (host arrays, the same on every
    process); each process's Batcher loads only its share of each batch."""
    from purevedec.captioning.image import preprocess_one
    from purevedec.sharding import host_share
    from purevedec.training import TrainConfig, init_state
    from purevedec.training.data import Batcher, read_folder
    from purevedec.training.parallel import make_sharded_train_step, shard_state
    index, count = host_share(mesh, args.batch_size)
    h, w = config.encoder.image_size
    batcher = Batcher(encode=tokenizer.encode, load=lambda p: preprocess_one(p, image_config),
                      image_shape=(config.encoder.num_channels, h, w), eos_token_id=int(config.decoder.eos_token_id),
                      batch_size=args.batch_size, max_length=args.max_length, threads=1,
                      process_index=index, process_count=count)
    cfg = TrainConfig(learning_rate=args.learning_rate, total_steps=max(args.steps, 1), schedule="constant")
    log("placing the train state")
    state = shard_state(init_state(params, cfg, 0), mesh, cfg)
    step = make_sharded_train_step(cfg, state)
    losses = []
    for _, batch in zip(range(args.steps), batcher.batches(read_folder(args.data), seed=0)):
        pixels = _global_batch(batch.pixels, mesh, args.batch_size)
        labels = _global_batch(batch.labels, mesh, args.batch_size * batcher.captions_per_image)
        log(f"train step {len(losses) + 1}")
        state, metrics = step(state, pixels, labels)
        losses.append(float(metrics.loss))  # replicated: every process holds it
    return losses


def warm_up(mesh) -> None:
    """One tiny collective over the mesh while the processes are in step. The first collective
    sets up gloo's context between them, and that setup gives up after 30 s: were it the first
    generate call's, a process still compiling it (slow on a busy machine) would make the others
    fail. Later programs reuse the context."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("purevedec multihost: mesh built")
    n = mesh.devices.size
    local = np.ones((n // jax.process_count(),), np.float32)
    total = jax.jit(lambda x: x.sum())(_global_batch(local, mesh, n))
    assert float(total) == n, float(total)
    multihost_utils.sync_global_devices("purevedec multihost: collectives ready")


def child(args) -> int:
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives between processes
    if args.num_processes > 1:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)

    from purevedec.captioning.image import load_image_config
    from purevedec.captioning.text import load_tokenizer
    from purevedec.checkpoints import load
    from purevedec.sharding import DATA, make_mesh, parse_mesh, shard_params
    from purevedec.training.data import read_folder
    mesh = make_mesh(parse_mesh(args.mesh) if args.mesh else {DATA: jax.device_count()})
    warm_up(mesh)
    host_params, config = load(args.model)
    params = shard_params(host_params, mesh)
    image_config, tokenizer = load_image_config(args.model), load_tokenizer(args.model)
    paths = [e.image for e in read_folder(args.data).examples]
    result = {"processes": jax.process_count(), "devices": jax.device_count(),
              "tokens": caption(params, mesh, image_config, paths, args.batch_size, args.max_new_tokens),
              "losses": train(host_params, mesh, tokenizer, image_config, config, args)}
    if jax.process_index() == 0:
        print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.process_id is None:
        return launch(args, argv)
    return child(args)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's package
    sys.exit(main())
