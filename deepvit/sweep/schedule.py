"""A staged study's schedule: the file's checks (:func:`load_schedule`), its points (:func:`stage_points`), the
command that runs one (:func:`sweep_command`), and the learning-rate choice a grid stage freezes (:func:`frozen_choice`,
with the edge rule :func:`edge_rates`). Run by ``launch/study.py``, whose docstring describes the schedule file.

The choice reads only the holdout (``holdout/top1`` of FINISHED runs in the store named by
``$MLFLOW_TRACKING_URI``), never the test split; the rule itself is :func:`analysis.lr_selection.choose_lr`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

STAGE_KEYS = {'name', 'families', 'depths', 'seeds', 'lrs', 'lr_from', 'lr_family', 'extra', 'extend_edges'}
Edges = Dict[Tuple[str, int], List[float]]   # (family, depth) -> rates the edge rule added to a grid
TOP_KEYS = {'experiment', 'store', 'recipe', 'ds_config', 'data', 'source', 'width', 'size', 'streams', 'stages',
            'runs'}
SELECTION_FILE = 'lr_selection.json'
HOLDOUT_METRIC = 'holdout/top1'


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
            '--seeds', ','.join(map(str, stage_by_name(s, p.stage)['seeds'])), '--size', s.size, '--num-gpus', '1',
            '--ds-config', str(s.ds_config), '--sweep-id', p.sweep_id, '--point-index', str(p.index),
            '--launcher-args', f'--master_port {port}', '--', '--config', str(s.recipe),
            '--data.source', str(s.data), '--output-dir', str(s.runs / p.sweep_id), *p.extra]


def stage_by_name(s: Schedule, name: str) -> dict:
    """The stage called ``name`` in ``s``."""
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
