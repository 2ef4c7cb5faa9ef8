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
    res = run.main(["--tiny", "--only", "captioning", "--batches", "1", "--dtypes", "float32", "--tokens", "4",
                    "--no-process", "--seed-python", str(tmp_path / "absent" / "python"), "--out", str(out), "--readme", str(readme)])
    saved = json.loads((out / "results.json").read_text())
    assert saved["fidelity"] == res["fidelity"]
    assert saved["fidelity"]["fp32 logits max |d|"] <= 1e-4
    assert saved["fidelity"]["greedy b1 tokens equal to transformers"] == 1.0
    assert saved["fidelity"]["beam-4 b1 tokens equal to transformers"] == 1.0
    assert {(c["workload"], c["batch"]) for c in saved["speed"]} == {("encoder", 1), ("greedy", 1), ("beam-4", 1)}
    for cell in saved["speed"]:
        assert cell["pv_s"] > 0 and cell["hf_s"] > 0 and cell["bound_s"] > 0
    assert "absent" in saved["seed"]["skipped"]
    names = {t["name"] for t in saved["targets"]}
    assert "greedy b1 time vs transformers" in names
    # The tiny model's per-token time can fall below the timer's resolution (recorded as None,
    # not a time); the memory-bound target is there exactly when it was measured.
    greedy = next(c for c in saved["speed"] if c["workload"] == "greedy")
    measured = greedy.get("pv_token_ms") is not None and greedy.get("bound_token_ms") is not None
    assert ("greedy b1 decode per token vs memory bound" in names) == measured
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


def _image_folder(folder, count=3):
    folder.mkdir()
    rng = np.random.RandomState(2)
    for i in range(count):
        Image.fromarray((rng.rand(20 + 7 * i, 30, 3) * 255).astype(np.uint8)).save(folder / f"photo{i}.png")
    return folder


def test_suite_on_a_user_checkpoint_and_image_folder(tmp_path):
    import hashlib
    import torch
    from transformers import AutoImageProcessor, VisionEncoderDecoderModel
    ckpt = save_captioning_checkpoint(make_reference(init_scale=2.0, seed=3), tmp_path / "my-ckpt")
    images = _image_folder(tmp_path / "shots")
    out = tmp_path / "results"
    res = run.main(["--tiny", "--model", ckpt, "--images", str(images), "--batches", "3", "--dtypes", "float32",
                    "--tokens", "4", "--no-process", "--no-train", "--no-folder", "--seed-python", str(tmp_path / "absent" / "python"),
                    "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    weights = hashlib.sha256((tmp_path / "my-ckpt" / "model.safetensors").read_bytes()).hexdigest()[:16]
    assert saved["model_identity"] == {"name": ckpt, "path": ckpt, "weights_sha256": weights}
    assert saved["images"]["count"] == 3 and saved["images"]["files"] == ["photo0.png", "photo1.png", "photo2.png"]
    fid = saved["fidelity"]
    # Independent check of the pixel row: transformers' processor against purevedec's on the same files.
    files = sorted(str(p) for p in images.iterdir())
    ref_px = AutoImageProcessor.from_pretrained(ckpt)(images=[Image.open(f) for f in files],
                                                      return_tensors="np")["pixel_values"]
    ours = pv.preprocess(files, pv.load_image_config(ckpt))
    assert fid["pixels max |d| (the two image processors)"] == float(np.max(np.abs(ours - ref_px))) < 1e-5
    assert 0 <= fid["fp32 logits max |d|"] <= 1e-4 and 0 <= fid["fp32 logits relative error"] <= 1e-5
    assert 0 < fid["bf16 logits relative error"] < 0.1 and fid["bf16 logits max |d|"] > 0
    assert fid["greedy next-token agreement"] == 1.0
    # Captions compared with transformers' own generate on its own pixels, done here independently.
    model = VisionEncoderDecoderModel.from_pretrained(ckpt).eval()
    with torch.no_grad():
        greedy = model.generate(pixel_values=torch.tensor(ref_px), max_new_tokens=4).numpy()
    assert fid["greedy differing captions (of 3 images)"] == 0 and fid["beam-4 differing captions (of 3 images)"] == 0
    shown = saved["captions"]["greedy"]
    assert shown["first differing position"] == [None, None, None]
    from transformers import AutoTokenizer
    assert shown["transformers"] == AutoTokenizer.from_pretrained(ckpt).batch_decode(greedy, skip_special_tokens=True)
    assert shown["purevedec"] == shown["transformers"] and all(shown["purevedec"])
    md = (out / "results.md").read_text()
    assert f"Model: {ckpt}" in md and weights in md and saved["images"]["sha256"] in md and str(images) in md
    assert "| photo0.png |" in md and "greedy captions: 0 of 3 differ" in md
    # Batch 3 (the folder's three images): the speed runs reuse the captions' compiled programs.
    assert {(c["workload"], c["batch"]) for c in saved["speed"]} == {("encoder", 3), ("greedy", 3), ("beam-4", 3)}
    assert all(c["pv_s"] > 0 and c["hf_s"] > 0 and c["bound_s"] > 0 for c in saved["speed"])


def test_reference_unavailable_names_the_missing_architecture(tmp_path):
    import pytest
    from benchmarks import subject
    ckpt = tmp_path / "ckpt"
    save_captioning_checkpoint(make_reference(), ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["encoder"]["model_type"] = "futurevit"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as e:
        subject.load_reference(str(ckpt), "me/my-model")
    line = str(e.value)
    assert "\n" not in line and "me/my-model" in line and "encoder architecture 'futurevit'" in line
