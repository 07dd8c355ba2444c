"""The collapse probe of a training run: when it runs, what it logs (names in ``docs/mlflow_schema.md``).

A probe runs :func:`deepvit.collapse.collapse_probe` on the first ``train.collapse_images`` validation images (the
same images for every run, so runs are comparable), in chunks sized by :func:`deepvit.collapse.probe_chunk_size`.
It runs at step 0 (the initialised model), every ``train.collapse_every`` epochs and at the end; each probe's scalars
(and their bootstrap intervals) are logged at its global optimizer step and its per-block profiles as
``collapse/profiles/step_<step>.json``; the final probe also writes the matrices as artifacts. Collective under
ZeRO-3 (parameters are gathered in forward): every rank runs the same forwards.
"""
import contextlib
import time
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from .. import schema
from ..collapse import MAP_STAGES, MEASURES, CollapseResult, collapse_probe

# artifact stem per matrix: 'paper' keeps the name the first schema gave it; every other measure its own name
ARTIFACTS = {'paper': 'similarity', **{m: m for m in MEASURES}, 'null': 'null', 'image_null': 'image_null',
             'row_null': 'row_null', 'row_image_null': 'row_image_null', 'entropy': 'entropy',
             'effective_keys': 'effective_keys'}
REPRESENTATION_ARTIFACTS = ('cka', 'token_residual', 'token_cosine')   # collapse/<name>.npy (no map stage)
HEATMAPS = {'paper': 'cross-layer similarity (paper, Eq. 4)', 'calibrated': 'calibrated cross-layer similarity',
            'row': 'row-wise calibrated similarity (headline)'}


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
        train: the run's ``TrainConfig`` (its ``collapse_*`` fields: images, threshold, permutations, bootstrap,
            CKA examples).
        tracker: the run's tracker (metrics and the profiles artifact; a no-op tracker on non-zero ranks).

    The probe's statistics are float32 whatever the training precision (:mod:`deepvit.collapse.probe`).
    """

    def __init__(self, images: Callable[[], Iterable[torch.Tensor]], train, tracker) -> None:
        self.images, self.train, self.tracker = images, train, tracker
        self.seconds = 0.0
        self.count = 0

    def __call__(self, model: torch.nn.Module, step: int) -> CollapseResult:
        t = self.train
        t0 = time.perf_counter()
        with eager_forward(model):
            result = collapse_probe(model, self.images(), t.collapse_images, t.collapse_threshold,
                                    t.collapse_permutations, t.collapse_bootstrap, t.collapse_cka_examples)
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        self.count += 1
        metrics = {schema.COLLAPSE_PREFIX + k: v for k, v in result.summary().items()}
        metrics[schema.COLLAPSE_PREFIX + 'probe_seconds'] = seconds
        self.tracker.log_metrics(metrics, step)
        self.tracker.log_dict({'step': step, 'images': result.num_images, **result.profiles()},
                              schema.COLLAPSE_PROFILES.format(step=step))
        return result


def log_collapse_artifacts(tracker, result: CollapseResult, figure_fn: Optional[Callable] = None) -> None:
    """The final probe's arrays as ``collapse/<stem>_<stage>.npy`` and ``collapse/<cka|token_residual|token_cosine>.npy``
    (and heatmaps of the paper, calibrated and row-wise matrices as PNG when ``figure_fn(matrix, title)`` is given)."""
    for name in REPRESENTATION_ARTIFACTS:
        if name in result.representation:
            tracker.log_numpy(np.asarray(result.representation[name]), schema.COLLAPSE_REPRESENTATION_ARRAY.format(name=name))
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
