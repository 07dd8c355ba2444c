"""Cross-layer similarity measured against chance: calibrated, centred and head-matching-invariant variants, and
attention sharpness (effective keys), accumulated over chunks of images with O(L²) memory.

Why. The paper's metric (Eq. 4, :mod:`deepvit.collapse.paper`) is a cosine of non-negative softmax columns. For
diffuse attention every column is close to the uniform vector, so *any* two maps score near 1: two independent random
softmax maps over 65 tokens give 0.94 at ~63 effective keys, 0.61 at ~50. An untrained ViT therefore reads "fully
collapsed". The variants here subtract what chance alignment gives.

Notation. A^p_{b,h} is block p's (N, N) map of image b and head h; column t, a^p_{b,h,t} = A^p_{b,h}[:, t], is token
t's attention vector (how much every query attends to t), as in Eq. 4. n = B·H·N columns per block.

Variants (each an (L, L) matrix, symmetric, diagonal 1):

``paper``       M[p,q] = mean_{b,h,t} cos(a^p_{b,h,t}, a^q_{b,h,t}) — Eq. 4, exactly :func:`cross_layer_similarity`.
``calibrated``  (M − M₀) / (1 − M₀). M₀[p,q] is the token-permutation null: the same mean cosine after one random
                permutation π of the tokens is applied to the rows *and* columns of block q's maps,
                A^q ↦ P_π A^q P_πᵀ, averaged over ``num_permutations`` permutations (default 2; the same π for every
                image and head). Relabelling tokens keeps everything about a map that does not depend on which token is which —
                its sharpness, its spread of column norms, its self-attention (diagonal) strength — and destroys the
                token-to-token alignment between the two blocks. So M₀ is what two blocks with maps of these shapes
                score by chance, and M − M₀ is alignment beyond it; dividing by 1 − M₀ (what identical maps would add
                over chance) makes identical maps 1 and unrelated maps 0 at any sharpness. Derivation of the diffuse
                limit: with columns u + x and u + y around the uniform column u (|x|, |y| ≪ |u|),
                1 − cos ≈ |x − y|²/(2|u|²), and the null replaces x·y by ~0, so calibrated ≈ 2 x·y / (|x|² + |y|²):
                the correlation of the two maps' deviations from uniform, which is what "the same attention pattern"
                means when all maps are near uniform.
``centred``     the same calibration applied to the Pearson correlation of the columns (each column minus its mean
                over queries before the cosine). Insensitive to the shared 1/N baseline by construction; calibrated
                for the diagonal and column-norm structure that correlation alone still shares by chance.
``head_avg``    ``calibrated`` on head-averaged maps (mean over h of A^p_{b,h}): invariant to any relabelling of
                heads, which matters because head h of block p has no relation to head h of block q and
                Re-attention's Θ mixes heads.

Headline: ``calibrated``. It keeps the paper's unit (per-head, per-token attention vectors, so it is comparable with
Eq. 4 and the paper's threshold 0.9 keeps its meaning "near-identical maps") and adds only the chance correction;
``head_avg`` is the check that a verdict does not hinge on the head pairing. Centred kernel alignment (CKA,
Kornblith et al. 2019, arXiv 1905.00414) was weighed and not used: with images as examples, linear CKA compares how
two blocks' maps vary *across images*, and an untrained network's blocks all vary with image content, so it does not
read ~0 for unrelated blocks; with (image, query) as examples and (head, key) as features, its (H·N)² cross-covariance
per block pair is 5.6M entries for 12 heads and 197 tokens, times L(L−1)/2 pairs.

Sharpness. ``effective_keys``: exp of the entropy of each row, mean over images, heads and queries (N for uniform
rows, 1 for one-hot rows). For maps with negative entries (BatchNorm-centred mixed maps of Re-attention) the row's
absolute values, normalised to sum 1, are used.

Cost per chunk of b images, for each of the three variants: (1 + num_permutations) Gram products of (L, b·H·N²)
matrices in float32 (head_avg: H times smaller), accumulated into
float64 (L, L) sums; no float64 copy of the maps. Cosines near 1 are accumulated as deviations from the uniform unit
column (cos = (â − r)·(b̂ − r) + r·â + r·b̂ − 1), so fp32 rounding does not swamp the 1 − M₀ ≈ 1e-3 of diffuse maps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch

__all__ = ['VARIANTS', 'HEADLINE', 'CrossLayerAccumulator', 'calibrated_similarity', 'effective_keys',
           'DEFAULT_PERMUTATIONS']

VARIANTS = ('paper', 'calibrated', 'centred', 'head_avg')
HEADLINE = 'calibrated'
DEFAULT_PERMUTATIONS = 2
_EPS = 1e-12


@dataclass
class _Sums:
    raw: torch.Tensor     # (L, L) float64: sum over columns of cosines
    null: torch.Tensor    # (L, L) float64: the same under the permutation null, summed over permutations
    count: int = 0        # columns per block (b·H·N summed over chunks; b·N for head_avg)


class CrossLayerAccumulator:
    """Running sums for every variant and the effective keys of one map stage, fed chunk by chunk.

    Args:
        num_blocks: L. num_tokens: N (tokens including the class token).
        num_permutations: K token permutations averaged in the null (≥ 1).
        seed: seed of the permutations (fixed: every run and every rank uses the same ones).

    Memory: O(L²) sums; ``update`` works on one chunk at a time.

    Raises:
        ValueError: non-positive sizes, or K < 1.
    """

    def __init__(self, num_blocks: int, num_tokens: int, num_permutations: int = DEFAULT_PERMUTATIONS,
                 seed: int = 0) -> None:
        if num_blocks < 1 or num_tokens < 1:
            raise ValueError(f"num_blocks and num_tokens must be >= 1, got {num_blocks}, {num_tokens}")
        if num_permutations < 1:
            raise ValueError(f"num_permutations must be >= 1, got {num_permutations!r}")
        self.num_blocks, self.num_tokens, self.num_permutations = num_blocks, num_tokens, num_permutations
        g = torch.Generator().manual_seed(seed)
        self.perms = [torch.randperm(num_tokens, generator=g) for _ in range(num_permutations)]
        # P A Pᵀ as one gather over the flattened (N·N) map: entry (i, t) ← (π(i), π(t))
        self._flat_perms = [(p[:, None] * num_tokens + p[None, :]).flatten() for p in self.perms]
        zeros = lambda: torch.zeros(num_blocks, num_blocks, dtype=torch.float64)  # noqa: E731
        self._sums = {v: _Sums(zeros(), zeros()) for v in ('cosine', 'centred', 'head_avg')}
        self._keys_sum = torch.zeros(num_blocks, dtype=torch.float64)
        self._keys_count = 0

    @torch.no_grad()
    def update(self, maps: torch.Tensor) -> None:
        """Add a chunk of maps (L, b, H, N, N), any float dtype and device (computed in float32 there).

        Raises:
            ValueError: wrong rank or sizes.
        """
        if maps.dim() != 5 or maps.shape[0] != self.num_blocks or maps.shape[-1] != self.num_tokens \
                or maps.shape[-2] != self.num_tokens:
            raise ValueError(f"maps must have shape (L={self.num_blocks}, B, H, N={self.num_tokens}, "
                             f"N={self.num_tokens}), got {tuple(maps.shape)}")
        a = maps.detach().float()
        L, b, H, N, _ = a.shape
        self._keys_sum += _row_effective_keys(a).sum(dim=(1, 2, 3)).double().cpu()
        self._keys_count += b * H * N
        self._add('cosine', a, centre=False)
        self._add('centred', a, centre=True)
        self._add('head_avg', a.mean(dim=2, keepdim=True), centre=False)

    def _add(self, name: str, x: torch.Tensor, centre: bool) -> None:
        L, b, H, N, _ = x.shape
        if centre:
            x = x - x.mean(dim=-2, keepdim=True)
        x = x / x.norm(dim=-2, keepdim=True).clamp_min(_EPS)           # unit columns (zero columns stay 0)
        columns = b * H * N
        if centre:  # centred unit columns are orthogonal to the uniform column: plain dot products
            dev, base = x, torch.zeros(L, L, dtype=torch.float64)
        else:       # x̂·ŷ = (x̂ − r)·(ŷ − r) + r·x̂ + r·ŷ − r·r, with r = 1/√N the unit uniform column (r·r = 1)
            lin = (x.sum(dim=-2, dtype=torch.float64).sum(dim=(1, 2, 3)) / math.sqrt(N)).cpu()  # Σ_cols r·x̂, (L,)
            dev = x - 1.0 / math.sqrt(N)
            base = lin[:, None] + lin[None, :] - columns
        flat = dev.reshape(L, -1)
        s = self._sums[name]
        s.raw += (flat @ flat.t()).double().cpu() + base
        del x
        maps_2d = dev.reshape(-1, N * N)
        for index in self._flat_perms:  # relabelling tokens keeps r·ŷ summed over columns: same base
            permuted = maps_2d.index_select(1, index.to(dev.device)).reshape(L, -1)
            s.null += (flat @ permuted.t()).double().cpu() + base
            del permuted
        s.count += b * H * N

    def result(self) -> Dict[str, np.ndarray]:
        """``{'paper', 'calibrated', 'centred', 'head_avg': (L, L) float64, 'null': (L, L) float64 (the paper
        metric's permutation null M₀), 'effective_keys': (L,) float64}``.

        Calibrated entries are NaN where the null leaves no room (1 − M₀ < 1e-9: both maps exactly uniform).

        Raises:
            RuntimeError: no chunk was added.
        """
        if self._keys_count == 0:
            raise RuntimeError("CrossLayerAccumulator.result() before any update()")
        out: Dict[str, np.ndarray] = {}
        for name, s in self._sums.items():
            raw = s.raw / s.count
            null = s.null / (s.count * self.num_permutations)
            raw, null = _symmetrise(raw), _symmetrise(null)
            cal = _calibrate(raw, null)
            raw.fill_diagonal_(1.0)  # a map with itself: exactly 1 (the fp32 Gram gives 1 ± ~1e-5)
            if name == 'cosine':
                out['paper'], out['calibrated'], out['null'] = raw.numpy(), cal.numpy(), null.numpy()
            else:
                out[name] = cal.numpy()
        out['effective_keys'] = (self._keys_sum / self._keys_count).numpy()
        return {k: out[k] for k in VARIANTS + ('null', 'effective_keys')}


def _symmetrise(m: torch.Tensor) -> torch.Tensor:
    return (m + m.t()) / 2


def _calibrate(raw: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    room = 1.0 - null
    cal = (raw - null) / room
    cal = torch.where(room.abs() < 1e-9, torch.full_like(cal, float('nan')), cal)
    cal.fill_diagonal_(1.0)
    return cal


def _row_effective_keys(a: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of every row of (..., N, N) maps → (..., N); rows of |a| normalised to sum 1.

    With s = Σ|a| per row and p = |a|/s: H = −Σ p log p = log s − (Σ |a| log |a|) / s (two passes, no normalised copy).
    """
    p = a.abs()
    total = p.sum(dim=-1).clamp_min(_EPS)
    entropy = total.log() + torch.special.entr(p).sum(dim=-1) / total
    return entropy.exp()


def effective_keys(maps: torch.Tensor) -> torch.Tensor:
    """Attention sharpness per block: exp(row entropy), mean over images, heads and queries.

    Args:
        maps: (L, B, H, N, N) float maps. Rows are normalised |a| / Σ|a| (softmax rows are unchanged).
    Returns:
        (L,) float64 tensor in [1, N]: N for uniform rows, 1 for one-hot rows.
    """
    return _row_effective_keys(maps.detach().float()).mean(dim=(1, 2, 3)).double()


def calibrated_similarity(maps: torch.Tensor, num_permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0,
                          chunk: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Every variant for a full (L, B, H, N, N) stack of maps (convenience for tests and notebooks).

    Args:
        maps: (L, B, H, N, N) float maps.
        num_permutations, seed: the null (see :class:`CrossLayerAccumulator`).
        chunk: images per update (default all); results do not depend on it.
    Returns:
        :meth:`CrossLayerAccumulator.result`.
    Raises:
        ValueError: ``maps`` not (L, B, H, N, N).
    """
    if maps.dim() != 5 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"maps must have shape (L, B, H, N, N), got {tuple(maps.shape)}")
    acc = CrossLayerAccumulator(maps.shape[0], maps.shape[-1], num_permutations, seed)
    step = chunk or maps.shape[1]
    for start in range(0, maps.shape[1], step):
        acc.update(maps[:, start:start + step])
    return acc.result()

