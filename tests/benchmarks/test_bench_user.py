"""The benchmark on a user's checkpoint: unreadable images left out before measuring, no
negative per-token time, the vit-gpt2 goals only for vit-gpt2's shapes (no model is run here)."""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import pytest
from PIL import Image

import purevedec as pv
from benchmarks import run, speed, subject, targets
from models import FULL_DECODER, FULL_ENCODER


def test_unreadable_images_are_reported_and_left_out(tmp_path):
    good = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(good)
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "c.png").write_bytes(good.read_bytes()[:30])  # cut short
    lines = []
    files = subject.image_files(str(tmp_path))
    assert subject.readable_images(files, log=lines.append) == [str(good)]
    assert len(lines) == 2 and "b.jpg" in lines[0] and "c.png" in lines[1]
    with pytest.raises(SystemExit, match="none of the 2 image files"):
        subject.readable_images(files[1:], log=lines.append)


class _Instant:
    """A library whose one-token call is slower than its many-token call (timer noise)."""
    name = "fake"

    def encoder(self, px):
        return lambda: px

    def generate(self, px, beams, tokens):
        def call():
            if tokens == 1:
                time.sleep(0.002)
            return np.zeros((px.shape[0], tokens + 1), np.int32)
        return call


def test_a_per_token_time_below_the_timer_is_not_reported_as_negative():
    config = pv.Config(encoder=pv.ViTConfig(image_size=8, patch_size=4, hidden_size=8, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=8),
                       decoder=pv.GPT2Config(vocab_size=10, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    lines = []
    rows = speed.run_library(_Instant(), config, [1], (1,), 4, log=lines.append, with_encoder=False)
    assert rows[0]["per_token_s"] is None
    assert any("below the timer's resolution" in x for x in lines)
    assert not any(re.search(r"-\d", x) for x in lines), lines


def test_goals_apply_only_to_vit_gpt2_shapes():
    full = pv.Config(encoder=pv.ViTConfig(**FULL_ENCODER), decoder=pv.GPT2Config(**FULL_DECODER))
    tiny = pv.Config(encoder=pv.ViTConfig(image_size=8, patch_size=4, hidden_size=8, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=8),
                     decoder=pv.GPT2Config(vocab_size=10, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    assert subject.full_size_vit_gpt2(full) and not subject.full_size_vit_gpt2(tiny)
    user = run._args(["--model", "my-checkpoint"])
    assert targets.goals_apply(user, full) and not targets.goals_apply(user, tiny)
    assert targets.goals_apply(run._args(["--tiny"]), tiny)  # the suite's own self-check keeps its goals


def test_third_party_chatter_is_silenced(monkeypatch):
    for name in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):  # restored after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    logger = logging.getLogger("transformers")
    monkeypatch.setattr(logger, "level", logger.level)
    subject.quiet_third_party()
    assert logger.getEffectiveLevel() >= logging.ERROR
    import warnings
    assert warnings.filters[0][0] == "ignore" and warnings.filters[0][2] is Warning
