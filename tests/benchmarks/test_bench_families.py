"""The benchmark's cost model (benchmarks/costs.py) on every registered encoder and decoder
family, counted independently from real params and a real cache: the encoder FLOPs against
``pv.flops`` of a real encode call, the bytes a decode step reads against the weights its
logits depend on (nonzero gradient elements) plus the cache arrays it attends over."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import purevedec as pv
from benchmarks import costs, report, targets
from purevedec.models import DECODERS, ENCODERS

VIT = pv.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24, image_size=16,
                   patch_size=8)
SWIN = dict(image_size=(16, 24), patch_size=4, embed_dim=8, depths=(2, 1), num_heads=(2, 2), window_size=2)
BERT = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=20)
BART = dict(vocab_size=40, d_model=16, decoder_layers=2, decoder_attention_heads=2, decoder_ffn_dim=24,
            max_position_embeddings=16)
GPT2 = pv.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16)

ENCODER_CASES = {
    "vit": VIT,
    "deit": pv.DeiTConfig(**{k: getattr(VIT, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                           "intermediate_size", "image_size", "patch_size")}),
    "beit": pv.BeitConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                          image_size=16, patch_size=8, use_relative_position_bias=True,
                          use_absolute_position_embeddings=True),
    "swin": pv.SwinConfig(**SWIN),
    "donut-swin": pv.DonutSwinConfig(**SWIN),
}
# Each decoder family, with its head tied and untied where it can be either, and TrOCR's two
# kinds of positions (a learned table, one row read; sinusoids, computed).
DECODER_CASES = {
    "gpt2": GPT2,
    "gpt2 untied": pv.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16,
                                 tie_word_embeddings=False),
    "trocr": pv.TrOCRConfig(**BART, tie_word_embeddings=False, layernorm_embedding=True),
    "trocr sinusoidal tied": pv.TrOCRConfig(**BART, use_learned_position_embeddings=False, pad_token_id=1),
    "bert": pv.BertConfig(**BERT),
    "bert untied": pv.BertConfig(**BERT, tie_word_embeddings=False),
    "roberta": pv.RobertaConfig(**BERT),
    "bert-generation": pv.BertGenerationConfig(**BERT),
    "mbart": pv.MBartConfig(**BART),
    "bart": pv.BartConfig(**BART, tie_word_embeddings=False),
}


def test_the_cases_cover_every_registered_family():
    assert {c.model_type for c in ENCODER_CASES.values()} == set(ENCODERS)
    assert {c.model_type for c in DECODER_CASES.values()} == set(DECODERS)


@pytest.mark.parametrize("name", sorted(ENCODER_CASES))
def test_encoder_flops_equal_those_of_a_real_encode_call(name):
    """A real two-image encode, through the projection to the decoder's width."""
    config = pv.Config(encoder=ENCODER_CASES[name], decoder=GPT2)
    params = pv.init_params(config, jax.random.key(0))
    e = config.encoder
    pixels = jax.random.normal(jax.random.key(1), (2, e.num_channels, *e.image_size))
    assert costs.encoder_flops(config, images=2) == pv.flops(pv.encode, params, pixels)


def _stepped_cache(params, images: int, rows_per_image: int, cached: int):
    """A real cache of ``cached`` + 1 slots after ``cached`` steps of distinct tokens (none a
    pad id), so that the next token attends over earlier ones that differ."""
    e = params["config"].encoder
    pixels = jax.random.normal(jax.random.key(1), (images, e.num_channels, *e.image_size))
    cache = pv.init_cache(params, pv.encode(params, pixels), max_len=cached + 1, rows_per_image=rows_per_image)
    for t in range(cached):
        _, cache = pv.step(params, cache, jnp.full((images * rows_per_image, 1), 3 + t, jnp.int32))
    return cache


def _weights_read(params, cache, ids) -> int:
    """Decoder weight elements the step's logits depend on: a nonzero gradient element is one
    the step read (a table contributes the rows it indexed; weights used only by init_cache,
    or by nothing, contribute none)."""
    grads = jax.grad(lambda p: pv.step(p, cache, ids, donate=False)[0].sum())(params)
    return sum(int(np.count_nonzero(g)) for g in jax.tree.leaves(grads["decoder"]))


@pytest.mark.parametrize("name", sorted(DECODER_CASES))
def test_decode_costs_equal_what_a_real_step_reads_and_computes(name):
    config = pv.Config(encoder=VIT, decoder=DECODER_CASES[name], decoder_start_token_id=2)
    params = pv.init_params(config, jax.random.key(0))
    images, rows_per_image, cached = 2, 3, 2
    cache = _stepped_cache(params, images, rows_per_image, cached)
    assert int(cache.pos) == cached
    ids = jnp.full((images * rows_per_image, 1), 7, jnp.int32)
    cross = sum(x.size for x in jax.tree.leaves(cache.cross_kv))
    self_kv = sum(x[:, :, :cached].size for x in jax.tree.leaves(cache.self_kv))  # the cached tokens' K/V
    want = 2 * (_weights_read(params, cache, ids) + cross + self_kv)
    assert costs.decode_bytes(config, images, rows_per_image, cached, itemsize=2) == want
    real = pv.flops(lambda p, c, i: pv.step(p, c, i, donate=False), params, cache, ids)
    assert costs.decode_flops(config, images, rows_per_image, cached) == real


def test_every_family_gets_bounds():
    """A Donut-style pair (Swin -> mBART) that the ViT-only cost model reported no bound for."""
    config = pv.Config(encoder=ENCODER_CASES["donut-swin"], decoder=DECODER_CASES["mbart"])
    cells = [{"workload": w, "batch": b, "dtype": "float32", "pv_s": 1.0, "hf_s": 1.0, "pv_token_ms": 1.0,
              "hf_token_ms": 1.0, "pv_first_s": 2.0} for w, b in (("encoder", 2), ("greedy", 1), ("beam-4", 2))]
    costs.bounds(cells, config, {"matmul_flops": 1e9, "matmul_flops_bf16": 1e9, "read_bytes_per_s": 1e9}, 4)
    assert all(c["bound_s"] > 0 for c in cells) and all(c["bound_token_ms"] > 0 for c in cells[1:])
    assert any("bound" in t["name"] for t in targets.targets(cells, {}))
    assert "| - | - |" not in report.speed_table(cells)
