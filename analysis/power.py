"""How precise a few-seed comparison is, and how many seeds a target precision needs: the t interval's half-width,
the seeds for a target half-width, the effect detectable with a given power (statsmodels' ``TTestPower``), and a
single run's test-set sampling error. Units: percentage points (pp) of top-1; ``sd`` is the per-seed sd of the
paired quantity (ddof 1). Re-exported by :mod:`analysis.stats`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import stats

__all__ = ['t_half_width', 'seeds_needed', 'detectable_effect', 'Resolution', 'resolution', 'binomial_se']


@dataclass
class Resolution:
    """What ``n`` seeds resolve (:func:`resolution`); every width and effect in pp.

    Attributes:
        sd: per-seed sd of the paired quantity; n: seeds.
        half_width_now: the t interval's half-width at ``n`` (:func:`t_half_width`).
        detectable_effect: the effect detectable at ``n`` with ``power`` (:func:`detectable_effect`).
        half_width_target: the target half-width; seeds_needed: seeds that reach it (None when above ``n_max``).
        confidence, power: the interval's coverage and the test's power.
    """
    sd: float
    n: int
    half_width_now: float
    detectable_effect: float
    half_width_target: float
    seeds_needed: Optional[int]
    confidence: float
    power: float


def _is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check_confidence(confidence: float) -> float:
    if not (_is_real(confidence) and 0 < confidence < 1):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


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
    per-seed sd of the paired quantity in pp (e.g. ``interaction().sd`` for the interaction). This plans the
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
               n_max: int = 1000) -> Resolution:
    """What ``n`` seeds with per-seed paired sd ``sd`` (pp) resolve, for a report line.

    Returns:
        A :class:`Resolution`.
    Raises:
        ValueError: ``sd`` not a finite number >= 0, ``n`` not an integer >= 2, ``half_width`` not > 0, ``n_max``
            not an integer >= 2, ``confidence`` outside (0, 1) or ``power`` outside (1 − confidence, 1). More than
            ``n_max`` seeds needed is not an error: ``seeds_needed`` is then None.
    """
    half_width_now = t_half_width(sd, n, confidence)     # checks sd and n before int(n)
    needed = _seeds_needed(sd, half_width, confidence, n_max)
    return Resolution(sd=float(sd), n=int(n), half_width_now=half_width_now,
                      detectable_effect=detectable_effect(sd, n, confidence, power),
                      half_width_target=float(half_width), seeds_needed=needed, confidence=confidence, power=power)


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
