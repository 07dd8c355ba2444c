#!/usr/bin/env bash
# Pilot of the CIFAR-10 depth study (issue 23, stage 1), on a 2-core machine: two streams of runs at once, one core
# each (docs/benchmarks.md: two 1-core runs give 1.3-2.0x the images/h of one 2-core run for these models).
#   launch/study_pilot.sh
# - curves: ViT at depths 2 and 16, base lr 1.6e-2, 12 epochs, holdout scored every epoch (where is the plateau?);
# - lr grid: ViT at depths 2 and 16, base lr 8e-3 / 1.6e-2 / 3.2e-2, 4 epochs (the budget the core can afford).
# One seed (0). Store: docs/study/mlflow.db, experiment cifar10-pilot. Rerunning continues (finished points skipped).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python}
export MLFLOW_TRACKING_URI="sqlite:///docs/study/mlflow.db"
[[ -f runs/data/cifar10/_info.json ]] || "$PY" -m deepvit.data.convert --src ../shared/data/cifar10 \
    --out runs/data/cifar10 --name cifar10
common=(--experiment cifar10-pilot --families vit --depths 2,16 --widths 96:6 --size tiny --num-gpus 1
        --ds-config ds_configs/zero2.json)
point() {  # point CORE PORT SWEEP INDEX
    local core=$1 port=$2 sweep=$3 i=$4 extra
    if [[ $sweep == curves ]]; then extra=(--lrs 1.6e-2); epochs=12; else extra=(--lrs 8e-3,1.6e-2,3.2e-2); epochs=4; fi
    OMP_NUM_THREADS=1 taskset -c "$core" "$PY" launch/sweep.py "${common[@]}" "${extra[@]}" --point-index "$i" \
        --launcher-args "--master_port $port" -- --config launch/configs/cifar10_pilot.yaml --epochs "$epochs" \
        --output-dir "runs/pilot/$sweep" || echo "pilot: $sweep point $i failed (rc $?)"
}
# curves points: 0 depth 2, 1 depth 16; lr points: 0-2 depth 2 (8e-3, 1.6e-2, 3.2e-2), 3-5 depth 16
( point 0 29611 curves 1; point 0 29611 lr 4 ) &
( point 1 29612 curves 0; point 1 29612 lr 3; point 1 29612 lr 5; for i in 0 1 2; do point 1 29612 lr $i; done ) &
wait
echo "pilot: finished"
