#!/usr/bin/env bash
# The GPU check on a bare GPU node, one command (issue 21.5): see benchmarks/gpu_check.py for the steps.
#   benchmarks/gpu_check.sh [--cpu-smoke] [--out DIR] [--work DIR] [--wheelhouse DIR] [--batches 32 128 256]
# Needs the node's python3 with torch and timm; the rest comes offline from wheelhouse/ (benchmarks/make_wheelhouse.sh,
# run beforehand where there is internet). Small reports go to $OUT (or --out), bulky files to /tmp.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
