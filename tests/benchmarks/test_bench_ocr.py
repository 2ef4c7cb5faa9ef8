"""The benchmark's OCR section on a tiny TrOCR: it runs end to end beside transformers, its rows
hold what the tables show, and its cost model counts a TrOCR decode step as the params tree and
XLA's cost analysis do."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np

import purevedec as pv
from benchmarks import costs, ocr, run, speed
from purevedec import TrOCRConfig
from purevedec.params import flatten

CONFIG = pv.Config(
    encoder=pv.ViTConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024,
                         image_size=64, patch_size=16, qkv_bias=False),
    decoder=TrOCRConfig(vocab_size=512, d_model=192, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=768,
                        max_position_embeddings=64, cross_attention_hidden_size=256, layernorm_embedding=True,
                        use_learned_position_embeddings=False, tie_word_embeddings=False),
    decoder_start_token_id=2, pad_token_id=1, eos_token_id=2)


def test_ocr_section_runs_beside_transformers(tmp_path):
    import torch
    out = tmp_path / "results"
    res = run.main(["--tiny", "--only", "ocr", "--ocr-batches", "2", "--dtypes", "float32", "--ocr-tokens", "4",
                    "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert "speed" not in saved and saved["ocr"]["model"] == ocr.TINY_NAME
    cells = saved["ocr"]["cells"]
    assert {(c["workload"], c["batch"], c["dtype"]) for c in cells} == {("greedy", 2, "float32"),
                                                                        ("beam-4", 2, "float32")}
    # transformers' tokens, generated here on the suite's pixels by the same random model
    model = ocr.reference(tiny=True)
    px = torch.tensor(speed.pixels(_config(model), 2))
    for c in cells:
        beams = 1 if c["workload"] == "greedy" else 4
        with torch.no_grad():
            want = model.generate(pixel_values=px, num_beams=beams, max_new_tokens=4).numpy()
        np.testing.assert_array_equal(c["hf_sequences"], want)
        np.testing.assert_array_equal(c["pv_sequences"], want)
        assert math.isclose(c["pv_lines_per_s"], 2 / c["pv_s"]) and math.isclose(c["hf_lines_per_s"], 2 / c["hf_s"])
        assert c["bound_s"] > 0 and c["bound_token_ms"] > 0
    assert saved["ocr"]["fidelity"] == {"greedy b2 tokens equal to transformers": 1.0,
                                        "beam-4 b2 tokens equal to transformers": 1.0}
    targets = {t["name"]: t for t in saved["targets"]}
    for c in cells:
        t = targets[f"ocr {c['workload']} b2 float32 time vs transformers"]
        assert t["met"] == (c["pv_s"] < c["hf_s"])
    md = (out / "results.md").read_text()
    assert "## OCR: tiny random TrOCR" in md and "## Speed" not in md and "purevedec lines/s" in md
    # VisionEncoderDecoder never runs the ViT pooler, which purevedec does not keep
    assert res["ocr"]["params"] == sum(p.numel() for n, p in model.named_parameters() if "pooler" not in n)


def _config(model):
    """purevedec's config of the torch model (through a saved config.json)."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        model.config.save_pretrained(d)
        return pv.load_config(d)


def test_sections_default_to_all_and_only_picks_one():
    import pytest
    assert run._sections(run._args([])) == ("captioning", "ocr", "long", "documents", "folder", "train")
    assert run._sections(run._args(["--no-folder", "--no-train"])) == ("captioning", "ocr", "long", "documents")
    assert run._sections(run._args(["--only", "documents"])) == ("documents",)
    assert run._sections(run._args(["--only", "ocr"])) == ("ocr",)
    assert run._sections(run._args(["--model", "x"])) == ("captioning", "folder")  # random-weight sections skipped
    with pytest.raises(SystemExit, match="takes no --model"):
        run._sections(run._args(["--only", "ocr", "--model", "x"]))
    full = run._args([])
    assert (full.ocr_batches, full.ocr_tokens) == ("1,16", 24)  # the cells


def test_trocr_decode_bytes_equal_the_weights_a_step_reads():
    """One image, an empty cache: every decoder weight but the cross K/V kernels (run once per
    image) and the token table (one row read; the LM head is separate), plus the image's cross
    K/V. The sinusoidal positions are computed in the step, not read."""
    params = pv.init_params(CONFIG, jax.random.key(0))
    tree = flatten(params["decoder"])
    assert "pos" not in tree and "lm_head" in tree and "ln_embed.scale" in tree
    read = sum(math.prod(np.shape(x)) for path, x in tree.items()
               if path != "embed" and not (".cross.k." in f".{path}." or ".cross.v." in f".{path}."))
    d = CONFIG.decoder.d_model
    read += d  # the token's embedding row
    cross = CONFIG.decoder.decoder_layers * 2 * (1 + CONFIG.encoder.num_patches) * d
    assert costs.decode_bytes(CONFIG, 1, 1, 0, 4) == 4 * (read + cross)


def test_trocr_decode_flops_agree_with_xla():
    params = pv.init_params(CONFIG, jax.random.key(0))
    enc = pv.encode(params, jnp.zeros((2, 3, 64, 64), jnp.float32))
    cache = pv.init_cache(params, enc, max_len=8, rows_per_image=3)
    ids = jnp.full((6, 1), 5, jnp.int32)
    xla = jax.jit(lambda p, c, i: pv.step(p, c, i, donate=False)[0]).lower(params, cache, ids).compile()
    ours = costs.decode_flops(CONFIG, 2, 3, 7)  # the step attends over the whole 8-slot buffer: 7 cached and itself
    assert abs(xla.cost_analysis()["flops"] / ours - 1) < 0.03, (xla.cost_analysis()["flops"], ours)
