"""Sweep figures (matplotlib, object API: no pyplot, no global backend): saturation curves, top-1 vs GMACs, similar
blocks vs depth, and val/top1 training curves. Each figure is written as PNG and SVG, byte-stable across reruns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import t as t_dist

__all__ = ['save', 'family_color', 'plot_top1_vs_depth', 'plot_top1_vs_gmacs', 'plot_similar_blocks',
           'plot_effective_keys', 'plot_collapse_over_training', 'plot_paired_differences', 'plot_training_curves']

_FAMILY_COLORS = {'vit': 'tab:blue', 'deepvit': 'tab:red', 'reattn': 'tab:red', 'layerscale': 'tab:green',
                  'talkinghead': 'tab:purple', 'bn_only': 'tab:orange', 'reattn_ln': 'tab:brown',
                  'reattn_nonorm': 'tab:pink', 'reattn_identity': 'tab:olive'}
_OTHER_COLORS = ('tab:cyan', 'tab:gray', 'black')
_MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X')
_STYLES = ('-', '--', ':', '-.')


def family_color(family: str) -> str:
    """Fixed colour per family (ViT blue, DeepViT red), others from a small cycle."""
    if family in _FAMILY_COLORS:
        return _FAMILY_COLORS[family]
    return _OTHER_COLORS[sum(map(ord, family)) % len(_OTHER_COLORS)]


def save(fig: Figure, out_dir: Path, stem: str) -> List[Path]:
    """Write ``fig`` as ``out_dir/stem.png`` (120 dpi) and ``out_dir/stem.svg``; returns both paths.

    Metadata that changes between runs (dates, SVG id salt) is fixed, so regenerated figures diff cleanly.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    png, svg = out_dir / f'{stem}.png', out_dir / f'{stem}.svg'
    with matplotlib.rc_context({'svg.hashsalt': 'deepvit-study', 'svg.fonttype': 'none'}):
        fig.savefig(png, dpi=120, metadata={'Software': None})
        fig.savefig(svg, metadata={'Date': None, 'Creator': None})
    return [png, svg]


def _series_styles(stats: pd.DataFrame) -> Dict[str, Tuple[str, str]]:
    """series -> (colour, marker): colour from the remedy (the label's first word), a marker of its own per series."""
    series = list(dict.fromkeys(stats['series']))
    return {s: (family_color(s.split(' ')[0]), _MARKERS[i % len(_MARKERS)]) for i, s in enumerate(series)}


def _unfinished(runs: pd.DataFrame, metric_col: str) -> pd.DataFrame:
    return runs[(runs['status'] != 'FINISHED') & runs[metric_col].notna() & runs['depth'].notna()]


def _offsets(stats: pd.DataFrame) -> Dict[str, float]:
    """series -> multiplicative x offset (depth axes are log-2): overlapping series stay visible side by side."""
    series = list(dict.fromkeys(stats['series']))
    k = len(series)
    return {s: 2 ** (0.04 * (i - (k - 1) / 2)) for i, s in enumerate(series)}


def _t_half(std: pd.Series, n: pd.Series, confidence: float = 0.95) -> np.ndarray:
    """Half-width of the t interval of a mean over n seeds (0 where n < 2)."""
    n = n.astype(float).to_numpy()
    half = np.zeros_like(n)
    ok = n >= 2
    half[ok] = t_dist.ppf(0.5 + confidence / 2, n[ok] - 1) * std.fillna(0).to_numpy()[ok] / np.sqrt(n[ok])
    return half


def _depth_axis(ax, depths) -> None:
    ax.set_xscale('log', base=2)
    ax.set_xticks(sorted(depths), [str(int(d)) for d in sorted(depths)])
    ax.minorticks_off()
    ax.set_xlabel('depth (blocks, log scale)')
    ax.grid(alpha=0.3)


