"""What a few-seed depth study can and cannot resolve: paired differences against the baseline, the depth
interaction, a bootstrap interval for the saturation depth, and how many seeds a target precision needs.

Over 400 lines: the three estimators (paired differences, interaction, saturation bootstrap) and the power
functions share one data model and its checks, resampling and interval helpers; split, each would import them all.

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
import zlib
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from scipy import stats

from .aggregate import METRICS
from .saturation import DEFAULT_THRESHOLD, saturation_depth

__all__ = ['REQUIRED_COLUMNS', 'TOP1_ATOL', 'from_runs_frame', 'paired_differences', 'interaction',
           'saturation_bootstrap', 't_half_width', 'seeds_needed', 'detectable_effect', 'resolution', 'binomial_se']

REQUIRED_COLUMNS = ('series', 'depth', 'seed', 'top1')
TOP1_ATOL = 5e-5 + 1e-9  # pp: how far top1 may sit from 100 * mean(correct): the trainer logs top-1 rounded to
#   1e-4 points (deepvit.training.engine.PERCENT_DIGITS), so 100 * k / 360 is up to 5e-5 away (was 1e-6: a digits
#   run's images were never resampled)
_IMAGE_CHUNK = 4_000_000  # image indices drawn at once (replicates × N_test), bounds memory to ~50 MB

Correct = Optional[Mapping[str, np.ndarray]]


# ---------------------------------------------------------------------------------------------------- validation
def _is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check_confidence(confidence: float) -> float:
    if not (_is_real(confidence) and 0 < confidence < 1):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def _check_boot(n_boot: int, seed: int) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def _check_runs(runs: pd.DataFrame, need_run_id: bool) -> pd.DataFrame:
    """A clean copy of ``runs``: plain Python/NumPy dtypes, no missing values, one run per (series, depth, seed)."""
    if not isinstance(runs, pd.DataFrame):
        raise ValueError(f"runs must be a pandas DataFrame, got {type(runs).__name__}")
    required = REQUIRED_COLUMNS + (('run_id',) if need_run_id else ())
    missing = [c for c in required if c not in runs.columns]
    if missing:
        raise ValueError(f"runs is missing column(s) {missing} (has {list(runs.columns)})")
    if runs.empty:
        raise ValueError("runs has no rows")
    df = runs[list(required)].copy()
    for col in required:
        if df[col].isna().any():
            raise ValueError(f"runs column {col!r} has missing values in {int(df[col].isna().sum())} row(s)")
    df['series'] = df['series'].astype(str)
    for col in ('depth', 'seed'):
        values = df[col].astype(float)
        if not np.all(values == np.round(values)):
            raise ValueError(f"runs column {col!r} must hold integers, got {sorted(set(values))}")
        df[col] = values.astype(np.int64)
    df['top1'] = df['top1'].astype(float)
    bad = df[(df['top1'] < 0) | (df['top1'] > 100)]
    if len(bad):
        raise ValueError(f"runs column 'top1' must be a percentage in [0, 100], got {bad['top1'].tolist()}")
    if need_run_id:
        df['run_id'] = df['run_id'].astype(str)
        dup_ids = df['run_id'][df['run_id'].duplicated()].unique().tolist()
        if dup_ids:
            raise ValueError(f"runs column 'run_id' has duplicates: {dup_ids}")
    dup = df[df.duplicated(['series', 'depth', 'seed'], keep=False)]
    if len(dup):
        cells = sorted(set(map(tuple, dup[['series', 'depth', 'seed']].values.tolist())))
        raise ValueError(f"runs has more than one run per (series, depth, seed): {cells}")
    return df.reset_index(drop=True)


def _check_series(df: pd.DataFrame, name: str, field: str) -> None:
    present = list(dict.fromkeys(df['series']))
    if name not in present:
        raise ValueError(f"{field} {name!r} is not a series in runs (series: {present})")


def _correct_matrix(df: pd.DataFrame, correct: Mapping[str, np.ndarray]) -> np.ndarray:
    """``(len(df), N_test)`` uint8 correctness of ``df``'s runs, in row order, after checking it against ``top1``."""
    if not isinstance(correct, Mapping):
        raise ValueError(f"correct must be a dict run_id -> array, got {type(correct).__name__}")
    rows, n_images = [], None
    for run_id, top1 in zip(df['run_id'], df['top1']):
        if run_id not in correct:
            raise ValueError(f"correct has no array for run_id {run_id!r}")
        arr = np.asarray(correct[run_id])
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"correct[{run_id!r}] must be a non-empty 1-D array, got shape {arr.shape}")
        if n_images is None:
            n_images = arr.size
        elif arr.size != n_images:
            raise ValueError(f"correct[{run_id!r}] has length {arr.size}, other runs have {n_images} test images")
        if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"correct[{run_id!r}] must hold 0/1 or booleans only")
        arr = arr.astype(np.uint8)
        acc = 100.0 * arr.mean()
        if abs(acc - top1) > TOP1_ATOL:
            raise ValueError(f"top1 of run_id {run_id!r} is {top1!r} but 100 * mean(correct) is {acc!r} "
                             f"(tolerance {TOP1_ATOL} pp)")
        rows.append(arr)
    return np.stack(rows)


