#!/usr/bin/env python
"""Depth/width sweep driver: one DeepSpeed launch of ``launch/train.py`` per grid point, idempotent across reruns.

    python launch/sweep.py --experiment NAME --families vit,deepvit --depths 2,4,8 [--widths 64,96:6] [--seeds 0,1]
        [--size tiny|paper] [--grid FLAG=V1,V2 ...] [--num-gpus N | --hostfile F] [--launcher-args "..."]
        [--dry-run] [--point-index I] [--prepare] [--count] [-- EXTRA TRAIN.PY ARGS]

Grid: families × widths (``E`` → E/16 heads, or ``E:H``) × depths × ``--grid`` axes × seeds. A family maps to its
registered variant of one size (``tiny``: ``<family>_tiny_patch4_32``; ``paper``: ``<family>_16b_patch16_224``, the
paper's 384-wide, 12-head models) with depth and width overridden. Each point is launched as
``<launcher> [launcher flags] launch/train.py --deepspeed DS --model M --depth D --embed-dim E --num-heads H --seed S
--output-dir ROOT/KEY --experiment NAME --run-name KEY --sweep-id ID --sweep-point KEY --parent-run-id PID --resume
[EXTRA]``; ``--output-dir`` among EXTRA is the sweep root ROOT (default ``runs/sweeps/<experiment>/<sweep id>``).

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
import contextlib
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from deepvit.schema import KIND_TAG, SWEEP_ID_TAG, SWEEP_KIND, SWEEP_POINT_TAG  # the record's names: one place

REPO = Path(__file__).resolve().parent.parent
# A sweep family -> (registered model family, train.py flags). The last five are controls of one harness: the same
# DeepViT with one Re-attention part changed, or trained with the official cosine regulariser.
REMEDIES = {
    'vit': ('vit', ()),
    'deepvit': ('deepvit', ()),
    'layerscale': ('layerscale', ()),
    'talkinghead': ('talkinghead', ()),
    'reattn_ln': ('deepvit', ('--reattn-norm', 'ln')),
    'reattn_nonorm': ('deepvit', ('--reattn-norm', 'none')),
    'reattn_identity': ('deepvit', ('--reattn-init', 'identity')),
    'bn_only': ('deepvit', ('--reattn-init', 'identity', '--reattn-theta', 'fixed')),
    'deepvit_cosreg': ('deepvit', ('--cosine-reg', '0.1')),
}
FAMILIES = tuple(REMEDIES)
SIZES = {  # size -> model name template; its width and head dimension are the registered variant's
    'tiny': '{family}_tiny_patch4_32',
    'paper': '{family}_16b_patch16_224',
}


def size_defaults(size: str) -> Tuple[int, int]:
    """``(embed_dim, num_heads)`` of the registered ViT variant of ``size`` (built on the meta device: no memory)."""
    import timm
    import deepvit  # noqa: F401  (registers the variants)
    cfg = timm.create_model(SIZES[size].format(family='vit'), device='meta').model_cfg
    return int(cfg['embed_dim']), int(cfg['num_heads'])
# Flags the driver sets for every point: EXTRA must not carry them.
DRIVER_FLAGS = {'--model': '--families/--size', '--depth': '--depths', '--embed-dim': '--widths',
                '--num-heads': '--widths', '--seed': '--seeds', '--experiment': '--experiment',
                '--run-name': '(the point key)', '--sweep-id': '--sweep-id', '--sweep-point': '(the point key)',
                '--parent-run-id': '(the parent run)', '--resume': '(always passed)', '--deepspeed': '--ds-config'}


class SweepError(ValueError):
    """A bad sweep request; the message names the field and its value."""


@dataclass(frozen=True)
class Point:
    """One grid point. ``extra``: ``((flag, value), ...)`` from ``--grid``."""
    family: str
    depth: int
    embed_dim: int
    num_heads: int
    seed: int
    extra: Tuple[Tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """``<family>-d<depth>-w<embed_dim>-h<num_heads>[-<flag><value>...]-s<seed>``, e.g. ``vit-d8-w64-h4-s0``."""
        parts = [self.family, f'd{self.depth}', f'w{self.embed_dim}', f'h{self.num_heads}']
        parts += [f"{flag.lstrip('-')}{value}".replace('/', '_') for flag, value in self.extra]
        return '-'.join(parts + [f's{self.seed}'])


# ----------------------------------------------------------------------------------------------- parsing the grid
def parse_ints(field: str, text: str, minimum: int = 0) -> List[int]:
    """``'2,4,8'`` -> ``[2, 4, 8]``; raises SweepError naming ``field`` on a non-integer, a value below ``minimum``
    or a repeat."""
    try:
        values = [int(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise SweepError(f'{field} must be comma-separated integers, got {text!r}') from None
    if not values or min(values) < minimum or len(set(values)) != len(values):
        raise SweepError(f'{field} must be distinct integers >= {minimum}, got {text!r}')
    return values


def parse_widths(text: str, head_dim: int = 16) -> List[Tuple[int, int]]:
    """``'64,96:6'`` -> ``[(64, 4), (96, 6)]``: embed_dim, with num_heads = embed_dim // head_dim unless given as
    ``E:H`` (the sweep passes the head dimension of the size's registered variant: 16 tiny, 32 paper).

    Raises:
        SweepError: a malformed entry, or embed_dim not divisible by num_heads.
    """
    widths = []
    for item in text.split(','):
        e, _, h = item.strip().partition(':')
        try:
            embed = int(e)
            heads = int(h) if h else embed // head_dim
        except ValueError:
            raise SweepError(f'--widths entries must be EMBED or EMBED:HEADS, got {item!r}') from None
        if embed <= 0 or heads <= 0 or embed % heads:
            raise SweepError(f'--widths {item!r}: embed_dim {embed} must be a positive multiple of num_heads {heads}')
        widths.append((embed, heads))
    if len(set(widths)) != len(widths):
        raise SweepError(f'--widths has a repeated entry: {text!r}')
    return widths


def parse_grid_axis(spec: str) -> Tuple[str, List[str]]:
    """``'drop-path-rate=0,0.1'`` -> ``('--drop-path-rate', ['0', '0.1'])``: any train.py flag as a grid axis."""
    name, sep, values = spec.partition('=')
    name = '--' + name.strip().lstrip('-')
    vals = [v for v in values.split(',') if v]
    if not sep or name == '--' or not vals:
        raise SweepError(f'--grid takes FLAG=V1,V2,..., got {spec!r}')
    if name in DRIVER_FLAGS:
        raise SweepError(f'--grid {spec!r}: {name} is set by the sweep (use {DRIVER_FLAGS[name]})')
    return name, vals


def split_output_dir(extra: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """Take ``--output-dir X`` / ``--output-dir=X`` out of the train.py args; refuse flags the driver sets itself."""
    root, rest, it = None, [], iter(extra)
    for arg in it:
        flag = arg.split('=', 1)[0]
        if flag == '--output-dir':
            root = arg.split('=', 1)[1] if '=' in arg else next(it, None)
            if not root:
                raise SweepError('--output-dir after -- needs a value')
        elif flag in DRIVER_FLAGS:
            raise SweepError(f'{flag} after -- is set by the sweep for every point (use {DRIVER_FLAGS[flag]})')
        else:
            rest.append(arg)
    return root, rest


def grid_points(families: Sequence[str], depths: Sequence[int], widths: Sequence[Tuple[int, int]],
                seeds: Sequence[int], axes: Sequence[Tuple[str, List[str]]] = ()) -> List[Point]:
    """Every point, seeds outermost, then widths, depths, ``--grid`` axes and families (so each depth's ViT/DeepViT
    pair and each seed's whole curve finish early)."""
    combos: List[Tuple[Tuple[str, str], ...]] = [()]
    for flag, values in axes:
        combos = [c + ((flag, v),) for c in combos for v in values]
    return [Point(f, d, e, h, s, c) for s in seeds for e, h in widths for d in depths for c in combos
            for f in families]


def sweep_id_for(spec: Dict) -> str:
    """First 8 hex digits of SHA-1 over the canonical JSON of ``spec`` (experiment, grid, size, DS config, EXTRA)."""
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]


def _short(path: Path) -> str:
    rel = os.path.relpath(path)
    return path.as_posix() if rel.startswith('..') else rel


def _repo_relative(path: Path) -> str:
    """``path`` relative to the repository when inside it (the sweep id must not depend on the clone's location)."""
    path = path.resolve()
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.as_posix()


def point_command(point: Point, *, launcher: Sequence[str], launcher_flags: Sequence[str], train_script: Path,
                  ds_config: str, model: str, root: Path, experiment: str, sweep_id: str, parent_run_id: str,
                  extra: Sequence[str]) -> List[str]:
    """The full launch command of one point (see the module docstring)."""
    cmd = list(launcher) + list(launcher_flags) + [
        _short(train_script), '--deepspeed', ds_config, '--model', model, *REMEDIES[point.family][1],
        '--depth', str(point.depth),
        '--embed-dim', str(point.embed_dim), '--num-heads', str(point.num_heads), '--seed', str(point.seed),
        '--output-dir', _short(root / point.key), '--experiment', experiment, '--run-name', point.key,
        '--sweep-id', sweep_id, '--sweep-point', point.key, '--parent-run-id', parent_run_id, '--resume']
    for flag, value in point.extra:
        cmd += [flag, value]
    return cmd + list(extra)


# ----------------------------------------------------------------------------------------------------- MLflow
def _client(uri: str):
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=uri)


