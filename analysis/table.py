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


def depth_table(stats: pd.DataFrame, title: str, metric: str = 'best', note: Optional[str] = None) -> str:
    """The depth table as Markdown.

    Args:
        stats: :func:`analysis.aggregate.depth_stats` (rows family × width × depth, in that order).
        title: the heading (names the experiment and sweep).
        metric: ``'best'`` or ``'final'`` val/top1, said in the caption.
        note: an extra caption line (e.g. how many sweeps the experiment mixes).
    Returns:
        Markdown: a caption and one row per family × width × depth with top-1 mean ± std over finished seeds, the
        finished/total run count and the other runs' statuses, params, GMACs and similar blocks at both map stages
        (``softmax``: the softmax maps; ``mixed``: after Re-attention's head mixing, equal to softmax in ViT blocks).
    """
    lines = [f'# {title}', '',
             f'top-1: {metric} val/top1 (%) of each run, mean ± std (ddof 1) over finished seeds; runs: finished/all, '
             'with the status of the others. Similar blocks: blocks whose attention map has cross-layer '
             'similarity ≥ 0.9 with an earlier block (paper Sec. 3.2), mean over finished seeds.']
    if note:
        lines += ['', note]
    lines += ['', '| family | depth | width (embed/heads) | top-1 (%) | runs | params | GMACs '
                  '| similar blocks (softmax) | similar blocks (mixed) |',
              '|---|---:|---|---:|---|---:|---:|---:|---:|']
    for r in stats.itertuples(index=False):
        width = '—' if pd.isna(r.embed_dim) else f'{int(r.embed_dim)}/{int(r.num_heads)}'
        runs = f'{r.n_finished}/{r.n_runs}'
        if r.n_finished < r.n_runs:
            runs += f' ({r.status})'
        gmacs = '—' if math.isnan(r.gmacs) else f'{r.gmacs:.3g}'
        extra = r.series.split(' ', 2)[2:]      # group-by params after 'family wE/hH'
        family = ' '.join([r.family] + extra)
        lines.append(f'| {family} | {r.depth} | {width} | {format_top1(r.top1_mean, r.top1_std)} | {runs} '
                     f'| {format_count(r.params)} | {gmacs} | {_blocks(r.similar_softmax)} '
                     f'| {_blocks(r.similar_mixed)} |')
    return '\n'.join(lines) + '\n'
