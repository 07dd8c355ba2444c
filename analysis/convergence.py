"""Convergence shown, not assumed (issue 20 item 6): each run's top-1 gain over the last 25 % of its training and a
"still rising" flag, per run (``runs.csv``) and per series × depth cell (the depth table, the report).

Rule. Let the run's top-1 history be ``[(step, top-1 %), ...]`` by optimizer step and S the step of its last
evaluation. The window starts at the evaluation whose step is closest to 0.75·S (a tie goes to the earlier one: the
longer window, so a plateau has to hold over at least the last quarter); the gain is the top-1 at S minus the top-1
at that evaluation, in percentage points. A window holding fewer than 2 evaluations (the closest one is the last
one: a single evaluation, or evaluations too sparse) gives no gain: an empty cell, not a guess. A run is still
rising when its gain is at least the threshold, default 1 point: the complement of issue 23's plateau criterion
("holdout gain over the last 25 % of training under 1 point").

Metric. The holdout split's ``holdout/top1`` when any of the runs logged it (then a run without it has no gain),
else ``val/top1``: what is read to decide when training has converged should not be the test split.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import pandas as pd

from deepvit.schema import HOLDOUT_TOP1, TOP1

from .store import metric_history

__all__ = ['DEFAULT_RISING', 'WINDOW', 'RULE', 'gain_last_quarter', 'convergence_metric', 'convergence_histories',
           'add_convergence', 'rising_cells', 'rising_markdown']

DEFAULT_RISING = 1.0     # percentage points of top-1 (issue 23's plateau criterion)
WINDOW = 0.25            # the last quarter of the run's optimizer steps
RULE = ('gain = top-1 at the last evaluation (step S) minus top-1 at the evaluation closest to 0.75·S (ties: the '
        'earlier); empty when that evaluation is the last one (fewer than 2 evaluations in the window); still '
        'rising: gain ≥ {threshold:g} points')
COLUMNS = ['top1_gain_last25', 'converge_from_step', 'still_rising']


def gain_last_quarter(history: Sequence[Tuple[int, float]]) -> Tuple[Optional[float], Optional[int]]:
    """The top-1 gain over the last quarter of one run (the module's rule).

    Args:
        history: ``[(optimizer step, top-1 in percent), ...]`` in any order (one value per step).
    Returns:
        ``(gain in percentage points, step the window starts at)``, or ``(None, None)`` when the window holds
        fewer than 2 evaluations.
    """
    points = sorted(history)
    if len(points) < 2:
        return None, None
    last_step, last_value = points[-1]
    target = (1 - WINDOW) * last_step
    start_step, start_value = min(points, key=lambda sv: (abs(sv[0] - target), sv[0]))
    if start_step == last_step:
        return None, None
    return float(last_value - start_value), int(start_step)


def convergence_metric(runs: pd.DataFrame) -> str:
    """``holdout/top1`` when any run of ``runs`` (:func:`analysis.records.runs_frame`) logged it, else ``val/top1``."""
    return HOLDOUT_TOP1 if runs['holdout_top1_final'].notna().any() else TOP1


def convergence_histories(client, runs: pd.DataFrame,
                          curves: Mapping[str, Sequence[Tuple[int, float]]]) -> Tuple[str, Dict[str, list]]:
    """The metric :func:`convergence_metric` chooses and each run's history of it (``curves`` for ``val/top1``,
    read from the store for ``holdout/top1``; ``[]`` for a run that did not log it)."""
    metric = convergence_metric(runs)
    if metric == TOP1:
        return metric, {rid: list(curves.get(rid, [])) for rid in runs['run_id']}
    return metric, {r.run_id: (metric_history(client, r.run_id, metric) if pd.notna(r.holdout_top1_final) else [])
                    for r in runs.itertuples(index=False)}


def add_convergence(runs: pd.DataFrame, histories: Mapping[str, Sequence[Tuple[int, float]]],
                    threshold: float = DEFAULT_RISING) -> pd.DataFrame:
    """``runs`` with ``top1_gain_last25`` (points, Float64), ``converge_from_step`` (Int64) and ``still_rising``
    (boolean; empty where there is no gain) inserted after ``last_step``.

    Raises:
        ValueError: ``threshold`` not a positive number of points.
    """
    if not (isinstance(threshold, (int, float)) and threshold > 0 and math.isfinite(threshold)):
        raise ValueError(f"still-rising threshold must be > 0 top-1 points, got {threshold!r}")
    gains = [gain_last_quarter(histories.get(rid, [])) for rid in runs['run_id']]
    out = runs.drop(columns=[c for c in COLUMNS if c in runs.columns])
    at = list(out.columns).index('last_step') + 1 if 'last_step' in out.columns else len(out.columns)
    gain = pd.array([g for g, _ in gains], dtype='Float64')
    out.insert(at, 'top1_gain_last25', gain)
    out.insert(at + 1, 'converge_from_step', pd.array([s for _, s in gains], dtype='Int64'))
    out.insert(at + 2, 'still_rising', pd.array([None if g is None else g >= threshold for g, _ in gains],
                                                dtype='boolean'))
    return out


def rising_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Per series × depth (order of ``runs``): ``n_measured`` finished runs with a gain, ``n_rising`` of them still
    rising, ``gain_mean`` their mean gain (points; NaN when none was measured)."""
    done = runs[(runs['status'] == 'FINISHED') & runs['depth'].notna()]
    rows = []
    for (series, depth), g in done.groupby(['series', 'depth'], sort=False):
        measured = g[g['top1_gain_last25'].notna()]
        rows.append({'series': series, 'depth': int(depth), 'n_measured': len(measured),
                     'n_rising': int(measured['still_rising'].astype(bool).sum()),
                     'gain_mean': float(measured['top1_gain_last25'].astype(float).mean()) if len(measured)
                     else float('nan')})
    return pd.DataFrame(rows, columns=['series', 'depth', 'n_measured', 'n_rising', 'gain_mean'])


def rising_markdown(cells: pd.DataFrame, metric: str, threshold: float) -> list:
    """The report's section: which cells were still rising, with the rule and the metric read."""
    lines = ['## Convergence', '', f'Metric: `{metric}`. ' + RULE.format(threshold=threshold) + '.', '']
    rising = cells[cells['n_rising'] > 0]
    if not cells['n_measured'].sum():
        return lines + ['No finished run has 2 or more evaluations in its last quarter: convergence not measured.']
    if not len(rising):
        return lines + ['No cell had a finished run still rising.']
    lines += ['Still rising (cells with at least one finished run still rising):', '']
    lines += [f'- {r.series}, depth {r.depth}: {r.n_rising} of {r.n_measured} measured finished runs '
              f'(mean gain {r.gain_mean:+.2f} points)' for r in rising.itertuples(index=False)]
    return lines
