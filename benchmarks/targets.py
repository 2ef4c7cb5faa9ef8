"""The goals the benchmark judges purevedec by (ratios against transformers and the machine's
bounds), set for the full-size vit-gpt2 the suite builds."""

from __future__ import annotations

from benchmarks import folder_speed, subject


def _folder_targets(folder: dict, add) -> None:
    for row in folder_speed.summary_rows(folder):
        dtype, pv_rate, hf_rate, pv_first, hf_first = row[0], row[2], row[4], row[6], row[7]
        add(f"folder job time vs transformers ({dtype}, best batches)", hf_rate / pv_rate, "<= 0.667x (1.5x images/s)",
            1 / 1.5)
        add(f"folder first caption, warm cache, vs transformers ({dtype})", pv_first / hf_first, "<= 1.0x", 1.0)


GOALS_NOTE = ("The goals are set for the full-size vit-gpt2 (ViT-B/16 at 224 px + 12-layer GPT-2); this "
              "checkpoint has other shapes, so it is not judged against them.")


def goals_apply(args, config) -> bool:
    """The goals belong to the suite's own vit-gpt2-shaped model; a user's checkpoint is judged
    against them only when it has those shapes."""
    return not args.model or subject.full_size_vit_gpt2(config)


def targets(cells, proc, folder=None) -> list[dict]:
    get = {(c["workload"], c["batch"], c["dtype"]): c for c in cells}
    found = []

    def add(name, value, goal, limit):
        found.append(dict(name=name, value=value, goal=goal, met=bool(value <= limit)))
    if folder:
        _folder_targets(folder, add)
    for key, name in ((("greedy", 1, "float32"), "greedy b1 time vs transformers"),
                      (("beam-4", 8, "float32"), "beam-4 b8 time vs transformers")):
        if key in get:
            add(name, get[key]["pv_s"] / get[key]["hf_s"], "<= 0.5x", 0.5)
    for c in cells:
        if c["workload"] == "encoder" and c["dtype"] == "float32":
            add(f"encoder b{c['batch']} time vs transformers", c["pv_s"] / c["hf_s"], "<= 1.0x", 1.0)
    g = get.get(("greedy", 1, "float32"))
    if g:
        if g.get("bound_token_ms") and g.get("pv_token_ms"):
            add("greedy b1 decode per token vs memory bound", g["pv_token_ms"] / g["bound_token_ms"], "<= 1.3x", 1.3)
        b = get.get(("greedy", 1, "bfloat16"))
        if b and b.get("pv_token_ms") and g.get("pv_token_ms"):
            add("bf16 vs fp32 decode per token (b1)", b["pv_token_ms"] / g["pv_token_ms"], "<= 0.6x", 0.6)
    if proc:
        warm, ref = proc["purevedec, warm compilation cache"], proc["transformers"]
        add("warm-cache cold start vs transformers", warm["first_caption_s"] / ref["first_caption_s"], "<= 1.0x", 1.0)
    return found
