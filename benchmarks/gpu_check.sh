#!/usr/bin/env bash
# The GPU check of the main job (issue 4), as one script for a machine with a CUDA GPU (not run in CI):
# bf16 + ZeRO-2 at 224 px on the paper's 16-block ViT and DeepViT (CIFAR-10 subset shards, upsampled by the
# transforms), then the training-loop and Re-attention benchmarks on the GPU. Reports images/s, peak GPU memory and
# model FLOP utilisation against the measured bf16 matmul peak (H200 datasheet: 989 TFLOP/s dense bf16).
#   SHARED=../shared/data STEPS=100 benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SHARED=${SHARED:-../shared/data}
STEPS=${STEPS:-100}
OUT=${OUT:-/tmp/deepvit-gpu-check}
DATA="$OUT/cifar10-wds"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$OUT/mlflow.db}
mkdir -p "$OUT"
[ -f "$DATA/_info.json" ] || python -m deepvit.data.convert --src "$SHARED/cifar10_subset" --out "$DATA" --name cifar10
nvidia-smi --query-gpu=name,memory.total --format=csv
for model in vit_16b_patch16_224 deepvit_16b_patch16_224; do
  deepspeed --num_gpus 1 launch/train.py --deepspeed ds_configs/zero2.json --model "$model" --data "$DATA" \
      --img-size 224 --epochs 1 --warmup-epochs 0 --train.max_steps "$STEPS" --train.log_every 10 --data.num_workers 8 \
      --output-dir "$OUT/$model" --experiment gpu-check 2>&1 | tr '\r' '\n' | grep '^\[deepvit\]'
done
python - <<'PY'
import os
from mlflow.tracking import MlflowClient
c = MlflowClient(os.environ['MLFLOW_TRACKING_URI'])
exp = c.get_experiment_by_name('gpu-check')
peak_tflops = 989e12  # H200 dense bf16 (datasheet); the loop benchmark below measures the matmul peak itself
print('| model | precision | images/s | peak GPU MiB | MFU vs 989 TFLOP/s |\n|---|---|---|---|---|')
for run in c.search_runs([exp.experiment_id], order_by=['attributes.start_time DESC'], max_results=2):
    ips = c.get_metric_history(run.info.run_id, 'train/samples_per_sec')[-1].value
    mem = c.get_metric_history(run.info.run_id, 'memory/peak_mib/rank0')[-1].value
    gmacs = float(run.data.params['model.gmacs'])
    print(f"| {run.data.params['model.name']} | {run.data.params['precision']} | {ips:.0f} | {mem:.0f} | "
          f"{100 * ips * 6 * gmacs * 1e9 / peak_tflops:.1f}% |")
PY
python benchmarks/bench_train_loop.py --model deepvit_16b_patch16_224 --batch 64 --steps 60
python benchmarks/bench_reattention.py --scales vit-s --repeats 30
