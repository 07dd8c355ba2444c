"""Planning a sweep: the grid, its points and their keys, the sweep id, the output root and each point's command.

Pure: nothing here starts a process or touches MLflow (the one thing it reads is timm's registry, for the width and
head dimension of a size's registered variant). Launching is :mod:`deepvit.sweep.launch`; the command line is
:mod:`deepvit.sweep.cli`.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[2]   # the checkout: launch/train.py and ds_configs/ live there
TRAIN_SCRIPT = REPO / 'launch' / 'train.py'
DEFAULT_DS_CONFIG = REPO / 'ds_configs' / 'zero2.json'

# A sweep family -> (registered model family, train.py flags). The last five are controls of one harness: the same
# DeepViT with one Re-attention part changed, or trained with the official cosine regulariser.
REMEDIES = {
    'vit': ('vit', ()),
    'deepvit': ('deepvit', ()),
    'layerscale': ('layerscale', ()),
    'talkinghead': ('talkinghead', ()),
    'depthscale': ('depthscale', ()),
    'reattn_ln': ('deepvit', ('--reattn-norm', 'ln')),
    'reattn_nonorm': ('deepvit', ('--reattn-norm', 'none')),
    'reattn_identity': ('deepvit', ('--reattn-init', 'identity')),
    'bn_only': ('deepvit', ('--reattn-init', 'identity', '--reattn-theta', 'fixed')),
    'deepvit_cosreg': ('deepvit', ('--cosine-reg', '0.1')),
}
FAMILIES = tuple(REMEDIES)
# size -> registered model name template. Only the name: the width and head dimension are read from the registered
# variant (size_defaults), never copied here.
SIZES = {
    'tiny': '{family}_tiny_patch4_32',
    'paper': '{family}_16b_patch16_224',
}
DEFAULT_SIZE = 'tiny'

# Flags the driver sets for every point (flag -> the sweep option that sets it): EXTRA and --grid must not carry them,
# under any of train.py's spellings of the same field (--model.depth is --depth).
DRIVER_FLAGS = {'--model.name': '--families/--size', '--depth': '--depths', '--embed-dim': '--widths',
                '--num-heads': '--widths', '--seed': '--seeds', '--experiment': '--experiment',
                '--run-name': '(the point key)', '--sweep-id': '--sweep-id', '--sweep-point': '(the point key)',
                '--parent-run-id': '(the parent run)', '--resume': '(always passed)', '--deepspeed': '--ds-config'}


class SweepError(ValueError):
    """A bad sweep request; the message names the field and its value."""


def train_field(flag: str) -> Optional[str]:
    """The launch/train.py field a flag sets (``'--depth'`` and ``'--model.depth=8'`` → ``'model.depth'``); None
    for a flag train.py does not have."""
    from ..training.config import flag_fields
    return flag_fields().get(flag.split('=', 1)[0])


def driver_flag(flag: str) -> Optional[str]:
    """The :data:`DRIVER_FLAGS` entry setting the same field as ``flag`` (``'--model.depth'`` → ``'--depth'``), else
    None."""
    field = train_field(flag)
    return next((d for d in DRIVER_FLAGS if field is not None and train_field(d) == field), None)


@functools.lru_cache(maxsize=None)
def size_defaults(size: str) -> Tuple[int, int]:
    """``(embed_dim, num_heads)`` of the registered ViT variant of ``size`` (``SIZES[size]`` with family ``vit``;
    every family of a size shares its width). The model is built on the meta device: no memory, well under a second.

    Raises:
        SweepError: ``size`` is not a key of :data:`SIZES`.
    """
    if size not in SIZES:
        raise SweepError(f'--size must be one of {sorted(SIZES)}, got {size!r}')
    import timm
    import deepvit  # noqa: F401  (registers the variants in timm)
    cfg = timm.create_model(SIZES[size].format(family='vit'), device='meta').model_cfg
    return int(cfg['embed_dim']), int(cfg['num_heads'])


def size_head_dim(size: str) -> int:
    """The head dimension (embed_dim // num_heads) of the registered variant of ``size``. Raises SweepError."""
    embed, heads = size_defaults(size)
    return embed // heads


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


def parse_widths(text: str, head_dim: Optional[int] = None) -> List[Tuple[int, int]]:
    """``'64,96:6'`` -> ``[(64, 4), (96, 6)]`` (at head dimension 16): embed_dim, with num_heads =
    embed_dim // head_dim unless given as ``E:H``. ``head_dim`` defaults to that of the registered variant of
    :data:`DEFAULT_SIZE`; the sweep passes its size's (see :func:`size_head_dim`).

    Raises:
        SweepError: a malformed entry, embed_dim not divisible by num_heads, a repeat, or ``head_dim`` < 1.
    """
    if head_dim is None:
        head_dim = size_head_dim(DEFAULT_SIZE)
    if head_dim < 1:
        raise SweepError(f'head dimension must be >= 1, got {head_dim!r}')
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
    """``'drop-path=0,0.1'`` -> ``('--drop-path', ['0', '0.1'])``: any train.py flag as a grid axis.

    Raises:
        SweepError: not ``FLAG=V1,V2,...``, FLAG is one of :data:`DRIVER_FLAGS` or not a flag of train.py.
    """
    name, sep, values = spec.partition('=')
    name = '--' + name.strip().lstrip('-')
    vals = [v for v in values.split(',') if v]
    if not sep or name == '--' or not vals:
        raise SweepError(f'--grid takes FLAG=V1,V2,..., got {spec!r}')
    if driver_flag(name):
        raise SweepError(f'--grid {spec!r}: {name} is set by the sweep (use {DRIVER_FLAGS[driver_flag(name)]})')
    if train_field(name) is None:   # before any point launches (each would fail at its start)
        raise SweepError(f'--grid {spec!r}: {name} is not a flag of launch/train.py (see its --help)')
    return name, vals


def split_output_dir(extra: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """Take ``--output-dir X`` / ``--output-dir=X`` (any spelling of train.py's ``output_dir``) out of the train.py
    args: ``(X or None, the other args)``.

    Raises:
        SweepError: ``--output-dir`` without a value, or a flag of :data:`DRIVER_FLAGS` in any spelling (the driver
            sets it).
    """
    root, rest, it = None, [], iter(extra)
    for arg in it:
        flag = arg.split('=', 1)[0]
        if train_field(flag) == 'output_dir':
            root = arg.split('=', 1)[1] if '=' in arg else next(it, None)
            if not root:
                raise SweepError(f'{flag} after -- needs a value')
        elif driver_flag(flag):
            raise SweepError(f'{flag} after -- is set by the sweep for every point '
                             f'(use {DRIVER_FLAGS[driver_flag(flag)]})')
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


def short_path(path: Path) -> str:
    """``path`` relative to the working directory when below it, else as given (absolute)."""
    rel = os.path.relpath(path)
    return path.as_posix() if rel.startswith('..') else rel


def _repo_relative(path: Path) -> str:
    """``path`` relative to the repository when inside it (the sweep id must not depend on the clone's location)."""
    path = path.resolve()
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.as_posix()


def point_command(point: Point, *, launcher: Sequence[str], launcher_flags: Sequence[str], train_script: Path,
                  ds_config: str, model: str, root: Path, experiment: str, sweep_id: str, parent_run_id: str,
                  extra: Sequence[str]) -> List[str]:
    """The full launch command of one point: ``<launcher> [launcher flags] train.py --deepspeed DS [EXTRA]
    --model.name M [remedy flags] --depth D --embed-dim E --num-heads H --seed S --output-dir ROOT/KEY
    --experiment NAME --run-name KEY --sweep-id ID --sweep-point KEY --parent-run-id PID --resume [--grid values]``.
    EXTRA comes first because train.py applies its arguments in order: a ``--config`` among them must not override
    the point's own flags."""
    cmd = list(launcher) + list(launcher_flags) + [
        short_path(train_script), '--deepspeed', ds_config, *extra, '--model.name', model, *REMEDIES[point.family][1],
        '--depth', str(point.depth),
        '--embed-dim', str(point.embed_dim), '--num-heads', str(point.num_heads), '--seed', str(point.seed),
        '--output-dir', short_path(root / point.key), '--experiment', experiment, '--run-name', point.key,
        '--sweep-id', sweep_id, '--sweep-point', point.key, '--parent-run-id', parent_run_id, '--resume']
    for flag, value in point.extra:
        cmd += [flag, value]
    return cmd


@dataclass
class Plan:
    """A validated sweep: every grid point (``points``), the ones this command runs (``selected``: all, or the one
    of ``--point-index``), the sweep id, the absolute output root, the train.py args without ``--output-dir``
    (``extra``), the model name template of the size and the spec the sweep id hashes."""
    points: List[Point]
    selected: List[Point]
    sweep_id: str
    root: Path
    extra: List[str]
    model_template: str
    spec: Dict
    study: Optional[object] = None   # the --plan (analysis.plan.StudyPlan), None without one

    def cell(self, point: Point) -> str:
        """The point's cell: its key without the family and the seed (what a plan compares paired by seed)."""
        return point.key[len(point.family) + 1:point.key.rindex('-s')]

    def model(self, point: Point) -> str:
        """The registered model name ``point`` trains, e.g. ``deepvit_tiny_patch4_32`` for ``bn_only``."""
        return self.model_template.format(family=REMEDIES[point.family][0])

    def grid_params(self) -> Dict[str, str]:
        """The grid as the parent run records it: ``{field: JSON text}`` for every spec field, plus ``num_points``
        and ``output_dir`` (the tracking writer adds the ``sweep.`` prefix)."""
        params = {k: json.dumps(v) for k, v in self.spec.items()}
        params.update({'num_points': str(len(self.points)), 'output_dir': short_path(self.root)})
        return params


def make_plan(args: argparse.Namespace, extra: Sequence[str]) -> Plan:
    """Validate the parsed sweep arguments (see :func:`deepvit.sweep.cli.build_parser`) and lay out the grid, sweep
    id and output root. Reads only timm's registry (the size's width and head dimension).

    Raises:
        SweepError: any bad field (the message names it and its value).
    """
    families = [f for f in args.families.split(',') if f]
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families or len(set(families)) != len(families):
        raise SweepError(f'--families must be distinct names from {list(FAMILIES)}, got {args.families!r}')
    embed, heads = size_defaults(args.size)
    template = SIZES[args.size]
    depths = parse_ints('--depths', args.depths, minimum=1)
    widths = parse_widths(args.widths or f'{embed}:{heads}', head_dim=size_head_dim(args.size))
    axes = [parse_grid_axis(s) for s in args.grid]
    if getattr(args, 'lrs', None):
        if any(train_field(flag) == 'train.lr' for flag, _ in axes):
            raise SweepError('--lrs and --grid lr=...: give the learning rates once')
        lrs = [v.strip() for v in args.lrs.split(',') if v.strip()]
        try:
            bad = [v for v in lrs if not float(v) > 0]
        except ValueError:
            bad = lrs
        if bad or not lrs or len(set(map(float, lrs))) != len(lrs):
            raise SweepError(f'--lrs must be distinct positive numbers, e.g. 5e-4,1e-3, got {args.lrs!r}')
        axes.insert(0, ('--lr', lrs))
    study = None
    if getattr(args, 'plan', None):
        from analysis.plan import PlanError, check_against_sweep, load_plan
        if args.seeds is not None:
            raise SweepError(f'--seeds {args.seeds} and --plan {args.plan}: the plan\'s seed rule sets the seeds')
        try:
            study = load_plan(args.plan)
            check_against_sweep(study, families, depths)
        except PlanError as err:
            raise SweepError(str(err)) from None
        seeds = study.seeds.seeds
    else:
        seeds = parse_ints('--seeds', args.seeds if args.seeds is not None else '0')
    root_arg, extra = split_output_dir(extra)
    axis_of = {train_field(flag): flag for flag, _ in axes}
    both = [a.split('=', 1)[0] for a in extra if a.startswith('--') and train_field(a) in axis_of]
    if both:   # the axis would win (it comes after EXTRA), making EXTRA's value a silent no-op
        raise SweepError(f'{both[0]} after -- and the {axis_of[train_field(both[0])]} axis (--lrs or --grid) set '
                         f'{train_field(both[0])}: give it once')
    spec = {'experiment': args.experiment, 'families': sorted(families), 'depths': sorted(depths),
            'widths': sorted(widths), 'seeds': sorted(seeds), 'model': template,
            'grid': sorted((f, sorted(v)) for f, v in axes),
            'ds_config': _repo_relative(Path(args.ds_config)), 'train_args': list(extra)}
    if study is not None:   # the plan is part of what the sweep is (its rule decides which seeds run)
        spec['plan'] = {'endpoint': study.endpoint, 'treatment': study.treatment, 'control': study.control,
                        'depths': list(study.depths) if study.depths else None, 'test': study.test,
                        'alpha': study.alpha, 'seeds': vars(study.seeds)}
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
    return Plan(points, selected, sweep_id, root, list(extra), template, spec, study)
