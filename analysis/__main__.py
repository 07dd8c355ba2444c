"""``python -m analysis --experiment NAME [--sweep ID] --out DIR``: write the sweep's table, saturation and figures.

Exit status: 0 on success, 2 when the store, experiment or sweep does not exist (message on stderr).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from .aggregate import METRICS
from .convergence import DEFAULT_RISING
from .report import analyze
from .saturation import DEFAULT_THRESHOLD, METHOD
from .store import AnalysisError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m analysis', description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--experiment', required=True, help='MLflow experiment name')
    p.add_argument('--sweep', default=None, help='sweep id (tag sweep_id); default: every training run')
    p.add_argument('--out', required=True, type=Path, help='output folder')
    p.add_argument('--tracking-uri', default=None,
                   help='MLflow tracking URI; default $MLFLOW_TRACKING_URI or sqlite:///<abs ./mlflow.db>')
    p.add_argument('--threshold', type=float, default=DEFAULT_THRESHOLD,
                   help=f'saturation threshold, top-1 points; method: {METHOD}')
    p.add_argument('--metric', choices=sorted(METRICS), default='final',
                   help='which val/top1 of each run: final (primary) or best (the maximum over evaluations: optimistic)')
    p.add_argument('--baseline', default=None, help='series the others are compared with (default: the ViT series)')
    p.add_argument('--n-boot', type=int, default=2000, help='bootstrap replicates of the statistics')
    p.add_argument('--group-by', default='', help='comma-separated params that split series beyond family and '
                                                  'width, e.g. model.drop_path_rate')
    p.add_argument('--collapse-measure', default='row_mean_adjacent',
                   help='collapse summary drawn over training (docs/collapse.md lists them), e.g. row_mean_adjacent, '
                        'calibrated_mean_adjacent, entropy, cka_mean_adjacent')
    p.add_argument('--rising-threshold', type=float, default=DEFAULT_RISING,
                   help='a run whose top-1 gained at least this many points over its last 25%% of training is still '
                        'rising (holdout/top1 when the runs have it, else val/top1)')
    p.add_argument('--select-lr', action='store_true',
                   help='pick each (series, depth) learning rate (train.lr) by final holdout/top1 and report the test '
                        'result of that choice; an error when the sweep has no lr axis or no holdout')
    p.add_argument('--plan', default=None, help='the study plan file (YAML, analysis/plan.py) written before the '
                                                'runs: the report lists each planned item, what the data met and '
                                                'every deviation')
    p.add_argument('--lr-choice', type=Path, default=None,
                   help='a staged study\'s frozen lr choice (launch/study.py writes STORE/lr_selection.json): grid '
                        'runs at the rates it did not choose leave every table, figure and statistic but the lr '
                        'selection\'s own')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = analyze(args.experiment, args.out, sweep=args.sweep, tracking_uri=args.tracking_uri,
                         threshold=args.threshold, metric=args.metric,
                         group_by=[k for k in args.group_by.split(',') if k], progress=not args.no_progress,
                         baseline=args.baseline, n_boot=args.n_boot, collapse_measure=args.collapse_measure,
                         rising_threshold=args.rising_threshold, select_lr=args.select_lr, plan=args.plan,
                         lr_choice=args.lr_choice)
    except (AnalysisError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    runs = result['runs']
    print(f"{len(runs)} runs ({', '.join(f'{n} {s.lower()}' for s, n in runs['status'].value_counts().items())}) "
          f"from {result['tracking_uri']} -> {args.out}")
    for s in result['saturation']['series']:
        print(f"  {s['series']}: saturation depth {s['saturation_depth']} (best depth {s['best_depth']})")
    return 0


if __name__ == '__main__':
    sys.exit(main())