def plot_top1_vs_depth(stats: pd.DataFrame, runs: pd.DataFrame, saturation: Dict, metric_col: str,
                       out_dir: Path) -> List[Path]:
    """Saturation curves: mean top-1 vs depth per series, error bars = 95 % t interval over finished seeds (none for
    one seed), series slightly offset in x; the individual seeds as small dots; a star marks the saturation depth;
    unfinished runs appear as hollow markers at their latest value, labelled with their status."""
    fig = Figure(figsize=(6.8, 4.6), layout='constrained')
    ax = fig.add_subplot()
    styles = _series_styles(stats)
    offsets = _offsets(stats)
    sat = {s['series']: s['saturation_depth'] for s in saturation['series']}
    done = runs[runs['status'] == 'FINISHED']
    for series, g in stats.groupby('series', sort=False):
        color, marker = styles[series]
        g = g[g['top1_mean'].notna()].sort_values('depth')
        if g.empty:      # no finished run of the series yet: its unfinished runs are drawn below
            continue
        x = g['depth'] * offsets[series]
        n = g['n_finished']
        ax.errorbar(x, g['top1_mean'], yerr=_t_half(g['top1_std'], n), color=color, marker=marker, capsize=3,
                    label=f'{series} (n={int(n.min())}' + (f'–{int(n.max())}' if n.max() != n.min() else '') + ')')
        seeds = done[(done['series'] == series) & done[metric_col].notna()]
        ax.scatter(seeds['depth'] * offsets[series], seeds[metric_col], color=color, s=8, alpha=0.4, zorder=1)
        if sat.get(series) is not None:
            y = g.loc[g['depth'] == sat[series], 'top1_mean'].iloc[0]
            ax.plot([sat[series] * offsets[series]], [y], marker='*', markersize=15, color=color,
                    markeredgecolor='k', zorder=5)
    for status, g in _unfinished(runs, metric_col).groupby('status'):
        ax.scatter(g['depth'], g[metric_col], facecolors='none', edgecolors=[family_color(f) for f in g['family']],
                   marker='o', s=60, label=f'{status.lower()} (latest value)')
    _depth_axis(ax, stats['depth'].unique())
    ax.set_ylabel('val top-1 (%)')
    ax.set_title(f'top-1 vs depth: mean, 95 % t interval over seeds, dots = seeds (★ saturation, '
                 f'{saturation["threshold_pp"]} pts)', fontsize=9)
    ax.legend(fontsize='small')
    return save(fig, out_dir, 'top1_vs_depth')


def plot_paired_differences(diffs: pd.DataFrame, baseline: str, out_dir: Path) -> List[Path]:
    """Remedy − baseline top-1 vs depth (seed-paired): mean, 95 % t interval (bars) and the seeds × images
    bootstrap interval (a wide translucent bar), one line per series; 0 marked."""
    fig = Figure(figsize=(6.8, 4.4), layout='constrained')
    ax = fig.add_subplot()
    frame = diffs
    styles = _series_styles(frame)
    offsets = _offsets(frame)
    for series, g in frame.groupby('series', sort=False):
        g = g[g['n_pairs'] > 0].sort_values('depth')
        if g.empty:
            continue
        color, marker = styles[series]
        x = g['depth'] * offsets[series]
        yerr = np.vstack([g['mean_diff'] - g['t_low'], g['t_high'] - g['mean_diff']]).astype(float)
        ax.errorbar(x, g['mean_diff'], yerr=np.nan_to_num(yerr), color=color, marker=marker, capsize=3,
                    label=f'{series} (pairs {int(g["n_pairs"].min())}–{int(g["n_pairs"].max())})')
        has = g['boot_low'].notna()
        if has.any():  # a wide translucent bar per depth: visible also where neighbouring depths have none
            ax.vlines(x[has], g['boot_low'][has].astype(float), g['boot_high'][has].astype(float), color=color,
                      alpha=0.25, lw=9)
    ax.axhline(0, color='k', lw=0.8)
    _depth_axis(ax, diffs['depth'].unique())
    ax.set_ylabel('top-1 difference vs the baseline (pp)')   # the baseline's full name would not fit here
    ax.set_title(f'paired difference (same seed) vs {baseline}: mean, 95 % t interval (caps);\n'
                 f'wide bar: seeds × images bootstrap', fontsize=9)
    ax.legend(fontsize='small')
    return save(fig, out_dir, 'difference_vs_depth')


def _plot_top1_vs(stats: pd.DataFrame, col: str, xlabel: str, title: str, name: str, out_dir: Path,
                  logx: bool = False) -> List[Path]:
    """Mean top-1 (± sd over seeds) against ``col`` per family × width, each point labelled with its depth."""
    fig = Figure(figsize=(6.4, 4.4), layout='constrained')
    ax = fig.add_subplot()
    styles = _series_styles(stats)
    for series, g in stats.groupby('series', sort=False):
        g = g[g['top1_mean'].notna() & g[col].notna()].sort_values(col)
        color, marker = styles[series]
        ax.errorbar(g[col], g['top1_mean'], yerr=g['top1_std'].fillna(0), color=color, marker=marker,
                    capsize=3, label=series)
        for x, y, d in zip(g[col], g['top1_mean'], g['depth']):
            ax.annotate(f'd{d}', (x, y), textcoords='offset points', xytext=(4, 4), fontsize='x-small')
    if logx:
        ax.set_xscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel('val top-1 (%), mean ± sd over seeds')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
    return save(fig, out_dir, name)


