"""The benchmark suite itself, on a tiny model: it runs end to end, its files are complete, and
its cost model matches published figures for the real shapes."""

import json
import os

import numpy as np
from PIL import Image

import purevedec as pv
from benchmarks import costs, process, report, run
from models import FULL_DECODER, FULL_ENCODER, make_reference, save_captioning_checkpoint


def test_suite_runs_and_writes_tables_json_and_chart(tmp_path):
    out = tmp_path / "results"
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{report.README_START}\nold table\n{report.README_END}\n\nafter\n")
    res = run.main(["--tiny", "--batches", "1", "--dtypes", "float32", "--tokens", "4", "--no-process",
                    "--seed-python", str(tmp_path / "absent" / "python"), "--out", str(out), "--readme", str(readme)])
    saved = json.loads((out / "results.json").read_text())
    assert saved["fidelity"] == res["fidelity"]
    assert saved["fidelity"]["fp32 logits max |d|"] <= 1e-4
    assert saved["fidelity"]["greedy b1 tokens equal to transformers"] == 1.0
    assert saved["fidelity"]["beam-4 b1 tokens equal to transformers"] == 1.0
    assert {(c["workload"], c["batch"]) for c in saved["speed"]} == {("encoder", 1), ("greedy", 1), ("beam-4", 1)}
    for cell in saved["speed"]:
        assert cell["pv_s"] > 0 and cell["hf_s"] > 0 and cell["bound_s"] > 0
    assert "absent" in saved["seed"]["skipped"]
    assert {t["name"] for t in saved["targets"]} >= {"greedy b1 time vs transformers",
                                                       "greedy b1 decode per token vs memory bound"}
    md = (out / "results.md").read_text()
    assert "## Targets" in md and "## Speed" in md and "beam-4" in md
    shown = readme.read_text()
    assert shown.startswith("# title\n") and shown.endswith(f"{report.README_END}\n\nafter\n")
    assert "old table" not in shown and "### Targets" in shown and "### Speed" in shown
    with Image.open(out / "chart.png") as chart:
        assert chart.size[0] > 400 and chart.size[1] > 100


def test_cost_model_matches_vit_b16_and_gpt2_figures():
    config = pv.parse_config({
        "model_type": "vision-encoder-decoder", "is_encoder_decoder": True,
        "encoder": {"model_type": "vit", **FULL_ENCODER},
        "decoder": {"model_type": "gpt2", "add_cross_attention": True, "is_decoder": True, **FULL_DECODER}})
    # ViT-B/16 at 224 is ~17.6 G multiply-adds per image (the figure its paper and timm quote).
    assert abs(costs.encoder_flops(config) / 2 - 17.6e9) < 0.3e9
    # Per token GPT-2 124M + cross q/o reads ~137.7 M weights (12 x (6 D^2 + 2 D F) + V D), 4 bytes each.
    weights_only = costs.decode_bytes(config, images=0, rows_per_image=1, cached=0)
    assert abs(weights_only - 137.7e6 * 4) < 2e6
    per_image = costs.decode_bytes(config, 1, 1, 0) - weights_only
    assert per_image == 12 * 2 * 197 * 768 * 4  # cross K/V once per image, not per beam
    assert costs.decode_bytes(config, 1, 4, 0) == costs.decode_bytes(config, 1, 1, 0)
    # A decode step's FLOPs: 2 per weight per row (137.7 M weights), plus q.k and p.v over the
    # image's 197 tokens in 12 layers; linear in rows.
    one = costs.decode_flops(config, 1, 1, cached=0)
    assert abs(one - (2 * 137.7e6 + 12 * 2 * 2 * 768 * 197)) < 2e6
    assert costs.decode_flops(config, 8, 4, cached=0) == 32 * one


def test_fresh_process_child_captions_like_in_process(tmp_path):
    path = save_captioning_checkpoint(make_reference(init_scale=2.0), tmp_path / "ckpt")
    image = str(tmp_path / "im.png")
    Image.fromarray((np.random.RandomState(0).rand(20, 30, 3) * 255).astype(np.uint8)).save(image)
    got = process.run_child("purevedec", path, image, tokens=4)
    expected = pv.Captioner.from_pretrained(path).caption([image], max_new_tokens=4)[0]
    assert got["caption"] == expected
    assert 0 < got["import_s"] < got["first_caption_s"] <= got["process_s"]
    assert got["peak_mb"] >= got["load_peak_mb"] >= 0
    assert os.path.isdir(path)


def test_only_publish_touches_tracked_results():
    from benchmarks.run import ROOT, _args
    short = _args(["--tiny"])
    assert short.out == os.path.join(ROOT, "benchmarks", "runs", "last") and short.readme == "none"
    full = _args([])
    assert full.out == short.out and full.readme == "none"  # a full run publishes nothing unless asked
    published = _args(["--publish"])
    assert published.out == os.path.join(ROOT, "benchmarks", "results")
    assert published.readme == os.path.join(ROOT, "README.md")
