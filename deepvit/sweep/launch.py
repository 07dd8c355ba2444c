"""Running a planned sweep: one DeepSpeed launch per unfinished point, the MLflow parent run, idempotent reruns.

Reads the sweep's runs through the analysis reader (:mod:`analysis.store`: paged search, and ``store_exists`` so a
dry run never creates a store); every write to MLflow goes through the training side's writer
(:mod:`deepvit.training.tracking`); every MLflow name comes from :mod:`deepvit.schema`. mlflow is imported only by
those two modules, and only when a store is touched.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .. import atomic
from ..schema import KIND_TAG, SWEEP_ID_TAG, SWEEP_KIND, SWEEP_POINT_TAG  # the record's names: one place
from .plan import Plan, SweepError, make_plan, point_command, short_path

STATUS_ORDER = ('FINISHED', 'RUNNING', 'KILLED', 'FAILED')  # a point's best status first
PENDING = 'PENDING'                                          # a planned point with no run yet


# ----------------------------------------------------------------------------------------------------- reading
def sweep_runs(client, exp_id: str, sweep_id: str) -> list:
    """Every active run of experiment ``exp_id`` tagged ``sweep_id`` (the parent and its points), oldest first."""
    from analysis.store import iter_runs
    return list(iter_runs(client, [exp_id], f"tags.{SWEEP_ID_TAG} = '{sweep_id}'"))


def point_statuses(runs: Sequence) -> Dict[str, List[str]]:
    """``{sweep_point: [status, ...]}`` of the sweep's training runs (parents excluded)."""
    out: Dict[str, List[str]] = {}
    for r in runs:
        key = r.data.tags.get(SWEEP_POINT_TAG)
        if key and r.data.tags.get(KIND_TAG) != SWEEP_KIND:
            out.setdefault(key, []).append(r.info.status)
    return out


