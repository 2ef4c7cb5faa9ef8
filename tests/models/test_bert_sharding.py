"""BERT-style decoders sharded over 8 simulated CPU devices (data=2 x model=4) equal one device:
vocabulary rows and MLP width split over "model", logits within 1e-4, beam-search tokens identical."""

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_sharded_bert_and_roberta_equal_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(TESTS)}
    done = subprocess.run([sys.executable, str(TESTS / "bert_sharding_worker.py")], cwd=TESTS.parent, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    for name, facts in json.loads(done.stdout.strip().splitlines()[-1]).items():
        assert facts["devices"] == 8
        assert facts["embed_spec"][0] == "model" and facts["fc_spec"][0] == "model", (name, facts)
        assert facts["forward_diff"] < 1e-4 and facts["beam_equal"], (name, facts)
