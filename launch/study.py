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
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple


ROOT = Path(__file__).resolve().parents[1]
STAGE_KEYS = {'name', 'families', 'depths', 'seeds', 'lrs', 'lr_from', 'lr_family', 'extra', 'extend_edges'}
Edges = Dict[Tuple[str, int], List[float]]   # (family, depth) -> rates the edge rule added to a grid
TOP_KEYS = {'experiment', 'store', 'recipe', 'ds_config', 'data', 'source', 'width', 'size', 'streams', 'stages',
            'runs'}
SELECTION_FILE = 'lr_selection.json'
HOLDOUT_METRIC = 'holdout/top1'
STOP_GRACE_S = 300   # a stopped point writes its checkpoint; past this it is killed
STOP_REQUESTED = False   # set by SIGTERM/SIGINT: stop as at the time budget (the running points checkpoint)


class ScheduleError(ValueError):
    """A schedule file that cannot run; the message names the field and the value."""


@dataclass(frozen=True)
class Point:
    """One sweep point: the sweep (one family, depth, lr; the stage's seeds) and the seed's index in it."""
    stage: str
    family: str
    depth: int
    lr: float
    seed: int
    index: int
    extra: Tuple[str, ...] = ()

    @property
    def sweep_id(self) -> str:
        return f'{self.stage}-{self.family}-d{self.depth}-lr{self.lr:g}'

    @property
    def cost(self) -> float:
        """Relative cost for ordering only: blocks (Re-attention ~1.4x, measured: docs/benchmarks.md), or the fixed
        compute budget when one is set (every such point costs about the same)."""
        if '--train.budget_pflop' in self.extra:
            return 1e6 * float(self.extra[self.extra.index('--train.budget_pflop') + 1])
        return self.depth * (1.0 if self.family in ('vit', 'layerscale', 'depthscale') else 1.4)


@dataclass
class Schedule:
    experiment: str
    store: Path
    recipe: Path
    ds_config: Path
    data: Path
    source: Optional[Path]
    width: str
    size: str
    streams: int
    stages: List[dict] = field(default_factory=list)
    runs: Optional[Path] = None   # the points' folders and logs (default runs/<experiment>)


def load_schedule(path: Path) -> Schedule:
    """Read and check a schedule file; raise :class:`ScheduleError` naming the first bad field."""
    import yaml
    if not path.is_file():
        raise ScheduleError(f'schedule file not found: {path}')
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise ScheduleError(f'{path}: unknown field(s) {sorted(unknown)}; known: {sorted(TOP_KEYS)}')
    for key in ('experiment', 'store', 'recipe', 'ds_config', 'data', 'width', 'stages'):
        if key not in raw:
            raise ScheduleError(f'{path}: field {key!r} is missing')
    streams = raw.get('streams', 1)
    if not isinstance(streams, int) or not 1 <= streams <= (os.cpu_count() or 1):
        raise ScheduleError(f'streams={streams!r}: must be an integer from 1 to the {os.cpu_count()} cores here')
    names = []
    for i, st in enumerate(raw['stages']):
        where = f'stages[{i}]'
        if not isinstance(st, dict) or set(st) - STAGE_KEYS:
            raise ScheduleError(f'{where}: a mapping with fields from {sorted(STAGE_KEYS)}, got {st!r}')
        for key in ('name', 'families', 'depths', 'seeds'):
            if not st.get(key):
                raise ScheduleError(f'{where}: field {key!r} is missing or empty')
        if ('lrs' in st) == ('lr_from' in st):
            raise ScheduleError(f'{where} ({st["name"]}): give exactly one of lrs (a grid) and lr_from (a grid '
                                f'stage\'s choice)')
        if 'lr_from' in st:
            grid = next((s for s in raw['stages'][:i] if s.get('name') == st['lr_from']), None)
            if grid is None or 'lrs' not in grid:
                raise ScheduleError(f'{where}: lr_from={st["lr_from"]!r} is not an earlier stage with lrs')
            borrowed = {f: st.get('lr_family', {}).get(f, f) for f in st['families']}
            missing = [f'{b} (for {f})' for f, b in borrowed.items() if b not in grid['families']] + \
                      [f'depth {d}' for d in st['depths'] if d not in grid['depths']]
            if missing:
                raise ScheduleError(f'{where}: lr_from={st["lr_from"]!r} has no choice for {", ".join(missing)}')
        if any(not isinstance(d, int) or d < 1 for d in st['depths']):
            raise ScheduleError(f'{where}: depths must be positive integers, got {st["depths"]!r}')
        if any(not float(v) > 0 for v in st.get('lrs', [])):
            raise ScheduleError(f'{where}: lrs must be positive, got {st["lrs"]!r}')
        edges = st.get('extend_edges', 0)
        if edges and ('lrs' not in st or not isinstance(edges, int) or isinstance(edges, bool) or edges < 0):
            raise ScheduleError(f'{where}: extend_edges must be a whole number >= 0 on a stage with lrs, got {edges!r}')
        names.append(st['name'])
    if len(set(names)) != len(names):
        raise ScheduleError(f'stage names must be distinct, got {names}')
    rel = lambda key: Path(raw[key]) if key in raw else None   # noqa: E731 (relative to the repository root)
    return Schedule(raw['experiment'], rel('store'), rel('recipe'), rel('ds_config'), rel('data'), rel('source'),
                    str(raw['width']), raw.get('size', 'tiny'), streams, raw['stages'],
                    rel('runs') or Path('runs') / raw['experiment'])


