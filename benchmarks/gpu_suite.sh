#!/usr/bin/env bash
# The GPU speed suite: training steps, 847-class evaluation and pseudo-labels on one CUDA device, one table.
# Runs in about 5 minutes on an H100-class GPU (random weights, synthetic inputs: no download, no dataset).
# Usage: benchmarks/gpu_suite.sh [log folder]     (each command's full output is kept there)
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS="${1:-runs/gpu_suite}"
mkdir -p "$LOGS"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_suite.sh needs a CUDA device')"
ROWS=()

# first table row of an `ovss benchmark` output: "what | batch | img/s | ms/step | peak MB"
first_row() { grep -m1 '^│' "$1" | awk -F'│' '{for (i = 2; i <= 6; i++) {gsub(/^ +| +$/, "", $i)}; print $2 "|" $3 "|" $4 "|" $5 "|" $6}'; }
ratio() { grep -o 'at [0-9.]*% of the image-encoder-only ceiling' "$1" | grep -o '[0-9.]*%' || echo "-"; }
mfu() { grep -m1 -o '^training step: .*of peak' "$1" | grep -o '[0-9.]*% of peak' | cut -d' ' -f1 || echo "-"; }

train() {  # name recipe batch [overrides...]
  local name=$1 recipe=$2 batch=$3; shift 3
  local log="$LOGS/$name.txt"
  ovss benchmark train "recipes/$recipe.yaml" "$@" --batch "$batch" --steps 5 --warmup 2 --device cuda >"$log" 2>&1 \
    || { ROWS+=("$name|failed, see $log|||||"); return; }
  ROWS+=("$name|$(first_row "$log")|$(ratio "$log") / $(mfu "$log")")
}

train catseg_vitb_b4 catseg_vitb 4
train catseg_vitb_b32 catseg_vitb 32
train hclip_b4 hclip 4
train hclip_b32 hclip 32
train infoclip_b4 infoclip 4
train catseg_vitl_b4_ckpt catseg_vitl 4 train.activation_checkpointing=true
train hclip_vitl_b4_ckpt hclip_vitl 4 train.activation_checkpointing=true

log="$LOGS/eval_ade847.txt"
if ovss benchmark eval recipes/catseg_vitb.yaml --bench ade847 --images 10 --warmup 2 --device cuda >"$log" 2>&1; then
  ROWS+=("eval_ade847|$(first_row "$log")|-")
else
  ROWS+=("eval_ade847|failed, see $log|||||")
fi

if ovss benchmark --help 2>/dev/null | grep -q pseudolabel; then
  log="$LOGS/pseudolabel.txt"
  if ovss benchmark pseudolabel --device cuda >"$log" 2>&1; then
    ROWS+=("pseudolabel|$(first_row "$log")|-")
  else
    ROWS+=("pseudolabel|failed, see $log|||||")
  fi
else
  ROWS+=("pseudolabel|not available in this ovss (no 'ovss benchmark pseudolabel')|||||")
fi

printf '\n%-22s | %-38s | %5s | %9s | %9s | %10s | %s\n' run what batch img/s ms/step "peak MB" "ceiling / MFU"
for row in "${ROWS[@]}"; do
  IFS='|' read -r name what batch rate ms mem extra <<<"$row"
  printf '%-22s | %-38s | %5s | %9s | %9s | %10s | %s\n' "$name" "$what" "$batch" "$rate" "$ms" "$mem" "$extra"
done
python - "${ROWS[@]}" <<'PY'
import sys
# ViT-L runs with activation checkpointing must fit a 24 GB card
for row in sys.argv[1:]:
    name, *cells = row.split("|")
    if name.endswith("_ckpt") and len(cells) > 4 and cells[4].strip():
        peak = float(cells[4])
        print(f"{name}: peak {peak / 1024:.1f} GB {'<=' if peak <= 24 * 1024 else '>'} 24 GB")
PY
