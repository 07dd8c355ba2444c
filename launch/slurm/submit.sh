#!/usr/bin/env bash
# Submit a sweep as a SLURM job array, one grid point per task (see sweep_array.sbatch for the layout).
#   launch/slurm/submit.sh SWEEP ARGS [-- TRAIN.PY ARGS]        (the same arguments as launch/sweep_depth.sh)
# Creates the sweep's MLflow parent run once, before the tasks start, then submits 0..N-1. SBATCH_ARGS adds sbatch
# options (e.g. SBATCH_ARGS="--partition gpu --account proj"); a finished point's task exits at once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${MLFLOW_TRACKING_URI:?set MLFLOW_TRACKING_URI to a store every node reaches (an mlflow server)}"
parent=$(python launch/sweep.py --prepare "$@")
n=$(python launch/sweep.py --count "$@")
echo "sweep parent run $parent: $n points"
# shellcheck disable=SC2086
sbatch --array=0-$((n - 1)) ${SBATCH_ARGS:-} launch/slurm/sweep_array.sbatch "$@"
