"""The benchmark's results as markdown tables and a PNG chart (drawn with PIL alone)."""

from __future__ import annotations

from PIL import Image, ImageDraw


def _fmt(x, unit="") -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x.replace("|", "\\|")  # a literal bar (|d|) would split the markdown cell
    return f"{x:.3g}{unit}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def speed_table(speed: list[dict]) -> str:
    rows = []
    for r in speed:
        tok = r.get("pv_token_ms")
        rows.append([r["workload"], r["batch"], r["dtype"], r["pv_s"], r["hf_s"], _ratio(r["pv_s"], r["hf_s"]),
                     r.get("seed_s"), tok, r.get("hf_token_ms"), _ratio(tok, r.get("hf_token_ms")),
                     _times(r["pv_s"], r["bound_s"]), _times(tok, r.get("bound_token_ms")), r["pv_first_s"]])
    return table(["workload", "batch", "dtype", "purevedec s", "transformers s", "ratio", "seed Flax s",
                  "purevedec ms/token", "transformers ms/token", "token ratio", "time / bound",
                  "token / bound", "purevedec first call s"], rows)


def ocr_table(cells: list[dict]) -> str:
    """The OCR rows: text-line crops per second of both libraries, purevedec's speed-up, the
    decode time per token, and purevedec's time over the machine's bound."""
    rows = []
    for r in cells:
        tok = r.get("pv_token_ms")
        rows.append([r["workload"], r["batch"], r["dtype"], r["pv_lines_per_s"], r["hf_lines_per_s"],
                     _ratio(r["hf_s"], r["pv_s"]), tok, r.get("hf_token_ms"), _times(r["pv_s"], r.get("bound_s")),
                     _times(tok, r.get("bound_token_ms")), r["pv_first_s"]])
    return table(["workload", "batch", "dtype", "purevedec lines/s", "transformers lines/s", "speed-up",
                  "purevedec ms/token", "transformers ms/token", "time / bound", "token / bound",
                  "purevedec first call s"], rows)


def _ratio(a, b):
    return None if a is None or b is None else f"{a / b:.2f}x"


def _times(a, bound):
    return None if a is None or bound is None else f"{a / bound:.2f}x"


def targets_table(targets: list[dict]) -> str:
    return table(["target", "measured", "goal", "met"],
                 [[t["name"], f"{t['value']:.2f}", t["goal"], "yes" if t["met"] else "**no**"] for t in targets])


def chart(speed: list[dict], path: str) -> None:
    """Horizontal bars: purevedec time / transformers time per workload (shorter is faster),
    with lines at 1.0 (parity) and 0.5 (the generation target)."""
    rows = [(f"{r['workload']} b{r['batch']} {r['dtype']}", r["pv_s"] / r["hf_s"]) for r in speed]
    scale_max = max([2.0] + [v for _, v in rows])
    left, width, bar, gap, top = 230, 520, 16, 6, 40
    img = Image.new("RGB", (left + width + 60, top + len(rows) * (bar + gap) + 40), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), "purevedec time / transformers time (shorter is faster)", fill="black")
    x_of = lambda v: left + int(width * v / scale_max)  # noqa: E731
    for i, (label, v) in enumerate(rows):
        y = top + i * (bar + gap)
        d.text((10, y + 2), label, fill="black")
        d.rectangle([left, y, x_of(v), y + bar], fill=(46, 134, 193) if v <= 1 else (203, 67, 53))
        d.text((x_of(v) + 4, y + 2), f"{v:.2f}", fill="black")
    bottom = top + len(rows) * (bar + gap)
    for v, colour in ((1.0, "black"), (0.5, (39, 174, 96))):
        d.line([x_of(v), top - 6, x_of(v), bottom], fill=colour, width=1)
        d.text((x_of(v) - 8, bottom + 4), f"{v:g}x", fill=colour)
    img.save(path)


README_START = "<!-- benchmark results: written by python -m benchmarks.run -->"
README_END = "<!-- end of benchmark results -->"


def update_readme(path: str, results_md: str) -> None:
    """Put a run's tables into the README between its two markers (headings one level down, so
    they nest under the README's own section); everything outside the markers is kept."""
    with open(path) as f:
        text = f.read()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{path}: no '{README_START}' ... '{README_END}' block to put the results in")
    lines = results_md.strip().splitlines()
    body = [f"**{lines[0].lstrip('# ')}**"] + ["#" + ln if ln.startswith("## ") else ln for ln in lines[1:]]
    new = text[:start + len(README_START)] + "\n" + "\n".join(body) + "\n" + text[end:]
    with open(path, "w") as f:
        f.write(new)
