"""Per-block profiles and summary scalars of (L, L) cross-layer matrices, vectorised over bootstrap replicates.

Profiles (each (L,), NaN where undefined): ``prev`` — similarity of block p with block p − 1 (NaN at p = 0);
``first`` — with block 0; ``last`` — with block L − 1.

Summaries: ``mean_adjacent`` — mean of ``prev``; ``deep_adjacent`` — mean of ``prev`` over the deepest quarter of the
blocks (at least one pair), so that collapse confined to the last blocks is not diluted by the early ones;
``similar_blocks`` — the paper's count (:func:`deepvit.collapse.similar_blocks`).
"""
from __future__ import annotations

import warnings
from typing import Dict, Tuple

import numpy as np

__all__ = ['profiles', 'adjacent_summaries', 'deep_blocks', 'percentile_interval']


def deep_blocks(depth: int) -> int:
    """Number of adjacent pairs in the deepest quarter of ``depth`` blocks: max(1, depth // 4) (0 for depth 1)."""
    return 0 if depth < 2 else max(1, depth // 4)


def _nanmean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)      # all-NaN slices are NaN, on purpose
        return np.nanmean(x, axis=axis)


def profiles(sim: np.ndarray) -> Dict[str, np.ndarray]:
    """``{'prev', 'first', 'last'}`` per-block profiles of (..., L, L) matrices → (..., L) each."""
    sim = np.asarray(sim, dtype=np.float64)
    L = sim.shape[-1]
    prev = np.full(sim.shape[:-1], np.nan)
    if L > 1:
        prev[..., 1:] = np.diagonal(sim, offset=-1, axis1=-2, axis2=-1)
    return {'prev': prev, 'first': sim[..., :, 0], 'last': sim[..., :, L - 1]}


def adjacent_summaries(sim: np.ndarray) -> Dict[str, np.ndarray]:
    """``{'mean_adjacent', 'deep_adjacent'}`` of (..., L, L) matrices → (...) each (NaN for L = 1)."""
    prev = profiles(sim)['prev'][..., 1:]
    k = deep_blocks(np.asarray(sim).shape[-1])
    deep = prev[..., prev.shape[-1] - k:] if k else prev
    return {'mean_adjacent': _nanmean(prev), 'deep_adjacent': _nanmean(deep)}


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> Tuple[float, float]:
    """Percentile bootstrap interval of (R,) replicates, NaNs dropped; (NaN, NaN) when none is finite."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float('nan'), float('nan')
    alpha = (1 - level) / 2
    lo, hi = np.quantile(r, [alpha, 1 - alpha])
    return float(lo), float(hi)
