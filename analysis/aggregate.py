"""Seeds folded together: one row per series (family × width) and depth, from :func:`analysis.records.runs_frame`.

Only FINISHED runs enter the means; every other run is counted in ``status`` so that a partial sweep says what is
missing instead of dropping it.
"""
from __future__ import annotations

import pandas as pd

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


def depth_stats(runs: pd.DataFrame, metric: str = 'best') -> pd.DataFrame:
    """Mean and sample std (ddof=1; NaN for one seed) of top-1 over finished seeds, per series and depth.

    Args:
        runs: the frame of :func:`analysis.records.runs_frame`.
        metric: ``'best'`` (maximum of the val/top1 history) or ``'final'`` (its last value).
    Returns:
        Columns ``series, family, embed_dim, num_heads, depth, n_runs, n_finished, status, top1_mean, top1_std,
        params, gmacs, similar_softmax, similar_mixed`` (the last four: means over finished runs), ordered as
        ``runs``. Runs with an unknown depth are left out here (they stay in ``runs.csv``).
    Raises:
        ValueError: unknown ``metric``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    col = METRICS[metric]
    rows = []
    known = runs[runs['depth'].notna()]
    for (series, depth), g in known.groupby(['series', 'depth'], sort=False):
        done = g[g['status'] == 'FINISHED']
        rows.append({
            'series': series, 'family': g['family'].iloc[0], 'embed_dim': g['embed_dim'].iloc[0],
            'num_heads': g['num_heads'].iloc[0], 'depth': int(depth), 'n_runs': len(g), 'n_finished': len(done),
            'status': _status(g['status']),
            'top1_mean': _mean(done[col]),
            'top1_std': float(done[col].dropna().astype(float).std(ddof=1)),
            'params': _mean(g['params']), 'gmacs': _mean(g['gmacs']),
            'similar_softmax': _mean(done['similar_blocks_softmax']),
            'similar_mixed': _mean(done['similar_blocks_mixed']),
        })
    return pd.DataFrame(rows, columns=['series', 'family', 'embed_dim', 'num_heads', 'depth', 'n_runs', 'n_finished',
                                       'status', 'top1_mean', 'top1_std', 'params', 'gmacs', 'similar_softmax',
                                       'similar_mixed'])