def plot_top1_vs_gmacs(stats: pd.DataFrame, out_dir: Path) -> List[Path]:
    """Mean top-1 vs GMACs per image (inference cost) per family × width, each point labelled with its depth."""
    return _plot_top1_vs(stats, 'gmacs', 'GMACs per image', 'top-1 vs inference compute', 'top1_vs_gmacs', out_dir)


def plot_top1_vs_compute(stats: pd.DataFrame, out_dir: Path) -> List[Path]:
    """Mean top-1 vs training compute (``train.planned_pflop``: 6 × MACs × images trained, PFLOP, log scale) per
    family × width (issue 20.4). Nothing is drawn (empty list) when no run recorded its planned compute."""
    if 'pflop' not in stats or not stats['pflop'].notna().any():
        return []
    return _plot_top1_vs(stats, 'pflop', 'training compute (PFLOP, 6 × MACs × images)', 'top-1 vs training compute',
                         'top1_vs_compute', out_dir, logx=True)


def budget_note(runs: pd.DataFrame) -> str:
    """How the runs' lengths compare across depths, for the report: fixed compute (every finished run's planned
    PFLOP within 2 % of the median), fixed epochs, or neither — said in one sentence with the numbers."""
    done = runs[runs['status'] == 'FINISHED']
    pflop = done['planned_pflop'].dropna().astype(float) if 'planned_pflop' in done else pd.Series([], dtype=float)
    epochs = done['epochs'].dropna().astype(int)
    if len(pflop) == len(done) and len(done) and (abs(pflop / pflop.median() - 1) <= 0.02).all():
        return (f'Training budget: fixed compute — every finished run planned {pflop.median():.4g} PFLOP (within 2 %); '
                f'epochs differ by depth ({epochs.min()}–{epochs.max()}).')
    if len(epochs) and epochs.nunique() == 1:
        spread = f' (planned compute {pflop.min():.3g}–{pflop.max():.3g} PFLOP)' if len(pflop) else ''
        return f'Training budget: fixed epochs — {epochs.iloc[0]} for every finished run{spread}: deeper models ' \
               f'got more compute.'
    return 'Training budget: neither fixed epochs nor fixed compute across the finished runs (see runs.csv).'


def _series_lines(ax, stats: pd.DataFrame, col: str) -> None:
    """One line per series of ``col`` vs depth: own colour, marker and line style, offset in x."""
    styles, offsets = _series_styles(stats), _offsets(stats)
    for i, (series, g) in enumerate(stats.groupby('series', sort=False)):
        g = g[g[col].notna()].sort_values('depth')
        color, marker = styles[series]
        ax.plot(g['depth'] * offsets[series], g[col], color=color, marker=marker,
                linestyle=_STYLES[i % len(_STYLES)], label=series)


def plot_similar_blocks(stats: pd.DataFrame, out_dir: Path) -> List[Path]:
    """Similar blocks (mean over finished seeds) vs depth: rows = the paper metric and the calibrated one, columns =
    map stage (softmax, mixed). Series are offset in x and drawn with their own marker and line style, so identical
    curves stay visible; the dotted diagonal is the maximum (depth − 1)."""
    fig = Figure(figsize=(9.6, 7.2), layout='constrained')
    axes = fig.subplots(2, 2, sharey=True, sharex=True)
    depths = sorted(stats['depth'].unique())
    for row, (prefix, metric) in enumerate([('', 'paper metric (Eq. 4)'), ('calibrated_', 'calibrated')]):
        for ax, stage in zip(axes[row], ('softmax', 'mixed')):
            col = f'{prefix}similar_blocks_{stage}'
            _series_lines(ax, stats, col)
            ax.plot(depths, [d - 1 for d in depths], color='gray', linestyle=':', lw=1, label='all blocks (L − 1)')
            _depth_axis(ax, depths)
            ax.set_title(f'similar blocks, {metric}, {stage} maps', fontsize=9)
        axes[row][0].set_ylabel('similar blocks (similarity ≥ threshold)')
    axes[0][0].legend(fontsize='x-small')
    return save(fig, out_dir, 'similar_blocks_vs_depth')


