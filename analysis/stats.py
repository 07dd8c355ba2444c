"""What a few-seed depth study can and cannot resolve: paired differences against the baseline, the depth
interaction, a bootstrap interval for the saturation depth, and how many seeds a target precision needs.

The power and precision functions (``t_half_width``, ``seeds_needed``, ``detectable_effect``, ``resolution``,
``binomial_se``) live in :mod:`analysis.power` and are re-exported here.

Data model
----------
``runs``: a ``pandas.DataFrame``, one row per FINISHED run, with columns

* ``series`` (str): the curve, e.g. ``'vit'``, ``'deepvit'``, ``'layerscale'``; the baseline series is an argument
  (default ``'vit'``);
* ``depth`` (int), ``seed`` (int);
* ``top1`` (float): final-epoch top-1 in percent (0–100);
* ``run_id`` (str): needed only when ``correct`` is given.

One run per ``(series, depth, seed)``. Seeds are PAIRED across series: the same seed means the same shared initial
weights and data order, so every difference is taken within a seed and only seeds present in every cell a statistic
compares enter it. :func:`from_runs_frame` turns :func:`analysis.records.runs_frame` output into this frame.

``correct`` (optional): ``{run_id: 1-D bool/uint8 array (N_test,)}``, the per-image correctness of the run's final
evaluation, the test images in the same order for every run (image ``i`` is the same image in every run), so that
``100 * mean(correct[run_id]) == top1`` of that run (checked to :data:`TOP1_ATOL` points).

Conventions
-----------
* Units: top-1 and every difference are in percentage points (pp); a difference is ``series − baseline``.
* t interval: ``mean ± t_{1−α/2, n−1} · sd / sqrt(n)`` over the n seed-paired values (Student's one-sample t
  interval on the paired differences; ``sd`` with ddof 1; ``α = 1 − confidence``). NaN when n < 2. ``resolved``
  means this interval excludes 0.
* Bootstrap interval: two-level percentile bootstrap over the crossed factors seeds × test images (the "pigeonhole"
  bootstrap, Owen 2007, Ann. Appl. Stat. 1(1):246–266; percentile interval: Efron & Tibshirani 1993, *An Introduction
  to the Bootstrap*, ch. 13). Each replicate draws the n seeds with replacement and, when ``correct`` is given,
  N_test image indices with replacement — one image draw per replicate, used for every run in it (both members of a
  pair, every pair, every depth) — and recomputes the statistic; the interval is the ``α/2, 1 − α/2`` quantiles of
  the replicates. Without ``correct`` only seeds are resampled. NaN when n < 2 (one seed says nothing about seed
  spread). With 2–5 seeds the percentile interval under-covers (it cannot reach beyond the observed seeds), which is
  why ``resolved`` is decided by the t interval.
* Reproducibility: the image draws come from ``SeedSequence([seed, 0])`` and depend only on ``seed``, ``n_boot`` and
  N_test, so a run gets the same image replicates in every call; the seed draws of one cell (a (series, depth) row,
  an interaction, a saturation curve) come from ``SeedSequence([seed, 1, crc32(cell key)])``, so a cell's interval
  does not depend on which other cells the frame holds.
* Saturation depth: :func:`analysis.saturation.saturation_depth` (``None`` = still improving at the largest depth).
  In the bootstrap distribution it is the key ``'none'``; for the interval it counts as +infinity, beyond the largest
  depth ``dmax`` (the rule never returns ``dmax`` itself), and an interval end there is reported as the string
  ``'>dmax'`` with the number filled in, e.g. ``'>32'`` = "not saturated within the depths measured".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import numpy as np
import pandas as pd

from .aggregate import METRICS
from .power import (Resolution, _check_confidence, _is_real, binomial_se, detectable_effect, resolution,
                    seeds_needed, t_half_width)
from .resampling import (REQUIRED_COLUMNS, TOP1_ATOL, Correct, Values, boot_mean, cell_rng, check_boot,
                         check_runs, check_series, correct_matrix, excludes_zero, image_replicates, percentile, seed_cells,
                         seed_counts, t_interval, used_rows)
from .saturation import DEFAULT_THRESHOLD, saturation_depth

__all__ = ['REQUIRED_COLUMNS', 'TOP1_ATOL', 'Interaction', 'SaturationInterval', 'from_runs_frame',
           'paired_differences', 'interaction', 'saturation_bootstrap', 't_half_width', 'seeds_needed',
           'detectable_effect', 'Resolution', 'resolution', 'binomial_se']


@dataclass
class Interaction:
    """The depth interaction of :func:`interaction` (every value in percentage points unless said).

    Attributes:
        series, baseline: the remedy series and the series it is compared with.
        d_lo, d_hi: the two depths.
        seeds: the seeds present in all four cells (ascending); ``n`` is their number.
        values: the per-seed interactions ``I_s``, in the order of ``seeds``.
        mean, sd: mean and sample sd (ddof 1) of the ``I_s``; NaN when ``n = 0`` (sd: ``n < 2``).
        t_low, t_high: Student t interval; boot_low, boot_high: two-level percentile bootstrap interval (NaN when
            ``n < 2``).
        resolved: the t interval excludes 0 (False when it is NaN).
        gain_series, gain_baseline: mean over the same seeds of ``m(d_hi) − m(d_lo)`` for each series.
        confidence: coverage of both intervals; n_boot: bootstrap replicates.
    """
    series: str
    baseline: str
    d_lo: int
    d_hi: int
    seeds: List[int]
    values: List[float]
    n: int
    mean: float
    sd: float
    t_low: float
    t_high: float
    boot_low: float
    boot_high: float
    resolved: bool
    gain_series: float
    gain_baseline: float
    confidence: float
    n_boot: int


@dataclass
class SaturationInterval:
    """The saturation depth of one series with its bootstrap distribution (:func:`saturation_bootstrap`).

    Attributes:
        series: the series whose mean curve is read; threshold: the rule's threshold (pp).
        point: the saturation depth of the mean curve, or None (still improving at the largest depth).
        distribution: ``{depth or 'none': fraction of replicates}``, depths ascending then ``'none'``.
        low, high: the ``α/2`` and ``1 − α/2`` quantiles of the replicates' depth ("none" as +infinity): a depth, or
            ``f'>{dmax}'`` when that quantile is "none".
        depths: the depths measured; dmax: the largest.
        n_seeds: seeds of the series (union over its depths).
        confidence, n_boot: coverage and replicates.
        note: a warning that the distribution is degenerate (one seed, no image resampling), else None.
    """
    series: str
    threshold: float
    point: Optional[int]
    distribution: Dict[Union[int, str], float]
    low: Union[int, str]
    high: Union[int, str]
    depths: List[int]
    dmax: int
    n_seeds: int
    confidence: float
    n_boot: int
    note: Optional[str]

    @property
    def interval(self) -> List[Union[int, str]]:
        """``[low, high]``."""
        return [self.low, self.high]


def from_runs_frame(frame: pd.DataFrame, metric: str = 'final', series_column: str = 'series') -> pd.DataFrame:
    """This module's ``runs`` frame from :func:`analysis.records.runs_frame`'s: finished runs with a known depth, seed
    and top-1; ``top1`` is ``top1_final`` (``metric='final'``) or ``top1_best`` (``'best'``).

    ``series`` is taken from ``series_column``: the records' ``series`` label (remedy and width, e.g.
    ``'vit w64/h4'``; pass that as the baseline) by default, or e.g. ``'remedy'`` for a single-width study.

    Raises:
        ValueError: unknown ``metric`` or a column of the records frame missing.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    col = METRICS[metric]
    missing = [c for c in ('run_id', 'status', series_column, 'depth', 'seed', col) if c not in frame.columns]
    if missing:
        raise ValueError(f"records frame is missing column(s) {missing}")
    done = frame[(frame['status'] == 'FINISHED') & frame['depth'].notna() & frame['seed'].notna() & frame[col].notna()
                 & frame[series_column].notna()]
    return pd.DataFrame({'series': done[series_column].astype(str).to_numpy(),
                         'depth': done['depth'].astype(int).to_numpy(), 'seed': done['seed'].astype(int).to_numpy(),
                         'top1': done[col].astype(float).to_numpy(),
                         'run_id': done['run_id'].astype(str).to_numpy()})