def parents(runs: Sequence) -> list:
    """The sweep parents among ``runs`` (tag ``deepvit.kind=sweep``), oldest first (ties: by run id)."""
    ps = [r for r in runs if r.data.tags.get(KIND_TAG) == SWEEP_KIND]
    return sorted(ps, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def _existing_experiment(client, name: str) -> Optional[str]:
    from analysis.store import AnalysisError, get_experiment
    try:
        return get_experiment(client, name).experiment_id
    except AnalysisError:
        return None


# ----------------------------------------------------------------------------------------------------- parent run
def find_or_create_parent(client, exp_id: str, sweep_id: str, grid: Dict[str, str]) -> str:
    """The sweep's parent run id: found by tag, else created (:func:`~deepvit.training.tracking.create_sweep_parent`,
    the grid as params). Two drivers racing to create it keep the older one: the loser deletes its own."""
    from ..training import tracking
    found = parents(sweep_runs(client, exp_id, sweep_id))
    if found:
        return found[0].info.run_id
    run_id = tracking.create_sweep_parent(client, exp_id, sweep_id, grid)
    keep = parents(sweep_runs(client, exp_id, sweep_id))[0].info.run_id
    if keep != run_id:
        tracking.discard_run(client, run_id)
    return keep


def status_counts(plan: Plan, statuses: Dict[str, List[str]]) -> Dict[str, int]:
    """Planned points by status, each counted once by its best status (:data:`STATUS_ORDER`; ``PENDING`` for points
    never started). Keys: the four statuses and ``PENDING``, plus any other status MLflow reported."""
    counts = {s: 0 for s in STATUS_ORDER + (PENDING,)}
    for p in plan.points:
        have = statuses.get(p.key, [])
        key = next((s for s in STATUS_ORDER if s in have), have[0] if have else PENDING)
        counts[key] = counts.get(key, 0) + 1
    return counts


def summarise_parent(client, parent_id: str, exp_id: str, experiment: str, uri: str, plan: Plan) -> None:
    """Record the sweep's state on its parent run (every run of the sweep command, so a rerun refreshes it): child
    runs by status (:func:`status_counts`), the best final top-1 per remedy and depth, and the analysis outputs
    (depth table, saturation, statistics, figures) as the parent's artifacts under ``analysis/``. The analysis needs
    finished runs: before any, only the counts. An analysis error is reported on stderr and skipped."""
    from analysis.report import analyze
    from analysis.store import AnalysisError
    from ..training.tracking import record_sweep_summary
    counts = status_counts(plan, point_statuses(sweep_runs(client, exp_id, plan.sweep_id)))
    with tempfile.TemporaryDirectory() as tmp:
        out, best, files = Path(tmp) / 'analysis', {}, []
        if counts['FINISHED']:
            try:
                result = analyze(experiment, out, sweep=plan.sweep_id, tracking_uri=uri, progress=False,
                                 plan=plan.study.path if plan.study is not None else None)
            except (AnalysisError, ValueError) as e:
                print(f'sweep {plan.sweep_id}: analysis for the parent run skipped ({e})', file=sys.stderr,
                      flush=True)
            else:
                runs = result['runs']
                done = runs[(runs['status'] == 'FINISHED') & runs['top1_final'].notna()]
                best = {(r, int(d)): float(v) for (r, d), v in
                        done.groupby(['remedy', 'depth'])['top1_final'].max().items()}
                files = [f for f in result['files'] if Path(f).is_file()]
        record_sweep_summary(client, parent_id, counts, best, files, root=out)


# ----------------------------------------------------------------------------------------------------- launching
def launcher_flags(args: argparse.Namespace) -> List[str]:
    """The launcher's own flags: ``--num_gpus N``, ``--hostfile F``, then ``--launcher-args`` split as a shell
    would."""
    flags = []
    if args.num_gpus is not None:
        flags += ['--num_gpus', str(args.num_gpus)]
    if args.hostfile:
        flags += ['--hostfile', args.hostfile]
    return flags + shlex.split(args.launcher_args)


def claim_root(plan: Plan, write: bool) -> None:
    """Refuse an output root that holds another sweep (its checkpoints would be resumed as this sweep's); with
    ``write``, mark an unclaimed root as this sweep's (``ROOT/sweep.json``: the sweep id and spec).

    Raises:
        SweepError: ``ROOT/sweep.json`` names another sweep id.
    """
    marker = plan.root / 'sweep.json'
    if marker.exists():
        owner = json.loads(marker.read_text()).get('sweep_id')
        if owner != plan.sweep_id:
            raise SweepError(f'--output-dir {plan.root} holds sweep {owner!r}, this command is sweep '
                             f'{plan.sweep_id!r}: choose another --output-dir, or pass --sweep-id {owner} to continue it')
    elif write:
        plan.root.mkdir(parents=True, exist_ok=True)
        atomic.write_text(marker, json.dumps({'sweep_id': plan.sweep_id, **plan.spec}, indent=2) + '\n')


def action(statuses: List[str]) -> Optional[str]:
    """What launching a point with these run statuses does: None when it is finished, else ``start`` or
    ``resume (was ...)``."""
    if 'FINISHED' in statuses:
        return None
    return f'resume (was {"/".join(sorted(set(statuses)))})' if statuses else 'start'


class _Stop:
    """SIGTERM/SIGINT: forward SIGTERM to the running point (the trainer checkpoints and ends its run KILLED)."""

    def __init__(self):
        self.proc: Optional[subprocess.Popen] = None
        self.stopped = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self)

    def __call__(self, signum, frame):
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)


def _launch_points(todo, cmds, plan: Plan, client, exp_id: str, stop: '_Stop', fail_fast: bool) -> List[str]:
    """Launch every ``(point, action)`` of ``todo`` whose action is not None, one after another; return the keys of
    the points that did not finish."""
    failed = []
    for i, (p, what) in enumerate(todo):
        if stop.stopped:
            break
        print(f'[{i + 1}/{len(todo)}] {p.key}: {what or "skip (finished)"}', flush=True)
        if what is None:
            continue
        (plan.root / p.key).mkdir(parents=True, exist_ok=True)
        (plan.root / p.key / 'command.txt').write_text(shlex.join(cmds[p.key]) + '\n')
        stop.proc = subprocess.Popen(cmds[p.key])
        rc = stop.proc.wait()
        stop.proc = None
        now = point_statuses(sweep_runs(client, exp_id, plan.sweep_id)).get(p.key, [])
        if 'FINISHED' not in now and not stop.stopped:
            why = f'exit status {rc}' if rc else 'exit status 0 but no FINISHED run with this sweep_point'
            print(f'[{i + 1}/{len(todo)}] {p.key}: FAILED ({why}); rerun the same command to resume it',
                  file=sys.stderr, flush=True)
            failed.append(p.key)
            if fail_fast:
                break
    return failed