def _sweep_runs(client, exp_id: str, sweep_id: str) -> list:
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


def _parents(runs: Sequence) -> list:
    ps = [r for r in runs if r.data.tags.get(KIND_TAG) == SWEEP_KIND]
    return sorted(ps, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def find_or_create_parent(client, exp_id: str, sweep_id: str, params: Dict[str, str]) -> str:
    """The sweep's parent run id: found by tag, else created (run name ``sweep-<id>``, tags ``sweep_id`` and
    ``deepvit.kind=sweep``, the grid as params). Two drivers racing to create it keep the older one: the loser
    deletes its own."""
    parents = _parents(_sweep_runs(client, exp_id, sweep_id))
    if parents:
        return parents[0].info.run_id
    from mlflow.entities import Param
    from mlflow.tracking.context.registry import resolve_tags
    run = client.create_run(exp_id, run_name=f'sweep-{sweep_id}',
                            tags=resolve_tags({SWEEP_ID_TAG: sweep_id, KIND_TAG: SWEEP_KIND}))
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    keep = _parents(_sweep_runs(client, exp_id, sweep_id))[0].info.run_id
    if keep != run.info.run_id:
        client.delete_run(run.info.run_id)
    return keep


def summarise_parent(client, parent_id: str, experiment: str, sweep_id: str, uri: str, plan: 'Plan') -> None:
    """Record the sweep's state on its parent run (every run of the sweep command, so a rerun refreshes it): child
    runs by status (each planned point counted once, by its best status; ``PENDING`` for points never started), the
    best final top-1 per remedy and depth, and the analysis outputs (depth table, saturation, statistics, figures)
    as the parent's artifacts under ``analysis/``. The analysis needs finished runs: before any, only the counts."""
    import tempfile
    from analysis.report import analyze
    from analysis.store import AnalysisError
    from deepvit.training.tracking import record_sweep_summary
    statuses = point_statuses(_sweep_runs(client, client.get_run(parent_id).info.experiment_id, sweep_id))
    order = ('FINISHED', 'RUNNING', 'KILLED', 'FAILED')
    counts = {s: 0 for s in order + ('PENDING',)}
    for p in plan.points:
        have = statuses.get(p.key, [])
        key = next((s for s in order if s in have), have[0] if have else 'PENDING')
        counts[key] = counts.get(key, 0) + 1
    with tempfile.TemporaryDirectory() as tmp:
        out, best, files = Path(tmp) / 'analysis', {}, []
        if counts['FINISHED']:
            try:
                result = analyze(experiment, out, sweep=sweep_id, tracking_uri=uri, progress=False)
            except (AnalysisError, ValueError) as e:
                print(f'sweep {sweep_id}: analysis for the parent run skipped ({e})', file=sys.stderr, flush=True)
            else:
                runs = result['runs']
                done = runs[(runs['status'] == 'FINISHED') & runs['top1_final'].notna()]
                best = {(r, int(d)): float(v) for (r, d), v in
                        done.groupby(['remedy', 'depth'])['top1_final'].max().items()}
                files = [f for f in result['files'] if Path(f).is_file()]
        record_sweep_summary(client, parent_id, counts, best, files, root=out)


# ------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='launch/sweep.py', description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog='Everything after -- goes to launch/train.py (an --output-dir there is the '
                                       'sweep root).')
    p.add_argument('--experiment', required=True, help='MLflow experiment of the sweep and its runs')
    p.add_argument('--families', default='vit,deepvit', help='comma-separated, from: ' + ', '.join(FAMILIES))
    p.add_argument('--depths', required=True, help='comma-separated block counts, e.g. 2,4,8')
    p.add_argument('--widths', default=None, help='embed_dim[:num_heads],...; heads default embed_dim//16; '
                                                  'default: the size\'s own width')
    p.add_argument('--seeds', default='0', help='comma-separated seeds')
    p.add_argument('--size', choices=sorted(SIZES), default='tiny',
                   help='tiny: <family>_tiny_patch4_32 (32 px, 10 classes, built-in digits); paper: '
                        '<family>_16b_patch16_224 (ImageNet, embed 384)')
    p.add_argument('--grid', action='append', default=[], metavar='FLAG=V1,V2',
                   help='one more grid axis over any train.py flag, e.g. drop-path-rate=0,0.1 (repeatable)')
    p.add_argument('--sweep-id', default=None, help='default: a hash of the experiment, grid and train args')
    p.add_argument('--ds-config', default=str(REPO / 'ds_configs' / 'zero2.json'), help='DeepSpeed JSON config')
    p.add_argument('--num-gpus', type=int, default=None, help='launcher --num_gpus (ranks per node)')
    p.add_argument('--hostfile', default=None, help='launcher --hostfile (multi-node)')
    p.add_argument('--launcher-args', default='', help='more launcher flags, one string (e.g. "--master_port 29600")')
    p.add_argument('--launcher-cmd', default=os.environ.get('DEEPVIT_LAUNCHER', 'deepspeed'),
                   help='launcher executable and leading args (env DEEPVIT_LAUNCHER)')
    p.add_argument('--train-script', default=str(REPO / 'launch' / 'train.py'), help=argparse.SUPPRESS)
    p.add_argument('--point-index', type=int, default=None, help='run only this grid point (0-based; job arrays)')
    p.add_argument('--dry-run', action='store_true', help='print every command and what would happen; run nothing')
    p.add_argument('--prepare', action='store_true', help='create the sweep parent run, print its id, run nothing')
    p.add_argument('--count', action='store_true', help='print the number of grid points and exit')
    p.add_argument('--fail-fast', action='store_true', help='stop at the first failed point')
    return p


