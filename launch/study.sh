#!/usr/bin/env bash
# The CIFAR-10 depth study in one command: convert the images once, run the grid, write the analysis.
#
#   launch/study.sh [--data IMAGEFOLDER] [--stage pilot|core|controls|all] [--budget-min MIN]
#
# Stages (one MLflow experiment `cifar10-study`, store docs/study/mlflow.db with its artifacts beside it):
#   pilot     ViT and DeepViT at the extreme depths 2 and 16, seeds 0-2 (the depth interaction first);
#   core      ViT and DeepViT at depths 2, 4, 8, 16, seeds 0-2 (the pilot's points are part of it and are skipped);
#   controls  BatchNorm-only, Re-attention with LayerNorm, LayerScale, talking heads at depths 2 and 16, seeds 0-2;
#   all       the three in that order (default).
# Rerunning continues: finished points are skipped, an interrupted point resumes from its checkpoint.
# --budget-min stops cleanly after MIN minutes (SIGTERM: the running point checkpoints and ends KILLED; exit 143);
# run the same command again to continue. The analysis (docs/study/analysis/) is rewritten after every stage.
# Recipe and the measurements behind its size: launch/configs/cifar10_study.yaml. Run from anywhere; paths in the
# record are relative to the repository root, so docs/study/ opens from any checkout:
#   mlflow ui --backend-store-uri sqlite:///docs/study/mlflow.db
# STUDY_LAUNCHER_ARGS: more deepspeed launcher flags for every point (e.g. "--master_port 29650").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SRC=../shared/data/cifar10
STAGE=all
BUDGET=
while [[ $# -gt 0 ]]; do
    case "$1" in
        --data) SRC=$2; [[ "$SRC" = /* ]] || SRC="$OLDPWD/$SRC"; shift 2 ;;   # relative to where it was started
        --stage) STAGE=$2; shift 2 ;;
        --budget-min) BUDGET=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0" | grep '^#'; exit 0 ;;
        *) echo "launch/study.sh: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$STAGE" in pilot|core|controls|all) ;; *)
    echo "launch/study.sh: error: --stage must be pilot, core, controls or all, got '$STAGE'" >&2; exit 2 ;;
esac
if [[ -n "$BUDGET" && ! "$BUDGET" =~ ^[1-9][0-9]*$ ]]; then
    echo "launch/study.sh: error: --budget-min must be a positive number of minutes, got '$BUDGET'" >&2; exit 2
fi
PY=${PYTHON:-python}
STUDY_DIR=docs/study
DATA=runs/data/cifar10
CONFIG=launch/configs/cifar10_study.yaml
DS=ds_configs/zero2.json
EXPERIMENT=cifar10-study
export MLFLOW_TRACKING_URI="sqlite:///$STUDY_DIR/mlflow.db"

# the images, converted once (resumable; the integrity of the source is the converter's check per file)
if [[ ! -f "$DATA/_info.json" ]]; then
    [[ -d "$SRC/train" && -d "$SRC/val" ]] || {
        echo "launch/study.sh: error: --data $SRC must be an ImageFolder with train/ and val/ class folders" >&2; exit 2; }
    "$PY" -m deepvit.data.convert --src "$SRC" --out "$DATA" --name cifar10
fi
# one study per folder: the recipe, DeepSpeed config and data that every point is paired on
"$PY" launch/study_guard.py "$STUDY_DIR" "$CONFIG" "$DS" "$DATA"

deadline=
[[ -n "$BUDGET" ]] && deadline=$(( $(date +%s) + BUDGET * 60 ))
sweep() {  # sweep ID FAMILIES DEPTHS
    local left=
    if [[ -n "$deadline" ]]; then
        left=$(( deadline - $(date +%s) ))
        (( left > 0 )) || { echo "study: time budget spent; rerun the same command to continue"; exit 143; }
    fi
    local cmd=("$PY" launch/sweep.py --experiment "$EXPERIMENT" --sweep-id "$1" --families "$2" --depths "$3"
               --widths 96:6 --seeds 0,1,2 --num-gpus 1 --ds-config "$DS" --launcher-args "${STUDY_LAUNCHER_ARGS:-}"
               -- --config "$CONFIG" --data "$DATA" --output-dir "runs/study/$1")
    local rc=0
    if [[ -n "$left" ]]; then timeout --signal=TERM --kill-after=300 "$left" "${cmd[@]}" || rc=$?
    else "${cmd[@]}" || rc=$?; fi
    "$PY" -m analysis --experiment "$EXPERIMENT" --out "$STUDY_DIR/analysis" --no-progress || true
    if (( rc == 124 || rc == 137 || rc == 143 )); then echo "study: stopped at the time budget; rerun to continue"; exit 143; fi
    (( rc == 0 )) || exit "$rc"
}
[[ "$STAGE" == pilot || "$STAGE" == all ]] && sweep core vit,deepvit 2,16
[[ "$STAGE" == core || "$STAGE" == all ]] && sweep core vit,deepvit 2,4,8,16
[[ "$STAGE" == controls || "$STAGE" == all ]] && sweep controls bn_only,reattn_ln,layerscale,talkinghead 2,16
echo "study: stage $STAGE finished; analysis in $STUDY_DIR/analysis"
