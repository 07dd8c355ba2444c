"""Sweep figures (matplotlib, object API: no pyplot, no global backend): saturation curves, top-1 vs GMACs, similar
blocks vs depth, and val/top1 training curves. Each figure is written as PNG and SVG, byte-stable across reruns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

__all__ = ['save', 'family_color', 'plot_top1_vs_depth', 'plot_top1_vs_gmacs', 'plot_similar_blocks',
           'plot_training_curves']

_FAMILY_COLORS = {'vit': 'tab:blue', 'deepvit': 'tab:red'}
_OTHER_COLORS = ('tab:green', 'tab:purple', 'tab:orange', 'tab:brown', 'tab:gray')
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
    """series -> (colour, marker): colour from the family, marker from the width within the family."""
    styles, seen = {}, {}
    for series, family in stats[['series', 'family']].drop_duplicates().itertuples(index=False):
        k = seen.setdefault(family, 0)
        seen[family] += 1
        styles[series] = (family_color(family), _MARKERS[k % len(_MARKERS)])
    return styles


def _unfinished(runs: pd.DataFrame, metric_col: str) -> pd.DataFrame:
    return runs[(runs['status'] != 'FINISHED') & runs[metric_col].notna() & runs['depth'].notna()]


def plot_top1_vs_depth(stats: pd.DataFrame, runs: pd.DataFrame, saturation: Dict, metric_col: str,
                       out_dir: Path) -> List[Path]:
    """Saturation curves: mean top-1 vs depth per family × width, std over seeds as error bars; a star marks the
    saturation depth; unfinished runs appear as hollow markers at their latest value, labelled with their status."""
    fig = Figure(figsize=(6.4, 4.4), layout='constrained')
    ax = fig.add_subplot()
    styles = _series_styles(stats)
    sat = {s['series']: s['saturation_depth'] for s in saturation['series']}
    for series, g in stats.groupby('series', sort=False):
        color, marker = styles[series]
        g = g[g['top1_mean'].notna()].sort_values('depth')
        ax.errorbar(g['depth'], g['top1_mean'], yerr=g['top1_std'].fillna(0), color=color, marker=marker,
                    capsize=3, label=series)
        if sat.get(series) is not None:
            y = g.loc[g['depth'] == sat[series], 'top1_mean'].iloc[0]
            ax.plot([sat[series]], [y], marker='*', markersize=15, color=color, markeredgecolor='k', zorder=5)
    for status, g in _unfinished(runs, metric_col).groupby('status'):
        ax.scatter(g['depth'], g[metric_col], facecolors='none', edgecolors=[family_color(f) for f in g['family']],
                   marker='o', s=60, label=f'{status.lower()} (latest value)')
    ax.set_xticks(sorted(stats['depth'].unique()))
    ax.set_xlabel('depth (blocks)')
    ax.set_ylabel('val top-1 (%)')
    ax.set_title(f'top-1 vs depth (★ saturation, threshold {saturation["threshold_pp"]} pts)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
    return save(fig, out_dir, 'top1_vs_depth')


def plot_top1_vs_gmacs(stats: pd.DataFrame, out_dir: Path) -> List[Path]:
    """Mean top-1 vs GMACs per image per family × width, each point labelled with its depth."""
    fig = Figure(figsize=(6.4, 4.4), layout='constrained')
    ax = fig.add_subplot()
    styles = _series_styles(stats)
    for series, g in stats.groupby('series', sort=False):
        g = g[g['top1_mean'].notna() & g['gmacs'].notna()].sort_values('gmacs')
        color, marker = styles[series]
        ax.errorbar(g['gmacs'], g['top1_mean'], yerr=g['top1_std'].fillna(0), color=color, marker=marker,
                    capsize=3, label=series)
        for x, y, d in zip(g['gmacs'], g['top1_mean'], g['depth']):
            ax.annotate(f'd{d}', (x, y), textcoords='offset points', xytext=(4, 4), fontsize='x-small')
    ax.set_xlabel('GMACs per image')
    ax.set_ylabel('val top-1 (%)')
    ax.set_title('top-1 vs compute')
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
    return save(fig, out_dir, 'top1_vs_gmacs')


def plot_similar_blocks(stats: pd.DataFrame, out_dir: Path) -> List[Path]:
    """Similar blocks (mean over finished seeds) vs depth, one panel per map stage (softmax, mixed)."""
    fig = Figure(figsize=(9.6, 4.0), layout='constrained')
    axes = fig.subplots(1, 2, sharey=True)
    styles = _series_styles(stats)
    for ax, (col, stage) in zip(axes, [('similar_softmax', 'softmax'), ('similar_mixed', 'mixed')]):
        for series, g in stats.groupby('series', sort=False):
            g = g[g[col].notna()].sort_values('depth')
            color, marker = styles[series]
            ax.plot(g['depth'], g[col], color=color, marker=marker, label=series)
        ax.set_xticks(sorted(stats['depth'].unique()))
        ax.set_xlabel('depth (blocks)')
        ax.set_title(f'similar blocks, {stage} maps')
        ax.grid(alpha=0.3)
    axes[0].set_ylabel('similar blocks (similarity ≥ 0.9)')
    axes[0].legend(fontsize='small')
    return save(fig, out_dir, 'similar_blocks_vs_depth')


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

