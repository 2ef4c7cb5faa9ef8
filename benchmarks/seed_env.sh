#!/usr/bin/env bash
# Side virtual environment for the "seed implementation" benchmark column: transformers 4.57's Flax
# FlaxVisionEncoderDecoderModel (Flax was removed in transformers 5, which the main venv uses).
#
#   bash benchmarks/seed_env.sh            # -> .seed-venv/ (repo-relative; git-ignored)
#   SEED_VENV=/tmp/sv bash benchmarks/seed_env.sh
#   .seed-venv/bin/python benchmarks/seed_flax.py CHECKPOINT_DIR --out seed.json
#
# Pins: transformers 4.57's own flax extra caps jax/jaxlib at 0.4.13 and flax at 0.7.0, so these are
# the newest versions its Flax models are meant for; jax 0.4.13 needs numpy<2. torch (CPU) is only
# there for from_pretrained(..., from_pt=True), which converts the PyTorch/safetensors checkpoint.
# The torch 2.13.0 CPU wheel lies in /opt/wheels where that exists (pip's --find-links).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${SEED_VENV:-.seed-venv}"
PYTHON="${PYTHON:-python3}"

PINS=("transformers==4.57.3" "flax==0.7.0" "jax==0.4.13" "jaxlib==0.4.13" "numpy<2" "torch==2.13.0")
FIND_LINKS=()
[ -d /opt/wheels ] && FIND_LINKS=(--find-links /opt/wheels)

fail() { echo "seed_env.sh: $*" >&2; exit 1; }

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" >/dev/null || fail "could not create venv $VENV with $PYTHON"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
LOG="$VENV/pip-install.log"
"$VENV/bin/python" -m pip install "${FIND_LINKS[@]}" "${PINS[@]}" >"$LOG" 2>&1 \
    || { grep -E "^ERROR" "$LOG" | tail -5 >&2; fail "pip install failed for: ${PINS[*]} (log: $LOG)"; }
"$VENV/bin/python" -c "from transformers import FlaxVisionEncoderDecoderModel" 2>/dev/null \
    || fail "FlaxVisionEncoderDecoderModel does not import in $VENV"
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
print("seed venv ready:", ", ".join(f"{p}=={md.version(p)}" for p in
                                     ("transformers", "flax", "jax", "jaxlib", "numpy", "torch")))
EOF