def paired_differences(runs: pd.DataFrame, baseline: str = 'vit', correct: Correct = None, confidence: float = 0.95,
                       n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per series and depth, the seed-paired difference of top-1 to the baseline at the same depth.

    For each series ≠ ``baseline`` and each of its depths, the seeds present in both the series and the baseline at
    that depth give paired differences ``δ_s = top1(series, d, s) − top1(baseline, d, s)`` (pp).

    Args:
        runs: the module's runs frame (see the module docstring).
        baseline: the series every other one is compared with.
        correct: optional per-image correctness (module docstring); when given, the bootstrap resamples test images
            too, with the same image indices for both members of a pair and for all pairs of one replicate.
        confidence: coverage of both intervals.
        n_boot: bootstrap replicates.
        seed: seed of the bootstrap's random draws (module docstring, "Reproducibility").
    Returns:
        Columns ``series, depth, n_pairs, mean_diff, sd_diff, t_low, t_high, boot_low, boot_high, resolved``, one row
        per (series, depth), series in order of first appearance, depths ascending. ``mean_diff`` is the mean of the
        δ_s, ``sd_diff`` their sample sd (ddof 1), ``t_*`` the Student t interval, ``boot_*`` the two-level percentile
        bootstrap interval of the mean (module docstring); the intervals are NaN when ``n_pairs < 2`` (everything
        is NaN when 0). ``resolved``: the t interval excludes 0 (False when undefined).
    Raises:
        ValueError: a missing column, bad values, unknown ``baseline``, or ``correct`` not matching ``runs``.
    """
    confidence = _check_confidence(confidence)
    check_boot(n_boot, seed)
    df = check_runs(runs, need_run_id=correct is not None)
    check_series(df, baseline, 'baseline')
    values = Values(df, correct, n_boot, seed)
    cells = seed_cells(df)
    others = [s for s in dict.fromkeys(df['series']) if s != baseline]
    rows = []
    for series in others:
        for depth in sorted(d for s, d in cells if s == series):
            mine, base = cells[(series, depth)], cells.get((baseline, depth), {})
            seeds = sorted(set(mine) & set(base))
            a, b = [mine[k] for k in seeds], [base[k] for k in seeds]
            diffs = values.point(a) - values.point(b)
            mean, sd, t_low, t_high = t_interval(diffs, confidence)
            boot_low = boot_high = math.nan
            if len(seeds) >= 2:
                reps = boot_mean(values.boot(a) - values.boot(b), n_boot, cell_rng(seed, f'diff|{series}|{depth}'))
                boot_low, boot_high = percentile(reps, confidence)
            rows.append({'series': series, 'depth': depth, 'n_pairs': len(seeds), 'mean_diff': mean, 'sd_diff': sd,
                         't_low': t_low, 't_high': t_high, 'boot_low': boot_low, 'boot_high': boot_high,
                         'resolved': excludes_zero(t_low, t_high)})
    cols = ['series', 'depth', 'n_pairs', 'mean_diff', 'sd_diff', 't_low', 't_high', 'boot_low', 'boot_high',
            'resolved']
    out = pd.DataFrame(rows, columns=cols)
    return out.astype({'depth': np.int64, 'n_pairs': np.int64, 'resolved': bool}) if len(out) else out


def interaction(runs: pd.DataFrame, series: str, baseline: str = 'vit', d_lo: Optional[int] = None,
                d_hi: Optional[int] = None, correct: Correct = None, confidence: float = 0.95, n_boot: int = 2000,
                seed: int = 0) -> Interaction:
    """Depth interaction: how much more (pp) ``series`` gains from ``d_lo`` to ``d_hi`` than the baseline does.

    ``I = [m(d_hi) − m(d_lo)]_series − [m(d_hi) − m(d_lo)]_baseline``, estimated seed-paired: for each seed s present
    in all four cells, ``I_s = (top1(series, d_hi, s) − top1(series, d_lo, s)) − (top1(baseline, d_hi, s) −
    top1(baseline, d_lo, s))``; ``I`` is their mean. Intervals as in :func:`paired_differences` (Student t over the
    I_s; two-level bootstrap with one image draw for all four runs of a seed and all seeds of a replicate).

    Args:
        runs, baseline, correct, confidence, n_boot, seed: as in :func:`paired_differences`.
        series: the remedy series.
        d_lo, d_hi: the two depths; default the smallest and largest depth present in both series.
    Returns:
        An :class:`Interaction`; ``n = 0`` gives NaN statistics, ``n < 2`` NaN intervals.
    Raises:
        ValueError: bad runs/correct, unknown series or baseline, ``series == baseline``, fewer than two depths shared,
            ``d_lo``/``d_hi`` not a depth of both series or ``d_lo >= d_hi``.
    """
    confidence = _check_confidence(confidence)
    check_boot(n_boot, seed)
    df = check_runs(runs, need_run_id=correct is not None)
    check_series(df, baseline, 'baseline')
    check_series(df, series, 'series')
    if series == baseline:
        raise ValueError(f"series and baseline must differ, both are {series!r}")
    shared = sorted(set(df.loc[df['series'] == series, 'depth']) & set(df.loc[df['series'] == baseline, 'depth']))
    if len(shared) < 2:
        raise ValueError(f"series {series!r} and baseline {baseline!r} share fewer than two depths: {shared}")
    d_lo = shared[0] if d_lo is None else d_lo
    d_hi = shared[-1] if d_hi is None else d_hi
    for name, d in (('d_lo', d_lo), ('d_hi', d_hi)):
        if d not in shared:
            raise ValueError(f"{name}={d!r} is not a depth of both {series!r} and {baseline!r} (shared: {shared})")
    d_lo, d_hi = int(d_lo), int(d_hi)
    if d_lo >= d_hi:
        raise ValueError(f"d_lo must be smaller than d_hi, got d_lo={d_lo}, d_hi={d_hi}")
    df = used_rows(df, [series, baseline], [d_lo, d_hi])
    values = Values(df, correct, n_boot, seed)
    cells = seed_cells(df)
    keys = [(series, d_hi), (series, d_lo), (baseline, d_hi), (baseline, d_lo)]
    seeds = sorted(set.intersection(*(set(cells.get(k, {})) for k in keys)))
    rows = [[cells[k][s] for s in seeds] for k in keys]

    def combine(get):
        r_hi, r_lo, b_hi, b_lo = (get(r) for r in rows)
        return (r_hi - r_lo) - (b_hi - b_lo), r_hi - r_lo, b_hi - b_lo

    i_s, gain_r, gain_b = combine(values.point)
    mean, sd, t_low, t_high = t_interval(i_s, confidence)
    boot_low = boot_high = math.nan
    if len(seeds) >= 2:
        reps = boot_mean(combine(values.boot)[0], n_boot, cell_rng(seed, f'interaction|{series}|{baseline}|'
                                                                           f'{d_lo}|{d_hi}'))
        boot_low, boot_high = percentile(reps, confidence)
    nan_mean = (lambda v: float(np.mean(v)) if len(v) else math.nan)
    return Interaction(series=series, baseline=baseline, d_lo=d_lo, d_hi=d_hi, seeds=seeds,
                       values=[float(v) for v in i_s], n=len(seeds), mean=mean, sd=sd, t_low=t_low, t_high=t_high,
                       boot_low=boot_low, boot_high=boot_high, resolved=excludes_zero(t_low, t_high),
                       gain_series=nan_mean(gain_r), gain_baseline=nan_mean(gain_b), confidence=confidence,
                       n_boot=int(n_boot))


def saturation_bootstrap(runs: pd.DataFrame, series: str, threshold: float = DEFAULT_THRESHOLD,
                         correct: Correct = None, n_boot: int = 2000, seed: int = 0,
                         confidence: float = 0.95) -> SaturationInterval:
    """Saturation depth of one series' mean curve, with its bootstrap distribution and interval.

    The point is :func:`analysis.saturation.saturation_depth` of ``m(d)`` = mean top-1 over the seeds at depth d. A
    replicate draws the series' seeds (the union over its depths) with replacement once — the same draw for every
    depth, since a seed is paired across depths — and, with ``correct``, one image draw for all runs; ``m*(d)`` is the
    mean over the drawn seeds that have a run at d (with multiplicity). A depth none of whose seeds was drawn is NaN
    in that replicate and so ignored by the rule (only possible when seeds are missing at some depths).

    Args:
        runs, correct, n_boot, seed, confidence: as in :func:`paired_differences`.
        series: the series whose curve is read.
        threshold: the rule's threshold (pp), default :data:`analysis.saturation.DEFAULT_THRESHOLD`.
    Returns:
        A :class:`SaturationInterval`. ``low``/``high`` are the ``α/2`` and ``1 − α/2`` quantiles (inverted-CDF, so
        always a value some replicate took) of the depth with "none" as +infinity: a depth (int), or ``f'>{dmax}'``
        when that quantile is "none". ``note`` flags a single seed without image resampling (the distribution is
        then degenerate and says nothing) or is None.
    Raises:
        ValueError: bad runs/correct, unknown series, or ``threshold`` not positive.
    """
    confidence = _check_confidence(confidence)
    check_boot(n_boot, seed)
    if not (_is_real(threshold) and threshold > 0):
        raise ValueError(f"threshold must be > 0 percentage points, got {threshold!r}")
    df = check_runs(runs, need_run_id=correct is not None)
    check_series(df, series, 'series')
    df = used_rows(df, [series])
    values = Values(df, correct, n_boot, seed)
    cells = seed_cells(df)
    depths = sorted(d for _, d in cells)
    seeds = sorted(set(df['seed']))
    col = {s: j for j, s in enumerate(seeds)}
    point = saturation_depth([(d, float(np.mean(values.point(list(cells[(series, d)].values()))))) for d in depths],
                             threshold)

    counts = seed_counts(len(seeds), n_boot, cell_rng(seed, f'saturation|{series}'))
    means = np.empty((n_boot, len(depths)))
    for i, d in enumerate(depths):
        cell = cells[(series, d)]
        cols = [col[s] for s in cell]
        w = counts[:, cols]
        num = (w * values.boot(list(cell.values()))).sum(axis=1)
        den = w.sum(axis=1)
        with np.errstate(invalid='ignore', divide='ignore'):
            means[:, i] = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    reps = [saturation_depth(list(zip(depths, row)), threshold) for row in means]

    dmax = depths[-1]
    numeric = np.array([math.inf if r is None else float(r) for r in reps])
    alpha = 1.0 - confidence
    ends = np.quantile(numeric, [alpha / 2, 1 - alpha / 2], method='inverted_cdf')
    low, high = (f'>{dmax}' if math.isinf(e) else int(e) for e in ends)
    distribution: Dict[Union[int, str], float] = {}
    for d in depths:
        k = sum(r == d for r in reps)
        if k:
            distribution[d] = k / n_boot
    k_none = sum(r is None for r in reps)
    if k_none:
        distribution['none'] = k_none / n_boot
    note = None
    if len(seeds) < 2 and correct is None:
        note = 'one seed and no per-image correctness: nothing is resampled, the distribution is degenerate'
    return SaturationInterval(series=series, threshold=float(threshold), point=point, distribution=distribution,
                              low=low, high=high, depths=depths, dmax=dmax, n_seeds=len(seeds),
                              confidence=confidence, n_boot=int(n_boot), note=note)
