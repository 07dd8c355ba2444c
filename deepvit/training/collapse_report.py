"""The collapse probe of a training run: when it runs, what it logs (names in ``docs/mlflow_schema.md``).

A probe runs :func:`deepvit.collapse.collapse_probe` on the first ``train.collapse_images`` validation images (the
same images for every run, so runs are comparable), in chunks sized by :func:`deepvit.collapse.probe_chunk_size`.
It runs at step 0 (the initialised model), every ``train.collapse_every`` epochs and at the end; each probe's scalars
are logged at its global optimizer step, the final probe also writes the matrices as artifacts. Collective under
ZeRO-3 (parameters are gathered in forward): every rank runs the same forwards.
"""
import contextlib
import time
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from .. import schema
from ..collapse import MAP_STAGES, CollapseResult, collapse_probe

# artifact stem per matrix: 'paper' keeps the name the first schema gave it
ARTIFACTS = {'paper': 'similarity', 'calibrated': 'calibrated', 'centred': 'centred', 'head_avg': 'head_avg',
             'null': 'null', 'effective_keys': 'effective_keys'}
HEATMAPS = {'paper': 'cross-layer similarity (paper, Eq. 4)', 'calibrated': 'calibrated cross-layer similarity'}


@contextlib.contextmanager
def eager_forward(module: torch.nn.Module):
    """Run ``module`` eagerly inside the block when it was compiled in place (``nn.Module.compile``): the probe's
    map capture needs the eager forward. A no-op for an uncompiled module."""
    compiled = module.__dict__.get('_compiled_call_impl')
    if compiled is None:
        yield
        return
    module._compiled_call_impl = None
    try:
        yield
    finally:
        module._compiled_call_impl = compiled


class CollapseProbe:
    """Runs and logs the probe of one run.

    Args:
        images: a callable returning a fresh iterable of (b, C, H, W) image chunks on the model's device and dtype.
        num_images, threshold, num_permutations: as :func:`deepvit.collapse.collapse_probe`.
        log_metrics: ``(metrics, step)`` callback (the tracker's; a no-op on non-zero ranks).
    """

    def __init__(self, images: Callable[[], Iterable[torch.Tensor]], num_images: int, threshold: float,
                 num_permutations: int, log_metrics: Callable) -> None:
        self.images, self.num_images = images, num_images
        self.threshold, self.num_permutations = threshold, num_permutations
        self.log_metrics = log_metrics
        self.seconds = 0.0
        self.count = 0

    def __call__(self, model: torch.nn.Module, step: int) -> CollapseResult:
        t0 = time.perf_counter()
        with eager_forward(model):
            result = collapse_probe(model, self.images(), self.num_images, self.threshold, self.num_permutations)
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        self.count += 1
        metrics = {schema.COLLAPSE_PREFIX + k: v for k, v in result.summary().items()}
        metrics[schema.COLLAPSE_PREFIX + 'probe_seconds'] = seconds
        self.log_metrics(metrics, step)
        return result


def log_collapse_artifacts(tracker, result: CollapseResult, figure_fn: Optional[Callable] = None) -> None:
    """The final probe's arrays as ``collapse/<stem>_<stage>.npy`` (and heatmaps of the paper and calibrated
    matrices as PNG when ``figure_fn(matrix, title)`` is given)."""
    for stage in MAP_STAGES:
        for key, stem in ARTIFACTS.items():
            tracker.log_numpy(np.asarray(result.matrices[stage][key]), schema.COLLAPSE_ARRAY.format(stem=stem, stage=stage))
        if figure_fn is None:
            continue
        for key, title in HEATMAPS.items():
            fig = figure_fn(result.matrices[stage][key], f'{title} ({stage} maps)')
            tracker.log_figure(fig, f'collapse/{ARTIFACTS[key]}_{stage}.png')


def similarity_figure(similarity: np.ndarray, title: str):
    """A matplotlib heatmap of an (L, L) cross-layer similarity matrix (blocks numbered from 1, as in the paper)."""
    from matplotlib.figure import Figure

    L = similarity.shape[0]
    fig = Figure(figsize=(4.2, 3.6), dpi=120, layout='constrained')
    ax = fig.add_subplot()
    vmin = -1 if np.nanmin(similarity) < 0 else 0
    im = ax.imshow(similarity, vmin=vmin, vmax=1, cmap='viridis', origin='upper')
    ticks = list(range(0, L, max(1, L // 8)))
    ax.set_xticks(ticks, [str(t + 1) for t in ticks])
    ax.set_yticks(ticks, [str(t + 1) for t in ticks])
    ax.set_xlabel('block q')
    ax.set_ylabel('block p')
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label='similarity')
    return fig
