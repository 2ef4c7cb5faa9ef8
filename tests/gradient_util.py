"""Gradients compared with torch's: ours by checkpoint tensor name, torch's float64 autograd
under the same names, and the tolerance both loss tests and decoder-family tests use."""

from __future__ import annotations

import jax
import numpy as np

import purevedec as pv
from purevedec.checkpoints.writer import hf_tensors


def flat_grads(params, pixels, labels, **kw):
    # jitted: one program, where the eager gradient of the jitted loss compiled its forward and
    # backward halves apart, and the glue between them op by op
    grads = jax.jit(jax.grad(lambda p: pv.loss(p, pixels, labels, **kw).loss))(params)
    return dict(hf_tensors(grads, params["config"]))


def both_gradients(model, params, pixels, labels, vocab, smoothing, tmp_path):
    """(ours, torch's float64 autograd) gradients of the mean token loss, by checkpoint name."""
    import copy

    import torch
    ref64 = copy.deepcopy(model).double().eval()
    ref64.zero_grad()
    rows = labels.shape[0] // pixels.shape[0]
    out = ref64(pixel_values=torch.tensor(np.repeat(pixels, rows, axis=0)).double(),
                decoder_input_ids=torch.tensor(np.asarray(pv.shift_right(labels, params)), dtype=torch.long))
    torch.nn.CrossEntropyLoss(label_smoothing=smoothing)(out.logits.reshape(-1, vocab),
                                                         torch.tensor(labels, dtype=torch.long).reshape(-1)).backward()
    return flat_grads(params, pixels, labels, label_smoothing=smoothing), checkpoint_named_grads(ref64, tmp_path)


def assert_gradients_match(ours, theirs):
    assert set(theirs) <= set(ours)
    largest = max(np.abs(g).max() for g in theirs.values())
    for name, want in theirs.items():
        # Attention key biases shift every score of a query equally, which softmax ignores: their
        # true gradient is 0 and both sides hold round-off (float32 sums over every key on our
        # side), so those are measured against 1% of the largest gradient, the rest against 0.1%.
        key_bias = name.endswith(("k_proj.bias", "key.bias"))
        scale = max(np.abs(want).max(), (1e-2 if key_bias else 1e-3) * largest)
        err = np.abs(ours[name] - want).max() / scale
        assert err <= 1e-4, (name, err)


def checkpoint_named_grads(model, tmp_path) -> dict:
    """torch's gradients under the checkpoint's tensor names: written in place of the weights
    by save_pretrained, which maps transformers' in-memory names back to the file's."""
    import torch
    from safetensors.numpy import load_file
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "pooler" in name:
                p.copy_(torch.zeros_like(p))
            else:
                p.copy_(p.grad)
    model.save_pretrained(tmp_path / "grads")
    return {n: a for n, a in load_file(str(tmp_path / "grads" / "model.safetensors")).items() if "pooler" not in n}
