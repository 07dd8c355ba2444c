"""A study plan written before the runs, checked against the sweep before any run and against the data after.

The plan file (YAML, next to the study's recipe; ``docs/study.md`` shows one) states::

    endpoint: top1_final            # a runs.csv column (analysis.records): what the comparison reads
    comparison:
      treatment: deepvit            # sweep families, compared paired by seed in every cell
      control: vit                  # (a cell: one depth, width and value of every --grid axis)
      depths: [8, 16, 32]           # the cells compared (default: every depth of the sweep)
    test: paired-t                  # Student t interval of the mean paired difference treatment − control
    alpha: 0.05                     # two-sided
    seeds:                          # the seed rule
      rule: fixed                   #   fixed: seeds 0 .. n-1 in every cell
      n: 3
    # or
    #   rule: sequential            #   sequential: seeds 0 .. start-1 everywhere, then one more paired seed in each
    #   start: 2                    #   compared cell whose interval is wider than half_width, until max (the cap)
    #   max: 8
    #   half_width: 1.0             #   endpoint units (percentage points for top-1)

Sequential rule: the intervals are **repeated confidence intervals** (Jennison & Turnbull, 1989, "Interim analyses:
the repeated confidence interval approach", JRSS B 51(3); their book, 2000, ch. 9) with a Bonferroni boundary: a cell
is looked at after each of its K = max − start + 1 possible sample sizes, and every look uses the t interval at
level 1 − α/K. By the union bound, all of a cell's intervals cover the true difference together with probability
≥ 1 − α, so stopping a cell whenever its interval is narrow enough (optional stopping) keeps the coverage. The price is
width: at α = 0.05 and K = 7 each look is a 99.3 % interval.

Errors: :class:`PlanError` (a ``ValueError``) naming the field and its value, raised by :func:`load_plan` and
:func:`check_against_sweep` before any run starts.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ['PlanError', 'StudyPlan', 'SeedRule', 'load_plan', 'check_against_sweep', 'ENDPOINTS', 'split_point_key',
           'paired_cells', 'cell_decisions', 'plan_markdown']

from deepvit.schema import SWEEP_POINT_KEY  # noqa: E402  (the record's names: one place)

from .records import endpoint_columns  # noqa: E402

ENDPOINTS = endpoint_columns()
TESTS = ('paired-t',)
_KEYS = {'endpoint', 'comparison', 'test', 'alpha', 'seeds'}
_COMPARISON_KEYS = {'treatment', 'control', 'depths'}
_SEED_KEYS = {'fixed': {'rule', 'n'}, 'sequential': {'rule', 'start', 'max', 'half_width'}}


class PlanError(ValueError):
    """A plan that cannot be followed: the message names the field and its value."""


@dataclass(frozen=True)
class SeedRule:
    """``rule`` 'fixed' (``n`` seeds) or 'sequential' (``start`` seeds, then one more per look up to ``max`` while
    the repeated interval's half-width exceeds ``half_width``)."""
    rule: str
    n: Optional[int] = None
    start: Optional[int] = None
    max: Optional[int] = None
    half_width: Optional[float] = None

    @property
    def seeds(self) -> List[int]:
        """Every seed the rule may run: 0 .. n−1 (fixed) or 0 .. max−1 (sequential)."""
        return list(range(self.n if self.rule == 'fixed' else self.max))

    @property
    def looks(self) -> int:
        """K: the sample sizes at which a cell is looked at (1 for a fixed rule)."""
        return 1 if self.rule == 'fixed' else self.max - self.start + 1


@dataclass(frozen=True)
class StudyPlan:
    """A parsed plan file (module docstring). ``depths`` None: every depth of the sweep."""
    endpoint: str
    treatment: str
    control: str
    test: str
    alpha: float
    seeds: SeedRule
    depths: Optional[Tuple[int, ...]] = None
    path: Optional[str] = field(default=None, compare=False)

    @property
    def level(self) -> float:
        """The confidence of each look's interval: 1 − α/K (1 − α for a fixed rule)."""
        return 1.0 - self.alpha / self.seeds.looks


def _int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PlanError(f"{name}={value!r}: must be an integer >= {minimum}")
    return value


def _unknown(given: Mapping, allowed: set, where: str) -> None:
    extra = sorted(set(given) - allowed)
    if extra:
        raise PlanError(f"{where}: unknown field(s) {extra}; allowed: {sorted(allowed)}")


def parse_plan(data: Mapping, path: Optional[str] = None) -> StudyPlan:
    """A :class:`StudyPlan` from the plan file's mapping (module docstring). Raises :class:`PlanError`."""
    if not isinstance(data, Mapping):
        raise PlanError(f"plan {path or ''}: must be a mapping of {sorted(_KEYS)}, got {type(data).__name__}")
    _unknown(data, _KEYS, 'plan')
    missing = sorted(_KEYS - set(data))
    if missing:
        raise PlanError(f"plan: missing field(s) {missing}")
    endpoint = data['endpoint']
    if endpoint not in ENDPOINTS:
        raise PlanError(f"endpoint={endpoint!r}: not a runs.csv column the analysis produces; one of {ENDPOINTS}")
    comp = data['comparison']
    if not isinstance(comp, Mapping) or not {'treatment', 'control'} <= set(comp):
        raise PlanError(f"comparison={comp!r}: must name a treatment and a control family")
    _unknown(comp, _COMPARISON_KEYS, 'comparison')
    if comp['treatment'] == comp['control']:
        raise PlanError(f"comparison.treatment={comp['treatment']!r} is also the control")
    depths = comp.get('depths')
    if depths is not None:
        if not isinstance(depths, list) or not depths:
            raise PlanError(f"comparison.depths={depths!r}: must be a non-empty list of integers")
        depths = tuple(_int(d, 'comparison.depths', 1) for d in depths)
    if data['test'] not in TESTS:
        raise PlanError(f"test={data['test']!r}: one of {list(TESTS)}")
    alpha = data['alpha']
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise PlanError(f"alpha={alpha!r}: must be a number in (0, 1)")
    rule = data['seeds']
    if not isinstance(rule, Mapping) or rule.get('rule') not in _SEED_KEYS:
        raise PlanError(f"seeds={rule!r}: must give rule: fixed (with n) or rule: sequential (with start, max, "
                        f"half_width)")
    _unknown(rule, _SEED_KEYS[rule['rule']], f"seeds (rule {rule['rule']})")
    if rule['rule'] == 'fixed':
        if 'n' not in rule:
            raise PlanError("seeds.n: a fixed rule needs the number of seeds")
        seeds = SeedRule('fixed', n=_int(rule['n'], 'seeds.n', 2))
    else:
        if rule.get('max') is None:
            raise PlanError("seeds.max: a sequential rule needs a budget cap (the most seeds a cell may get)")
        if rule.get('half_width') is None or 'start' not in rule:
            raise PlanError("seeds: a sequential rule needs start and half_width (the target interval half-width)")
        start, cap = _int(rule['start'], 'seeds.start', 2), _int(rule['max'], 'seeds.max', 2)
        if cap < start:
            raise PlanError(f"seeds.max={cap}: below seeds.start={start}")
        hw = rule['half_width']
        if isinstance(hw, bool) or not isinstance(hw, (int, float)) or not hw > 0:
            raise PlanError(f"seeds.half_width={hw!r}: must be a number > 0 (endpoint units)")
        seeds = SeedRule('sequential', start=start, max=cap, half_width=float(hw))
    return StudyPlan(endpoint, str(comp['treatment']), str(comp['control']), data['test'], float(alpha), seeds,
                     depths, path)


def load_plan(path) -> StudyPlan:
    """Read and check a plan file (YAML). Raises :class:`PlanError` (including a missing or unreadable file)."""
    import yaml
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"--plan {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PlanError(f"--plan {path}: not YAML ({str(err).splitlines()[0]})") from None
    return parse_plan(data, str(path))


def check_against_sweep(plan: StudyPlan, families: Sequence[str], depths: Sequence[int]) -> None:
    """Refuse a plan the sweep cannot answer: a treatment, control or depth the sweep does not produce.
    Raises :class:`PlanError`."""
    for role in ('treatment', 'control'):
        name = getattr(plan, role)
        if name not in families:
            raise PlanError(f"comparison.{role}={name!r}: the sweep's --families {list(families)} do not include it")
    missing = sorted(set(plan.depths or ()) - set(int(d) for d in depths))
    if missing:
        raise PlanError(f"comparison.depths: {missing} not among the sweep's --depths {sorted(depths)}")


# ------------------------------------------------------------------------------------------------ the data
def split_point_key(key: str) -> Optional[Tuple[str, str, int]]:
    """``'deepvit-d8-w64-h4-lr0.001-s2'`` -> ``('deepvit', 'd8-w64-h4-lr0.001', 2)``: family, cell, seed of a sweep
    point key (:data:`deepvit.schema.SWEEP_POINT_KEY`); None when ``key`` is not one."""
    m = re.fullmatch(SWEEP_POINT_KEY, str(key))
    return (m['family'], m['cell'], int(m['seed'])) if m else None


def paired_cells(runs: pd.DataFrame, plan: StudyPlan) -> Dict[str, Dict[int, float]]:
    """``{cell: {seed: treatment − control}}`` of the plan's endpoint over finished sweep runs (``runs``: the analysis
    records frame, with ``sweep_point``), for the compared depths; seeds present in both arms only."""
    arms: Dict[Tuple[str, str], Dict[int, float]] = {}
    for _, r in runs.iterrows():
        parts = split_point_key(r.get('sweep_point')) if r['status'] == 'FINISHED' else None
        if parts is None or pd.isna(r[plan.endpoint]):
            continue
        family, cell, seed = parts
        if family in (plan.treatment, plan.control) and (plan.depths is None or int(r['depth']) in plan.depths):
            arms.setdefault((family, cell), {})[seed] = float(r[plan.endpoint])
    out: Dict[str, Dict[int, float]] = {}
    for (family, cell), values in arms.items():
        if family != plan.treatment:
            continue
        control = arms.get((plan.control, cell), {})
        out[cell] = {s: values[s] - control[s] for s in sorted(set(values) & set(control))}
    return dict(sorted(out.items()))


def cell_decisions(runs: pd.DataFrame, plan: StudyPlan) -> pd.DataFrame:
    """Per compared cell: pairs so far, mean difference, the interval of the plan (t at level 1 − α/K), its
    half-width, whether it excludes 0, whether the seed rule is met (``met``: fixed, n pairs; sequential, half-width
    ≤ the target), whether the cell is finished (``done``: met, or the sequential cap reached) and, if not, the next
    seed to run.

    Columns ``cell, n_pairs, mean_diff, low, high, half_width, level, excludes_zero, met, done, next_seed``."""
    rows = []
    for cell, diffs in paired_cells(runs, plan).items():
        d = np.array(list(diffs.values()), dtype=float)
        n = len(d)
        mean = float(d.mean()) if n else math.nan
        half = math.nan
        if n >= 2:
            half = float(sps.t.ppf(1 - (1 - plan.level) / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
        rule = plan.seeds
        if rule.rule == 'fixed':
            met = done = n >= rule.n
        else:
            met = n >= rule.start and half <= rule.half_width
            done = met or n >= rule.max
        seen = set(diffs)
        nxt = None if done else next(s for s in range(len(rule.seeds) + n + 1) if s not in seen)
        rows.append({'cell': cell, 'n_pairs': n, 'mean_diff': mean, 'low': mean - half, 'high': mean + half,
                     'half_width': half, 'level': plan.level,
                     'excludes_zero': bool(n >= 2 and (mean - half > 0 or mean + half < 0)), 'met': bool(met),
                     'done': bool(done), 'next_seed': nxt})
    cols = ['cell', 'n_pairs', 'mean_diff', 'low', 'high', 'half_width', 'level', 'excludes_zero', 'met', 'done',
            'next_seed']
    return pd.DataFrame(rows, columns=cols)


def plan_markdown(plan: StudyPlan, runs: pd.DataFrame, cells: Sequence[str] = ()) -> List[str]:
    """The report's "Plan" section: each planned item, whether the data met it, and every deviation. ``cells``: the
    cells the sweep planned (point keys' cells), so a compared cell with no finished pair is listed as missing."""
    table = cell_decisions(runs, plan)
    rule = plan.seeds
    lines = ['## Plan', '', f'Written before the runs: `{plan.path}`.' if plan.path else '', '',
             '| item | planned | in the data |', '|---|---|---|']
    have_endpoint = plan.endpoint in runs.columns and runs[plan.endpoint].notna().any()
    lines.append(f'| endpoint | `{plan.endpoint}` | {"present" if have_endpoint else "**absent** (no run logged it)"} |')
    lines.append(f'| comparison | {plan.treatment} − {plan.control}, paired by seed, depths '
                 f'{list(plan.depths) if plan.depths else "all"} | {len(table)} cell(s) with pairs |')
    lines.append(f'| test | {plan.test}, two-sided, α = {plan.alpha:g} | t intervals at level {plan.level:.4g}'
                 + (f' (Bonferroni over K = {rule.looks} looks: repeated confidence intervals)' if rule.looks > 1
                    else '') + ' |')
    if rule.rule == 'fixed':
        planned = f'fixed: {rule.n} seeds per cell'
    else:
        planned = (f'sequential: {rule.start} seeds, then one more per look while the half-width > '
                   f'{rule.half_width:g}, at most {rule.max}')
    met = int(table['met'].sum()) if len(table) else 0
    lines.append(f'| seed rule | {planned} | met in {met} of {len(table)} cell(s) |')
    lines += ['', '| cell | pairs | mean difference | interval | half-width | excludes 0 | rule met |',
              '|---|---|---|---|---|---|---|']
    for _, r in table.iterrows():
        interval = '—' if r['n_pairs'] < 2 else f"[{r['low']:+.2f}, {r['high']:+.2f}]"
        half = '—' if r['n_pairs'] < 2 else f"{r['half_width']:.2f}"
        lines.append(f"| {r['cell']} | {r['n_pairs']} | {r['mean_diff']:+.2f} | {interval} | {half} | "
                     f"{'yes' if r['excludes_zero'] else 'no'} | {'yes' if r['met'] else 'no'} |")
    deviations = []
    missing = sorted(set(c for c in cells if plan.depths is None or _cell_depth(c) in plan.depths)
                     - set(table['cell']))
    if missing:
        deviations.append(f'cells planned but without a finished pair: {", ".join(missing)}')
    for _, r in table.iterrows():
        if rule.rule == 'fixed' and r['n_pairs'] != rule.n:
            deviations.append(f"{r['cell']}: {r['n_pairs']} pairs, the plan said {rule.n}")
        elif rule.rule == 'sequential' and r['n_pairs'] > rule.max:
            deviations.append(f"{r['cell']}: {r['n_pairs']} pairs, beyond the cap of {rule.max}")
        elif rule.rule == 'sequential' and not r['met']:
            where = 'at the cap' if r['n_pairs'] >= rule.max else f"before the cap of {rule.max}"
            deviations.append(f"{r['cell']}: stopped at {r['n_pairs']} pairs with half-width "
                              f"{r['half_width']:.2f} > {rule.half_width:g} ({where}): not resolved to the planned "
                              f"precision")
    if not have_endpoint:
        deviations.append(f'the endpoint {plan.endpoint} was not logged')
    lines += ['', 'Deviations from the plan: ' + ('none.' if not deviations else ''), '']
    lines += [f'- {d}' for d in deviations]
    return lines + ['']


def _cell_depth(cell: str) -> Optional[int]:
    m = re.match(r'd(\d+)-', cell)
    return int(m[1]) if m else None
