"""How closely purevedec reproduces transformers: teacher-forced logits and hidden states
(fp32 and bf16), and token agreement of generated sequences."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import purevedec as pv


def _relative(ours, ref) -> float:
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def logits_parity(model, path, batch=2, steps=8, px=None) -> dict:
    """One teacher-forced pass of both libraries on the same pixels (``px``, else random ones)
    and random ids."""
    import torch
    params, config = pv.load(path)
    h, w = config.encoder.image_size
    rng = np.random.RandomState(0)
    if px is None:
        px = rng.randn(batch, config.encoder.num_channels, h, w).astype(np.float32)
    batch = px.shape[0]
    ids = rng.randint(0, config.decoder.vocab_size, (batch, steps)).astype(np.int32)
    with torch.no_grad():
        ref = model(pixel_values=torch.tensor(px), decoder_input_ids=torch.tensor(ids, dtype=torch.long),
                    output_hidden_states=True)
    out = pv.forward(params, px, ids, config, output_hidden_states=True)
    bf16 = np.asarray(pv.forward(params, px, ids, config, dtype=jnp.bfloat16))
    ref_logits = ref.logits.numpy()

    def worst(ours, theirs):
        return max(float(np.max(np.abs(np.asarray(a) - b.numpy()))) for a, b in zip(ours, theirs))
    return {
        "fp32 logits max |d|": float(np.max(np.abs(np.asarray(out.logits) - ref_logits))),
        "fp32 logits relative error": _relative(np.asarray(out.logits), ref_logits),
        "encoder hidden states max |d|": worst(out.encoder_hidden_states, ref.encoder_hidden_states),
        "decoder hidden states max |d|": worst(out.decoder_hidden_states, ref.decoder_hidden_states),
        "bf16 logits max |d|": float(np.max(np.abs(bf16 - ref_logits))),
        "bf16 logits relative error": _relative(bf16, ref_logits),
        "greedy next-token agreement": float(np.mean(np.argmax(out.logits, -1) == np.argmax(ref_logits, -1))),
    }


def token_agreement(ours, theirs) -> dict:
    """Identical rows, and identical tokens position by position (a length mismatch counts the
    missing positions as disagreements)."""
    a, b = np.asarray(ours), np.asarray(theirs)
    width = max(a.shape[1], b.shape[1])
    pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=-1)  # noqa: E731
    a, b = pad(a), pad(b)
    if a.shape != b.shape:
        return {"rows": 0.0, "tokens": 0.0}
    return {"rows": float(np.mean(np.all(a == b, axis=1))), "tokens": float(np.mean(a == b))}


def first_difference(a, b) -> int | None:
    """The first position where two token rows differ (a shorter row differs where it ends)."""
    a, b = list(a), list(b)
    for i in range(max(len(a), len(b))):
        if i >= len(a) or i >= len(b) or a[i] != b[i]:
            return i
    return None


def _trim(row, pad):
    """A transformers-style row without the padding after its end (the longest row sets the width)."""
    row = list(row)
    while len(row) > 1 and row[-1] == pad:
        row.pop()
    return row


def caption_agreement(ours, theirs, pad) -> dict:
    """Per image: identical token rows or not, and the first differing position."""
    firsts = [first_difference(_trim(a, pad), _trim(b, pad)) for a, b in zip(ours, theirs)]
    return {"differing captions": sum(f is not None for f in firsts), "images": len(firsts),
            "first differing position": [f for f in firsts]}
