"""Work per workload from the config alone: encoder FLOPs per image and bytes a decode step
must read. Divided by the machine's limits (machine.py) they give each result's lower bound."""

from __future__ import annotations

from purevedec.config import Config


def known(config: Config) -> bool:
    """Whether these formulas describe the architecture (ViT -> GPT-2 or TrOCR); for others
    (DeiT's extra token, BEiT's relative bias) the suite reports no bound rather than a wrong one.
    A TrOCR layer holds the same weights as a GPT-2 one (separate q/k/v instead of a fused qkv,
    three norms); only the norms outside the layers differ."""
    return config.encoder.model_type == "vit" and config.decoder.model_type in ("gpt2", "trocr")


def _outer_norms(config: Config) -> int:
    """Parameters of the decoder's norms outside its layers: GPT-2's final norm; TrOCR's optional
    embedding norm (it has no final norm)."""
    g = config.decoder
    if g.model_type == "trocr":
        return 2 * g.n_embd if g.layernorm_embedding else 0
    return 2 * g.n_embd


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
    cross-attention K/V once, and each row's self-attention cache of ``cached`` tokens. The
    cross-attention K/V kernels are not read per token (they run once per image, with the
    encoder; like their FLOPs, they are left out)."""
    g = config.decoder
    d, f, layers = g.n_embd, g.n_inner, g.n_layer
    per_layer = (4 * d * d + 4 * d) + (2 * d * d + 2 * d) + (2 * d * f + d + f) + 6 * d
    untied_row = 0 if g.tie_word_embeddings else d  # the input token's row, when not the head's
    # ..., the LM head, the norms outside the layers, one position row, the token's row when untied
    weights = layers * per_layer + g.vocab_size * d + _outer_norms(config) + d + untied_row
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


def bounds(cells: list[dict], config: Config, limits: dict, tokens: int) -> None:
    """Each speed cell's lower bound (``bound_s``; ``bound_token_ms`` for generation), in place:
    the encoder's FLOPs at the dtype's peak, plus per token the larger of the bytes a step reads
    over the read bandwidth and its FLOPs at the peak (a half-full self cache); None for
    architectures these formulas do not describe."""
    if not known(config):
        for c in cells:
            c["bound_s"] = c["bound_token_ms"] = None
        return
    for c in cells:
        bf16 = c["dtype"] == "bfloat16"
        item = 2 if bf16 else 4
        peak = limits["matmul_flops_bf16" if bf16 else "matmul_flops"]
        c["bound_s"] = c["batch"] * encoder_flops(config) / peak
        if c["workload"] != "encoder":
            beams = 1 if c["workload"] == "greedy" else int(c["workload"].split("-")[1])
            step = max(decode_bytes(config, c["batch"], beams, tokens // 2, item) / limits["read_bytes_per_s"],
                       decode_flops(config, c["batch"], beams, tokens // 2) / peak)
            c["bound_token_ms"] = step * 1e3
            c["bound_s"] += tokens * step
