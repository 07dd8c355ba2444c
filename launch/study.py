#!/usr/bin/env python
"""Run a staged study from its schedule file: ``python launch/study.py SCHEDULE.yaml [--budget-min M] [--dry-run]``
(the CIFAR-10 study's: ``launch/schedules/cifar10_study.yaml``).

A study is a list of stages run in order; each stage is a grid of sweep points (``launch/sweep.py``, one
``--point-index`` at a time) run in ``streams`` parallel streams, stream ``i`` pinned to core ``i`` with one torch
thread (on a small CPU machine two one-core runs give more runs per hour than one two-core run:
docs/benchmarks.md, "Study throughput"). Within a stage the costliest points start first. A stage's learning rate is
either a list (``lrs``: a grid, one sweep per rate) or taken from an earlier grid stage (``lr_from``): that stage's
choice per (family, depth) by mean final ``holdout/top1`` over its seeds (the holdout only, never the test split; a
tie goes to the smaller rate, ``analysis.lr_selection.choose_lr``), written once to ``STORE/lr_selection.json`` and
frozen there — later runs at the chosen rate never move the choice. With ``extend_edges: K`` a grid cell whose best
rate is the smallest (largest) tried also runs half (twice) that rate, up to K times on each side, before the choice
is made, so that a chosen rate is bracketed by worse ones. A control family can borrow a compared family's choice
(``lr_family: {bn_only: deepvit}``). SIGTERM or SIGINT stops the driver as the time budget does.

Schedule file (YAML)::

    experiment: cifar10-study            # MLflow experiment of every point
    store: docs/study                     # SQLite store STORE/mlflow.db, artifacts beside it (relative paths)
    recipe: launch/configs/cifar10_study.yaml
    ds_config: ds_configs/zero2.json
    data: runs/data/cifar10               # converted shards (_info.json); made from `source` when missing
    source: ../shared/data/cifar10
    width: "96:6"                          # embed_dim:num_heads
    size: tiny
    streams: 2
    runs: runs/cifar10-study              # the points' folders and logs (default runs/<experiment>)
    stages:
      - {name: grid, families: [vit, deepvit], depths: [2, 16], lrs: [8.0e-3, 1.6e-2], seeds: [0], extend_edges: 2}
      - {name: core, families: [vit, deepvit], depths: [2, 16], lr_from: grid, seeds: [1, 2, 3]}
      - {name: controls, families: [bn_only], depths: [16], lr_from: grid, lr_family: {bn_only: deepvit},
         seeds: [0, 1, 2], extra: [--train.budget_pflop, "0.03"]}

Every point's sweep id is ``<stage>-<family>-d<depth>-lr<lr>`` and its folder ``RUNS/<sweep id>``; the
sweep skips finished points and resumes the rest, so rerunning the same command continues. ``--budget-min M`` stops
cleanly after M minutes: no point starts after the deadline, running ones get SIGTERM (they checkpoint and end
KILLED) and the exit status is 143. Logs: ``RUNS/logs/<sweep id>-<index>.log``. Exit status: 0 when every
stage finished, 1 when a point failed, 2 on a bad schedule (checked before anything runs), 143 at the budget.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

from deepvit.sweep.schedule import (Edges, Point, Schedule, ScheduleError, edge_rates, frozen_choice, holdout_by_point,
                                    load_schedule, stage_by_name, stage_points, sweep_command)


ROOT = Path(__file__).resolve().parents[1]
STOP_GRACE_S = 300   # a stopped point writes its checkpoint; past this it is killed
STOP_REQUESTED = False   # set by SIGTERM/SIGINT: stop as at the time budget (the running points checkpoint)


def run_grid(s: Schedule, stage: dict, deadline: Optional[float]) -> Tuple[int, Edges]:
    """Run a grid stage, then the edge rule's extra rates until no cell's best rate is at its grid's edge; the
    finished points are known from the store, so a rerun continues. Returns (run_stage's status, the rates added)."""
    added: Edges = {}
    while True:
        points = stage_points(stage, {}, added)
        scores = holdout_by_point(s, points)
        todo = [p for p in points if scores[p] is None]
        if todo:
            rc = run_stage(s, todo, deadline)
            if rc:
                return rc, added
            scores = holdout_by_point(s, points)
        new = edge_rates(stage, scores, added)
        if not new:
            return 0, added
        for cell, lr in new:
            print(f'study: edge rule: {stage["name"]} {cell[0]} depth {cell[1]} adds lr {lr:g}', flush=True)
            added.setdefault(cell, []).append(lr)


def free_port() -> int:
    """A TCP port free on this host now (the launcher's rendezvous; two studies on one host must not share one)."""
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_stage(s: Schedule, points: List[Point], deadline: Optional[float]) -> int:
    """Run the points in ``s.streams`` streams (costliest first); 0 all finished, 1 a failure, 143 at the deadline."""
    logs = s.runs / 'logs'
    logs.mkdir(parents=True, exist_ok=True)
    todo, running, failed = list(points), {}, []
    stopping = False
    while (todo and not stopping) or running:   # once stopping, only the running points are waited for
        for core in [c for c in range(s.streams) if c not in running]:
            if not todo or stopping:
                break
            p = todo.pop(0)
            env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
            log = open(logs / f'{p.sweep_id}-{p.index}.log', 'ab')
            cmd = ['taskset', '-c', str(core), *sweep_command(s, p, free_port())]
            running[core] = (p, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                 start_new_session=True), time.time(), log)
            print(f'study: [{time.strftime("%H:%M:%S")}] core {core}: {p.sweep_id} seed {p.seed} started',
                  flush=True)
        time.sleep(2)
        if (STOP_REQUESTED or deadline is not None and time.time() > deadline) and not stopping:
            stopping = True
            print('study: ' + ('stop requested' if STOP_REQUESTED else 'time budget spent')
                  + '; stopping the running points (they checkpoint)', flush=True)
            for _, proc, _, _ in running.values():
                os.killpg(proc.pid, signal.SIGTERM)
            stop_at = time.time() + STOP_GRACE_S
        for core, (p, proc, start, log) in list(running.items()):
            if stopping and time.time() > stop_at and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.poll()
            if rc is None:
                continue
            log.close()
            del running[core]
            what = 'finished' if rc == 0 else f'exit {rc}'
            print(f'study: [{time.strftime("%H:%M:%S")}] core {core}: {p.sweep_id} seed {p.seed} {what} after '
                  f'{(time.time() - start) / 60:.1f} min', flush=True)
            if rc not in (0, 143, -signal.SIGTERM) or (rc != 0 and not stopping):
                failed.append(p)
    if stopping:
        return 143
    return 1 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog='launch/study.py', description=__doc__.split('\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('schedule', type=Path, help='the study\'s schedule file (YAML)')
    ap.add_argument('--budget-min', type=float, default=None, help='stop cleanly after this many minutes')
    ap.add_argument('--stage', default=None, help='run only this stage (default: every stage in order)')
    ap.add_argument('--streams', type=int, default=None, help='runs at once, stream i on core i (default: the '
                                                              'schedule\'s; what runs is the same, only how fast)')
    ap.add_argument('--dry-run', action='store_true', help='print each stage\'s points; run nothing')
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    try:
        s = load_schedule(args.schedule)
        if args.stage is not None and args.stage not in [st['name'] for st in s.stages]:
            raise ScheduleError(f'--stage {args.stage!r}: not a stage of {args.schedule}')
        if args.streams is not None:
            if not 1 <= args.streams <= (os.cpu_count() or 1):
                raise ScheduleError(f'--streams must be from 1 to the {os.cpu_count()} cores here, got {args.streams}')
            s.streams = args.streams
        if args.budget_min is not None and not args.budget_min > 0:
            raise ScheduleError(f'--budget-min must be positive, got {args.budget_min:g}')
    except ScheduleError as e:
        print(f'study: error: {e}', file=sys.stderr)
        return 2
    os.environ['MLFLOW_TRACKING_URI'] = f'sqlite:///{s.store.as_posix()}/mlflow.db'
    if not args.dry_run:
        if not (s.data / '_info.json').is_file():
            if s.source is None:
                print(f'study: error: data {s.data} has no _info.json and no source is given', file=sys.stderr)
                return 2
            subprocess.run([sys.executable, '-m', 'deepvit.data.convert', '--src', str(s.source), '--out',
                            str(s.data), '--name', s.data.name], check=True)
        guard = subprocess.run([sys.executable, 'launch/study_guard.py', str(s.store), str(s.recipe),
                                str(s.ds_config), str(s.data)])
        if guard.returncode:
            return guard.returncode
    deadline = time.time() + 60 * args.budget_min if args.budget_min else None

    def request_stop(signum, frame):
        global STOP_REQUESTED
        STOP_REQUESTED = True
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    for stage in s.stages:
        if args.stage is not None and stage['name'] != args.stage:
            continue
        try:
            chosen = frozen_choice(s, stage_by_name(s, stage['lr_from'])) if 'lr_from' in stage else {}
        except ScheduleError as e:
            if args.dry_run:
                print(f'# stage {stage["name"]}: lr from {stage["lr_from"]}, not chosen yet')
                continue
            print(f'study: error: {e}', file=sys.stderr)
            return 1
        if 'lrs' in stage and not args.dry_run:
            print(f'study: stage {stage["name"]}: a learning-rate grid in {s.streams} stream(s)', flush=True)
            rc, added = run_grid(s, stage, deadline)
            if rc == 0:
                frozen_choice(s, stage, added)
            else:
                print(f'study: stage {stage["name"]} ' + ('stopped; rerun to continue' if rc == 143
                                                          else 'had a failed point; see its log, rerun to retry'),
                      flush=True)
                return rc
            continue
        points = stage_points(stage, chosen)
        if args.dry_run:
            print(f'# stage {stage["name"]}: {len(points)} point(s)')
            for p in points:
                print(' '.join(sweep_command(s, p, 29650)[1:]))
            continue
        print(f'study: stage {stage["name"]}: {len(points)} point(s) in {s.streams} stream(s)', flush=True)
        rc = run_stage(s, points, deadline)
        if rc:
            print(f'study: stage {stage["name"]} ' + ('stopped at the time budget; rerun to continue' if rc == 143
                                                      else 'had a failed point; see its log, rerun to retry'),
                  flush=True)
            return rc
    print('study: every stage finished' if not args.dry_run else '', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
