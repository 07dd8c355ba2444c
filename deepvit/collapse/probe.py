"""The collapse probe a run executes: a fixed set of images → every attention and representation measure at both map
stages, per-block profiles, and a bootstrap interval over images for every summary, in chunks with bounded memory.

Every statistic is computed in float32 (float64 sums) whatever the model's training precision: the maps and block
outputs come from the model's own forward, in its dtype, and are cast before any statistic. Collective under ZeRO-3 (parameters are gathered in forward): every rank must call it
with the same images; it then returns the same numbers on every rank and for any world size (the images, the
chunking, the permutations of the null and the bootstrap draws are fixed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from .calibrated import DEFAULT_PERMUTATIONS, CrossLayerAccumulator, measures
from .maps import MAP_STAGES, probe_maps
from .paper import DEFAULT_SIMILARITY_THRESHOLD, _check_threshold
from .representation import CKAAccumulator, token_uniformity
from .sharpness import per_image_sharpness
from .summary import adjacent_summaries, deep_blocks, percentile_interval, profiles

__all__ = ['CollapseResult', 'collapse_probe', 'probe_chunk_size', 'probe_budget_mib', 'DEFAULT_PROBE_BUDGET_MIB',
           'DEFAULT_BOOTSTRAP', 'MIN_PROBE_IMAGES', 'PROFILED']

DEFAULT_PROBE_BUDGET_MIB = 256
DEFAULT_BOOTSTRAP = 200          # bootstrap replicates over probe images
MIN_PROBE_IMAGES = 8             # fewer images give no usable percentile interval (and an image null of < 7 pairs)
_COPIES = 4  # measured peak (benchmarks/bench_collapse_probe.py): stored maps, stacked stage, working copies
# attention measures whose adjacent-pair summaries (and intervals) are logged
_ADJACENT = ('calibrated', 'centred', 'centred_head_avg', 'head_avg', 'content', 'content_head_avg', 'row',
             'row_head_avg', 'row_content', 'row_content_head_avg', 'row_structure', 'row_structure_head_avg')
_DEEP = ('calibrated', 'row', 'row_head_avg')                  # ... and whose deepest-quarter summary is logged
_COUNTED = ('calibrated', 'head_avg', 'row', 'row_head_avg')   # ... and whose similar-block count is logged
PROFILED = ('paper', 'calibrated', 'row', 'row_head_avg', 'row_content', 'row_structure')   # per-block profiles


def probe_budget_mib(device) -> float:
    """Memory (MiB) the probe's maps may use per chunk on ``device``: :data:`DEFAULT_PROBE_BUDGET_MIB` on CPU (the
    study machine's training shares the cores and RAM); on CUDA a quarter of the device memory free now and of the
    host memory available now, whichever is less (each chunk's maps are built on the device and accumulated on the
    host), and never under the default. A 32-block, 12-head, 197-token model then probes 256 images in 8 chunks
    rather than 256 forwards of one image (each re-gathering ZeRO-3's parameters)."""
    import torch
    device = torch.device(device)
    if device.type != 'cuda':
        return float(DEFAULT_PROBE_BUDGET_MIB)
    import psutil
    free_device, _ = torch.cuda.mem_get_info(device)
    return max(float(DEFAULT_PROBE_BUDGET_MIB), min(free_device, psutil.virtual_memory().available) / 4 / 2 ** 20)


def probe_chunk_size(depth: int, num_heads: int, num_tokens: int, budget_mib: float = DEFAULT_PROBE_BUDGET_MIB) -> int:
    """Images per probe forward so that the float32 maps of both stages fit in ``budget_mib`` (≥ 1).

    Per image: 2 stages × depth × num_heads × num_tokens² × 4 bytes, held about four times at the peak (the
    layers' stored maps, the stacked stage, the accumulator's normalised and permuted working copies; measured with
    ``benchmarks/bench_collapse_probe.py``). E.g. a 32-block, 12-head, 197-token model needs ~455 MiB per image
    (chunk 1 at the default budget); the tiny 8-block, 4-head, 65-token model 4.1 MiB (chunk 61).
    """
    per_image = 2 * depth * num_heads * num_tokens ** 2 * 4 * _COPIES
    return max(1, int(budget_mib * 2 ** 20 // per_image))


def _count_similar(sim: np.ndarray, threshold: float) -> np.ndarray:
    """The paper's similar-block count of (..., L, L) matrices (block p ≥ 1 with max_{q<p} M[p, q] ≥ threshold)."""
    L = sim.shape[-1]
    below = np.tril(np.ones((L, L), dtype=bool), k=-1)
    hit = np.where(below, np.nan_to_num(sim, nan=-np.inf) >= threshold, False)
    return hit.any(axis=-1).sum(axis=-1)


def _attention_scalars(m: Dict[str, np.ndarray], entropy: np.ndarray, keys: np.ndarray) -> Dict[str, np.ndarray]:
    """Summary scalars of one stage; every input may carry leading bootstrap axes (``m``: (..., L, L), ``entropy``:
    (..., L, H), ``keys``: (..., L))."""
    L = m['paper'].shape[-1]
    out: Dict[str, np.ndarray] = {}
    paper = adjacent_summaries(m['paper'])
    out['mean_adjacent_similarity'] = paper['mean_adjacent']
    for name in _ADJACENT:
        s = adjacent_summaries(m[name])
        out[f'{name}_mean_adjacent'] = s['mean_adjacent']
        if name in _DEEP:
            out[f'{name}_deep_adjacent'] = s['deep_adjacent']
    k = deep_blocks(L) or 1
    block_entropy = entropy.mean(axis=-1)                                   # (..., L)
    out['entropy'] = block_entropy.mean(axis=-1)
    out['entropy_deep'] = block_entropy[..., L - k:].mean(axis=-1)
    out['entropy_min_head'] = entropy.min(axis=(-2, -1))
    out['effective_keys'] = keys.mean(axis=-1)
    return out


def _counts(m: Dict[str, np.ndarray], threshold: float) -> Dict[str, float]:
    L = m['paper'].shape[-1]
    out: Dict[str, float] = {}
    for prefix, name in (('', 'paper'),) + tuple((f'{n}_', n) for n in _COUNTED):
        n = int(_count_similar(m[name], threshold))
        out[f'{prefix}similar_blocks'] = n
        if name in ('paper', 'calibrated'):
            out[f'{prefix}similar_blocks_fraction'] = n / L
            adj = np.diagonal(m[name], offset=-1)
            out[f'{prefix}similar_adjacent'] = int((np.nan_to_num(adj, nan=-np.inf) >= threshold).sum())
    return out


def _representation_scalars(cka: Optional[np.ndarray], uniformity: np.ndarray) -> Dict[str, np.ndarray]:
    """``uniformity``: (..., L, 2) token residual and token cosine per block."""
    out = {'token_residual_last': uniformity[..., -1, 0], 'token_cosine_last': uniformity[..., -1, 1]}
    if cka is not None:
        s = adjacent_summaries(cka)
        out.update({'cka_mean_adjacent': s['mean_adjacent'], 'cka_deep_adjacent': s['deep_adjacent'],
                    'cka_first_last': cka[..., -1, 0]})
    return out


@dataclass
class CollapseResult:
    """Every collapse figure of one probe.

    Attributes:
        num_images: images probed. threshold: the similar-block threshold used for every count.
        matrices: ``{stage: {measure: (L, L) float64 for every name in deepvit.collapse.VARIANTS, 'null',
            'image_null', 'row_null', 'row_image_null': (L, L) raw nulls, 'entropy': (L, H) normalised row entropy,
            'effective_keys': (L,)}}`` for stage in ``('softmax', 'mixed')``.
        representation: ``{'cka': (L, L) debiased linear CKA of the block outputs, 'token_residual': (L,),
            'token_cosine': (L,)}`` (see :mod:`deepvit.collapse.representation`).
        intervals: ``{summary name: (lo, hi)}``, 95 % percentile bootstrap over probe images, for every summary
            except the counts and the CKA ones (CKA's debiased estimator is a U-statistic over example pairs: a
            resample with repeated images would count an example with itself).
        bootstrap: replicates behind ``intervals``.
    """
    num_images: int
    threshold: float
    matrices: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    representation: Dict[str, np.ndarray] = field(default_factory=dict)
    intervals: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    bootstrap: int = 0

    @property
    def depth(self) -> int:
        return int(next(iter(self.matrices.values()))['paper'].shape[0])

    def summary(self) -> Dict[str, float]:
        """Scalar figures: ``{name}_{stage}`` for the attention ones (both stages), ``{name}`` for the
        representation ones, and ``{name}_lo`` / ``{name}_hi`` for each interval. Names are documented in
        ``docs/mlflow_schema.md``: similar-block counts (``similar_blocks`` paper; ``calibrated_``, ``head_avg_``,
        ``row_``, ``row_head_avg_similar_blocks``), adjacent-pair means (``<measure>_mean_adjacent``, the paper's
        ``mean_adjacent_similarity``), deepest-quarter means (``<measure>_deep_adjacent``), ``entropy``,
        ``entropy_deep``, ``entropy_min_head``, ``effective_keys``; ``token_residual_last``, ``token_cosine_last``,
        ``cka_mean_adjacent``, ``cka_deep_adjacent``, ``cka_first_last``."""
        out: Dict[str, float] = {}
        for stage, m in self.matrices.items():
            scalars = _attention_scalars(m, m['entropy'], m['effective_keys'])
            out.update({f'{k}_{stage}': float(v) for k, v in scalars.items()})
            out.update({f'{k}_{stage}': v for k, v in _counts(m, self.threshold).items()})   # ints and fractions
        rep = self.representation
        if rep:
            uniformity = np.stack([rep['token_residual'], rep['token_cosine']], axis=-1)
            out.update({k: float(v) for k, v in _representation_scalars(rep.get('cka'), uniformity).items()})
        for name, (lo, hi) in self.intervals.items():
            out[f'{name}_lo'], out[f'{name}_hi'] = lo, hi
        return out

    def profiles(self) -> Dict[str, List[Optional[float]]]:
        """Per-block arrays (JSON-ready, NaN → None): ``<measure>_<prev|first|last>_<stage>`` for the measures in
        :data:`PROFILED`, ``entropy_<stage>``, ``effective_keys_<stage>``, ``token_residual``, ``token_cosine``,
        ``cka_<prev|first|last>``."""
        out: Dict[str, np.ndarray] = {}
        for stage, m in self.matrices.items():
            for name in PROFILED:
                for kind, values in profiles(m[name]).items():
                    out[f'{name}_{kind}_{stage}'] = values
            out[f'entropy_{stage}'] = m['entropy'].mean(axis=-1)
            out[f'effective_keys_{stage}'] = m['effective_keys']
        for key in ('token_residual', 'token_cosine'):
            if key in self.representation:
                out[key] = self.representation[key]
        if 'cka' in self.representation:
            for kind, values in profiles(self.representation['cka']).items():
                out[f'cka_{kind}'] = values
        return {k: [None if not np.isfinite(x) else round(float(x), 6) for x in v] for k, v in out.items()}


def _blocks(model: nn.Module, layers) -> List[nn.Module]:
    """The modules whose ``attn`` is one of the probed layers (timm's ``Block``), in module order."""
    ids = {id(layer) for layer in layers}
    blocks = [m for m in model.modules() if id(getattr(m, 'attn', None)) in ids]
    return blocks if len(blocks) == len(layers) else []


@torch.no_grad()
def collapse_probe(model: nn.Module, images: Iterable[torch.Tensor], num_images: int,
                   threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
                   num_permutations: int = DEFAULT_PERMUTATIONS, bootstrap: int = DEFAULT_BOOTSTRAP,
                   cka_examples: Optional[int] = None, seed: int = 0) -> CollapseResult:
    """Run the probe: forward ``num_images`` images chunk by chunk in eval mode and accumulate every measure.

    Args:
        model: a model built from :mod:`deepvit.models` (its attention layers are probed, and the outputs of the
            blocks holding them); its train/eval mode is restored afterwards.
        images: an iterable of (b, C, H, W) image chunks on the model's device and dtype, in a fixed order; the first
            ``num_images`` images are used (a longer last chunk is cut).
        num_images: images to probe (≥ :data:`MIN_PROBE_IMAGES`).
        threshold: similar-block threshold for every count, in (0, 1].
        num_permutations: permutations in the token null.
        bootstrap: bootstrap replicates over images for the intervals (≥ 100).
        cka_examples: (image, token) examples of the CKA, at most ``num_images`` × tokens (checked once the token
            count is known, before the first chunk's statistics); ``None``: 1024 or all the probe holds.
        seed: the fixed draws (token permutations, CKA tokens, bootstrap resamples).
    Returns:
        :class:`CollapseResult`.
    Raises:
        ValueError: ``threshold`` outside (0, 1]; ``num_images`` below :data:`MIN_PROBE_IMAGES`; ``bootstrap`` < 100;
            ``cka_examples`` out of range; ``images`` holding fewer than ``num_images`` images (raised when they
            run out).
    """
    _check_threshold(threshold)
    if num_images < MIN_PROBE_IMAGES:
        raise ValueError(f"collapse_images={num_images}: the bootstrap intervals need at least {MIN_PROBE_IMAGES} "
                         f"probe images")
    if bootstrap < 100:
        raise ValueError(f"collapse bootstrap={bootstrap}: percentile intervals need at least 100 replicates")
    accumulators: Dict[str, CrossLayerAccumulator] = {}
    entropy: Dict[str, List[torch.Tensor]] = {s: [] for s in MAP_STAGES}     # per image (b, L, H)
    keys: Dict[str, List[torch.Tensor]] = {s: [] for s in MAP_STAGES}        # per image (b, L)
    uniformity: List[torch.Tensor] = []                                      # per image (b, L, 2)
    cka: Optional[CKAAccumulator] = None
    outputs: List[torch.Tensor] = []
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with probe_maps(model) as layers:
            blocks = _blocks(model, layers)
            hooks = [b.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach())) for b in blocks]
            try:
                for chunk in images:
                    if seen >= num_images:
                        break
                    chunk = chunk[:num_images - seen]
                    outputs.clear()
                    model(chunk)
                    for stage in MAP_STAGES:
                        maps = torch.stack([layer.maps.pop(stage) for layer in layers]).float()  # (L, b, H, N, N)
                        if stage not in accumulators:
                            accumulators[stage] = CrossLayerAccumulator(maps.shape[0], maps.shape[-1],
                                                                        num_permutations, seed)
                        accumulators[stage].update(maps)
                        ent, k = per_image_sharpness(maps)                    # (b, L, H), (b, L)
                        entropy[stage].append(ent)
                        keys[stage].append(k)
                        del maps
                    for layer in layers:
                        layer.maps = None
                    if outputs:
                        x = torch.stack(outputs).float()                                    # (L, b, N, D)
                        if cka is None:
                            cka = CKAAccumulator(num_images, x.shape[2], cka_examples, seed)
                        cka.update(x)
                        uniformity.append(torch.stack([token_uniformity(block) for block in x], dim=1))
                        outputs.clear()
                        del x
                    seen += chunk.shape[0]
            finally:
                for h in hooks:
                    h.remove()
    finally:
        model.train(was_training)
    if seen < num_images:
        raise ValueError(f"collapse probe: asked for {num_images} images, the probe data held only {seen}")
    for acc in accumulators.values():
        acc.close()                                                   # its last image's maps: not needed any more
    result = CollapseResult(num_images=seen, threshold=threshold, bootstrap=bootstrap)
    per_image = {}
    for stage in MAP_STAGES:
        sums = accumulators[stage].sums()
        ent, k = torch.cat(entropy[stage]), torch.cat(keys[stage])
        result.matrices[stage] = {name: v.numpy() for name, v in measures(sums).items()}
        result.matrices[stage]['entropy'] = ent.mean(0).numpy()
        result.matrices[stage]['effective_keys'] = k.mean(0).numpy()
        per_image[stage] = (sums, ent, k)
    if uniformity:
        u = torch.cat(uniformity)                                                    # (n, L, 2)
        result.representation = {'cka': cka.result().numpy(), 'token_residual': u[..., 0].mean(0).numpy(),
                                 'token_cosine': u[..., 1].mean(0).numpy()}
    result.intervals = _intervals(per_image, torch.cat(uniformity) if uniformity else None, seen, bootstrap, seed)
    return result


def _intervals(per_image, uniformity: Optional[torch.Tensor], n: int, replicates: int,
               seed: int) -> Dict[str, Tuple[float, float]]:
    """95 % percentile intervals of every non-count summary: images resampled with replacement, the same draws for
    every figure (so intervals of differences between figures of one probe could be formed from the replicates)."""
    g = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n, (replicates, n), generator=g)
    weights = torch.zeros(replicates, n, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(replicates, n, dtype=torch.float64))                   # (R, n) counts
    share = weights / weights.sum(dim=1, keepdim=True)
    out: Dict[str, Tuple[float, float]] = {}
    for stage, (sums, ent, keys) in per_image.items():
        m = {name: v.numpy() for name, v in measures(sums, weights).items()}
        e = torch.einsum('rn,nlh->rlh', share, ent).numpy()
        k = (share @ keys).numpy()
        for name, reps in _attention_scalars(m, e, k).items():
            out[f'{name}_{stage}'] = percentile_interval(reps)
    if uniformity is not None:
        u = torch.einsum('rn,nlc->rlc', share, uniformity).numpy()
        for name, reps in _representation_scalars(None, u).items():
            out[name] = percentile_interval(reps)
    return out
