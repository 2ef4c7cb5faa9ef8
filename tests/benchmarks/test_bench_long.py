"""The benchmark's long-outputs section on a tiny TrOCR (lines) and a tiny Donut-Swin + mBART
(pages): it runs end to end beside transformers, both sides generate exactly the drawn budgets,
and the tables show its rows."""

from benchmarks import long, run


def test_draw_budgets_is_seeded_and_inclusive():
    budgets = long.draw_budgets(2000, 5, 60)
    assert min(budgets) == 5 and max(budgets) == 60 and budgets == long.draw_budgets(2000, 5, 60)


def test_long_section_runs_beside_transformers(tmp_path):
    out = tmp_path / "results"
    res = run.main(["--tiny", "--only", "long", "--long-lines", "5", "--long-slots", "2", "--long-budgets", "3,12",
                    "--long-pages", "3", "--long-page-slots", "2", "--long-page-budgets", "20,40", "--out", str(out)])
    for key, count, (low, high) in (("long", 5, (3, 12)), ("long_pages", 3, (20, 40))):
        section = res[key]
        assert len(section["budgets"]) == count and all(low <= b <= high for b in section["budgets"])
        assert section["tokens"] == sum(section["budgets"])
        assert [c["side"] for c in section["cells"]][2:] == ["purevedec (default: drafts when faster)",
                                                             "transformers (input order)",
                                                             "transformers (sorted by budget)"]
        assert all(c["tokens_per_s"] > 0 and c["first_record_s"] <= c["seconds"] for c in section["cells"])
        assert section["fidelity"]["tokens equal to transformers (fp32)"] == 1.0
        assert section["fidelity"]["n-gram drafts: tokens equal to plain greedy"] == 1.0
        assert section["fidelity"]["default (auto): tokens equal to plain greedy"] == 1.0
        assert 0.0 <= section["fidelity"]["n-gram drafts: draft tokens accepted"] <= 1.0
    assert res["long_pages"]["fidelity"]["n-gram drafts: draft tokens accepted"] > 0  # 20-40 tokens repeat
    assert res["long_pages"]["model"].startswith("tiny random Donut-Swin")
    text = (out / "results.md").read_text()
    assert "## Long outputs" in text and "| purevedec (continuous batching) |" in text
    assert "3 pages, token budgets uniform on 20-40" in text
