"""The data model, checks and resampling helpers behind :mod:`analysis.stats`' estimators (its docstring states the
data model, the interval conventions and the bootstrap): run-frame validation, the per-image correctness matrix, the
seeds × images replicates, the t and percentile intervals. Used by :mod:`analysis.stats` only.
"""
from __future__ import annotations

import math
import zlib
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats

REQUIRED_COLUMNS = ('series', 'depth', 'seed', 'top1')
TOP1_ATOL = 5e-5 + 1e-9  # pp: how far top1 may sit from 100 * mean(correct): the trainer logs top-1 rounded to
#   1e-4 points (deepvit.training.engine.PERCENT_DIGITS), so 100 * k / 360 is up to 5e-5 away (was 1e-6: a digits
#   run's images were never resampled)
IMAGE_CHUNK = 4_000_000  # image indices drawn at once (replicates × N_test), bounds memory to ~50 MB

Correct = Optional[Mapping[str, np.ndarray]]


# ---------------------------------------------------------------------------------------------------- validation
def check_boot(n_boot: int, seed: int) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def check_runs(runs: pd.DataFrame, need_run_id: bool) -> pd.DataFrame:
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


def check_series(df: pd.DataFrame, name: str, field: str) -> None:
    present = list(dict.fromkeys(df['series']))
    if name not in present:
        raise ValueError(f"{field} {name!r} is not a series in runs (series: {present})")


def correct_matrix(df: pd.DataFrame, correct: Mapping[str, np.ndarray]) -> np.ndarray:
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
def cell_rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 1, zlib.crc32(key.encode())]))


def image_replicates(matrix: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
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
    chunk = max(1, IMAGE_CHUNK // n_images)
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        idx = rng.integers(0, n_images, size=(c, n_images))
        idx += (np.arange(c) * n_images)[:, None]
        counts = np.bincount(idx.ravel(), minlength=c * n_images).reshape(c, n_images).astype(np.float32)
        out[start:start + c] = (counts @ m).astype(np.float64)
    return out * (100.0 / n_images)


def seed_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, n)`` multiplicity of each of n seeds in ``n_boot`` draws of n seeds with replacement."""
    idx = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def boot_mean(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Replicates of the mean over seeds: ``values`` is ``(n_boot, n)`` (per image replicate) or ``(1, n)``."""
    counts = seed_counts(values.shape[1], n_boot, rng)
    return (counts * values).sum(axis=1) / values.shape[1]


def percentile(reps: np.ndarray, confidence: float) -> Tuple[float, float]:
    alpha = 1.0 - confidence
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def t_interval(values: np.ndarray, confidence: float) -> Tuple[float, float, float, float]:
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


def excludes_zero(t_low: float, t_high: float) -> bool:
    return bool(not math.isnan(t_low) and (t_low > 0 or t_high < 0))


def seed_cells(df: pd.DataFrame) -> Dict[Tuple[str, int], Dict[int, int]]:
    """``{(series, depth): {seed: row index in df}}``."""
    out: Dict[Tuple[str, int], Dict[int, int]] = {}
    for i, (s, d, k) in enumerate(zip(df['series'], df['depth'], df['seed'])):
        out.setdefault((s, int(d)), {})[int(k)] = i
    return out


class Values:
    """Top-1 of the frame's runs: the data, and (with ``correct``) on each image replicate."""

    def __init__(self, df: pd.DataFrame, correct: Correct, n_boot: int, seed: int):
        self.top1 = df['top1'].to_numpy(dtype=float)
        self.reps = None if correct is None else image_replicates(correct_matrix(df, correct), n_boot, seed)

    def point(self, rows: Sequence[int]) -> np.ndarray:
        return self.top1[list(rows)]

    def boot(self, rows: Sequence[int]) -> np.ndarray:
        """``(n_boot, len(rows))`` with images resampled, else ``(1, len(rows))`` (the data)."""
        return self.top1[list(rows)][None, :] if self.reps is None else self.reps[:, list(rows)]


def used_rows(df: pd.DataFrame, series: Sequence[str], depths: Optional[Sequence[int]] = None) -> pd.DataFrame:
    keep = df['series'].isin(list(series))
    if depths is not None:
        keep &= df['depth'].isin([int(d) for d in depths])
    return df[keep].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------- public API