def stage_points(stage: dict, chosen: Dict[Tuple[str, int], float], added: Optional[Edges] = None) -> List[Point]:
    """The stage's points, costliest first. ``chosen``: ``{(family, depth): lr}`` of the stage's ``lr_from``;
    ``added``: rates the edge rule added to a grid stage's cells (:func:`edge_rates`)."""
    points = []
    for family in stage['families']:
        for depth in stage['depths']:
            if 'lrs' in stage:
                lrs = [float(v) for v in stage['lrs']] + list((added or {}).get((family, depth), []))
            else:
                lrs = [chosen[(stage.get('lr_family', {}).get(family, family), depth)]]
            for lr in lrs:
                points += [Point(stage['name'], family, depth, lr, seed, i, tuple(map(str, stage.get('extra', []))))
                           for i, seed in enumerate(stage['seeds'])]
    return sorted(points, key=lambda p: -p.cost)


def sweep_command(s: Schedule, p: Point, port: int) -> List[str]:
    return [sys.executable, 'launch/sweep.py', '--experiment', s.experiment, '--families', p.family,
            '--depths', str(p.depth), '--widths', s.width, '--lrs', f'{p.lr:g}',
            '--seeds', ','.join(map(str, _stage(s, p.stage)['seeds'])), '--size', s.size, '--num-gpus', '1',
            '--ds-config', str(s.ds_config), '--sweep-id', p.sweep_id, '--point-index', str(p.index),
            '--launcher-args', f'--master_port {port}', '--', '--config', str(s.recipe), '--data.source', str(s.data),
            '--output-dir', str(s.runs / p.sweep_id), *p.extra]


def _stage(s: Schedule, name: str) -> dict:
    return next(st for st in s.stages if st['name'] == name)


def _client():
    from deepvit.training import tracking
    return tracking.tracking_client(os.environ['MLFLOW_TRACKING_URI'])


def holdout_by_point(s: Schedule, points: List[Point]) -> Dict[Point, Optional[float]]:
    """Final ``holdout/top1`` (percent) of each point's FINISHED run, ``None`` when it has none (yet)."""
    client = _client()
    exp = client.get_experiment_by_name(s.experiment)
    out = {p: None for p in points}
    if exp is None:
        return out
    for p in points:
        runs = client.search_runs([exp.experiment_id], f"tags.sweep_id = '{p.sweep_id}' and "
                                                       f"attributes.status = 'FINISHED'")
        seed_runs = [r for r in runs if r.data.params.get('train.seed') == str(p.seed)]
        if seed_runs and HOLDOUT_METRIC in seed_runs[0].data.metrics:
            out[p] = float(seed_runs[0].data.metrics[HOLDOUT_METRIC])
    return out