# ---------------------------------------------------------------------------------------------------- bootstrap
def _cell_rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 1, zlib.crc32(key.encode())]))


def _image_replicates(matrix: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n_runs)`` top-1 (pp) of each run (a row of ``matrix``) on ``n_boot`` image resamples.

    Replicate b draws N_test image indices with replacement once and uses them for every run. The draws depend only
    on ``seed``, ``n_boot`` and N_test. Sums are exact (integer counts in float32 below 2**24 images).
    """
    n_runs, n_images = matrix.shape
    if n_images >= 2 ** 24:
        raise ValueError(f"correct arrays have {n_images} test images; at most {2 ** 24 - 1} supported")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0]))
    m = matrix.astype(np.float32).T  # (N, n_runs)
    out = np.empty((n_boot, n_runs))
    chunk = max(1, _IMAGE_CHUNK // n_images)
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        idx = rng.integers(0, n_images, size=(c, n_images))
        idx += (np.arange(c) * n_images)[:, None]
        counts = np.bincount(idx.ravel(), minlength=c * n_images).reshape(c, n_images).astype(np.float32)
        out[start:start + c] = (counts @ m).astype(np.float64)
    return out * (100.0 / n_images)


def _seed_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, n)`` multiplicity of each of n seeds in ``n_boot`` draws of n seeds with replacement."""
    idx = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _boot_mean(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Replicates of the mean over seeds: ``values`` is ``(n_boot, n)`` (per image replicate) or ``(1, n)``."""
    counts = _seed_counts(values.shape[1], n_boot, rng)
    return (counts * values).sum(axis=1) / values.shape[1]


def _percentile(reps: np.ndarray, confidence: float) -> Tuple[float, float]:
    alpha = 1.0 - confidence
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _t_interval(values: np.ndarray, confidence: float) -> Tuple[float, float, float, float]:
    """``(mean, sd, t_low, t_high)`` of paired values (sd ddof 1; NaN where undefined): the Student t interval of
    ``scipy.stats.ttest_1samp``."""
    n = len(values)
    if n == 0:
        return (math.nan,) * 4
    mean = float(np.mean(values))
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(np.std(values, ddof=1))
    if sd == 0:       # scipy gives NaN for a constant sample; the interval is the point
        return mean, 0.0, mean, mean
    ci = stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
    return mean, sd, float(ci.low), float(ci.high)


def _resolved(t_low: float, t_high: float) -> bool:
    return bool(not math.isnan(t_low) and (t_low > 0 or t_high < 0))


def _cells(df: pd.DataFrame) -> Dict[Tuple[str, int], Dict[int, int]]:
    """``{(series, depth): {seed: row index in df}}``."""
    out: Dict[Tuple[str, int], Dict[int, int]] = {}
    for i, (s, d, k) in enumerate(zip(df['series'], df['depth'], df['seed'])):
        out.setdefault((s, int(d)), {})[int(k)] = i
    return out


class _Values:
    """Top-1 of the frame's runs: the data, and (with ``correct``) on each image replicate."""

    def __init__(self, df: pd.DataFrame, correct: Correct, n_boot: int, seed: int):
        self.top1 = df['top1'].to_numpy(dtype=float)
        self.reps = None if correct is None else _image_replicates(_correct_matrix(df, correct), n_boot, seed)

    def point(self, rows: Sequence[int]) -> np.ndarray:
        return self.top1[list(rows)]

    def boot(self, rows: Sequence[int]) -> np.ndarray:
        """``(n_boot, len(rows))`` with images resampled, else ``(1, len(rows))`` (the data)."""
        return self.top1[list(rows)][None, :] if self.reps is None else self.reps[:, list(rows)]


def _used(df: pd.DataFrame, series: Sequence[str], depths: Optional[Sequence[int]] = None) -> pd.DataFrame:
    keep = df['series'].isin(list(series))
    if depths is not None:
        keep &= df['depth'].isin([int(d) for d in depths])
    return df[keep].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------- public API
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
    _check_boot(n_boot, seed)
    df = _check_runs(runs, need_run_id=correct is not None)
    _check_series(df, baseline, 'baseline')
    values = _Values(df, correct, n_boot, seed)
    cells = _cells(df)
    others = [s for s in dict.fromkeys(df['series']) if s != baseline]
    rows = []
    for series in others:
        for depth in sorted(d for s, d in cells if s == series):
            mine, base = cells[(series, depth)], cells.get((baseline, depth), {})
            seeds = sorted(set(mine) & set(base))
            a, b = [mine[k] for k in seeds], [base[k] for k in seeds]
            diffs = values.point(a) - values.point(b)
            mean, sd, t_low, t_high = _t_interval(diffs, confidence)
            boot_low = boot_high = math.nan
            if len(seeds) >= 2:
                reps = _boot_mean(values.boot(a) - values.boot(b), n_boot, _cell_rng(seed, f'diff|{series}|{depth}'))
                boot_low, boot_high = _percentile(reps, confidence)
            rows.append({'series': series, 'depth': depth, 'n_pairs': len(seeds), 'mean_diff': mean, 'sd_diff': sd,
                         't_low': t_low, 't_high': t_high, 'boot_low': boot_low, 'boot_high': boot_high,
                         'resolved': _resolved(t_low, t_high)})
    cols = ['series', 'depth', 'n_pairs', 'mean_diff', 'sd_diff', 't_low', 't_high', 'boot_low', 'boot_high',
            'resolved']
    out = pd.DataFrame(rows, columns=cols)
    return out.astype({'depth': np.int64, 'n_pairs': np.int64, 'resolved': bool}) if len(out) else out


def interaction(runs: pd.DataFrame, series: str, baseline: str = 'vit', d_lo: Optional[int] = None,
                d_hi: Optional[int] = None, correct: Correct = None, confidence: float = 0.95, n_boot: int = 2000,
                seed: int = 0) -> Dict:
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
        ``{'series', 'baseline', 'd_lo', 'd_hi', 'seeds', 'values' (the I_s, pp), 'n', 'mean', 'sd', 't_low', 't_high',
        'boot_low', 'boot_high', 'resolved', 'gain_series', 'gain_baseline' (mean over the same seeds of
        m(d_hi) − m(d_lo), pp), 'confidence', 'n_boot'}``; ``n = 0`` gives NaN statistics, ``n < 2`` NaN intervals.
    Raises:
        ValueError: bad runs/correct, unknown series or baseline, ``series == baseline``, fewer than two depths shared,
            ``d_lo``/``d_hi`` not a depth of both series or ``d_lo >= d_hi``.
    """
    confidence = _check_confidence(confidence)
    _check_boot(n_boot, seed)
    df = _check_runs(runs, need_run_id=correct is not None)
    _check_series(df, baseline, 'baseline')
    _check_series(df, series, 'series')
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
    df = _used(df, [series, baseline], [d_lo, d_hi])
    values = _Values(df, correct, n_boot, seed)
    cells = _cells(df)
    keys = [(series, d_hi), (series, d_lo), (baseline, d_hi), (baseline, d_lo)]
    seeds = sorted(set.intersection(*(set(cells.get(k, {})) for k in keys)))
    rows = [[cells[k][s] for s in seeds] for k in keys]

    def combine(get):
        r_hi, r_lo, b_hi, b_lo = (get(r) for r in rows)
        return (r_hi - r_lo) - (b_hi - b_lo), r_hi - r_lo, b_hi - b_lo

    i_s, gain_r, gain_b = combine(values.point)
    mean, sd, t_low, t_high = _t_interval(i_s, confidence)
    boot_low = boot_high = math.nan
    if len(seeds) >= 2:
        reps = _boot_mean(combine(values.boot)[0], n_boot, _cell_rng(seed, f'interaction|{series}|{baseline}|'
                                                                           f'{d_lo}|{d_hi}'))
        boot_low, boot_high = _percentile(reps, confidence)
    nan_mean = (lambda v: float(np.mean(v)) if len(v) else math.nan)
    return {'series': series, 'baseline': baseline, 'd_lo': d_lo, 'd_hi': d_hi, 'seeds': seeds,
            'values': [float(v) for v in i_s], 'n': len(seeds), 'mean': mean, 'sd': sd, 't_low': t_low,
            't_high': t_high, 'boot_low': boot_low, 'boot_high': boot_high, 'resolved': _resolved(t_low, t_high),
            'gain_series': nan_mean(gain_r), 'gain_baseline': nan_mean(gain_b), 'confidence': confidence,
            'n_boot': int(n_boot)}


def saturation_bootstrap(runs: pd.DataFrame, series: str, threshold: float = DEFAULT_THRESHOLD,
                         correct: Correct = None, n_boot: int = 2000, seed: int = 0,
                         confidence: float = 0.95) -> Dict:
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
        ``{'series', 'threshold', 'point' (depth or None), 'distribution' ({depth or 'none': fraction of
        replicates}, depths ascending then 'none'), 'low', 'high', 'interval' ([low, high]), 'depths', 'dmax',
        'n_seeds', 'confidence', 'n_boot', 'note'}``. ``low``/``high`` are the ``α/2`` and ``1 − α/2`` quantiles
        (inverted-CDF, so always a value some replicate took) of the depth with "none" as +infinity: a depth (int),
        or ``f'>{dmax}'`` when that quantile is "none". ``note`` flags a single seed without image resampling (the
        distribution is then degenerate and says nothing) or is None.
    Raises:
        ValueError: bad runs/correct, unknown series, or ``threshold`` not positive.
    """
    confidence = _check_confidence(confidence)
    _check_boot(n_boot, seed)
    if not (_is_real(threshold) and threshold > 0):
        raise ValueError(f"threshold must be > 0 percentage points, got {threshold!r}")
    df = _check_runs(runs, need_run_id=correct is not None)
    _check_series(df, series, 'series')
    df = _used(df, [series])
    values = _Values(df, correct, n_boot, seed)
    cells = _cells(df)
    depths = sorted(d for _, d in cells)
    seeds = sorted(set(df['seed']))
    col = {s: j for j, s in enumerate(seeds)}
    point = saturation_depth([(d, float(np.mean(values.point(list(cells[(series, d)].values()))))) for d in depths],
                             threshold)

    counts = _seed_counts(len(seeds), n_boot, _cell_rng(seed, f'saturation|{series}'))
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
    return {'series': series, 'threshold': float(threshold), 'point': point, 'distribution': distribution,
            'low': low, 'high': high, 'interval': [low, high], 'depths': depths, 'dmax': dmax,
            'n_seeds': len(seeds), 'confidence': confidence, 'n_boot': int(n_boot), 'note': note}


def _check_sd_n(sd: float, n: Optional[int] = None) -> None:
    if not (_is_real(sd) and math.isfinite(sd) and sd >= 0):
        raise ValueError(f"sd must be a finite number >= 0 (pp), got {sd!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2):
        raise ValueError(f"n must be an integer >= 2 (seeds), got {n!r}")


def t_half_width(sd: float, n: int, confidence: float = 0.95) -> float:
    """Half-width (pp) of the Student t interval of a paired mean: ``t_{1−α/2, n−1} · sd / sqrt(n)``.

    Raises:
        ValueError: ``sd`` negative or not finite, ``n < 2``, ``confidence`` outside (0, 1).
    """
    confidence = _check_confidence(confidence)
    _check_sd_n(sd, n)
    return float(stats.t.ppf(1 - (1 - confidence) / 2, n - 1) * sd / math.sqrt(n))


def _seeds_needed(sd: float, half_width: float, confidence: float, n_max: int) -> Optional[int]:
    confidence = _check_confidence(confidence)
    _check_sd_n(sd)
    if not (_is_real(half_width) and half_width > 0):
        raise ValueError(f"half_width must be > 0 (pp), got {half_width!r}")
    if isinstance(n_max, bool) or not isinstance(n_max, (int, np.integer)) or n_max < 2:
        raise ValueError(f"n_max must be an integer >= 2, got {n_max!r}")
    n = np.arange(2, int(n_max) + 1)
    widths = stats.t.ppf(1 - (1 - confidence) / 2, n - 1) * sd / np.sqrt(n)
    ok = np.nonzero(widths <= half_width)[0]
    return int(n[ok[0]]) if len(ok) else None


def seeds_needed(sd: float, half_width: float = 1.0, confidence: float = 0.95, n_max: int = 1000) -> int:
    """Smallest number of seeds n ≥ 2 whose t interval of a paired mean has half-width ≤ ``half_width``.

    Solves ``t_{1−α/2, n−1} · sd / sqrt(n) ≤ half_width`` for n (the left side decreases in n), with ``sd`` the
    per-seed sd of the paired quantity in pp (e.g. ``interaction()['sd']`` for the interaction). This plans the
    interval's width only: the half-width is itself random with a new sd, and it says nothing about power (see
    :func:`detectable_effect`).

    Raises:
        ValueError: bad ``sd``/``half_width``/``confidence``/``n_max``, or more than ``n_max`` seeds needed.
    """
    n = _seeds_needed(sd, half_width, confidence, n_max)
    if n is None:
        raise ValueError(f"sd={sd} pp needs more than n_max={n_max} seeds for a half-width of {half_width} pp "
                         f"at confidence {confidence}")
    return n


def detectable_effect(sd: float, n: int, confidence: float = 0.95, power: float = 0.8) -> float:
    """Smallest true paired mean effect (pp) that a two-sided one-sample t test at level ``1 − confidence`` on n seeds
    detects with probability ``power``.

    statsmodels' ``TTestPower.solve_power`` (noncentral t) gives the standardised effect d; the effect is d · sd.
    The normal approximation ``(z_{1−α/2} + z_power) · sd / sqrt(n)`` is smaller, markedly so for few seeds. (This
    replaced a hand-written root search on ``scipy.stats.nct`` that lost the tail at n = 2 and reported 5.4 · sd
    where a simulation of the test gives 11.5 · sd.)

    Raises:
        ValueError: ``sd`` negative or not finite, ``n < 2``, ``confidence``/``power`` outside (0, 1), or ``power``
            not above the test's level.
    """
    from statsmodels.stats.power import TTestPower
    confidence = _check_confidence(confidence)
    _check_sd_n(sd, n)
    alpha = 1 - confidence
    if not (_is_real(power) and alpha < power < 1):
        raise ValueError(f"power must be in ({alpha:g}, 1), got {power!r}")
    if sd == 0:
        return 0.0
    d = TTestPower().solve_power(effect_size=None, nobs=int(n), alpha=alpha, power=power, alternative='two-sided')
    return float(np.asarray(d).item() * sd)


def resolution(sd: float, n: int, half_width: float = 1.0, confidence: float = 0.95, power: float = 0.8,
               n_max: int = 1000) -> Dict:
    """What ``n`` seeds with per-seed paired sd ``sd`` (pp) resolve, for a report line.

    Returns:
        ``{'sd', 'n', 'half_width_now' (t half-width at n), 'detectable_effect' (at n, see
        :func:`detectable_effect`), 'half_width_target', 'seeds_needed' (None when above n_max), 'confidence',
        'power'}``.
    """
    needed = _seeds_needed(sd, half_width, confidence, n_max)
    return {'sd': float(sd), 'n': int(n), 'half_width_now': t_half_width(sd, n, confidence),
            'detectable_effect': detectable_effect(sd, n, confidence, power), 'half_width_target': float(half_width),
            'seeds_needed': needed, 'confidence': confidence, 'power': power}


def binomial_se(p_percent: float, n_images: int) -> float:
    """Standard error (pp) of one run's top-1 from test-set sampling alone: ``100 · sqrt(p (1 − p) / N)``,
    ``p = p_percent / 100`` (binomial proportion; the images as a sample from their distribution).

    Raises:
        ValueError: ``p_percent`` outside [0, 100] or ``n_images`` not a positive integer.
    """
    if not (_is_real(p_percent) and 0 <= p_percent <= 100):
        raise ValueError(f"p_percent must be in [0, 100], got {p_percent!r}")
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise ValueError(f"n_images must be an integer >= 1, got {n_images!r}")
    p = p_percent / 100.0
    return float(100.0 * math.sqrt(p * (1 - p) / n_images))
