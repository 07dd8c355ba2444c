"""Per-depth learning-rate selection by holdout accuracy (issue 20 item 3, the analysis part).

Rule. Within each series (remedy × width × group-by params; never split by the learning rate, the axis selected
over) and depth, the finished runs are grouped by their learning rate (the ``lr`` column of
:func:`analysis.records.runs_frame`: the peak rate used, ``train.lr``, or ``train.scaled_lr`` in runs recorded before
the schema). Each rate's score is the mean over seeds of the final ``holdout/top1`` (percent); rates with no holdout
value are not candidates. The chosen rate is the one with the highest score (a tie goes to the smaller rate). The
choice reads only the holdout: :func:`choose_lr` is given the holdout column alone. The test split (``val/top1``,
final value) is read afterwards, for the chosen rate (mean ± std over seeds, ddof 1) and for the reference rate
(default: the rate most runs of the series used, a tie going to the smaller), so the report can say how far the
choice moved each curve: ``shift = test mean at the chosen rate − test mean at the reference rate`` (points).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from .figures import family_color, save
from .saturation import DEFAULT_THRESHOLD, saturation_depth

__all__ = ['SELECT', 'TEST', 'check_lr_axis', 'choose_lr', 'select_lr', 'plot_lr_grid', 'lr_markdown',
           'apply_frozen_choice', 'frozen_choice_table']

SELECT, TEST = 'holdout_top1_final', 'top1_final'   # columns: the selection metric (holdout), the test split
KEYS = ['series', 'depth']


def _finished(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[(runs['status'] == 'FINISHED') & runs['depth'].notna()]


def check_lr_axis(runs: pd.DataFrame) -> None:
    """Raise ValueError (one line, naming the problem) unless the finished runs can support a selection: some run
    logged ``holdout/top1`` and every series × depth cell has at least 2 distinct learning rates."""
    done = _finished(runs)
    if not done[SELECT].notna().any():
        raise ValueError('lr selection needs the holdout metric holdout/top1, and no finished run logged it '
                         '(val/top1 is the test split and is never used to select)')
    for (series, depth), g in done.groupby(KEYS, sort=False):
        lrs = sorted(g['lr'].dropna().astype(float).unique())
        if len(lrs) < 2:
            raise ValueError(f'lr selection needs an lr axis (at least 2 distinct train.lr per series and depth); '
                             f'{series!r} at depth {int(depth)} has {len(lrs)}: {", ".join(f"{v:g}" for v in lrs)}')


def choose_lr(holdout: pd.DataFrame) -> pd.DataFrame:
    """The choice, from the holdout alone.

    Args:
        holdout: columns ``series, depth, lr, holdout_top1_final`` (percent), one row per finished run; any other
            column is refused, so no test figure can enter the choice.
    Returns:
        One row per series × depth: ``lr_grid`` (sorted rates tried), ``holdout_by_lr`` (mean holdout top-1 per rate,
        NaN where none), ``chosen_lr``, ``holdout_mean``, ``holdout_n`` (seeds behind it).
    Raises:
        ValueError: a column other than those four.
    """
    extra = set(holdout.columns) - set(KEYS + ['lr', SELECT])
    if extra:
        raise ValueError(f'the lr choice reads only the holdout; got columns {sorted(extra)}')
    rows = []
    for (series, depth), g in holdout.groupby(KEYS, sort=False):
        g = g[g['lr'].notna()]
        by = g.groupby('lr')[SELECT].agg(lambda v: v.dropna().astype(float).mean() if v.notna().any() else np.nan)
        counts = g.groupby('lr')[SELECT].count()
        scored = by.dropna()
        best = None if scored.empty else min(scored.index, key=lambda lr: (-scored[lr], lr))
        rows.append({'series': series, 'depth': int(depth), 'lr_grid': [float(v) for v in by.index],
                     'holdout_by_lr': [float(v) for v in by.values],
                     'chosen_lr': best, 'holdout_mean': np.nan if best is None else float(scored[best]),
                     'holdout_n': 0 if best is None else int(counts[best])})
    return pd.DataFrame(rows, columns=KEYS + ['lr_grid', 'holdout_by_lr', 'chosen_lr', 'holdout_mean', 'holdout_n'])


def _reference(done: pd.DataFrame, series: str) -> Optional[float]:
    counts = done.loc[done['series'] == series, 'lr'].dropna().astype(float).value_counts()
    return None if counts.empty else float(min(counts.index, key=lambda lr: (-counts[lr], lr)))


def _test(done: pd.DataFrame, series: str, depth: int, lr: Optional[float]):
    if lr is None:
        return np.nan, np.nan, 0
    v = done.loc[(done['series'] == series) & (done['depth'] == depth) & (done['lr'] == lr), TEST].dropna()
    v = v.astype(float)
    return (float(v.mean()) if len(v) else np.nan), float(v.std(ddof=1)) if len(v) > 1 else np.nan, len(v)


def select_lr(runs: pd.DataFrame, reference_lr: Optional[float] = None) -> pd.DataFrame:
    """The selection table (module rule) from :func:`analysis.records.runs_frame` output.

    Args:
        runs: the runs frame (columns ``series, depth, status, lr, holdout_top1_final, top1_final``).
        reference_lr: the rate the shift is measured from (default: each series' most common rate).
    Returns:
        :func:`choose_lr`'s columns plus ``test_mean``, ``test_std``, ``test_n`` (final val/top1 at the chosen rate,
        percent, over seeds), ``reference_lr``, ``reference_test_mean``, ``reference_test_n`` and ``shift`` (points).
    Raises:
        ValueError: as :func:`check_lr_axis`.
    """
    check_lr_axis(runs)
    done = _finished(runs)
    table = choose_lr(done[KEYS + ['lr', SELECT]])          # the holdout alone
    tests = []
    for r in table.itertuples(index=False):               # the test split, read only now
        ref = reference_lr if reference_lr is not None else _reference(done, r.series)
        mean, std, n = _test(done, r.series, r.depth, r.chosen_lr)
        ref_mean, _, ref_n = _test(done, r.series, r.depth, ref)
        tests.append({'test_mean': mean, 'test_std': std, 'test_n': n, 'reference_lr': ref,
                      'reference_test_mean': ref_mean, 'reference_test_n': ref_n, 'shift': mean - ref_mean})
    return pd.concat([table, pd.DataFrame(tests, index=table.index)], axis=1)


def apply_frozen_choice(runs: pd.DataFrame, path: Path) -> Tuple[pd.DataFrame, List[str]]:
    """Keep, of a staged study's grid runs, those at the learning rate its choice file chose; every other run stays,
    except the runs of a grid cell that has no choice yet (a stage still running): a cell whose runs span several
    rates would pool them, so all of them are left out until the grid is frozen.

    Args:
        runs: the runs frame (column ``sweep_id``).
        path: the study's frozen choice (``launch/study.py`` writes ``STORE/lr_selection.json``:
            ``{stage: {'choice': [{'family', 'depth', 'chosen_lr', 'holdout_by_lr': {lr: score}}]}}``; a grid run's
            sweep id is ``<stage>-<family>-d<depth>-lr<lr>``, rates written with ``%g``).
    Returns:
        (the runs kept, the sweep ids of the runs dropped: the grid's rates not chosen, and unfrozen grids).
    Raises:
        ValueError: ``path`` missing or not such a file (one line naming it).
    """
    import json
    try:
        made = json.loads(Path(path).read_text())
        dropped = {f"{stage}-{r['family']}-d{int(r['depth'])}-lr{float(lr):g}"
                   for stage, body in made.items() for r in body['choice'] for lr in r['holdout_by_lr']
                   if float(lr) != float(r['chosen_lr'])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f'--lr-choice {path}: not a readable study lr choice file ({type(e).__name__}: {e})') from None
    drop = runs['sweep_id'].isin(dropped)
    cell = runs['sweep_id'].astype('string').str.extract(_SWEEP_ID)   # NaN for ids of another form
    key = cell['stage'] + '|' + cell['family'] + '|' + cell['depth']
    rates = cell['lr'].where(~drop).groupby(key).transform('nunique')
    drop |= key.notna() & (rates > 1)
    return runs[~drop].reset_index(drop=True), sorted(set(runs.loc[drop, 'sweep_id']))


_SWEEP_ID = r'^(?P<stage>.+)-(?P<family>[a-z_]+)-d(?P<depth>\d+)-lr(?P<lr>[0-9.e+-]+)$'   # launch/study.py's sweep ids


def frozen_choice_table(path: Path) -> pd.DataFrame:
    """A staged study's frozen choice file (see :func:`apply_frozen_choice`) as :func:`plot_lr_grid`'s table: one row
    per stage, family and depth, with the base rates of its grid, the holdout top-1 at each (seed 0) and the choice."""
    import json
    rows = []
    for stage, body in json.loads(Path(path).read_text()).items():
        for r in body['choice']:
            grid = sorted(r['holdout_by_lr'].items(), key=lambda kv: float(kv[0]))
            rows.append({'series': f"{r['family']} ({stage})", 'depth': int(r['depth']),
                         'lr_grid': [float(k) for k, _ in grid], 'holdout_by_lr': [float(v) for _, v in grid],
                         'chosen_lr': float(r['chosen_lr']),
                         'holdout_mean': float(r['holdout_by_lr'][next(k for k, _ in grid
                                                                       if float(k) == float(r['chosen_lr']))])})
    return pd.DataFrame(rows).sort_values(['series', 'depth'], kind='stable').reset_index(drop=True)


def plot_lr_grid(table: pd.DataFrame, out_dir: Path, lr_label: str = 'learning rate (peak, used; log scale)',
                 score_label: str = 'holdout top-1 (%), mean over seeds') -> List[Path]:
    """``lr_grid``: mean holdout top-1 against the learning rate (log axis), one line per depth, one panel per
    series; the chosen rate of each depth is circled. ``table``: :func:`choose_lr`'s or :func:`frozen_choice_table`'s."""
    series = list(dict.fromkeys(table['series']))
    fig = Figure(figsize=(4.2 * len(series), 3.6), layout='constrained')
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    depths = sorted(table['depth'].unique())
    shades = {d: 0.35 + 0.65 * i / max(len(depths) - 1, 1) for i, d in enumerate(depths)}
    for ax, s in zip(axes, series):
        color = family_color(s.split(' ')[0])
        for r in table[table['series'] == s].itertuples(index=False):
            ax.plot(r.lr_grid, r.holdout_by_lr, marker='o', color=color, alpha=shades[r.depth], label=f'd{r.depth}')
            if r.chosen_lr is not None:
                ax.plot([r.chosen_lr], [r.holdout_mean], marker='o', ms=13, mfc='none', mec='black')
        ax.set_xscale('log')
        rates = sorted({float(v) for g in table.loc[table['series'] == s, 'lr_grid'] for v in g})
        ax.set_xticks(rates, [f'{v:g}' for v in rates], fontsize=7)   # the grid's rates, not log-axis minor labels
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(lr_label)
        ax.set_ylabel(score_label)
        ax.set_title(s, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title='depth', title_fontsize=7)
    fig.suptitle('lr × depth grid on the holdout (circled: chosen)', fontsize=10)
    return save(fig, out_dir, 'lr_grid')


def lr_markdown(table: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> List[str]:
    """The report's section: the rule, the table, and per series how far the choice moved the curve (per-depth
    shifts and the saturation depth at the reference rate against the selected rates)."""
    lines = ['## Learning-rate selection', '', 'Each (series, depth) takes the learning rate with the best mean final '
             'holdout/top1 over seeds (ties: the smaller rate); the test split (val/top1, final) is read only for the '
             'chosen rate and the reference rate (the series\' most common rate). shift = test top-1 at the chosen '
             'rate − at the reference rate (points).', '',
             '| series | depth | lr grid | holdout by lr (%) | chosen lr | holdout (%) | test (%) | n | reference lr '
             '| test at reference (%) | shift |', '|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|']
    fmt = lambda x: '—' if x is None or pd.isna(x) else f'{x:.2f}'   # noqa: E731
    lr = lambda x: '—' if x is None or pd.isna(x) else f'{x:g}'      # noqa: E731
    for r in table.itertuples(index=False):
        test = fmt(r.test_mean) + ('' if pd.isna(r.test_std) else f' ± {r.test_std:.2f}')
        lines.append(f'| {r.series} | {r.depth} | {", ".join(map(lr, r.lr_grid))} '
                     f'| {", ".join(map(fmt, r.holdout_by_lr))} | {lr(r.chosen_lr)} | {fmt(r.holdout_mean)} '
                     f'| {test} | {r.test_n} | {lr(r.reference_lr)} | {fmt(r.reference_test_mean)} '
                     f'| {"—" if pd.isna(r.shift) else f"{r.shift:+.2f}"} |')
    lines += ['', 'How far the choice moved each curve:', '']
    for s, g in table.groupby('series', sort=False):
        shifts = ', '.join(f'd{r.depth} {"—" if pd.isna(r.shift) else f"{r.shift:+.2f}"}'
                           for r in g.itertuples(index=False))
        sat = [saturation_depth(list(zip(g['depth'], g[c])), threshold) for c in ('reference_test_mean', 'test_mean')]
        sat = ['none' if d is None else d for d in sat]     # not saturated, or fewer than two depths
        lines.append(f'- {s}: shift {shifts} points; saturation depth (threshold {threshold:g}) {sat[0]} at the '
                     f'reference rate, {sat[1]} at the selected rates')
    return lines