def plot_effective_keys(stats: pd.DataFrame, out_dir: Path) -> List[Path]:
    """Attention sharpness vs depth: effective keys per row (exp of the row entropy, mean over blocks, images,
    heads, queries; mean over finished seeds), one panel per map stage. Near the token count, maps are near uniform
    and the paper metric reads ≈ 1 whatever the blocks do."""
    fig = Figure(figsize=(9.6, 3.8), layout='constrained')
    axes = fig.subplots(1, 2, sharey=True)
    for ax, stage in zip(axes, ('softmax', 'mixed')):
        col = f'effective_keys_{stage}'
        _series_lines(ax, stats, col)
        _depth_axis(ax, stats['depth'].unique())
        ax.set_title(f'effective keys per attention row, {stage} maps', fontsize=9)
    axes[0].set_ylabel('effective keys (exp entropy)')
    axes[0].legend(fontsize='x-small')
    return save(fig, out_dir, 'effective_keys_vs_depth')


def plot_collapse_over_training(runs: pd.DataFrame, histories: Dict[Tuple[str, str], Sequence[Tuple[int, float]]],
                                metric: str, out_dir: Path, stages: Sequence[str] = ('softmax', 'mixed'),
                                title: str = '0 = chance, 1 = identical maps') -> List[Path]:
    """``metric`` (e.g. ``row_mean_adjacent``) over training, one panel per series and map stage (one row per entry
    of ``stages``; a representation measure has one, ``''``): one line per run, colour by depth (viridis), from the
    probe at step 0 to the final one. ``histories`` maps ``(run_id, stage)`` to ``[(step, value), ...]``."""
    series_list = list(dict.fromkeys(runs['series']))
    if not series_list:
        return []
    depths = sorted(runs['depth'].dropna().unique())
    cmap = matplotlib.colormaps['viridis']
    fig = Figure(figsize=(3.2 * len(series_list) + 1.0, 2.8 * len(stages)), layout='constrained')
    axes = fig.subplots(len(stages), len(series_list), squeeze=False, sharey='row')
    for j, series in enumerate(series_list):
        g = runs[runs['series'] == series]
        for i, stage in enumerate(stages):
            ax = axes[i][j]
            for r in g.itertuples(index=False):
                pts = histories.get((r.run_id, stage)) or []
                if not pts or pd.isna(r.depth):
                    continue
                frac = depths.index(r.depth) / max(len(depths) - 1, 1)
                ax.plot([p for p, _ in pts], [v for _, v in pts], color=cmap(0.9 * frac), marker='.', lw=1,
                        label=f'd{r.depth}' if r.seed == g['seed'].min() else None)
            ax.axhline(0, color='k', lw=0.6)
            ax.set_title(f'{series}, {stage}' if stage else series, fontsize=8)
            ax.grid(alpha=0.3)
            if i == len(stages) - 1:
                ax.set_xlabel('optimizer step')
        if axes[0][j].get_legend_handles_labels()[0]:
            axes[0][j].legend(fontsize='xx-small')
    for i in range(len(stages)):
        axes[i][0].set_ylabel(metric.replace('_', ' '))
    fig.suptitle(f'collapse over training: {metric.replace("_", " ")} ({title})', fontsize=9)
    return save(fig, out_dir, 'collapse_over_training')


def plot_training_curves(runs: pd.DataFrame, curves: Dict[str, Sequence[Tuple[int, float]]],
                         out_dir: Path) -> List[Path]:
    """val/top1 vs optimizer step, one figure per family (``curves_<family>``): colour by depth, line style by
    width, unfinished runs labelled with their status."""
    paths: List[Path] = []
    cmap = matplotlib.colormaps['viridis']
    depths = sorted(runs['depth'].dropna().unique())
    for family, g in runs.groupby('family', sort=False):
        fig = Figure(figsize=(6.4, 4.4), layout='constrained')
        ax = fig.add_subplot()
        widths = list(dict.fromkeys(g['series']))
        for r in g.itertuples(index=False):
            pts = curves.get(r.run_id) or []
            if not pts:
                continue
            frac = depths.index(r.depth) / max(len(depths) - 1, 1) if not pd.isna(r.depth) else 0.0
            label = f'{r.series} d{r.depth} s{r.seed}' + ('' if r.status == 'FINISHED' else f' ({r.status})')
            ax.plot([s for s, _ in pts], [v for _, v in pts], color=cmap(0.9 * frac),
                    linestyle=_STYLES[widths.index(r.series) % len(_STYLES)], marker='.', label=label)
        ax.set_xlabel('optimizer step')
        ax.set_ylabel('val top-1 (%)')
        ax.set_title(f'{family}: val top-1 during training')
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize='x-small', ncols=2 if len(ax.lines) > 8 else 1)
        paths += save(fig, out_dir, f'curves_{family}')
    return paths

