"""Does a run's attention collapse predict its accuracy *within* a depth, across seeds? (issue 23, question 5)

Across depths and families, collapse and accuracy both move with the architecture, so their raw correlation says
nothing about whether collapse costs accuracy. The within-cell (pooled partial) correlation removes each cell's mean
— a cell is one series (family × width) at one depth — and correlates what is left: seed-to-seed variation only.

Estimator: Pearson r of the within-cell deviations of x and y over the N runs of the cells with at least 2 runs
(``scipy.stats.pearsonr``), with a Fisher-z 95 % interval whose standard error is 1 / √(N − C − 2) for C cells — the
degrees of freedom of a partial correlation that controls C − 1 cell indicators (Cohen, Cohen, West & Aiken, 2003,
*Applied Multiple Regression/Correlation Analysis*, §3.4 on partial correlation; the Fisher transform's
n − 3 becomes N − (C − 1) − 3).
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ['within_cell_correlation']


def within_cell_correlation(runs: pd.DataFrame, x: str, y: str, cells: Sequence[str] = ('series', 'depth'),
                            level: float = 0.95) -> Dict[str, float]:
    """Pooled within-cell Pearson correlation of columns ``x`` and ``y`` of ``runs``.

    Args:
        runs: one row per run (e.g. :func:`analysis.records.runs_frame` restricted to finished runs); rows with
            ``x`` or ``y`` missing are left out.
        x, y: numeric columns (e.g. ``row_mean_adjacent_softmax`` and ``top1_final``).
        cells: the columns whose combination is one cell (default: series and depth).
        level: the interval's confidence level.
    Returns:
        ``{'r', 'lo', 'hi', 'p', 'n_runs', 'n_cells', 'df'}``: r and its interval (NaN when df < 2 or a variable does
        not vary within the cells), the two-sided p value of r = 0 on df degrees of freedom, the runs and cells used.
    Raises:
        KeyError: a named column is missing. ValueError: ``level`` not in (0, 1).
    """
    if not 0 < level < 1:
        raise ValueError(f'level must be in (0, 1), got {level!r}')
    data = runs[list(cells) + [x, y]].dropna()
    data = data.assign(**{x: data[x].astype(float), y: data[y].astype(float)})
    sizes = data.groupby(list(cells), dropna=False)[x].transform('size')
    data = data[sizes >= 2]
    n, c = len(data), data.groupby(list(cells), dropna=False).ngroups
    out = {'r': math.nan, 'lo': math.nan, 'hi': math.nan, 'p': math.nan, 'n_runs': n, 'n_cells': c,
           'df': n - c - 1}
    if n - c < 3:
        return out
    dx = data[x] - data.groupby(list(cells), dropna=False)[x].transform('mean')
    dy = data[y] - data.groupby(list(cells), dropna=False)[y].transform('mean')
    if np.allclose(dx, 0) or np.allclose(dy, 0):
        return out
    r = float(sps.pearsonr(dx, dy).statistic)
    df = n - c - 1                                   # residual df of y on x and the cell means
    t = r * math.sqrt(df / max(1e-300, 1 - r * r))
    z, se = math.atanh(min(max(r, -1 + 1e-12), 1 - 1e-12)), 1 / math.sqrt(n - c - 2)
    q = sps.norm.ppf(0.5 + level / 2)
    out.update(r=r, lo=math.tanh(z - q * se), hi=math.tanh(z + q * se), p=float(2 * sps.t.sf(abs(t), df)))
    return out
