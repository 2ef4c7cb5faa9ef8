"""The benchmark's documents section on tiny Donut-Swin + mBART models: both libraries write
exactly the tokens asked (EOS suppressed), the same tokens in fp32, and the tables show every
cell with its bounds."""

import json

from benchmarks import documents, run


def test_documents_section_runs_beside_transformers(tmp_path):
    out = tmp_path / "results"
    res = run.main(["--tiny", "--only", "documents", "--doc-batches", "1,2", "--doc-tokens", "6",
                    "--doc-page-tokens", "5,9", "--dtypes", "float32", "--out", str(out)])
    donut, nougat = res["documents"]["donut"]["cells"], res["documents"]["nougat"]["cells"]
    assert [(c["batch"], c["tokens"]) for c in donut] == [(1, 6), (2, 6)]
    assert [(c["batch"], c["tokens"]) for c in nougat] == [(1, 5), (1, 9)]
    for c in donut + nougat:
        # EOS suppressed: every row is the start token and exactly the tokens asked, on both sides
        assert c["pv_new_tokens"] == c["hf_new_tokens"] == c["tokens"]
        assert c["tokens_equal"] == 1.0
        assert c["bound_encoder_s"] > 0 and c["bound_token_ms"] > 0
        assert c["pv_tokens_per_s"] == c["batch"] * c["tokens"] / c["pv_s"]
    assert len(res["targets"]) == 4 and all(t["name"].split()[0] in ("donut", "nougat") for t in res["targets"])
    text = (out / "results.md").read_text()
    assert "## Documents: tiny random Donut-Swin + mBART (donut options)" in text
    assert "| 2 | 6 | float32 |" in text and "| 1 | 9 | float32 |" in text
    assert json.loads((out / "results.json").read_text())["documents"]["nougat"]["cells"][1]["tokens"] == 9


def test_the_full_shapes_are_the_checkpoints():
    """The shapes the section states: donut-base's Swin-B (cord-v2's 1280x960 pages, window 10)
    with a 4-layer mBART; nougat-base's Swin-B at 896x672 (window 7) with a 10-layer mBART."""
    donut, nougat = documents.SUBJECTS["donut"], documents.SUBJECTS["nougat"]
    for s in (donut, nougat):
        assert s["encoder"]["depths"] == [2, 2, 14, 2] and s["encoder"]["embed_dim"] == 128
        assert s["decoder"]["d_model"] == 1024
    assert donut["encoder"]["image_size"] == [1280, 960] and donut["encoder"]["window_size"] == 10
    assert nougat["encoder"]["image_size"] == [896, 672] and nougat["encoder"]["window_size"] == 7
    assert (donut["decoder"]["decoder_layers"], nougat["decoder"]["decoder_layers"]) == (4, 10)
