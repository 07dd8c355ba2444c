#!/usr/bin/env bash
# Depth/width sweep of ViT and DeepViT: a thin wrapper around launch/sweep.py (see its --help).
#   launch/sweep_depth.sh --experiment NAME --families vit,deepvit --depths 2,4,8 [--widths 64,96] [--seeds 0,1] \
#       [--num-gpus N | --hostfile F] [--dry-run] [-- EXTRA TRAIN.PY ARGS]
# Rerunning the same command skips finished points and resumes interrupted ones from their checkpoints.
set -euo pipefail
exec "${PYTHON:-python}" "$(dirname "${BASH_SOURCE[0]}")/sweep.py" "$@"
