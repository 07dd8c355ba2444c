"""The verdict numbers of a staged depth study (issue 23; plan: ``docs/study/plan.md``), from its runs table.

Every comparison is seed-paired: a seed enters a comparison only when it has a finished run in every cell the
comparison reads, and the comparison's value for that seed is a difference of those runs' final test top-1 (points).
The interval is the Student t interval of the mean of those per-seed values (``scipy.stats.ttest_1samp``; NaN below
2 seeds); "resolved" means it excludes 0. Cells: (remedy, depth, view); the view is ``fixed-epochs`` for runs without
a compute budget and ``fixed-compute`` for runs with ``train.budget_pflop`` (:func:`add_view`).

    python -m analysis.depth_study --experiment cifar10-study --tracking-uri sqlite:///docs/study/mlflow.db \\
        --lr-choice docs/study/lr_selection.json --out docs/study/analysis

writes ``verdict.json`` (every number below), ``verdict.md`` (the report's verdict table), ``study_runs.csv`` and
``accuracy_vs_collapse.{png,svg}`` (question 5's figure) and, with ``--lr-choice``, ``lr_grid.{png,svg}`` (the frozen
choice's grids).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from .collapse_accuracy import within_cell_correlation

__all__ = ['add_view', 'paired', 'plot_accuracy_vs_collapse', 'verdict', 'verdict_markdown', 'main']

FIXED_EPOCHS, FIXED_COMPUTE = 'fixed-epochs', 'fixed-compute'
ENDPOINT = 'top1_final'
COLLAPSE = 'row_mean_adjacent_softmax'   # the headline row-wise collapse measure of the final probe (0 = chance)


def add_view(runs: pd.DataFrame, budget_column: str = 'train.budget_pflop') -> pd.DataFrame:
    """``runs`` with a ``view`` column: ``fixed-compute`` where ``budget_column`` holds a number, else ``fixed-epochs``
    (a missing column, ``None``, ``'None'`` or NaN: no budget)."""
    if budget_column not in runs.columns:
        return runs.assign(view=FIXED_EPOCHS)
    budget = pd.to_numeric(runs[budget_column].replace({'None': None}), errors='coerce')
    return runs.assign(view=np.where(budget.notna(), FIXED_COMPUTE, FIXED_EPOCHS))


def _cell(runs: pd.DataFrame, remedy: str, depth: int, view: str, column: str = ENDPOINT) -> pd.Series:
    rows = runs[(runs['remedy'] == remedy) & (runs['depth'] == depth) & (runs['view'] == view)
                & (runs['status'] == 'FINISHED')]
    rows = rows.dropna(subset=[column])
    return rows.groupby('seed')[column].first().astype(float)


def paired(runs: pd.DataFrame, plus: Sequence[tuple], minus: Sequence[tuple], column: str = ENDPOINT) -> Dict:
    """Per seed: Σ value(plus cells) − Σ value(minus cells), over the seeds present in every cell; its t interval.

    Args:
        runs: the runs table with ``remedy, depth, seed, status, view`` and ``column``.
        plus, minus: cells as ``(remedy, depth, view)``.
    Returns:
        ``{'n', 'seeds', 'values', 'mean', 'sd', 'lo', 'hi', 'resolved'}`` (points; NaN where undefined).
    """
    cells = [_cell(runs, *c, column=column) for c in list(plus) + list(minus)]
    seeds = sorted(set.intersection(*(set(c.index) for c in cells))) if cells else []
    values = [sum(c[s] for c in cells[:len(plus)]) - sum(c[s] for c in cells[len(plus):]) for s in seeds]
    out = {'n': len(seeds), 'seeds': [int(s) for s in seeds], 'values': [float(v) for v in values],
           'mean': float(np.mean(values)) if values else math.nan, 'sd': math.nan, 'lo': math.nan, 'hi': math.nan,
           'resolved': False}
    if len(values) >= 2:
        ci = sps.ttest_1samp(values, 0.0).confidence_interval(0.95)
        out.update(sd=float(np.std(values, ddof=1)), lo=float(ci.low), hi=float(ci.high))
        out['resolved'] = bool(ci.low > 0 or ci.high < 0)
    return out


def _means(runs: pd.DataFrame, remedy: str, view: str, column: str = ENDPOINT) -> List[Dict]:
    rows = []
    for depth in sorted(runs.loc[(runs['remedy'] == remedy) & (runs['view'] == view), 'depth'].dropna().unique()):
        v = _cell(runs, remedy, int(depth), view, column)
        lo = hi = math.nan
        if len(v) >= 2:
            ci = sps.ttest_1samp(v.values, 0.0).confidence_interval(0.95)
            lo, hi = float(ci.low), float(ci.high)
        rows.append({'depth': int(depth), 'n': int(len(v)), 'mean': float(v.mean()) if len(v) else math.nan,
                     'lo': lo, 'hi': hi})
    return rows


def verdict(runs: pd.DataFrame, shallow: int = 2, deep: int = 16, vit: str = 'vit', deepvit: str = 'reattn',
            controls: Sequence[str] = ('bn_only', 'depthscale', 'layerscale')) -> Dict:
    """The plan's numbers (``docs/study/plan.md``) from a runs table with a ``view`` column (:func:`add_view`).

    Returns a dict: ``q1_vit_gain`` and ``q1_deepvit_gain`` (deep − shallow, fixed epochs), ``q2_interaction`` (the
    primary endpoint), ``per_depth`` (DeepViT − ViT at each depth), ``curves`` (mean top-1 per remedy, view and
    depth, with t intervals), ``q3_bn_only_vs_deepvit``, ``q3_bn_only_vs_vit``, ``q4_depthscale_vs_vit``,
    ``q4_depthscale_vs_deepvit``, ``q4_layerscale_vs_vit`` (at ``deep``); the fixed-compute view: ``fc_vit_gain``,
    ``fc_deepvit_gain`` and ``fc_interaction`` (``deep`` at fixed epochs against ``shallow`` trained for the deep
    ViT's compute: the plan's budget), ``q5_collapse`` (per remedy and depth: mean final row-wise collapse) and
    ``q5_correlation`` (within-cell collapse–top-1), ``convergence`` (per remedy and depth: mean holdout gain over
    the last 25 % and the number still rising) and ``n_runs``.
    """
    fe = FIXED_EPOCHS
    out: Dict = {'n_runs': int((runs['status'] == 'FINISHED').sum())}
    out['q1_vit_gain'] = paired(runs, [(vit, deep, fe)], [(vit, shallow, fe)])
    out['q1_deepvit_gain'] = paired(runs, [(deepvit, deep, fe)], [(deepvit, shallow, fe)])
    out['q2_interaction'] = paired(runs, [(deepvit, deep, fe), (vit, shallow, fe)],
                                   [(vit, deep, fe), (deepvit, shallow, fe)])
    depths = sorted(int(d) for d in runs.loc[runs['remedy'].isin([vit, deepvit]), 'depth'].dropna().unique())
    out['per_depth'] = {d: paired(runs, [(deepvit, d, fe)], [(vit, d, fe)]) for d in depths}
    out['curves'] = {f'{r}|{v}': _means(runs, r, v) for r in [vit, deepvit, *controls]
                     for v in (FIXED_EPOCHS, FIXED_COMPUTE) if ((runs['remedy'] == r) & (runs['view'] == v)).any()}
    out['q3_bn_only_vs_deepvit'] = paired(runs, [('bn_only', deep, fe)], [(deepvit, deep, fe)])
    out['q3_bn_only_vs_vit'] = paired(runs, [('bn_only', deep, fe)], [(vit, deep, fe)])
    out['q4_depthscale_vs_vit'] = paired(runs, [('depthscale', deep, fe)], [(vit, deep, fe)])
    out['q4_depthscale_vs_deepvit'] = paired(runs, [('depthscale', deep, fe)], [(deepvit, deep, fe)])
    out['q4_layerscale_vs_vit'] = paired(runs, [('layerscale', deep, fe)], [(vit, deep, fe)])
    # fixed compute: the shallow runs bought the deep ViT's fixed-epoch compute, so the deep cells are shared
    fc = FIXED_COMPUTE
    out['fc_vit_gain'] = paired(runs, [(vit, deep, fe)], [(vit, shallow, fc)])
    out['fc_deepvit_gain'] = paired(runs, [(deepvit, deep, fe)], [(deepvit, shallow, fc)])
    out['fc_interaction'] = paired(runs, [(deepvit, deep, fe), (vit, shallow, fc)],
                                   [(vit, deep, fe), (deepvit, shallow, fc)])
    done = runs[(runs['status'] == 'FINISHED') & (runs['view'] == fe)]
    if COLLAPSE in done.columns:
        out['q5_collapse'] = {r: _means(done, r, fe, COLLAPSE) for r in [vit, deepvit]}
        out['q5_collapse_growth'] = {r: paired(runs, [(r, deep, fe)], [(r, shallow, fe)], COLLAPSE)
                                     for r in [vit, deepvit]}
        cell = done['remedy'].astype(str) + '|' + done['view'].astype(str)
        if 'lr' in done.columns:   # a cell is one rate too: across seeds only, never across a grid's rates
            cell = cell + '|' + done['lr'].astype(str)
        out['q5_correlation'] = within_cell_correlation(done.assign(cell=cell), COLLAPSE, ENDPOINT,
                                                        cells=('cell', 'depth'))
    if 'top1_gain_last25' in done.columns:
        gains = done.dropna(subset=['top1_gain_last25']).groupby(['remedy', 'depth'])['top1_gain_last25']
        out['convergence'] = [{'remedy': r, 'depth': int(d), 'n': int(len(g)), 'mean_gain_last25': float(g.mean()),
                               'still_rising': int((g >= 1.0).sum())} for (r, d), g in gains]
    return out


def _fmt(p: Optional[Dict], unit: str = ' pt') -> str:
    if not p or p['n'] == 0:
        return 'no paired seeds yet'
    if p['n'] < 2:
        return f"{p['mean']:+.2f}{unit} (1 seed: no interval)"
    return (f"{p['mean']:+.2f}{unit} [{p['lo']:+.2f}, {p['hi']:+.2f}], {p['n']} paired seeds, "
            + ('resolved' if p['resolved'] else 'not resolved'))


def verdict_markdown(v: Dict, shallow: int = 2, deep: int = 16) -> str:
    """The verdict table of the report: one line per question, each with its interval and paired seeds."""
    corr = v.get('q5_correlation') or {}
    r_text = ('no estimate yet' if not corr or math.isnan(corr.get('r', math.nan)) else
              f"r = {corr['r']:+.2f} [{corr['lo']:+.2f}, {corr['hi']:+.2f}] over {corr['n_runs']} runs in "
              f"{corr['n_cells']} cells")
    growth = v.get('q5_collapse_growth', {})
    lines = ['| question | estimate (95 % t interval) |', '|---|---|',
             f"| 1. ViT top-1 gain, {deep} vs {shallow} blocks | {_fmt(v['q1_vit_gain'])} |",
             f"| 1. DeepViT top-1 gain, {deep} vs {shallow} blocks | {_fmt(v['q1_deepvit_gain'])} |",
             f"| 2. Depth interaction (DeepViT − ViT at {deep}) − (at {shallow}) — primary | "
             f"{_fmt(v['q2_interaction'])} |",
             f"| 3. BatchNorm-only − DeepViT at {deep} | {_fmt(v.get('q3_bn_only_vs_deepvit'))} |",
             f"| 3. BatchNorm-only − ViT at {deep} | {_fmt(v.get('q3_bn_only_vs_vit'))} |",
             f"| 4. 1/√depth − ViT at {deep} | {_fmt(v['q4_depthscale_vs_vit'])} |",
             f"| 4. 1/√depth − DeepViT at {deep} | {_fmt(v['q4_depthscale_vs_deepvit'])} |",
             f"| 4. LayerScale − ViT at {deep} | {_fmt(v['q4_layerscale_vs_vit'])} |"]
    for key, text in (('fc_vit_gain', f'ViT top-1 gain, {deep} vs {shallow} blocks'),
                      ('fc_deepvit_gain', f'DeepViT top-1 gain, {deep} vs {shallow} blocks'),
                      ('fc_interaction', 'depth interaction')):
        lines.append(f"| fixed compute: {text} | {_fmt(v.get(key))} |")
    for remedy, g in growth.items():
        lines.append(f"| 5. {remedy}: row-wise collapse, {deep} − {shallow} blocks | {_fmt(g, '')} |")
    lines.append(f"| 5. collapse vs top-1 within a depth (across seeds) | {r_text} |")
    return '\n'.join(lines) + '\n'


def plot_accuracy_vs_collapse(runs: pd.DataFrame, out_dir: Path, x: str = COLLAPSE, y: str = ENDPOINT) -> List[Path]:
    """``accuracy_vs_collapse.{png,svg}``: final top-1 against the row-wise collapse of each finished fixed-epoch run
    (left; colour = remedy, marker = depth), and the same after removing each cell's mean (right: seed-to-seed
    variation only, the pooled within-cell r of question 5 with its interval in the title)."""
    from matplotlib.figure import Figure
    from .figures import family_color, save
    done = runs[(runs['status'] == 'FINISHED') & (runs['view'] == FIXED_EPOCHS)].dropna(subset=[x, y])
    cell = done['remedy'].astype(str) + '|' + done['depth'].astype(str)
    if 'lr' in done.columns:
        cell = cell + '|' + done['lr'].astype(str)
    done = done.assign(cell=cell)
    dev = done.assign(**{c: done[c].astype(float) - done.groupby('cell')[c].transform(lambda v: v.astype(float).mean())
                         for c in (x, y)})
    corr = within_cell_correlation(done, x, y, cells=('cell',))
    fig = Figure(figsize=(10, 4.2), layout='constrained')
    axes = fig.subplots(1, 2)
    markers = dict(zip(sorted(done['depth'].unique()), 'os^Dv<>'))
    for ax, frame in zip(axes, (done, dev)):
        for (remedy, depth), g in frame.groupby(['remedy', 'depth'], sort=True):
            ax.scatter(g[x].astype(float), g[y].astype(float), color=family_color(str(remedy)),
                       marker=markers[depth], s=28, alpha=0.8, label=f'{remedy}, {int(depth)} blocks (n={len(g)})')
        ax.grid(alpha=0.3)
    axes[0].set_xlabel('row-wise adjacent similarity, final probe (0 = chance, 1 = identical)')
    axes[0].set_ylabel('final test top-1 (%)')
    axes[0].set_title('each run', fontsize=9)
    axes[0].legend(fontsize='x-small')
    axes[1].axhline(0, color='k', lw=0.6)
    axes[1].axvline(0, color='k', lw=0.6)
    axes[1].set_xlabel('similarity − its cell mean')
    axes[1].set_ylabel('top-1 − its cell mean (points)')
    axes[1].set_title(f"within a cell (seeds only): r = {corr['r']:+.2f} [{corr['lo']:+.2f}, {corr['hi']:+.2f}], "
                      f"{corr['n_runs']} runs in {corr['n_cells']} cells", fontsize=9)
    return save(fig, out_dir, 'accuracy_vs_collapse')


def main(argv: Optional[List[str]] = None) -> int:
    from .convergence import add_convergence, convergence_histories
    from .lr_selection import apply_frozen_choice, frozen_choice_table, plot_lr_grid
    from .records import runs_frame
    from .store import AnalysisError, get_experiment, open_store, sweep_runs
    p = argparse.ArgumentParser(prog='python -m analysis.depth_study', description=__doc__.split('\n')[0])
    p.add_argument('--experiment', required=True)
    p.add_argument('--tracking-uri', default=None)
    p.add_argument('--lr-choice', type=Path, default=None, help='the study\'s frozen lr choice (lr_selection.json)')
    p.add_argument('--out', type=Path, required=True)
    args = p.parse_args(argv)
    try:
        client, _ = open_store(args.tracking_uri)
        train, _ = sweep_runs(client, get_experiment(client, args.experiment), None)
        runs, curves = runs_frame(client, train, group_by=['train.budget_pflop'], progress=False)
        if args.lr_choice is not None:
            runs, _ = apply_frozen_choice(runs, args.lr_choice)
        metric, histories = convergence_histories(client, runs, curves)
        runs = add_view(add_convergence(runs, histories))
    except (AnalysisError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    result = verdict(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'verdict.json').write_text(json.dumps(result, indent=2, default=str) + '\n')
    (args.out / 'verdict.md').write_text(verdict_markdown(result))
    runs.to_csv(args.out / 'study_runs.csv', index=False)
    if COLLAPSE in runs.columns:
        plot_accuracy_vs_collapse(runs, args.out)
    if args.lr_choice is not None:   # the frozen grid, from the choice file itself (base rates, seed 0)
        plot_lr_grid(frozen_choice_table(args.lr_choice), args.out, lr_label='base learning rate (log scale)',
                     score_label='holdout top-1 (%), seed 0')
    print(verdict_markdown(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
