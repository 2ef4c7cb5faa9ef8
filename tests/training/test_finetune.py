"""A model fine-tuned here loads in transformers and generates the same tokens there."""

from __future__ import annotations

import numpy as np
import pytest

import purevedec as pv
from conftest import make_reference, rand_pixels, save_reference

pytest.importorskip("optax")
from purevedec.training import TrainConfig, make_train_step, init_state  # noqa: E402


def test_finetuned_checkpoint_generates_the_same_in_transformers(tmp_path):
    import torch
    from transformers import VisionEncoderDecoderModel

    params, _ = pv.load(save_reference(make_reference(seed=5), tmp_path / "base"))
    pixels = rand_pixels(2, seed=3)
    # Teach each image its own caption, ended by eos (id 2), padded with -100.
    labels = np.array([[5, 6, 7, 8, 2, -100], [9, 10, 11, 2, -100, -100]], np.int32)
    cfg = TrainConfig(learning_rate=3e-3, warmup_steps=10, total_steps=150, weight_decay=0.01, label_smoothing=0.1)
    state, step = init_state(params, cfg, 0), make_train_step(cfg)
    for _ in range(150):
        state, metrics = step(state, pixels, labels)
    pv.save(state.params, str(tmp_path / "tuned"))

    ours = pv.generate(state.params, pixels, max_new_tokens=6).sequences
    model = VisionEncoderDecoderModel.from_pretrained(str(tmp_path / "tuned")).eval()
    with torch.no_grad():
        theirs = model.generate(pixel_values=torch.tensor(pixels), max_new_tokens=6, do_sample=False,
                                num_beams=1).numpy()
    assert ours.tolist() == theirs.tolist()
    # the fine-tuning worked: after the start token (0), each image's caption up to eos
    assert ours[0, :6].tolist() == [0, 5, 6, 7, 8, 2]
    assert ours[1, :5].tolist() == [0, 9, 10, 11, 2]
