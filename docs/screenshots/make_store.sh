#!/usr/bin/env bash
# A small store to look at in MLflow's UI: two main-job runs and a 4-point depth sweep (tiny models, built-in data).
#   docs/screenshots/make_store.sh /tmp/shots      (from the repository root; ~5 min on 2 cores)
# Not part of CI: it is how the screenshots in docs/screenshots/ were made (then docs/screenshots/shoot.py).
set -euo pipefail
OUT=${1:?usage: make_store.sh OUT_DIR}
mkdir -p "$OUT"
PORT=${PORT:-29650}   # not the launcher's default 29500, which a study may be using
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for model in vit_tiny_patch4_32 deepvit_tiny_patch4_32; do
    deepspeed --num_gpus 1 --master_port "$PORT" launch/train.py --deepspeed ds_configs/zero2.json --model.name "$model" --epochs 2 --warmup-epochs 0.5 \
        --output-dir "$OUT/main-$model" --log.system_metrics_interval 2
done
python launch/sweep.py --experiment depth-sweep --families vit,deepvit --depths 2,4 --num-gpus 1 \
    --launcher-args "--master_port $PORT" \
    -- --epochs 1 --warmup-epochs 0.2 --output-dir "$OUT/sweep" --log.system_metrics_interval 2