@dataclass
class Plan:
    points: List[Point]
    selected: List[Point]
    sweep_id: str
    root: Path
    extra: List[str]
    model_template: str
    spec: Dict


def make_plan(args: argparse.Namespace, extra: Sequence[str]) -> Plan:
    """Validate the arguments and lay out the grid, sweep id and output root (no I/O)."""
    families = [f for f in args.families.split(',') if f]
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families or len(set(families)) != len(families):
        raise SweepError(f'--families must be distinct names from {list(FAMILIES)}, got {args.families!r}')
    template = SIZES[args.size]
    embed, heads = size_defaults(args.size)
    default_width = f'{embed}:{heads}'
    depths = parse_ints('--depths', args.depths, minimum=1)
    widths = parse_widths(args.widths or default_width, head_dim=embed // heads)
    seeds = parse_ints('--seeds', args.seeds)
    axes = [parse_grid_axis(s) for s in args.grid]
    root_arg, extra = split_output_dir(extra)
    spec = {'experiment': args.experiment, 'families': sorted(families), 'depths': sorted(depths),
            'widths': sorted(widths), 'seeds': sorted(seeds), 'model': template,
            'grid': sorted((f, sorted(v)) for f, v in axes),
            'ds_config': _repo_relative(Path(args.ds_config)), 'train_args': list(extra)}
    sweep_id = args.sweep_id or sweep_id_for(spec)
    if not all(c.isalnum() or c in '._-' for c in sweep_id):
        raise SweepError(f'--sweep-id may hold letters, digits, ".", "_", "-" only, got {sweep_id!r}')
    root = Path(root_arg or Path('runs') / 'sweeps' / args.experiment / sweep_id).resolve()
    points = grid_points(families, depths, widths, seeds, axes)
    selected = points
    if args.point_index is not None:
        if not 0 <= args.point_index < len(points):
            raise SweepError(f'--point-index {args.point_index} out of range: the grid has {len(points)} points '
                             f'(0..{len(points) - 1})')
        selected = [points[args.point_index]]
    return Plan(points, selected, sweep_id, root, list(extra), template, spec)


def _launcher_flags(args: argparse.Namespace) -> List[str]:
    flags = []
    if args.num_gpus is not None:
        flags += ['--num_gpus', str(args.num_gpus)]
    if args.hostfile:
        flags += ['--hostfile', args.hostfile]
    return flags + shlex.split(args.launcher_args)


def _claim_root(plan: Plan, write: bool) -> None:
    """Refuse an output root that holds another sweep (its checkpoints would be resumed as this sweep's)."""
    marker = plan.root / 'sweep.json'
    if marker.exists():
        owner = json.loads(marker.read_text()).get('sweep_id')
        if owner != plan.sweep_id:
            raise SweepError(f'--output-dir {plan.root} holds sweep {owner!r}, this command is sweep '
                             f'{plan.sweep_id!r}: choose another --output-dir, or pass --sweep-id {owner} to continue it')
    elif write:
        plan.root.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(f'.{os.getpid()}.tmp')
        tmp.write_text(json.dumps({'sweep_id': plan.sweep_id, **plan.spec}, indent=2) + '\n')
        tmp.replace(marker)


def _action(statuses: List[str]) -> Optional[str]:
    """None when the point is finished, else what the launch does."""
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


def run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    plan = make_plan(args, extra)
    if args.count:
        print(len(plan.points))
        return 0
    from analysis.store import default_tracking_uri, store_exists
    uri = default_tracking_uri()
    _claim_root(plan, write=not args.dry_run)
    client, exp_id, statuses, parent_id = None, None, {}, None
    if store_exists(uri) or not args.dry_run:           # a dry run never creates a store
        from deepvit.training.tracking import get_or_create_experiment, store_lock
        with store_lock(uri) if not args.dry_run else contextlib.nullcontext():  # job arrays start drivers at once
            client = _client(uri)
            exp = client.get_experiment_by_name(args.experiment)
            if exp is not None:
                exp_id = exp.experiment_id
            elif not args.dry_run:
                exp_id = get_or_create_experiment(client, args.experiment, uri)
        if exp_id is not None:
            runs = _sweep_runs(client, exp_id, plan.sweep_id)
            statuses = point_statuses(runs)
            parents = _parents(runs)
            parent_id = parents[0].info.run_id if parents else None
    if not args.dry_run and parent_id is None:
        params = {f'sweep.{k}': json.dumps(v) for k, v in plan.spec.items()}
        params.update({'sweep.num_points': str(len(plan.points)), 'sweep.output_dir': _short(plan.root)})
        parent_id = find_or_create_parent(client, exp_id, plan.sweep_id, params)
    if args.prepare:
        print(parent_id)
        return 0

    launcher, flags = shlex.split(args.launcher_cmd), _launcher_flags(args)
    todo = [(p, _action(statuses.get(p.key, []))) for p in plan.selected]
    n_skip = sum(a is None for _, a in todo)
    print(f'sweep {plan.sweep_id} of experiment {args.experiment!r} ({uri}): {len(plan.selected)} point(s), '
          f'{n_skip} finished, {len(todo) - n_skip} to run; root {_short(plan.root)}', flush=True)
    cmds = {p.key: point_command(p, launcher=launcher, launcher_flags=flags, train_script=Path(args.train_script),
                                 ds_config=_short(Path(args.ds_config).resolve()),
                                 model=plan.model_template.format(family=REMEDIES[p.family][0]), root=plan.root,
                                 experiment=args.experiment, sweep_id=plan.sweep_id,
                                 parent_run_id=parent_id or '<PARENT_RUN_ID>', extra=plan.extra) for p in plan.selected}
    if args.dry_run:
        for i, (p, action) in enumerate(todo):
            print(f'# [{i + 1}/{len(todo)}] {p.key}: {action or "skip (finished)"}')
            print(shlex.join(cmds[p.key]))
        return 0

    if any(a is not None for _, a in todo) and client.get_run(parent_id).info.status != 'RUNNING':
        client.update_run(parent_id, status='RUNNING')
    stop, failed = _Stop(), []
    for i, (p, action) in enumerate(todo):
        if stop.stopped:
            break
        print(f'[{i + 1}/{len(todo)}] {p.key}: {action or "skip (finished)"}', flush=True)
        if action is None:
            continue
        (plan.root / p.key).mkdir(parents=True, exist_ok=True)
        (plan.root / p.key / 'command.txt').write_text(shlex.join(cmds[p.key]) + '\n')
        stop.proc = subprocess.Popen(cmds[p.key])
        rc = stop.proc.wait()
        stop.proc = None
        now = point_statuses(_sweep_runs(client, exp_id, plan.sweep_id)).get(p.key, [])
        if 'FINISHED' not in now and not stop.stopped:
            why = f'exit status {rc}' if rc else 'exit status 0 but no FINISHED run with this sweep_point'
            print(f'[{i + 1}/{len(todo)}] {p.key}: FAILED ({why}); rerun the same command to resume it',
                  file=sys.stderr, flush=True)
            failed.append(p.key)
            if args.fail_fast:
                break
    statuses = point_statuses(_sweep_runs(client, exp_id, plan.sweep_id))
    if all('FINISHED' in statuses.get(p.key, []) for p in plan.points):
        client.set_terminated(parent_id, status='FINISHED')
    elif failed or stop.stopped:
        client.set_terminated(parent_id, status='FAILED' if failed else 'KILLED')
    done = sum('FINISHED' in statuses.get(p.key, []) for p in plan.points)
    summarise_parent(client, parent_id, args.experiment, plan.sweep_id, uri, plan)
    print(f'sweep {plan.sweep_id}: {done}/{len(plan.points)} points finished' +
          (f'; failed: {", ".join(failed)}' if failed else ''), flush=True)
    if stop.stopped:
        return 143
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index('--') if '--' in argv else len(argv)
    parser = build_parser()
    args = parser.parse_args(argv[:cut])
    try:
        return run(args, argv[cut + 1:])
    except SweepError as e:
        parser.print_usage(sys.stderr)
        print(f'error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
