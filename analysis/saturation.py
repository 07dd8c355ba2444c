"""Saturation depth: the depth beyond which adding blocks stops paying, per family and width.

Method (the paper's claim, arXiv 2103.11886 Sec. 1 and Table 1, made a rule). For one series (family × width), let
m(d) be the mean top-1 (percent) over finished seeds at depth d, for the depths that have at least one finished run.
The saturation depth is the smallest depth d such that every deeper depth d' > d improves on it by less than the
threshold:  m(d') − m(d) < threshold  for all d' > d.  When that smallest d is the largest depth itself (equivalently,
the largest depth still beats the one before it by ≥ threshold) the series has not saturated: the result is null.
A series with fewer than two such depths has no answer either (null, with a note). Default threshold 0.5 points:
on the paper's own numbers it gives ViT saturated at 16 blocks (+0.47 to 24, +0.39 to 32) and DeepViT not saturated
(+0.89, +0.91), which is the paper's reading of its table.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

__all__ = ['DEFAULT_THRESHOLD', 'METHOD', 'saturation_depth', 'saturation_report']

DEFAULT_THRESHOLD = 0.5
METHOD = ("smallest depth d (among depths with a finished run) such that every deeper depth d' improves the mean "
          "top-1 over seeds by less than threshold_pp: m(d') - m(d) < threshold_pp for all d' > d; null when that d "
          "is the largest depth (still improving by >= threshold_pp over the previous depth) or fewer than two "
          "depths have finished runs")


def saturation_depth(points: Sequence[Tuple[int, float]], threshold: float = DEFAULT_THRESHOLD) -> Optional[int]:
    """Saturation depth of one series.

    Args:
        points: ``[(depth, mean top-1 in percent), ...]`` in any order; NaN means are ignored.
        threshold: improvement in percentage points below which more depth counts as no gain (> 0).
    Returns:
        The depth (see the module docstring for the rule), or ``None`` when the series still improves at its
        largest depth or has fewer than two depths.
    Raises:
        ValueError: ``threshold`` not positive, or a depth given twice.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 percentage points, got {threshold!r}")
    pts = sorted((int(d), float(m)) for d, m in points if not math.isnan(m))
    depths = [d for d, _ in pts]
    if len(set(depths)) != len(depths):
        raise ValueError(f"each depth must appear once, got depths {depths}")
    if len(pts) < 2:
        return None
    for i, (d, m) in enumerate(pts[:-1]):
        if all(m2 - m < threshold for _, m2 in pts[i + 1:]):
            return d
    return None


def saturation_report(stats: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD, metric: str = 'best') -> Dict:
    """``saturation.json``'s content from :func:`analysis.aggregate.depth_stats`.

    Returns:
        ``{'threshold_pp', 'metric', 'method', 'series': [{'series', 'family', 'embed_dim', 'num_heads',
        'saturation_depth', 'best_depth', 'depths', 'top1_mean', 'incomplete_depths', 'note'}]}``;
        ``incomplete_depths`` lists depths with unfinished runs (the answer may change when they finish).
    """
    out: List[Dict] = []
    for series, g in stats.groupby('series', sort=False):
        g = g.sort_values('depth')
        done = g[g['top1_mean'].notna()]
        pts = list(zip(done['depth'].astype(int), done['top1_mean'].astype(float)))
        sat = saturation_depth(pts, threshold)
        note = None
        if len(pts) < 2:
            note = 'fewer than two depths with finished runs'
        elif sat is None:
            note = f'still improving by >= {threshold} points at the largest depth'
        first = g.iloc[0]
        out.append({
            'series': series, 'family': first['family'],
            'embed_dim': None if pd.isna(first['embed_dim']) else int(first['embed_dim']),
            'num_heads': None if pd.isna(first['num_heads']) else int(first['num_heads']),
            'saturation_depth': sat,
            'best_depth': int(max(pts, key=lambda p: p[1])[0]) if pts else None,
            'depths': [int(d) for d, _ in pts], 'top1_mean': [round(m, 4) for _, m in pts],
            'incomplete_depths': [int(d) for d in g.loc[g['n_finished'] < g['n_runs'], 'depth']],
            'note': note,
        })
    return {'threshold_pp': threshold, 'metric': metric, 'method': METHOD, 'series': out}
