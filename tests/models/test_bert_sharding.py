"""BERT-style decoders sharded over 8 simulated CPU devices (data=2 x model=4) equal one device:
vocabulary rows and MLP width split over "model", logits within 1e-4, beam-search tokens identical."""

import json
import subprocess
import sys
from pathlib import Path

from bert_models import make_generation_reference
from simulated_devices import simulated_devices_env

TESTS = Path(__file__).resolve().parents[1]
PAIRS = (("bert", "vit"), ("roberta", "deit"))


def test_sharded_bert_and_roberta_equal_one_device(tmp_path):
    # The checkpoints are written here, where torch is loaded anyway: the 8-device worker then
    # starts without importing torch and transformers.
    folders = []
    for decoder, encoder in PAIRS:
        make_generation_reference(decoder, encoder).save_pretrained(tmp_path / f"{decoder}+{encoder}")
        folders.append(f"{decoder}+{encoder}={tmp_path / f'{decoder}+{encoder}'}")
    # PYTHONPATH is inherited (the worker needs nothing from tests/): the purevedec under test
    # is the one this process imported.
    env = simulated_devices_env(8)   # and the suite's compile settings (tests/conftest.py)
    done = subprocess.run([sys.executable, str(TESTS / "bert_sharding_worker.py"), *folders], cwd=TESTS.parent,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(found) == sorted(f"{d}+{e}" for d, e in PAIRS)
    for name, facts in found.items():
        assert facts["devices"] == 8
        assert facts["embed_spec"][0] == "model" and facts["fc_spec"][0] == "model", (name, facts)
        assert facts["forward_diff"] < 1e-4 and facts["beam_equal"], (name, facts)
