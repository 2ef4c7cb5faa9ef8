"""The OCR section on manga-ocr's kind of model (ViT + a BERT decoder), at a tiny size: it runs
beside transformers with the generation defaults manga-ocr keeps in its config, tokens equal."""

import json

import numpy as np

import purevedec as pv
from benchmarks import ocr, run, speed


def test_manga_ocr_row_runs_beside_transformers(tmp_path):
    import torch
    out = tmp_path / "results"
    run.main(["--tiny", "--only", "ocr", "--ocr-subject", "manga-ocr", "--ocr-batches", "2", "--dtypes", "float32",
              "--ocr-tokens", "5", "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert saved["ocr"]["model"] == ocr.MANGA_TINY_NAME
    cells = saved["ocr"]["cells"]
    assert {(c["workload"], c["batch"]) for c in cells} == {("greedy", 2), ("beam-4", 2)}
    model = ocr.reference(tiny=True, subject="manga-ocr")
    gen = model.generation_config
    assert (gen.num_beams, gen.no_repeat_ngram_size, gen.length_penalty) == (4, 3, 2.0)
    with tempfile_dir() as d:
        model.config.save_pretrained(d)
        config = pv.load_config(d)
    assert config.decoder.model_type == "bert" and config.decoder.num_hidden_layers == 2
    px = torch.tensor(speed.pixels(config, 2))
    for c in cells:
        beams = 1 if c["workload"] == "greedy" else 4
        with torch.no_grad():
            want = model.generate(pixel_values=px, num_beams=beams, max_new_tokens=5).numpy()
        np.testing.assert_array_equal(c["hf_sequences"], want)
        np.testing.assert_array_equal(c["pv_sequences"], want)
    assert "## OCR: " + ocr.MANGA_TINY_NAME in (out / "results.md").read_text()


def tempfile_dir():
    import tempfile
    return tempfile.TemporaryDirectory()
