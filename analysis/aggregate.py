"""Seeds folded together: one row per series (family × width) and depth, from :func:`analysis.records.runs_frame`.

Only FINISHED runs enter the means; every other run is counted in ``status`` so that a partial sweep says what is
missing instead of dropping it.
"""
from __future__ import annotations

import pandas as pd

from .records import COLLAPSE_COLUMNS

__all__ = ['METRICS', 'depth_stats']

METRICS = {'best': 'top1_best', 'final': 'top1_final'}
_STATUS_ORDER = ('FINISHED', 'RUNNING', 'SCHEDULED', 'KILLED', 'FAILED')


def _status(statuses: pd.Series) -> str:
    counts = statuses.value_counts()
    keys = [s for s in _STATUS_ORDER if s in counts] + sorted(set(counts.index) - set(_STATUS_ORDER))
    return ', '.join(f'{int(counts[s])} {s.lower()}' for s in keys)


def _mean(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.astype(float).mean()) if len(values) else float('nan')


def depth_stats(runs: pd.DataFrame, metric: str = 'final') -> pd.DataFrame:
    """Mean and sample std (ddof=1; NaN for one seed) of top-1 over finished seeds, per series and depth.

    Args:
        runs: the frame of :func:`analysis.records.runs_frame`.
        metric: ``'final'`` (the last val/top1 of each run, the primary figure) or ``'best'`` (the maximum of its
            history: optimistic, a maximum over evaluations on the same images).
    Returns:
        Columns ``series, family, remedy, embed_dim, num_heads, depth, n_runs, n_finished, status, top1_mean,
        top1_std, top1_best_mean, params, gmacs, pflop`` (mean planned training PFLOP) and the mean over finished runs of every collapse column of
        :data:`analysis.records.COLLAPSE` (``similar_blocks_softmax``, ``calibrated_similar_blocks_mixed``, …),
        ordered as ``runs``; when ``runs`` has the columns of :func:`analysis.convergence.add_convergence`:
        ``n_converge_measured`` (finished runs with a last-quarter gain), ``n_rising`` (of them, still rising) and
        ``gain_mean`` (their mean gain, points), else 0, 0, NaN. Runs with an unknown depth are left out here (they
        stay in ``runs.csv``).
    Raises:
        ValueError: unknown ``metric``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    col = METRICS[metric]
    collapse_cols = COLLAPSE_COLUMNS
    rows = []
    known = runs[runs['depth'].notna()]
    for (series, depth), g in known.groupby(['series', 'depth'], sort=False):
        done = g[g['status'] == 'FINISHED']
        row = {
            'series': series, 'family': g['family'].iloc[0], 'remedy': g['remedy'].iloc[0],
            'embed_dim': g['embed_dim'].iloc[0], 'num_heads': g['num_heads'].iloc[0], 'depth': int(depth),
            'n_runs': len(g), 'n_finished': len(done), 'status': _status(g['status']),
            'top1_mean': _mean(done[col]),
            'top1_std': float(done[col].dropna().astype(float).std(ddof=1)),
            'top1_best_mean': _mean(done['top1_best']),
            'params': _mean(g['params']), 'gmacs': _mean(g['gmacs']),
            'pflop': _mean(done['planned_pflop']) if 'planned_pflop' in done else float('nan'),
        }
        row.update({c: _mean(done[c]) for c in collapse_cols})
        gains = done['top1_gain_last25'].dropna() if 'top1_gain_last25' in done else pd.Series([], dtype=float)
        row.update(n_converge_measured=len(gains), gain_mean=_mean(gains),
                   n_rising=int(done['still_rising'].dropna().astype(bool).sum()) if len(gains) else 0)
        rows.append(row)
    return pd.DataFrame(rows, columns=['series', 'family', 'remedy', 'embed_dim', 'num_heads', 'depth', 'n_runs',
                                       'n_finished', 'status', 'top1_mean', 'top1_std', 'top1_best_mean', 'params',
                                       'gmacs', 'pflop'] + collapse_cols + ['n_converge_measured', 'n_rising',
                                                                             'gain_mean'])
