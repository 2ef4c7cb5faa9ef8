"""Sharded runs on 8 simulated CPU devices. Each case runs tests/sharding_worker.py in a
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 set in that subprocess's
environment only, and asserts on the facts it reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MOVES_ACTIVATIONS = ("all-gather", "all-to-all", "collective-permute", "reduce-scatter")


def run_worker(case: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "tests.sharding_worker", case], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def data_parallel():
    return run_worker("data_parallel")


def assert_no_activation_traffic(collectives):
    """A data-parallel program may all-reduce a loop's stop flag (one bool), nothing that holds
    activations: no all-gather, all-to-all, permute or reduce-scatter, no all-reduce of an array."""
    moved = [c for c in collectives if c[0] in MOVES_ACTIVATIONS or c[2] > 1]
    assert not moved, f"collectives that move activations: {moved}"


@pytest.mark.parametrize("batch", [16, 24])
def test_encode_keeps_batch_split(data_parallel, batch):
    """16 images (chunk rows of 2 per device) and 24 (3 chunks, one image of each device per
    chunk): encode's output stays split on "data", the compiled program moves no activations,
    and the states equal one device's."""
    facts = data_parallel[f"encode{batch}"]
    assert facts["spec"] == ["data"] and facts["public_spec"] == ["data"], facts
    assert_no_activation_traffic(facts["collectives"])
    assert facts["diff"] < 1e-5


def test_encode_on_devices_not_dividing_the_chunk(data_parallel):
    """12 images on 3 devices: a chunk of 8 cannot take as many images from each device, so the
    encoder runs in one pass and stays split."""
    facts = data_parallel["encode12_on3"]
    assert facts["chunk"] is None
    assert facts["spec"] == ["data"]
    assert_no_activation_traffic(facts["collectives"])
    assert facts["diff"] < 1e-5


def test_init_cache_rows_follow_the_images(data_parallel):
    """The empty self-attention K/V and the key mask are split like the images (they depend on
    no input, so a jitted init_cache used to return them whole on every device)."""
    facts = data_parallel["init_cache"]
    assert facts == {"self_k": ["data"], "mask": ["data"], "cross_k": ["data"]}


@pytest.mark.parametrize("mode", ["greedy", "beam", "sample", "beam_sample"])
def test_generate_keeps_batch_split(data_parallel, mode):
    """generate_core on 16 images split over 8 devices: the token buffers come back split, the
    compiled program all-reduces only its stop flags, and tokens, lengths and scores equal one
    device's (same key for sampling)."""
    facts = data_parallel[mode]
    assert facts["spec"] == ["data"], facts
    assert_no_activation_traffic(facts["collectives"])
    assert facts["tokens_equal"] and facts["lengths_equal"], facts
    assert facts["scores_diff"] < 1e-4
