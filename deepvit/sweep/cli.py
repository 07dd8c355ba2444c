"""Depth/width sweep driver: one DeepSpeed launch of ``launch/train.py`` per grid point, idempotent across reruns.

The command line of :mod:`deepvit.sweep`; ``deepvit-sweep``, ``python -m deepvit.sweep`` and ``launch/sweep.py`` are
the same program.

    deepvit-sweep --experiment NAME --families vit,deepvit --depths 2,4,8 [--widths 64,96:6] [--seeds 0,1]
        [--lrs 1e-3,3e-3] [--plan PLAN.yaml] [--size tiny|paper] [--grid FLAG=V1,V2 ...] [--num-gpus N | --hostfile F] [--launcher-args "..."]
        [--dry-run] [--point-index I] [--prepare] [--count] [-- EXTRA TRAIN.PY ARGS]

Grid: families × widths (``E`` → E / the size's head dimension heads, or ``E:H``) × depths × learning rates
(``--lrs``, train.py's ``--lr``) × ``--grid`` axes × seeds. ``--plan`` takes the seeds from a study plan
(:mod:`analysis.plan`): a fixed rule runs its n seeds; a sequential rule runs ``start`` seeds, then adds one paired
seed at a time to each compared cell whose repeated confidence interval is still wider than the plan's half-width,
until every cell is narrow enough or has ``max`` seeds.
A family maps to its registered variant of one size (``tiny``: ``<family>_tiny_patch4_32``; ``paper``:
``<family>_16b_patch16_224``, the paper's models) with depth and width overridden; the default width and the head
dimension are the registered variant's. Each point is launched as ``<launcher> [launcher flags] launch/train.py
--deepspeed DS [EXTRA] --model.name M --depth D --embed-dim E --num-heads H --seed S --output-dir ROOT/KEY
--experiment NAME --run-name KEY --sweep-id ID --sweep-point KEY --parent-run-id PID --resume [--grid values]``
(train.py applies its arguments in order, so a ``--config`` in EXTRA never overrides the point's flags);
``--output-dir`` among EXTRA is the sweep root ROOT (default ``runs/sweeps/<experiment>/<sweep id>``).

Sweep id: the first 8 hex digits of SHA-1 over the experiment, the grid, the size, the DeepSpeed config and EXTRA
without ``--output-dir`` (not the launcher flags), unless ``--sweep-id`` is given; rerunning the same command finds
the same sweep. Its MLflow parent run (tags ``sweep_id``, ``deepvit.kind=sweep``) is found by tag or created once.
A point whose run (tags ``sweep_id``, ``sweep_point``) is FINISHED is skipped; any other point is (re)launched with
``--resume``, which continues from its checkpoint in ROOT/KEY (or starts fresh). The launcher is ``deepspeed`` unless
``--launcher-cmd`` or ``$DEEPVIT_LAUNCHER`` says otherwise. Exit status: 0 when every selected point is finished,
1 when a point failed, 2 on a usage error, 143 when stopped by SIGTERM/SIGINT (forwarded to the running point).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from .launch import run
from .plan import DEFAULT_DS_CONFIG, DEFAULT_SIZE, FAMILIES, SIZES, TRAIN_SCRIPT, SweepError

PROG = 'launch/sweep.py'


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The sweep's parser (the arguments before ``--``; what follows goes to train.py). ``prog``: the name usage
    messages show."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog='Everything after -- goes to launch/train.py (an --output-dir there is the '
                                       'sweep root).')
    p.add_argument('--experiment', required=True, help='MLflow experiment of the sweep and its runs')
    p.add_argument('--families', default='vit,deepvit', help='comma-separated, from: ' + ', '.join(FAMILIES))
    p.add_argument('--depths', required=True, help='comma-separated block counts, e.g. 2,4,8')
    p.add_argument('--widths', default=None, help='embed_dim[:num_heads],...; heads default embed_dim // the head '
                                                  'dimension of the size\'s registered variant; default: the '
                                                  'size\'s own width')
    p.add_argument('--seeds', default=None, help='comma-separated seeds (default 0; with --plan: the plan\'s rule)')
    p.add_argument('--lrs', default=None, help='comma-separated peak learning rates: an lr axis (train.py --lr), '
                                               'e.g. 5e-4,1e-3,2e-3; select per depth with python -m analysis '
                                               '--select-lr')
    p.add_argument('--plan', default=None, help='study plan (YAML, see analysis/plan.py): endpoint, comparison, '
                                                'test, alpha and seed rule; checked against the grid before any '
                                                'run')
    p.add_argument('--size', choices=sorted(SIZES), default=DEFAULT_SIZE,
                   help='; '.join(f'{s}: {t.format(family="<family>")}' for s, t in SIZES.items()) +
                        ' (registered variants: tiny is 32 px, 10 classes, built-in digits; paper is ImageNet)')
    p.add_argument('--grid', action='append', default=[], metavar='FLAG=V1,V2',
                   help='one more grid axis over any train.py flag, e.g. drop-path=0,0.1 (repeatable)')
    p.add_argument('--sweep-id', default=None, help='default: a hash of the experiment, grid and train args')
    p.add_argument('--ds-config', default=str(DEFAULT_DS_CONFIG), help='DeepSpeed JSON config')
    p.add_argument('--num-gpus', type=int, default=None, help='launcher --num_gpus (ranks per node)')
    p.add_argument('--hostfile', default=None, help='launcher --hostfile (multi-node)')
    p.add_argument('--launcher-args', default='', help='more launcher flags, one string (e.g. "--master_port 29600")')
    p.add_argument('--launcher-cmd', default=os.environ.get('DEEPVIT_LAUNCHER', 'deepspeed'),
                   help='launcher executable and leading args (env DEEPVIT_LAUNCHER)')
    p.add_argument('--train-script', default=str(TRAIN_SCRIPT), help=argparse.SUPPRESS)
    p.add_argument('--point-index', type=int, default=None, help='run only this grid point (0-based; job arrays)')
    p.add_argument('--dry-run', action='store_true', help='print every command and what would happen; run nothing')
    p.add_argument('--prepare', action='store_true', help='create the sweep parent run, print its id, run nothing')
    p.add_argument('--count', action='store_true', help='print the number of grid points and exit')
    p.add_argument('--fail-fast', action='store_true', help='stop at the first failed point')
    return p


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    """Run the sweep command ``argv`` (default ``sys.argv[1:]``): the arguments before ``--`` are the sweep's, the
    rest train.py's. Returns the exit status (see the module docstring); 2 with the usage and ``error: ...`` on
    stderr for a bad request. ``--help`` and argparse errors exit (SystemExit) as argparse does."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index('--') if '--' in argv else len(argv)
    parser = build_parser(prog)
    args = parser.parse_args(argv[:cut])
    try:
        return run(args, argv[cut + 1:])
    except SweepError as e:
        parser.print_usage(sys.stderr)
        print(f'error: {e}', file=sys.stderr)
        return 2


def console_main() -> int:
    """The ``deepvit-sweep`` console script: :func:`main` on ``sys.argv``, usage messages naming ``deepvit-sweep``."""
    return main(prog='deepvit-sweep')