_PER_POINT = ('--seed', '--output-dir', '--run-name', '--sweep-point', '--parent-run-id')


def check_points(plan: Plan, ds_config: str, experiment: str) -> None:
    """Parse every selected point's train.py arguments with the trainer's own parser and config checks, before
    anything launches: a grid value the trainer refuses (``--grid drop-path=0,1.5``) stops the sweep here, naming the
    point and the trainer's words, instead of failing point by point. Points differing only in seed and paths are
    checked once.

    Raises:
        SweepError: a point's arguments the trainer refuses.
    """
    from ..training.config import ConfigError, build_parser, resolve
    parser, seen = build_parser(), set()
    for p in plan.selected:
        argv = point_command(p, launcher=[], launcher_flags=[], train_script=Path('train.py'), ds_config=ds_config,
                             model=plan.model(p), root=plan.root, experiment=experiment, sweep_id=plan.sweep_id,
                             parent_run_id='<PARENT_RUN_ID>', extra=plan.extra)[1:]
        key = tuple(v if i == 0 or argv[i - 1] not in _PER_POINT else '' for i, v in enumerate(argv))
        if key in seen:
            continue
        seen.add(key)
        try:
            resolve(parser.parse_args(argv))
        except ConfigError as err:
            raise SweepError(f'point {p.key}: launch/train.py would refuse it: {err}') from None


def first_round(plan: Plan) -> list:
    """A sequential plan's first round: the points of seeds below ``seeds.start`` (every cell, every family)."""
    return [p for p in plan.points if p.seed < plan.study.seeds.start]


def next_round(plan: Plan, client, exp_id: str, launched: set) -> list:
    """The points of a sequential plan's next look: for every compared cell whose rule is not met
    (:func:`analysis.plan.cell_decisions` on the sweep's finished runs), its next seed, every family of the sweep
    (so the cell's other series keep the same seeds). Empty when every compared cell is done."""
    from analysis.plan import cell_decisions
    from analysis.records import runs_frame
    runs = [r for r in sweep_runs(client, exp_id, plan.sweep_id) if r.data.tags.get(KIND_TAG) != SWEEP_KIND]
    frame, _ = runs_frame(client, runs, progress=False)
    table = cell_decisions(frame, plan.study)
    want = {(r['cell'], int(r['next_seed'])) for _, r in table.iterrows() if not r['done']}
    more = [p for p in plan.points if (plan.cell(p), p.seed) in want and p.key not in launched]
    for _, r in table.iterrows():
        state = 'done' if r['done'] else f"next seed {r['next_seed']}"
        print(f"sequential plan: {r['cell']}: {r['n_pairs']} pairs, half-width {r['half_width']:.3g} "
              f"(target {plan.study.seeds.half_width:g}, level {r['level']:.4g}): {state}", flush=True)
    return more


