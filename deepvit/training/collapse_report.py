"""The end-of-run attention-collapse probe: cross-layer similarity at both map stages, similar-block counts, heatmaps.

Runs :func:`deepvit.collapse.attention_maps_by_stage` on a fixed validation batch (the same images for every run, so runs are
comparable), with one forward pass for both map stages. Collective under ZeRO-3 (parameters are gathered in
forward): call it on every rank.
"""
from typing import Dict

import numpy as np
import torch

from ..collapse import MAP_STAGES, attention_maps_by_stage, cross_layer_similarity, similar_blocks


@torch.no_grad()
def collapse_report(model: torch.nn.Module, images: torch.Tensor, threshold: float = 0.9) -> Dict[str, object]:
    """Similarity matrices and counts for ``images`` (B, C, H, W) on the model's device and dtype.

    Returns:
        ``{'similarity_<stage>': (L, L) float64 ndarray, 'similar_blocks_<stage>': int,
        'mean_adjacent_similarity_<stage>': float}`` for each stage in ``('softmax', 'mixed')``.
    """
    out: Dict[str, object] = {}
    maps_by_stage = attention_maps_by_stage(model, images)  # one forward: a collective under ZeRO-3
    for stage in MAP_STAGES:
        sim = cross_layer_similarity(maps_by_stage[stage])
        out[f'similarity_{stage}'] = sim.cpu().numpy()
        out[f'similar_blocks_{stage}'] = similar_blocks(sim, threshold=threshold)
        adjacent = sim.diagonal(offset=1)
        out[f'mean_adjacent_similarity_{stage}'] = float(adjacent.mean()) if adjacent.numel() else float('nan')
    return out


def similarity_figure(similarity: np.ndarray, title: str):
    """A matplotlib heatmap of an (L, L) cross-layer similarity matrix (blocks numbered from 1, as in the paper)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    L = similarity.shape[0]
    fig, ax = plt.subplots(figsize=(4.2, 3.6), dpi=120)
    im = ax.imshow(similarity, vmin=-1 if similarity.min() < 0 else 0, vmax=1, cmap='viridis', origin='upper')
    ticks = list(range(0, L, max(1, L // 8)))
    ax.set_xticks(ticks, [str(t + 1) for t in ticks])
    ax.set_yticks(ticks, [str(t + 1) for t in ticks])
    ax.set_xlabel('block q')
    ax.set_ylabel('block p')
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label='cross-layer similarity')
    fig.tight_layout()
    return fig
