#!/usr/bin/env bash
# Prepare wheelhouse/ for benchmarks/gpu_check.sh on a GPU node that reaches no package registry (issue 21.5).
#   benchmarks/make_wheelhouse.sh [--python-version 3.12] [--dest wheelhouse]
# Run on a machine with internet access and this project's environment (its torch builds DeepSpeed's wheel). Downloads
# x86-64 Linux wheels for the node's CPython (default 3.12) of benchmarks/gpu_requirements.txt and their dependencies
# (never torch, numpy or the NVIDIA libraries: the node has them), and builds DeepSpeed's wheel from its source
# package. The folder is git-ignored; carry it with the checkout (the device tool's `carry: ["wheelhouse"]`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYVER=3.12
DEST=wheelhouse
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYVER="$2"; shift 2 ;;
    --dest) DEST="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "make_wheelhouse: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$PYVER" =~ ^3\.[0-9]+$ ]] || { echo "make_wheelhouse: error: --python-version must look like 3.12, got $PYVER" >&2; exit 2; }
ABI="cp${PYVER/./}"
mkdir -p "$DEST"
REQ=benchmarks/gpu_requirements.txt
DEEPSPEED=$(python -c 'import importlib.metadata as m; print(m.version("deepspeed"))')
PLATFORM=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform manylinux1_x86_64
          --platform linux_x86_64 --python-version "$PYVER" --implementation cp --abi "$ABI" --only-binary=:all:)
# everything but webdataset with its dependencies; webdataset alone (its numpy is the node's)
grep -v '^\s*#' "$REQ" | sed 's/#.*//' | grep -v '^\s*$' | grep -v '^webdataset' > "$DEST/.with-deps.txt"
python -m pip download -q "${PLATFORM[@]}" -d "$DEST" -r "$DEST/.with-deps.txt"
python -m pip download -q "${PLATFORM[@]}" --no-deps -d "$DEST" "$(grep '^webdataset' "$REQ" | sed 's/ *#.*//')"
DS_BUILD_OPS=0 python -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "deepspeed==$DEEPSPEED"
rm -f "$DEST/.with-deps.txt"
for banned in torch numpy triton nvidia_c nvidia_n; do
  if ls "$DEST" | grep -qi "^${banned}"; then echo "make_wheelhouse: error: $banned was pulled in" >&2; exit 1; fi
done
echo "wheelhouse: $(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST (CPython $PYVER, x86-64)"
