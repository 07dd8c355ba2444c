#!/usr/bin/env bash
# The GPU check (issue 10): one script, <= 6 minutes on one H200, nothing installed. Not run in CI.
#   benchmarks/gpu_check.sh                    # writes $OUT/gpu_check.jsonl and $OUT/gpu_check.md (default /tmp/deepvit-gpu-check)
# On synthetic in-memory batches (benchmarks/bench_train_loop.py: the model and loop, not data loading), 224 px,
# bf16, ZeRO-2, batch $BATCH: ViT (timm's fused SDPA attention) and DeepViT at 16 and 32 blocks — images/s, peak GPU
# memory, MFU (6 x MACs per trained image over the measured dense bf16 matmul peak and over the H200 datasheet's
# 989 TFLOP/s) — each against a bare PyTorch loop on the same model; the Re-attention overhead (DeepViT step /
# ViT step at the same depth); and 48-block DeepViT with activation checkpointing (our loop only). Then one real
# end-to-end job (launch/train.py on the CIFAR-10 subset upsampled to 224 px) for the data path and the MLflow record.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v nvidia-smi >/dev/null || { echo "gpu_check: error: no nvidia-smi: this script needs a CUDA GPU" >&2; exit 2; }
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check: error: torch sees no CUDA device")'
SHARED=${SHARED:-../shared/data}
OUT=${OUT:-/tmp/deepvit-gpu-check}
BATCH=${BATCH:-64}
STEPS=${STEPS:-30}
mkdir -p "$OUT"
JSON="$OUT/gpu_check.jsonl"
: > "$JSON"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
for depth in 16 32; do
  for model in vit_16b_patch16_224 deepvit_16b_patch16_224; do
    python benchmarks/bench_train_loop.py --model "$model" --depth "$depth" --batch "$BATCH" --steps "$STEPS" \
        --json "$JSON"
  done
done
python benchmarks/bench_train_loop.py --model deepvit_16b_patch16_224 --depth 48 --batch "$BATCH" --steps 15 \
    --warmup 3 --grad-checkpointing --only-ours --json "$JSON"
python - "$JSON" "$OUT/gpu_check.md" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
datasheet = 989e12
lines = [f"GPU: {rows[0]['device_name']}, {rows[0]['precision']}, batch {rows[0]['batch']}, synthetic batches", '',
         '| model | depth | ckpt | loop | images/s | vs bare | peak GiB | MFU (measured peak) | MFU (989 TFLOP/s) |',
         '|---|---|---|---|---|---|---|---|---|']
step = {}
for r in rows:
    loops = r['loops']
    bare = loops.get('bare PyTorch', {}).get('images_per_s')
    for name, m in loops.items():
        mfu_ds = m['images_per_s'] * 6 * m['gmacs_per_image'] * 1e9 / datasheet
        lines.append(f"| {r['model']} | {r['depth']} | {'yes' if r['grad_checkpointing'] else 'no'} | {name} | "
                     f"{m['images_per_s']:.0f} | {m['images_per_s'] / bare if bare else float('nan'):.3f} | "
                     f"{(m['peak_mib'] or 0) / 1024:.1f} | {100 * m['mfu_vs_measured_peak']:.1f} % | {100 * mfu_ds:.1f} % |")
        if name != 'bare PyTorch' and not r['grad_checkpointing']:
            step[(r['model'].split('_')[0], r['depth'])] = 1 / m['images_per_s']
lines.append('')
for depth in (16, 32):
    if ('vit', depth) in step and ('deepvit', depth) in step:
        lines.append(f"Re-attention overhead at {depth} blocks: DeepViT step = "
                     f"{step[('deepvit', depth)] / step[('vit', depth)]:.2f}x the SDPA ViT's (target <= 1.15 at 16)")
open(sys.argv[2], 'w').write('\n'.join(lines) + '\n')
print('\n'.join(lines))
PY
# the real job: data path, MLflow record (a short run; images/s here include decoding and augmentation)
DATA="$OUT/cifar10-wds"
[ -f "$DATA/_info.json" ] || python -m deepvit.data.convert --src "$SHARED/cifar10_subset" --out "$DATA" --name cifar10
MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db" deepspeed --num_gpus 1 launch/train.py --deepspeed ds_configs/zero2.json \
    --model deepvit_16b_patch16_224 --data "$DATA" --img-size 224 --epochs 1 --warmup-epochs 0 --train.max_steps 40 \
    --train.log_every 10 --data.num_workers 8 --collapse-images 64 --log.log_model false \
    --output-dir "$OUT/train-deepvit16" --experiment gpu-check 2>&1 | tr '\r' '\n' | grep '^\[deepvit\]' | tee "$OUT/train.txt"
