"""The within-cell collapse-accuracy correlation (analysis/collapse_accuracy.py) on cases whose answer is known."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis.collapse_accuracy import within_cell_correlation


def _cells(rng, rho, n_cells=8, per_cell=6, between=-5.0):
    """Cells whose means are anti-correlated (x up, y down across cells) and whose seeds correlate with ``rho``."""
    rows = []
    for c in range(n_cells):
        xy = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=per_cell)
        rows += [{'series': f's{c % 2}', 'depth': c, 'x': c + a, 'y': between * c + b} for a, b in xy]
    return pd.DataFrame(rows)


def test_the_between_cell_trend_is_removed_and_the_within_cell_one_found():
    runs = _cells(np.random.default_rng(0), rho=0.9)
    raw = np.corrcoef(runs['x'], runs['y'])[0, 1]
    res = within_cell_correlation(runs, 'x', 'y')
    assert raw < -0.8                                 # across cells: strongly negative
    assert res['r'] > 0.8 and res['lo'] > 0.6 and res['p'] < 1e-6
    assert res['n_runs'] == 48 and res['n_cells'] == 8 and res['df'] == 39


@pytest.mark.slow   # 400 simulated studies: ~4 s
def test_the_interval_covers_the_true_correlation_at_its_level():
    rng = np.random.default_rng(1)
    cover = [(lambda r: r['lo'] <= 0.5 <= r['hi'])(within_cell_correlation(_cells(rng, 0.5, 4, 6), 'x', 'y'))
             for _ in range(400)]
    assert 0.92 <= np.mean(cover) <= 0.98             # 95 % nominal; 400 draws: ±2.2 points at 2 SE


def test_independent_inputs_give_an_interval_about_zero_and_degenerate_cells_no_estimate():
    res = within_cell_correlation(_cells(np.random.default_rng(2), rho=0.0), 'x', 'y')
    assert res['lo'] < 0 < res['hi'] and res['p'] > 0.05
    flat = pd.DataFrame({'series': ['a'] * 4 + ['b'] * 4, 'depth': [2] * 8, 'x': [1.0] * 4 + [2.0] * 4,
                         'y': [50, 51, 49, 52, 60, 61, 59, 62]})
    assert math.isnan(within_cell_correlation(flat, 'x', 'y')['r'])   # x never varies within a cell
    one = pd.DataFrame({'series': ['a', 'b', 'c'], 'depth': [2, 2, 2], 'x': [1., 2., 3.], 'y': [3., 2., 1.]})
    res = within_cell_correlation(one, 'x', 'y')
    assert math.isnan(res['r']) and res['n_runs'] == 0   # single-run cells carry no within-cell variation
    with pytest.raises(ValueError, match='level'):
        within_cell_correlation(flat, 'x', 'y', level=95)
