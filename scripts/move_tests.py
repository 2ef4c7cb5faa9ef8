"""Move the test files into folders that mirror the package's layers (run once, from the
repository root, on a clean tree: ``python scripts/move_tests.py``; ``--dry-run`` prints the moves).

The helpers (conftest, models, ocr_models, api_util, cli_util, formats_util, sharding_worker)
stay in tests/: pytest puts tests/ on the path (pyproject's pythonpath), so ``from models import``
and ``from conftest import`` work the same from any subfolder. No subfolder may hold its own
conftest.py (``from conftest import`` would then be ambiguous). A moved file's repository root
is one folder further up: its ``ROOT = ...`` line is rewritten. Test files not in LAYERS (added
since) are listed and left in place.
"""

from __future__ import annotations

import os
import subprocess
import sys

LAYERS = {
    "core": ["test_activations", "test_model", "test_params", "test_api_pytree", "test_api_inputs",
             "test_fast_paths", "test_dropout_sites", "test_sharding", "test_sharding_vocab", "test_public_surface",
             "test_backend_tuning", "test_config", "test_layering", "test_costs", "test_forward_mode", "test_remat",
             "test_score"],
    "models": ["test_deit_beit", "test_trocr", "test_bert", "test_bert_sharding", "test_swin", "test_mbart",
               "test_document_models", "test_document_e2e"],
    "generation": ["test_generate", "test_api_generate", "test_ragged", "test_engine", "test_growing"],
    "checkpoints": ["test_loader", "test_formats", "test_hostile", "test_hub", "test_save", "test_torch_pickle",
                    "test_reader_fuzz", "test_compose", "test_ocr_io"],
    "captioning": ["test_cli", "test_cli_robust", "test_cli_sampling", "test_image", "test_text",
                   "test_folder_pipeline", "test_grayscale", "test_document_image", "test_document_output",
                   "test_bert_text", "test_hostile_cli"],
    "training": ["test_train", "test_train_data", "test_train_metrics", "test_train_flags", "test_loss",
                 "test_finetune", "test_huge_pages", "test_multihost", "test_train_cli", "test_train_run"],
    "shapes": ["test_shapes_model", "test_shapes_scenes", "test_render_shapes"],
    "benchmarks": ["test_bench", "test_bench_bounds", "test_bench_folder", "test_bench_ocr", "test_bench_train",
                   "test_fullsize", "test_bench_long", "test_bench_manga", "test_bench_user"],
}
# About the suite or the repository as a whole: they stay in tests/.
TOP_LEVEL = {"test_docs", "test_isolation"}
DEEPER = {  # the repository root, seen from one folder further down
    "os.path.dirname(os.path.dirname(os.path.abspath(__file__)))":
        "os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))",
    "Path(__file__).resolve().parent.parent": "Path(__file__).resolve().parents[2]",
    "TESTS = Path(__file__).resolve().parent\n": "TESTS = Path(__file__).resolve().parents[1]\n",
}


def main(dry_run: bool) -> int:
    present = {f[:-3] for f in os.listdir("tests") if f.startswith("test_") and f.endswith(".py")}
    mapped = {name for names in LAYERS.values() for name in names}
    for name in sorted(present - mapped - TOP_LEVEL):
        print(f"not mapped, left in tests/: {name}.py", file=sys.stderr)
    for layer, names in LAYERS.items():
        for name in names:
            if name not in present:
                print(f"missing, skipped: tests/{name}.py", file=sys.stderr)
                continue
            src, dst = f"tests/{name}.py", f"tests/{layer}/{name}.py"
            print(f"{src} -> {dst}")
            if dry_run:
                continue
            os.makedirs(f"tests/{layer}", exist_ok=True)
            subprocess.run(["git", "mv", src, dst], check=True)
            with open(dst, encoding="utf-8") as f:
                text = f.read()
            for old, new in DEEPER.items():
                text = text.replace(old, new)
            with open(dst, "w", encoding="utf-8") as f:
                f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main("--dry-run" in sys.argv[1:]))
