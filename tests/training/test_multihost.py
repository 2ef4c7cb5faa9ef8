"""Several JAX processes over localhost (scripts/multihost.py) against one process, and each
process's share of the data.

The runs are subprocesses with their own simulated CPU devices (XLA_FLAGS set in their
environment only), joined by jax.distributed on a free port chosen at run time, with bounded
timeouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cli_util import caption_folder
from models import make_reference, save_captioning_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "multihost.py")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    model = make_reference(dec_kw={"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
                                   "tie_word_embeddings": False}, init_scale=3.0, seed=1)
    return save_captioning_checkpoint(model, root / "ckpt"), caption_folder(root / "data")


def run_script(model, data, processes: int, devices: int) -> dict:
    args = [sys.executable, SCRIPT, model, data, "--num-processes", str(processes), "--devices-per-process",
            str(devices), "--batch-size", "4", "--steps", "2", "--timeout", "600"]
    # the children inherit the suite's compile settings; the launcher adds each one's device count
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=660)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(inputs):
    """(one process with 4 CPU devices, two processes with 2 each): the script's JSON results."""
    return run_script(*inputs, processes=1, devices=4), run_script(*inputs, processes=2, devices=2)


def test_two_processes_give_the_tokens_and_losses_of_one(runs):
    """Two processes of 2 CPU devices each (one mesh data=4 over both, each reading half of every
    batch) generate the tokens of one process with 4 devices, greedy and beam search, and their
    two train steps have its losses; the losses change from step to step (the update happened)."""
    one, two = runs
    assert (one["processes"], one["devices"]) == (1, 4) and (two["processes"], two["devices"]) == (2, 4)
    assert len(one["tokens"]["greedy"]) == 8 and len(one["tokens"]["beam"]) == 8
    assert two["tokens"] == one["tokens"]
    assert len(two["losses"]) == 2 and one["losses"][0] != one["losses"][1]
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-6, atol=1e-6)


def test_one_process_equals_unsharded_generate(inputs, runs):
    """The script's one-process run (4 devices) generates what plain generate does on one device."""
    import purevedec as pv
    from purevedec.captioning.image import load_image_config, preprocess_one
    from purevedec.training.data import read_folder
    model, data = inputs
    one = runs[0]
    params, _ = pv.load(model)
    config = load_image_config(model)
    pixels = np.stack([preprocess_one(e.image, config) for e in read_folder(data).examples])
    for mode, beams in (("greedy", 1), ("beam", 2)):
        want = np.concatenate([np.asarray(pv.generate_core(params, pixels[i:i + 4], max_new_tokens=4,
                                                           num_beams=beams).sequences) for i in (0, 4)])
        assert one["tokens"][mode] == want.tolist(), mode


def test_each_process_loads_only_its_share_and_the_shares_make_the_batch(tmp_path):
    """Batchers for process 0 and 1 of 2: each loads only its half of every shuffled batch, and
    their rows side by side are the one-process batches (same captions drawn, same padded length)."""
    from purevedec.training.data import Batcher, read_folder
    folder = caption_folder(tmp_path / "data", n=6)
    loaded = {0: [], 1: [], None: []}

    def batcher(index, count):
        def load(path):
            loaded[index if count > 1 else None].append(path)
            return np.full((3, 2, 2), float(os.path.basename(path)[2:-4]), np.float32)
        return Batcher(encode=lambda s: [int(w[1:]) for w in s.split()], load=load, image_shape=(3, 2, 2),
                       eos_token_id=2, batch_size=4, captions_per_image=2, max_length=8, buckets=(4, 8),
                       threads=1, process_index=index or 0, process_count=count)

    data = read_folder(folder)
    whole = list(batcher(None, 1).batches(data, seed=5))
    parts = [list(batcher(i, 2).batches(data, seed=5)) for i in (0, 1)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 2  # 6 images, batches of 4 (the last padded)
    for w, a, b in zip(whole, *parts):
        np.testing.assert_array_equal(np.concatenate([a.pixels, b.pixels]), w.pixels)
        np.testing.assert_array_equal(np.concatenate([a.labels, b.labels]), w.labels)
    assert sorted(loaded[0] + loaded[1]) == sorted(loaded[None])
    assert not set(loaded[0]) & set(loaded[1])
    with pytest.raises(ValueError, match="batch_size=3 must split evenly over process_count=2"):
        Batcher(encode=str.split, load=np.zeros, image_shape=(3, 2, 2), eos_token_id=2, batch_size=3,
                process_count=2)
