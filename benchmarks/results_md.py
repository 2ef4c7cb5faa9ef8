"""The benchmark's whole results document as markdown (the sections' tables come from report.py
and each section's module)."""

from __future__ import annotations

from benchmarks import documents, folder_speed, long, report, train_speed


def folder_markdown(folder: dict) -> list[str]:
    return [f"## Captioning a folder ({folder['images']} JPEGs, long sides {folder['sides'][0]}-{folder['sides'][1]} "
            "px, end to end)",
            "`purevedec caption FOLDER` against transformers' documented recipe (image processor, generate, "
            f"batch_decode) in one process; greedy, {folder['tokens']} new tokens; images/s over the whole job "
            "(process start to last caption); each library at its best batch size; purevedec with a warm "
            "compilation cache.",
            report.table(folder_speed.SUMMARY_HEADER, folder_speed.summary_rows(folder)),
            report.table(folder_speed.RUNS_HEADER, folder_speed.runs_rows(folder))]


def _sources(res: dict) -> str:
    m, im = res.get("model_identity", {"name": res["model"]}), res.get("images", {})
    which = (f"revision {m['revision']}" if "revision" in m else
             f"weight files sha256 {m['weights_sha256']}" if "weights_sha256" in m else "built in this run")
    where = f" ({m['path']})" if "path" in m and m["path"] != m["name"] else ""
    if "folder" in im:
        imgs = f"{im['count']} images from {im['folder']} (names and bytes sha256 {im['sha256']})"
    else:
        imgs = f"{im.get('count', '?')} synthetic images ({im.get('synthetic', 'N(0,1) pixels')})"
    return f"Model: {m['name']}{where}, {which}. Images: {imgs}."


def _caption_parts(captions: dict, images: dict) -> list[str]:
    """Per workload: the first differing position of each image, and the first captions side by side."""
    parts = []
    names = images.get("files") or [f"image {i}" for i in range(images.get("count", 0))]
    for work, c in captions.items():
        firsts = ", ".join("same" if f is None else str(f) for f in c["first differing position"])
        rows = [[names[i] if i < len(names) else f"image {i}", a, b]
                for i, (a, b) in enumerate(zip(c["purevedec"], c["transformers"]))]
        parts += [f"### {work} captions: {c['differing captions']} of {c['images']} differ "
                  f"(first differing token position per image: {firsts})",
                  report.table(["image", "purevedec", "transformers"], rows)]
    return parts


def _captioning_md(res: dict) -> list[str]:
    parts = [_sources(res),
             "## Fidelity", report.table(["measure", "value"], [[k, v] for k, v in res["fidelity"].items()]),
             *_caption_parts(res.get("captions", {}), res.get("images", {})),
             "## Speed", report.speed_table(res["speed"]), BOUNDS_NOTE]
    seed = res["seed"]
    if any(c.get("bound_s") is None for c in res["speed"]):
        # Only results recorded before the cost model covered every family lack bounds.
        parts.append("Bounds unavailable: these results were recorded by an earlier cost model (ViT -> GPT-2 or "
                     "TrOCR only); rerun the benchmark for bounds.")
    parts.append("Seed Flax column: " + (seed["skipped"] if "skipped" in seed else
                                         "transformers 4.57 FlaxVisionEncoderDecoderModel, generate under jax.jit "
                                         f"({', '.join(f'{k} {v}' for k, v in seed.get('versions', {}).items())})."))
    if res.get("folder"):
        parts += folder_markdown(res["folder"])
    if res["processes"]:
        rows = [[k, v["import_s"], v["load_s"], v["first_caption_s"], v["load_peak_mb"], v["peak_mb"]]
                for k, v in res["processes"].items()]
        parts += ["## Cold start and peak memory (fresh processes)",
                  report.table(["run", "imports s", "load s", "process start -> first caption s",
                                "load peak RSS MB", "peak RSS MB"], rows)]
    return parts


def _ocr_md(o: dict) -> list[str]:
    return [f"## OCR: {o['model']}",
            f"The model ({o['params'] / 1e6:.0f}M parameters) reading batches of text-line crops (N(0,1) pixels), "
            f"{o['tokens']} new tokens, greedy and beam 4, against transformers' generate in the same run. "
            "Lines/s is the batch over the best warm call (encoder included); speed-up is transformers' time "
            "over purevedec's. " + BOUNDS_NOTE,
            report.ocr_table(o["cells"]),
            report.table(["measure", "value"], [[k, v] for k, v in o["fidelity"].items()])]


BOUNDS_NOTE = ("Bounds: encoder FLOPs / peak matmul FLOP/s of the dtype; per token, the bytes a decode step must "
               "read / read bandwidth (weights, cross K/V once per image, half-full self cache) or its FLOPs / "
               "peak, whichever is larger (from a few dozen rows on, a step is compute-bound).")


def _title(res: dict) -> str:
    """The model measured: the captioning subject's, else the first fixed-shape section's."""
    for key in ("model", "ocr", "long", "long_pages"):
        if res.get(key):
            return res[key] if key == "model" else res[key]["model"]
    return "Donut and Nougat shapes"


def markdown(res: dict) -> str:
    m = res["machine"]
    title = _title(res)
    parts = [f"# purevedec vs transformers ({title}, {res['date']})",
             f"Versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}. "
             f"Machine: {m['cpu_count']} CPUs, matmul {m['matmul_flops'] / 1e9:.0f} GFLOP/s fp32, "
             f"{m['matmul_flops_bf16'] / 1e9:.0f} bf16 (the best of XLA and PyTorch), "
             f"read bandwidth {m['read_bytes_per_s'] / 1e9:.1f} GB/s (measured in this run). "
             + (f"{res['tokens']} new tokens per caption. " if "speed" in res else "")
             + "Times are the best warm call.",
             "## Targets", report.targets_table(res["targets"]) if res["targets"] or "goals_note" not in res
             else res["goals_note"]]
    if "speed" in res:
        parts += _captioning_md(res)
    if "ocr" in res:
        parts += _ocr_md(res["ocr"])
    for key in ("long", "long_pages"):
        if key in res:
            parts.append("\n\n".join(long.markdown(res[key])))
    if "documents" in res:
        parts += documents.markdown(res["documents"])
    if res.get("training"):
        parts.append(train_speed.markdown(res["training"]).strip())
    return "\n\n".join(parts) + "\n"
