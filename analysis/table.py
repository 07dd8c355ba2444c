"""``depth_table.md``: the paper's "ViT vs DeepViT by depth" table (arXiv 2103.11886, Table 1) for one sweep."""
from __future__ import annotations

import math
from typing import Optional

import pandas as pd

__all__ = ['format_count', 'format_top1', 'depth_table']


def format_count(n: float) -> str:
    """Parameter count for humans: ``24.46M``, ``98.7K``, ``512``; ``—`` when unknown."""
    if n is None or math.isnan(n):
        return '—'
    if n >= 1e6:
        return f'{n / 1e6:.2f}M'
    return f'{n / 1e3:.1f}K' if n >= 1e3 else f'{int(n)}'


def format_top1(mean: float, std: float) -> str:
    """``'79.35 ± 0.12'`` (std over seeds), ``'79.35'`` for one seed, ``'—'`` for no finished run."""
    if math.isnan(mean):
        return '—'
    return f'{mean:.2f}' if math.isnan(std) else f'{mean:.2f} ± {std:.2f}'


def _blocks(x: float) -> str:
    if math.isnan(x):
        return '—'
    return f'{x:.0f}' if float(x).is_integer() else f'{x:.1f}'


def _num(x: float, fmt: str = '.2f') -> str:
    return '—' if x is None or math.isnan(x) else format(x, fmt)


def _rising(r) -> str:
    n = getattr(r, 'n_converge_measured', 0)
    return '—' if not n else f'{r.n_rising}/{n} [{r.gain_mean:+.2f}]'


def depth_table(stats: pd.DataFrame, title: str, metric: str = 'final', note: Optional[str] = None,
                convergence: str = 'val/top1', rising_threshold: float = 1.0) -> str:
    """The depth table as Markdown.

    Args:
        stats: :func:`analysis.aggregate.depth_stats` (rows series × depth, in that order).
        title: the heading (names the experiment and sweep).
        metric: ``'final'`` or ``'best'`` val/top1 as the main top-1 column, said in the caption.
        note: an extra caption line (e.g. how many sweeps the experiment mixes).
        convergence: the metric the still-rising column was computed from (``holdout/top1`` or ``val/top1``), named
            in the caption.
        rising_threshold: its threshold in top-1 points, said in the caption.
    Returns:
        Markdown: a caption and one row per series × depth with top-1 mean ± std over finished seeds (and the
        best-epoch mean, optimistic), the finished/total run count and the other runs' statuses, the still-rising
        count (:mod:`analysis.convergence`), params, GMACs, and the final collapse probe at both map stages: similar
        blocks under the paper metric and under the calibrated
        one, the mean calibrated similarity of adjacent blocks, and the effective keys per row.
    """
    lines = [f'# {title}', '',
             f'top-1: {metric} val/top1 (%) of each run, mean ± std (ddof 1) over finished seeds'
             + ('; "best": the maximum over the run\'s evaluations on the same images (optimistic)'
                if metric == 'final' else '') + '. runs: finished/all, with the status of the others. '
             'Similar blocks: blocks whose attention map has similarity ≥ threshold with an earlier block (paper '
             'Sec. 3.2 rule), under the paper metric (Eq. 4, "paper") and the chance-calibrated one ("cal."); '
             'cal. adj.: mean calibrated similarity of adjacent blocks (0 = chance, 1 = identical); keys: '
             'effective keys per attention row (exp of the row entropy; N = uniform over N tokens). row adj.: the '
             'headline, mean row-wise calibrated similarity of adjacent blocks (each query\'s distribution over keys; '
             'sees rank-1 collapse, which the column-wise measures cannot; docs/collapse.md), and in brackets the '
             'row-wise similar-block count; entropy: attention entropy / log N (0 one-hot, 1 uniform); CKA adj.: '
             'debiased linear CKA of adjacent blocks\' outputs, final probe (step-0 value in brackets: the residual '
             'stream makes blocks alike at init). softmax: the '
             'softmax maps; mixed: the maps that weight V (after Re-attention\'s mixing; equal to softmax in plain '
             'blocks). All means over finished seeds; — where no finished run logged the measure. '
             f'rising: finished runs still rising / finished runs measured, from `{convergence}` (gain over the last '
             f'25 % of training, by optimizer step, from the evaluation closest to 75 % of the last step; still '
             f'rising: gain ≥ {rising_threshold:g} points), mean gain in brackets; — where no finished run has 2 '
             'evaluations in that window.']
    if note:
        lines += ['', note]
    lines += ['', '| series | depth | width (embed/heads) | top-1 (%) | best | runs | rising [gain] | params | GMACs '
                  '| similar paper / cal. (softmax) | similar paper / cal. (mixed) | cal. adj. (softmax / mixed) '
                  '| keys (softmax / mixed) | row adj. [similar] (softmax / mixed) | entropy (softmax / mixed) '
                  '| CKA adj. [step 0] |',
              '|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for r in stats.itertuples(index=False):
        width = '—' if pd.isna(r.embed_dim) else f'{int(r.embed_dim)}/{int(r.num_heads)}'
        runs = f'{r.n_finished}/{r.n_runs}'
        if r.n_finished < r.n_runs:
            runs += f' ({r.status})'
        gmacs = '—' if math.isnan(r.gmacs) else f'{r.gmacs:.3g}'
        label = r.series.split(' ')
        series = ' '.join([label[0]] + label[2:])      # drop 'wE/hH': it has its own column
        lines.append(
            f'| {series} | {r.depth} | {width} | {format_top1(r.top1_mean, r.top1_std)} | {_num(r.top1_best_mean)} '
            f'| {runs} | {_rising(r)} | {format_count(r.params)} | {gmacs} '
            f'| {_blocks(r.similar_blocks_softmax)} / {_blocks(r.calibrated_similar_blocks_softmax)} '
            f'| {_blocks(r.similar_blocks_mixed)} / {_blocks(r.calibrated_similar_blocks_mixed)} '
            f'| {_num(r.calibrated_mean_adjacent_softmax)} / {_num(r.calibrated_mean_adjacent_mixed)} '
            f'| {_num(r.effective_keys_softmax, ".1f")} / {_num(r.effective_keys_mixed, ".1f")} '
            f'| {_num(r.row_mean_adjacent_softmax)} [{_blocks(r.row_similar_blocks_softmax)}] / '
            f'{_num(r.row_mean_adjacent_mixed)} [{_blocks(r.row_similar_blocks_mixed)}] '
            f'| {_num(r.entropy_softmax)} / {_num(r.entropy_mixed)} '
            f'| {_num(r.cka_mean_adjacent)} [{_num(r.cka_mean_adjacent_step0)}] |')
    return '\n'.join(lines) + '\n'