def run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Carry out one sweep command (parsed by :func:`deepvit.sweep.cli.build_parser`; ``extra``: the train.py args
    after ``--``): ``--count`` prints the number of points; ``--prepare`` finds or creates the parent run and prints
    its id; ``--dry-run`` prints every command and what would happen to it, writing nothing; otherwise every selected
    point not yet FINISHED is launched with ``--resume``, one after another, and the parent run is summarised.

    Returns:
        0 when every selected point finished, 1 when a point failed, 143 when stopped by SIGTERM/SIGINT.
    Raises:
        SweepError: a bad request (see :func:`~deepvit.sweep.plan.make_plan`), a root that holds another sweep, or a
        missing train script.
    """
    plan = make_plan(args, extra)
    if args.count:
        print(len(plan.points))
        return 0
    train_script = Path(args.train_script)
    if not (args.dry_run or args.prepare or train_script.is_file()):
        raise SweepError(f'--train-script {train_script} is not a file: the sweep launches launch/train.py of a '
                         f'source checkout of this repository')
    check_points(plan, short_path(Path(args.ds_config).resolve()), args.experiment)   # before any store is touched
    from analysis.store import store_exists
    from ..tracking_uri import default_tracking_uri
    from ..training import tracking
    uri = default_tracking_uri()
    claim_root(plan, write=not args.dry_run)
    client, exp_id, statuses, parent_id = None, None, {}, None
    if store_exists(uri) or not args.dry_run:           # a dry run never creates a store
        with tracking.store_lock(uri) if not args.dry_run else contextlib.nullcontext():  # job arrays start at once
            client = tracking.tracking_client(uri)
            exp_id = (_existing_experiment(client, args.experiment) if args.dry_run else
                      tracking.get_or_create_experiment(client, args.experiment, uri))
        if exp_id is not None:
            runs = sweep_runs(client, exp_id, plan.sweep_id)
            statuses = point_statuses(runs)
            found = parents(runs)
            parent_id = found[0].info.run_id if found else None
    if not args.dry_run and parent_id is None:
        parent_id = find_or_create_parent(client, exp_id, plan.sweep_id, plan.grid_params())
    if args.prepare:
        print(parent_id)
        return 0

    launcher, flags = shlex.split(args.launcher_cmd), launcher_flags(args)
    sequential = plan.study is not None and plan.study.seeds.rule == 'sequential' and args.point_index is None
    selected = first_round(plan) if sequential else plan.selected
    todo = [(p, action(statuses.get(p.key, []))) for p in selected]
    n_skip = sum(a is None for _, a in todo)
    print(f'sweep {plan.sweep_id} of experiment {args.experiment!r} ({uri}): {len(selected)} point(s)'
          + (f' of the sequential plan\'s first round (up to {len(plan.points)})' if sequential else '')
          + f', {n_skip} finished, {len(todo) - n_skip} to run; root {short_path(plan.root)}', flush=True)
    cmds = {p.key: point_command(p, launcher=launcher, launcher_flags=flags, train_script=train_script,
                                 ds_config=short_path(Path(args.ds_config).resolve()), model=plan.model(p),
                                 root=plan.root, experiment=args.experiment, sweep_id=plan.sweep_id,
                                 parent_run_id=parent_id or '<PARENT_RUN_ID>', extra=plan.extra) for p in plan.points}
    if args.dry_run:
        for i, (p, what) in enumerate(todo):
            print(f'# [{i + 1}/{len(todo)}] {p.key}: {what or "skip (finished)"}')
            print(shlex.join(cmds[p.key]))
        if sequential:
            print(f'# then, per compared cell, one more paired seed while its interval is wider than the plan says '
                  f'(at most {plan.study.seeds.max} seeds)')
        return 0

    if any(a is not None for _, a in todo) or sequential:
        tracking.set_run_status(client, parent_id, 'RUNNING')
    stop, failed = _Stop(), []
    while True:
        failed += _launch_points(todo, cmds, plan, client, exp_id, stop, args.fail_fast)
        if not sequential or failed or stop.stopped:
            break
        more = next_round(plan, client, exp_id, {p.key for p, _ in todo} | {p.key for p in selected})
        if not more:
            break
        selected = selected + more
        now = point_statuses(sweep_runs(client, exp_id, plan.sweep_id))   # one read of the store per round
        todo = [(p, action(now.get(p.key, []))) for p in more]
    statuses = point_statuses(sweep_runs(client, exp_id, plan.sweep_id))
    if all('FINISHED' in statuses.get(p.key, []) for p in (selected if sequential else plan.points)):
        tracking.set_run_status(client, parent_id, 'FINISHED')
    elif failed or stop.stopped:
        tracking.set_run_status(client, parent_id, 'FAILED' if failed else 'KILLED')
    done = sum('FINISHED' in statuses.get(p.key, []) for p in plan.points)
    summarise_parent(client, parent_id, exp_id, args.experiment, uri, plan)
    print(f'sweep {plan.sweep_id}: {done}/{len(plan.points)} points finished' +
          (f'; failed: {", ".join(failed)}' if failed else ''), flush=True)
    if stop.stopped:
        return 143
    return 1 if failed else 0
