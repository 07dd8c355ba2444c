"""The study statistics of one analysis (paired differences, interaction, saturation intervals, power), from the
runs table and the runs' per-image correctness artifacts (``eval/correct.npy``), as tables for the report.

Statistics: :mod:`analysis.stats`. This module only chooses what to compute for a study's grid and renders it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import stats
from .store import load_array

__all__ = ['CORRECT_ARTIFACT', 'StudyStatistics', 'load_correct', 'study_statistics', 'statistics_markdown']

from deepvit.schema import CORRECT_ARTIFACT, SAMPLE_ORDER  # noqa: E402  (the record's names: one place)


def load_correct(client, frame: pd.DataFrame, progress: bool = True) -> Optional[Dict[str, np.ndarray]]:
    """Per-image correctness of every finished run, restricted to the images every run scored, or ``None`` when some
    finished run has none or the runs cannot be aligned image by image.

    Runs tagged ``eval.correct_order=sample`` (docs/mlflow_schema.md) hold their array in sample order: they align
    whatever their world size and data workers, given one data source. Older runs hold the loader's rank-major order
    with padding: they align only with runs of the same world size, data workers and data source."""
    done = frame[frame['status'] == 'FINISHED']
    if done.empty:
        return None
    by_sample = 'correct_order' in done.columns and bool((done['correct_order'].fillna('') == SAMPLE_ORDER).all())
    layout = ['data_source'] if by_sample else ['world_size', 'num_workers', 'data_source']
    if len(done[layout].astype(str).drop_duplicates()) > 1:
        return None
    arrays = {}
    for run_id in tqdm(done['run_id'], desc='per-image results', unit='run', disable=not progress):
        a = load_array(client, run_id, CORRECT_ARTIFACT)
        if a is None or (arrays and a.shape != next(iter(arrays.values())).shape):
            return None
        arrays[run_id] = a
    valid = np.logical_and.reduce([a >= 0 for a in arrays.values()])
    if not by_sample and not all(np.array_equal(a >= 0, valid) for a in arrays.values()):
        return None      # loader order: padding positions must agree, or the orders differ
    return {k: v[valid].astype(np.uint8) for k, v in arrays.items()}


@dataclass(eq=False)   # differences is a DataFrame: no element-wise ==
class StudyStatistics:
    """Everything the report's statistics section shows (:func:`study_statistics`; values in pp).

    Attributes:
        baseline: the baseline series label.
        differences: :func:`analysis.stats.paired_differences` (empty when skipped).
        interactions: one :class:`analysis.stats.Interaction` per series sharing two depths with the baseline.
        saturation: one :class:`analysis.stats.SaturationInterval` per series with two depths or more.
        power: :class:`analysis.stats.Resolution` of the pooled interaction sd, or None (no interaction with two
            seeds).
        n_images, binomial_se: test images per run and one run's test-sampling standard error, or None (the
            per-image results were not used).
        skipped: why nothing was computed, or None.
        correct_note: why the per-image results were not used, or None.
        width_note: the series of other widths left out of the comparison, or None.
    """
    baseline: str
    differences: pd.DataFrame = field(default_factory=pd.DataFrame)
    interactions: List[stats.Interaction] = field(default_factory=list)
    saturation: List[stats.SaturationInterval] = field(default_factory=list)
    power: Optional[stats.Resolution] = None
    n_images: Optional[int] = None
    binomial_se: Optional[float] = None
    skipped: Optional[str] = None
    correct_note: Optional[str] = None
    width_note: Optional[str] = None

    @property
    def images_resampled(self) -> bool:
        """The bootstraps resampled test images too (per-image results were used)."""
        return self.n_images is not None


def study_statistics(frame: pd.DataFrame, correct: Optional[Dict[str, np.ndarray]], baseline: str,
                     n_boot: int = 2000, threshold: float = 0.5) -> StudyStatistics:
    """Everything the report's statistics section shows.

    Args:
        frame: :func:`analysis.records.runs_frame` (finished runs with a final top-1 are used).
        correct: :func:`load_correct` (None: the bootstrap resamples seeds only).
        baseline: the baseline series label (e.g. ``'vit w96/h6'``).
    Returns:
        A :class:`StudyStatistics`; ``skipped`` says why when the runs cannot be compared (several runs per cell, no
        baseline run).
    Raises:
        ValueError: ``frame`` lacks a column :func:`analysis.stats.from_runs_frame` needs.
    """
    runs = stats.from_runs_frame(frame, metric='final')
    out = StudyStatistics(baseline=baseline)
    if runs.duplicated(['series', 'depth', 'seed']).any():
        out.skipped = ('more than one finished run per (series, depth, seed): the runs cannot be paired; '
                       'analyse one sweep (--sweep ID)')
        return out
    if runs.empty or baseline not in set(runs['series']):
        out.skipped = f'no finished run of the baseline series {baseline!r}'
        return out
    width = baseline.split(' ')[1] if len(baseline.split(' ')) > 1 else None
    if width is not None:  # pairing is by depth and seed: compare series of the baseline's width only
        other = sorted({s for s in runs['series'] if s.split(' ')[1:2] != [width]})
        if other:
            out.width_note = (f"series of other widths not compared with `{baseline}`: {', '.join(other)} "
                              f"(pass --baseline for their width)")
        runs = runs[[s.split(' ')[1:2] == [width] for s in runs['series']]]
    if correct is not None:
        try:
            stats.paired_differences(runs, baseline, correct=correct, n_boot=1)   # validates the arrays
        except ValueError as err:
            out.correct_note = f'per-image results not used: {err}'
            correct = None
    if correct is not None:
        out.n_images = int(len(next(iter(correct.values()))))
        out.binomial_se = stats.binomial_se(float(runs['top1'].median()), out.n_images)
    out.differences = stats.paired_differences(runs, baseline, correct=correct, n_boot=n_boot)
    sds = []
    for series in dict.fromkeys(runs['series']):
        if series == baseline:
            continue
        common = set(runs.loc[runs['series'] == series, 'depth']) & set(runs.loc[runs['series'] == baseline, 'depth'])
        if len(common) >= 2:
            inter = stats.interaction(runs, series, baseline, correct=correct, n_boot=n_boot)
            out.interactions.append(inter)
            if inter.n >= 2 and not math.isnan(inter.sd):
                sds.append((inter.sd, inter.n))
    for series in dict.fromkeys(runs['series']):
        if runs.loc[runs['series'] == series, 'depth'].nunique() >= 2:
            out.saturation.append(stats.saturation_bootstrap(runs, series, threshold, correct=correct,
                                                             n_boot=n_boot))
    if sds:
        sd = float(np.sqrt(np.mean([s ** 2 for s, _ in sds])))      # pooled over the interactions measured
        n = int(min(n for _, n in sds))
        out.power = stats.resolution(sd, n, half_width=1.0)
    return out


def _f(x, fmt='+.2f') -> str:
    return '—' if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def statistics_markdown(result: StudyStatistics) -> List[str]:
    """The report's statistics section (Markdown lines)."""
    base = result.baseline
    if result.skipped:
        return ['## Statistics', '', f"Not computed: {result.skipped}."]
    lines = ['## Paired differences against the baseline', '',
             f'Baseline `{base}`. Final-epoch top-1, difference = series − baseline at the same depth and seed '
             '(seeds are paired: same shared initial weights, same data order). t: 95 % Student t interval over seeds; '
             'bootstrap: 95 % percentile interval resampling seeds' +
             (' and test images (the same images for both members of a pair)' if result.images_resampled
              else ' only (no per-image results for every run)') +
             '. "resolved": the t interval excludes 0.']
    if result.width_note:
        lines += ['', result.width_note + '.']
    if result.correct_note:
        lines += ['', result.correct_note + '.']
    if result.binomial_se is not None:
        lines += ['', f"One run's top-1 carries a test-sampling standard error of ~{result.binomial_se:.2f} pp "
                      f"({result.n_images} test images)."]
    diffs = result.differences
    if len(diffs):
        lines += ['', '| series | depth | pairs | mean diff (pp) | sd | t interval | bootstrap interval | resolved |',
                  '|---|---:|---:|---:|---:|---|---|---|']
        for r in diffs.itertuples(index=False):
            lines.append(f'| {r.series} | {r.depth} | {r.n_pairs} | {_f(r.mean_diff)} | {_f(r.sd_diff, ".2f")} '
                         f'| [{_f(r.t_low)}, {_f(r.t_high)}] | [{_f(r.boot_low)}, {_f(r.boot_high)}] '
                         f'| {"yes" if r.resolved else "no"} |')
    lines += ['', '## Depth interaction', '',
              'I = [m(d_hi) − m(d_lo)]_series − [m(d_hi) − m(d_lo)]_baseline: how much more the series gains from '
              'the shallowest to the deepest depth than the baseline (paper claim for Re-attention: I > 0).', '']
    if result.interactions:
        lines += ['| series | d_lo → d_hi | seeds | I (pp) | sd | t interval | bootstrap interval | resolved |',
                  '|---|---|---:|---:|---:|---|---|---|']
        for i in result.interactions:
            lines.append(f"| {i.series} | {i.d_lo} → {i.d_hi} | {i.n} | {_f(i.mean)} "
                         f"| {_f(i.sd, '.2f')} | [{_f(i.t_low)}, {_f(i.t_high)}] "
                         f"| [{_f(i.boot_low)}, {_f(i.boot_high)}] | {'yes' if i.resolved else 'no'} |")
    else:
        lines.append('No series shares two depths with the baseline yet.')
    lines += ['', '## Saturation depth with a bootstrap interval', '',
              'Point: the saturation rule on the mean curve; interval: 95 % of bootstrap replicates (seeds and '
              'images resampled); ">d" = still improving beyond the deepest depth measured.', '',
              '| series | point | interval | distribution | seeds |', '|---|---:|---|---|---:|']
    for s in result.saturation:
        dist = ', '.join(f'{k}: {v:.0%}' for k, v in s.distribution.items())
        point = s.point if s.point is not None else f">{s.dmax}"
        interval = f"[{s.low}, {s.high}]"
        lines.append(f"| {s.series} | {point} | {interval} | {dist} | {s.n_seeds} |")
    lines += ['', '## Power', '']
    p = result.power
    if p is None:
        lines.append('Not estimable yet: no interaction with at least two seeds.')
    else:
        need = p.seeds_needed
        lines.append(f"Per-seed sd of the interaction (pooled): {p.sd:.2f} pp. With {p.n} seeds the 95 % t "
                     f"half-width is {p.half_width_now:.2f} pp and the smallest interaction detectable with 80 % "
                     f"power is {p.detectable_effect:.2f} pp. A 1-point interaction (95 % half-width ≤ 1 pp) needs "
                     + (f'{need} seeds.' if need is not None else 'more than 1000 seeds at this spread.'))
    return lines