def _score_table(scores: Dict[Point, Optional[float]]):
    """The holdout scores as ``analysis.lr_selection.choose_lr``'s input (holdout only: no test figure)."""
    import pandas as pd
    return pd.DataFrame([{'series': p.family, 'depth': p.depth, 'lr': p.lr, 'holdout_top1_final': v}
                         for p, v in scores.items()])


def _choose_lr(scores: Dict[Point, Optional[float]]):
    sys.path.insert(0, str(ROOT))
    from analysis.lr_selection import choose_lr   # the one choice rule (max mean holdout; tie: the smaller rate)
    return choose_lr(_score_table(scores))


def edge_rates(stage: dict, scores: Dict[Point, Optional[float]], added: Edges) -> List[Tuple[Tuple[str, int], float]]:
    """The edge rule (docs/study/plan.md, amendment 1): a cell whose best rate (``choose_lr``'s choice: mean final
    holdout over the stage's seeds; tie: the smaller) is the smallest rate tried gets half of it, the largest twice
    it, at most ``extend_edges`` times on each side. Returns the ``((family, depth), lr)`` to add now; [] when every
    cell's best rate is inside its grid, the cap is reached, or a score is missing."""
    cap = int(stage.get('extend_edges', 0))
    if not cap or any(v is None for v in scores.values()):
        return []
    grid = [float(v) for v in stage['lrs']]
    new = []
    for r in _choose_lr(scores).sort_values(['series', 'depth']).itertuples():
        cell, best, tried = (r.series, int(r.depth)), float(r.chosen_lr), [float(v) for v in r.lr_grid]
        extra = added.get(cell, [])
        if best == min(tried) and sum(lr < min(grid) for lr in extra) < cap:
            new.append((cell, best / 2))
        elif best == max(tried) and sum(lr > max(grid) for lr in extra) < cap:
            new.append((cell, best * 2))
    return new


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


def frozen_choice(s: Schedule, grid: dict, added: Optional[Edges] = None) -> Dict[Tuple[str, int], float]:
    """The grid stage's lr choice per (family, depth): read from ``STORE/lr_selection.json`` when made, else made
    now from the finished grid (with the edge rule's ``added`` rates; holdout only) and written there. Raises
    :class:`ScheduleError` while the grid has unfinished points, or when a grid with an edge rule has not run in
    this invocation (its added rates are known only then)."""
    path = s.store / SELECTION_FILE
    made = json.loads(path.read_text()) if path.is_file() else {}
    if grid['name'] in made:
        return {(r['family'], int(r['depth'])): float(r['chosen_lr']) for r in made[grid['name']]['choice']}
    if added is None and grid.get('extend_edges'):
        raise ScheduleError(f'stage {grid["name"]!r} (an edge rule) has no frozen choice yet: run it first')
    points = stage_points(grid, {}, added)
    scores = holdout_by_point(s, points)
    missing = [p.sweep_id + f' seed {p.seed}' for p, v in scores.items() if v is None]
    if missing:
        raise ScheduleError(f'stage {grid["name"]!r} has no finished holdout score for {missing[:3]}...; its lr '
                            f'choice needs every grid point')
    choice = _choose_lr(scores)
    rows = [{'family': r.series, 'depth': int(r.depth), 'chosen_lr': float(r.chosen_lr),
             'holdout_by_lr': {f'{lr:g}': float(v) for lr, v in zip(r.lr_grid, r.holdout_by_lr)}}
            for r in choice.itertuples()]
    made[grid['name']] = {'rule': 'max mean final holdout/top1 over the stage seeds; tie: smaller lr',
                          'made': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), 'choice': rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(made, indent=2) + '\n')
    for r in rows:
        print(f'study: lr choice of {grid["name"]}: {r["family"]} depth {r["depth"]}: {r["chosen_lr"]:g} '
              f'(holdout top-1 by lr {r["holdout_by_lr"]})', flush=True)
    return {(r['family'], r['depth']): r['chosen_lr'] for r in rows}


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
            chosen = frozen_choice(s, _stage(s, stage['lr_from'])) if 'lr_from' in stage else {}
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
