#!/usr/bin/env bash
# The CPU mini-study (README, "Recipe (a)"): ViT vs DeepViT at depths 2/4/8/16, width 64, seeds 0/1 (16 runs), on the
# built-in digits, one rank each; then the analysis into docs/mini_study/. Rerunnable: finished points are skipped.
# Budget: 2 CPU cores, under 30 minutes (time one point first; DEPTHS, SEEDS, EPOCHS override the defaults).
# Override the store with MLFLOW_TRACKING_URI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EXPERIMENT=${EXPERIMENT:-mini-study}
DEPTHS=${DEPTHS:-2,4,8,16}
SEEDS=${SEEDS:-0,1}
EPOCHS=${EPOCHS:-8}

launch/sweep_depth.sh --experiment "$EXPERIMENT" --families vit,deepvit --depths "$DEPTHS" --widths 64 --seeds "$SEEDS" \
    --num-gpus 1 -- --output-dir runs/mini_study --epochs "$EPOCHS"
python -m analysis --experiment "$EXPERIMENT" --out docs/mini_study --no-progress
