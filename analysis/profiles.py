"""Collapse per block: the final probe's row-wise similarity of each block with the one before it, against the block
index, one line per depth (mean over finished seeds), one panel per series and map stage.

Adjacent-pair means (the depth table) dilute collapse confined to the deepest blocks; this figure shows where along
the stack it sits. Input: the runs' ``collapse/row_<stage>.npy`` artifacts (:func:`analysis.heatmaps.load_similarities`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deepvit.collapse.summary import profiles

from .figures import save

__all__ = ['mean_profiles', 'plot_collapse_profiles']


def mean_profiles(runs: pd.DataFrame, matrices: Dict[Tuple[str, str], Optional[np.ndarray]],
                  stage: str) -> Dict[Tuple[str, int], Tuple[np.ndarray, int]]:
    """``{(series, depth): (profile (L,), runs averaged)}``: the ``prev`` profile (similarity of block p with block
    p − 1; NaN at p = 0) averaged over the finished runs that have the matrix."""
    out: Dict[Tuple[str, int], Tuple[np.ndarray, int]] = {}
    done = runs[(runs['status'] == 'FINISHED') & runs['depth'].notna()]
    for (series, depth), g in done.groupby(['series', 'depth'], sort=False):
        found = [profiles(m)['prev'] for m in (matrices.get((r, stage)) for r in g['run_id']) if m is not None]
        if found:
            out[(series, int(depth))] = (np.mean(found, axis=0), len(found))
    return out


def plot_collapse_profiles(runs: pd.DataFrame, matrices: Dict[Tuple[str, str], Optional[np.ndarray]],
                           out_dir: Path, measure: str = 'row') -> List[Path]:
    """``collapse_profiles.{png,svg}``: rows = map stage, columns = series; x = block index p (1-based, as in the
    paper), y = ``measure``'s similarity of block p with block p − 1; one line per depth (viridis, n in the legend).
    Nothing is drawn (``[]``) when no finished run has the matrices."""
    series_list = list(dict.fromkeys(runs['series']))
    per_stage = {stage: mean_profiles(runs, matrices, stage) for stage in ('softmax', 'mixed')}
    if not series_list or not any(per_stage.values()):
        return []
    depths = sorted({d for p in per_stage.values() for _, d in p})
    cmap = matplotlib.colormaps['viridis']
    fig = Figure(figsize=(3.2 * len(series_list) + 1.0, 5.6), layout='constrained')
    axes = fig.subplots(2, len(series_list), squeeze=False, sharey=True)
    for i, (stage, prof) in enumerate(per_stage.items()):
        for j, series in enumerate(series_list):
            ax = axes[i][j]
            for depth in depths:
                if (series, depth) not in prof:
                    continue
                values, n = prof[(series, depth)]
                frac = depths.index(depth) / max(len(depths) - 1, 1)
                ax.plot(np.arange(1, depth + 1)[1:], values[1:], color=cmap(0.9 * frac), marker='.', lw=1,
                        label=f'depth {depth} (n={n})')
            ax.axhline(0, color='k', lw=0.6)
            ax.set_title(f'{series}, {stage}', fontsize=8)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # blocks are whole numbers
            if i == 1:
                ax.set_xlabel('block p')
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize='xx-small')
        axes[i][0].set_ylabel(f'{measure} similarity, block p vs p − 1')
    fig.suptitle(f'collapse per block: {measure} similarity of adjacent blocks, final probe, mean over finished '
                 f'seeds (0 = chance, 1 = identical)', fontsize=9)
    return save(fig, out_dir, 'collapse_profiles')
