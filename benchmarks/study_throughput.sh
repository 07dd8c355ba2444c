#!/usr/bin/env bash
# Issue 23's throughput question on this machine: for each candidate study model, images/s of our training loop
# (DeepSpeed ZeRO-2, fp32, batch 32, in-memory batches) as one run on both cores, and as two runs at once with one
# core each (their sum). Appends JSON lines to benchmarks/results/study_throughput.jsonl and prints a table.
#   bash benchmarks/study_throughput.sh                   # the default candidates
#   CANDIDATES="vit:16:96:6:4 deepvit:16:96:6:8" bash benchmarks/study_throughput.sh   # family:depth:embed:heads:patch
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=benchmarks/results/study_throughput.jsonl
CANDIDATES=${CANDIDATES:-"vit:2:96:6:4 vit:16:96:6:4 deepvit:16:96:6:4 vit:16:96:6:8 deepvit:16:96:6:8 vit:16:48:6:4 deepvit:16:48:6:4"}
STEPS=${STEPS:-30}
for c in $CANDIDATES; do
    IFS=: read -r fam depth embed heads patch <<<"$c"
    args=(--model "${fam}_tiny_patch4_32" --depth "$depth" --embed-dim "$embed" --num-heads "$heads"
          --patch-size "$patch" --batch 32 --steps "$STEPS" --only-ours)
    OMP_NUM_THREADS=2 python benchmarks/bench_train_loop.py "${args[@]}" --threads 2 --json "$OUT" >/dev/null
    # two at once, one core each (taskset pins them apart)
    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_train_loop.py "${args[@]}" --threads 1 --json "$OUT" >/dev/null &
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_train_loop.py "${args[@]}" --threads 1 --json "$OUT" >/dev/null
    wait
done
python - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print('| model | depth | embed/heads | patch | 1 run × 2 threads (img/s) | 2 runs × 1 thread (img/s, sum) | gain |')
print('|---|---|---|---|---|---|---|')
seen = {}
for r in rows:
    key = (r['model'], r['depth'], r['embed_dim'], r['num_heads'], r['patch_size'])
    ips = next(iter(r['loops'].values()))['images_per_s']
    seen.setdefault(key, {}).setdefault(r['threads'], []).append(ips)
for (m, d, e, h, p), by in seen.items():
    two, one = by.get(2, [float('nan')])[-1], sum(by.get(1, [])[-2:])
    print(f'| {m.split("_")[0]} | {d} | {e}/{h} | {p} | {two:.0f} | {one:.0f} | {one / two:.2f}× |')
PY
