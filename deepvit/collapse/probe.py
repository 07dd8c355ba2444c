"""The collapse probe a run executes: a fixed set of images → every similarity variant, count and sharpness figure
at both map stages, in chunks with bounded memory.

Collective under ZeRO-3 (parameters are gathered in forward): every rank must call it with the same images; it then
returns the same numbers on every rank and for any world size (the images, the chunking and the permutations of the
null are fixed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable

import numpy as np
import torch
import torch.nn as nn

from .calibrated import DEFAULT_PERMUTATIONS, CrossLayerAccumulator
from .maps import MAP_STAGES, probe_maps
from .paper import DEFAULT_SIMILARITY_THRESHOLD, _check_threshold, similar_adjacent_blocks, similar_blocks

__all__ = ['CollapseResult', 'collapse_probe', 'probe_chunk_size', 'DEFAULT_PROBE_BUDGET_MIB']

DEFAULT_PROBE_BUDGET_MIB = 256
_COPIES = 4  # measured peak (benchmarks/bench_collapse_probe.py): stored maps, stacked stage, working copies


def probe_chunk_size(depth: int, num_heads: int, num_tokens: int, budget_mib: float = DEFAULT_PROBE_BUDGET_MIB) -> int:
    """Images per probe forward so that the float32 maps of both stages fit in ``budget_mib`` (≥ 1).

    Per image: 2 stages × depth × num_heads × num_tokens² × 4 bytes, held about four times at the peak (the
    layers' stored maps, the stacked stage, the accumulator's normalised and permuted working copies; measured with
    ``benchmarks/bench_collapse_probe.py``). E.g. a 32-block, 12-head, 197-token model needs ~455 MiB per image
    (chunk 1 at the default budget); the tiny 8-block, 4-head, 65-token model 4.1 MiB (chunk 61).
    """
    per_image = 2 * depth * num_heads * num_tokens ** 2 * 4 * _COPIES
    return max(1, int(budget_mib * 2 ** 20 // per_image))


@dataclass
class CollapseResult:
    """Every collapse figure of one probe.

    Attributes:
        num_images: images probed. threshold: the similar-block threshold used for every count.
        matrices: ``{stage: {'paper' | 'calibrated' | 'centred' | 'head_avg' | 'null': (L, L) float64,
            'effective_keys': (L,) float64}}`` for stage in ``('softmax', 'mixed')``.
    """
    num_images: int
    threshold: float
    matrices: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return int(next(iter(self.matrices.values()))['paper'].shape[0])

    def summary(self) -> Dict[str, float]:
        """Scalar figures, ``{name}_{stage}`` for each stage:

        - ``similar_blocks`` (paper metric, the paper's rule: max_{q<p} M[p, q] ≥ threshold), ``similar_blocks_fraction``
          (÷ depth, the paper's Fig. 3 ratio), ``similar_adjacent`` (M[p, p−1] ≥ threshold only),
          ``mean_adjacent_similarity`` (mean of M[p, p−1]);
        - the same four for the calibrated metric: ``calibrated_similar_blocks``, ``calibrated_similar_blocks_fraction``,
          ``calibrated_similar_adjacent``, ``calibrated_mean_adjacent``;
        - ``centred_mean_adjacent``, ``head_avg_mean_adjacent``, ``head_avg_similar_blocks``;
        - ``effective_keys``: mean over blocks of the effective number of keys per row.
        """
        out: Dict[str, float] = {}
        L = self.depth
        for stage, m in self.matrices.items():
            for prefix, variant in (('', 'paper'), ('calibrated_', 'calibrated')):
                sim = m[variant]
                n = similar_blocks(sim, self.threshold)
                mean_adj = 'mean_adjacent_similarity' if variant == 'paper' else 'calibrated_mean_adjacent'
                out[f'{prefix}similar_blocks_{stage}'] = n
                out[f'{prefix}similar_blocks_fraction_{stage}'] = n / L
                out[f'{prefix}similar_adjacent_{stage}'] = similar_adjacent_blocks(sim, self.threshold)
                out[f'{mean_adj}_{stage}'] = _mean_adjacent(sim)
            out[f'centred_mean_adjacent_{stage}'] = _mean_adjacent(m['centred'])
            out[f'head_avg_mean_adjacent_{stage}'] = _mean_adjacent(m['head_avg'])
            out[f'head_avg_similar_blocks_{stage}'] = similar_blocks(m['head_avg'], self.threshold)
            out[f'effective_keys_{stage}'] = float(np.mean(m['effective_keys']))
        return out


def _mean_adjacent(sim: np.ndarray) -> float:
    adjacent = np.diagonal(sim, offset=1)
    return float(np.nanmean(adjacent)) if adjacent.size and not np.isnan(adjacent).all() else float('nan')


@torch.no_grad()
def collapse_probe(model: nn.Module, images: Iterable[torch.Tensor], num_images: int,
                   threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
                   num_permutations: int = DEFAULT_PERMUTATIONS) -> CollapseResult:
    """Run the probe: forward ``num_images`` images chunk by chunk in eval mode and accumulate every metric.

    Args:
        model: a model built from :mod:`deepvit.models` (its attention layers are probed); its train/eval mode is
            restored afterwards.
        images: an iterable of (b, C, H, W) image chunks on the model's device and dtype; the first ``num_images``
            images are used (a longer last chunk is cut).
        num_images: images to probe (≥ 1).
        threshold: similar-block threshold for every count, in (0, 1].
        num_permutations: permutations in the chance null.
    Returns:
        :class:`CollapseResult`.
    Raises:
        ValueError: ``threshold`` outside (0, 1], ``num_images`` < 1, or ``images`` holding fewer than
            ``num_images`` images (raised when they run out).
    """
    _check_threshold(threshold)
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images!r}")
    accumulators: Dict[str, CrossLayerAccumulator] = {}
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with probe_maps(model) as layers:
            for chunk in images:
                if seen >= num_images:
                    break
                chunk = chunk[:num_images - seen]
                model(chunk)
                for stage in MAP_STAGES:
                    maps = torch.stack([layer.maps.pop(stage) for layer in layers])  # (L, b, H, N, N)
                    if stage not in accumulators:
                        accumulators[stage] = CrossLayerAccumulator(maps.shape[0], maps.shape[-1], num_permutations)
                    accumulators[stage].update(maps)
                    del maps
                for layer in layers:
                    layer.maps = None
                seen += chunk.shape[0]
    finally:
        model.train(was_training)
    if seen < num_images:
        raise ValueError(f"collapse probe: asked for {num_images} images, the probe data held only {seen}")
    result = CollapseResult(num_images=seen, threshold=threshold)
    for stage in MAP_STAGES:
        result.matrices[stage] = accumulators[stage].result()
    return result
