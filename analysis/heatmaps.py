"""Grids of cross-layer similarity heatmaps, one panel per run, one figure per metric and map stage.

The matrices are the runs' artifacts of the final collapse probe (``docs/mlflow_schema.md``): (L, L) float64,
``collapse/similarity_<stage>.npy`` the paper's M[p, q] (arXiv 2103.11886, Eq. 4) and
``collapse/calibrated_<stage>.npy`` the chance-calibrated similarity (0 = chance, 1 = identical maps).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from .figures import save
from .records import STAGES
from .store import download_artifact

__all__ = ['STAGES', 'artifact_path', 'load_similarities', 'plot_similarity_grid']

VARIANTS = {'paper': 'similarity', 'calibrated': 'calibrated', 'row': 'row'}   # variant -> artifact stem
TITLES = {'paper': 'cross-layer similarity (paper metric, Eq. 4)',
          'calibrated': 'calibrated column-wise similarity (0 = chance, 1 = identical)',
          'row': 'row-wise calibrated similarity, the headline (0 = chance, 1 = identical)'}


def artifact_path(stage: str, variant: str = 'paper') -> str:
    """Artifact path of a run's (L, L) matrix of ``variant`` (``'paper'``, ``'calibrated'``, ``'row'``) for map
    ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    return f'collapse/{VARIANTS[variant]}_{stage}.npy'


def load_similarities(client, runs: pd.DataFrame, progress: bool = True,
                      variant: str = 'paper') -> Dict[Tuple[str, str], Optional[np.ndarray]]:
    """``{(run_id, stage): (L, L) array or None}`` of ``variant`` for every run and stage; None where the run has no
    such artifact (unfinished runs, or runs recorded before the calibrated metric existed).

    Raises:
        ValueError: an artifact that is not a square 2-D array (names the run and the path).
    """
    out: Dict[Tuple[str, str], Optional[np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix='deepvit-analysis-') as tmp:
        for run_id in tqdm(runs['run_id'], desc='similarity artifacts', unit='run', disable=not progress):
            for stage in STAGES:
                name = artifact_path(stage, variant)
                path = download_artifact(client, run_id, name, Path(tmp) / run_id / variant / stage)
                m = None if path is None else np.load(path, allow_pickle=False)
                if m is not None and (m.ndim != 2 or m.shape[0] != m.shape[1]):
                    raise ValueError(f"run {run_id}: {name} must be (L, L), got shape {m.shape}")
                out[(run_id, stage)] = m
    return out


def plot_similarity_grid(runs: pd.DataFrame, matrices: Dict[Tuple[str, str], Optional[np.ndarray]], stage: str,
                         out_dir: Path, variant: str = 'paper', max_rows: int = 12) -> List[Path]:
    """``<stem>_<stage>.{png,svg}`` (stem ``similarity`` for the paper metric, ``calibrated``): rows = series ×
    seed, columns = depth, one heatmap per run. With more than ``max_rows`` rows only each series' lowest seed is
    drawn (said in the title).

    Colour scale shared by all panels: [min(0, smallest value), 1]. A run without the artifact gets an empty panel
    that names its status.
    """
    runs = runs[runs['depth'].notna()]
    if runs.empty:  # no run has logged its architecture yet: nothing to draw
        return []
    note = ''
    if len(set(zip(runs['series'], runs['seed']))) > max_rows:
        runs = runs[runs['seed'] == runs.groupby('series')['seed'].transform('min')]
        note = ' (lowest seed of each series)'
    depths = sorted(runs['depth'].unique())
    row_keys = list(dict.fromkeys(zip(runs['series'], runs['seed'])))
    values = [m for (_, s), m in matrices.items() if s == stage and m is not None]
    vmin = min([0.0] + [float(m.min()) for m in values])
    ncols, nrows = len(depths), max(len(row_keys), 1)
    fig = Figure(figsize=(1.9 * ncols + 1.2, 1.9 * nrows + 0.6), layout='constrained')
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for ax in axes.flat:
        ax.set_axis_off()
    for r in runs.itertuples(index=False):
        ax = axes[row_keys.index((r.series, r.seed)), depths.index(r.depth)]
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
        m = matrices.get((r.run_id, stage))
        title = f'{r.series} s{r.seed} d{r.depth}'
        if m is None:
            ax.text(0.5, 0.5, f'no matrix\n({r.status})', ha='center', va='center', transform=ax.transAxes)
        else:
            image = ax.imshow(m, vmin=vmin, vmax=1.0, cmap='viridis', interpolation='nearest')
            if r.status != 'FINISHED':
                title += f' ({r.status})'
        ax.set_title(title, fontsize='x-small')
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label='similarity')
    fig.suptitle(f'{TITLES[variant]}, {stage} maps{note}; axes: block p, block q', fontsize=9)
    return save(fig, out_dir, f'{VARIANTS[variant]}_{stage}')
