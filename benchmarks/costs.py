"""Work per workload from the config alone: encoder FLOPs per image and bytes a decode step
must read. Divided by the machine's limits (machine.py) they give each result's lower bound."""

from __future__ import annotations

from purevedec.config import Config


def known(config: Config) -> bool:
    """Whether these formulas describe the architecture (ViT -> GPT-2); for others (DeiT's extra
    token, BEiT's relative bias, TrOCR's decoder) the suite reports no bound rather than a wrong one."""
    return config.encoder.model_type == "vit" and config.decoder.model_type == "gpt2"


def encoder_flops(config: Config) -> float:
    """Multiply-adds x 2 for one image through the ViT (patch embedding, attention, MLP)."""
    e = config.encoder
    s = 1 + e.num_patches
    d, hk, f = e.hidden_size, e.num_attention_heads * e.head_dim, e.intermediate_size
    patch_in = e.num_channels * e.patch_size[0] * e.patch_size[1]
    layer = 2 * s * d * 3 * hk + 2 * s * hk * d + 2 * 2 * s * s * hk + 2 * 2 * s * d * f
    return 2 * e.num_patches * patch_in * d + e.num_hidden_layers * layer


def decode_bytes(config: Config, images: int, rows_per_image: int, cached: int, itemsize: int = 4) -> float:
    """Bytes one decode step reads at the least: every decoder weight used per token (self-
    attention, the cross-attention's query and output, MLP, norms, LM head) once, each image's
    cross-attention K/V once, and each row's self-attention cache of ``cached`` tokens."""
    g = config.decoder
    d, f, layers = g.n_embd, g.n_inner, g.n_layer
    per_layer = (4 * d * d + 4 * d) + (2 * d * d + 2 * d) + (2 * d * f + d + f) + 6 * d
    weights = layers * per_layer + g.vocab_size * d + 2 * d + d  # ..., LM head, final norm, one position row
    cross_kv = layers * images * 2 * (1 + config.encoder.num_patches) * d
    self_kv = layers * images * rows_per_image * 2 * cached * d
    return float(weights + cross_kv + self_kv) * itemsize


def decode_flops(config: Config, images: int, rows_per_image: int, cached: int) -> float:
    """Multiply-adds x 2 for one decode step of images x rows_per_image rows: every weight
    product once per row, and attention over the image's tokens and ``cached`` earlier tokens.
    At a few dozen rows this, not the bytes, bounds a step on a CPU (fp32 peak / bandwidth is
    only ~10 FLOP per byte)."""
    g = config.decoder
    d, f, rows = g.n_embd, g.n_inner, images * rows_per_image
    per_row_layer = 2 * (4 * d * d + 2 * d * d + 2 * d * f) + 2 * 2 * d * (1 + config.encoder.num_patches + cached)
    return float(rows * (g.n_layer * per_row_layer + 2 * g.vocab_size * d))
