#!/usr/bin/env bash
# The CIFAR-10 depth study of issue 23 in one command (plan: docs/study/plan.md; results: docs/study/report.md):
#
#   launch/study.sh [--budget-min MIN] [--stage NAME] [--streams N] [--dry-run]
#
# Runs launch/study.py on the study's schedule (launch/schedules/cifar10_study.yaml): converts
# ../shared/data/cifar10 into runs/data/cifar10 once, then the stages in order, two runs at once (one core each),
# into the committed store docs/study/ (mlflow ui --backend-store-uri sqlite:///docs/study/mlflow.db).
# --budget-min stops cleanly after MIN minutes (exit 143); run the same command again to continue.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python}" launch/study.py launch/schedules/cifar10_study.yaml "$@"
