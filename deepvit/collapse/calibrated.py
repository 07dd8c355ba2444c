"""Cross-layer attention similarity measured against chance, column-wise (the paper's vectors) and row-wise, with a
token-permutation and an image-permutation null, accumulated per probe image so that every figure has a bootstrap
interval over images.

Why. The paper's metric (Eq. 4, :mod:`deepvit.collapse.paper`) is a cosine of non-negative softmax columns. For
diffuse attention every column is close to the uniform vector, so *any* two maps score near 1 (two independent random
softmax maps over 65 tokens: 0.94). And when every query of a head attends alike (rank-1 maps, "token uniformity",
Dong et al. 2021, arXiv 2103.03404) every column is a constant vector, so every column cosine is 1 *and* so is its
token-permutation null: column-wise measures cannot tell "all blocks attend to the same keys" from "each block attends
to its own keys" (``tests/test_collapse_instrument.py`` shows it). Rows — each query's distribution over keys — see it.

Notation. A^p_{b,h} is block p's (N, N) map of image b and head h. A *vector* of the map is a column
A^p_{b,h}[:, t] (how much every query attends to token t; Eq. 4) or a row A^p_{b,h}[t, :] (query t's weights over the
keys). M[p, q] = mean over images, heads and vectors of cos(vector of block p, the same vector of block q).

Nulls (each an (L, L) mean cosine of the same vectors after a relabelling of block q's maps):

- token null M_tok: block q's maps under a random token permutation π, A^q ↦ P_π A^q P_πᵀ (rows and columns; the same
  π for every image and head; averaged over ``num_permutations``). It keeps everything about a map that does not
  depend on which token is which (sharpness, spread of norms, self-attention strength) and removes token-to-token
  alignment. M − M_tok is alignment beyond chance.
- image null M_img: block q's maps of *another* image (image i of block p against image i − 1 of block q, over the
  probe's fixed image order). It keeps what every image shares — positional structure, a class-token sink — and
  removes what depends on the content. M − M_img is content alignment.

Measures (each (L, L), symmetric, diagonal 1; calibration c(M, M₀) = (M − M₀) / (1 − M₀): identical maps 1, maps
aligned no better than the null 0, at any sharpness):

============================  ==========================================================================
``paper``                     M, column-wise (Eq. 4, exactly :func:`deepvit.collapse.cross_layer_similarity`)
``calibrated``                c(M, M_tok), column-wise
``centred``                   c on the Pearson correlation of columns (each minus its mean over queries);
                              ``centred_head_avg`` on head-averaged maps
``head_avg``                  ``calibrated`` on head-averaged maps (invariant to any relabelling of heads)
``content``                   c(M, M_img), column-wise; ``content_head_avg`` on head-averaged maps
``row``                       c(M, M_tok), row-wise: **the headline** (see below)
``row_head_avg``              ``row`` on head-averaged maps
``row_content``               c(M, M_img), row-wise; ``row_content_head_avg`` on head-averaged maps
``row_structure``             c(M_img, M_tok), row-wise: alignment every image shares (position, sinks);
                              ``row_structure_head_avg`` on head-averaged maps
============================  ==========================================================================

Decomposition: row = row_structure + (1 − row_structure) · row_content, exactly (algebra of c); so of the alignment
beyond chance, ``row_structure`` is the part shared by all images (positional or sink structure) and the rest is
content.

Headline: ``row``. It is the only measure here that reads 1 for identical rank-1 maps and ~0 for independent ones
(token uniformity, the collapse the signal-propagation literature finds growing with depth: Noci et al. 2022, arXiv
2206.03126), it is chance-corrected like ``calibrated``, and it keeps the paper's per-head unit so the 0.9
similar-block threshold keeps its meaning. ``row_head_avg`` is the check that a reading does not hinge on the arbitrary
pairing of head h in block p with head h in block q (Re-attention's Θ mixes heads).

Maps with negative entries (the BatchNorm-centred mixed maps of Re-attention) are compared as signed vectors: the row
is the vector of weights that forms the query's output from V, and the cosine compares those weight patterns, signs
included; the nulls are computed the same way, so the calibration stays meaningful.

Cost per chunk of b images, per measure family (column, row, centred; head-averaged ones H times smaller):
(1 + num_permutations + 1) batched Gram products of (b, L, H·N²) float32 matrices, accumulated per image into float64
(b, L, L) sums (memory O(images · L²)). Cosines near 1 are accumulated as deviations from the unit uniform vector r
(x̂·ŷ = (x̂ − r)·(ŷ − r) + r·x̂ + r·ŷ − 1) so fp32 rounding does not swamp the 1 − M₀ ≈ 1e-3 of diffuse maps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from .sharpness import effective_keys

__all__ = ['MEASURES', 'VARIANTS', 'HEADLINE', 'FAMILIES', 'CrossLayerAccumulator', 'SimilaritySums',
           'calibrated_similarity', 'calibrate', 'DEFAULT_PERMUTATIONS']

HEADLINE = 'row'
DEFAULT_PERMUTATIONS = 2
_EPS = 1e-12

# family -> (orientation, centre, head-averaged); every family has a raw, a token-null and an image-null sum
FAMILIES = {
    'column': ('column', False, False),
    'centred': ('column', True, False),
    'centred_head_avg': ('column', True, True),
    'column_head_avg': ('column', False, True),
    'row': ('row', False, False),
    'row_head_avg': ('row', False, True),
}
# measure -> (family, numerator, null): c(numerator, null), numerator/null in {'raw', 'tok', 'img'}
MEASURES = {
    'calibrated': ('column', 'raw', 'tok'),
    'centred': ('centred', 'raw', 'tok'),
    'centred_head_avg': ('centred_head_avg', 'raw', 'tok'),
    'head_avg': ('column_head_avg', 'raw', 'tok'),
    'content': ('column', 'raw', 'img'),
    'content_head_avg': ('column_head_avg', 'raw', 'img'),
    'row': ('row', 'raw', 'tok'),
    'row_head_avg': ('row_head_avg', 'raw', 'tok'),
    'row_content': ('row', 'raw', 'img'),
    'row_content_head_avg': ('row_head_avg', 'raw', 'img'),
    'row_structure': ('row', 'img', 'tok'),
    'row_structure_head_avg': ('row_head_avg', 'img', 'tok'),
}
# the similarities (identical maps read 1); ``row_structure*`` is a part of ``row``, not a similarity of its own
VARIANTS = ('paper',) + tuple(m for m in MEASURES if not m.startswith('row_structure'))


def calibrate(value: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """c(M, M₀) = (M − M₀) / (1 − M₀) elementwise, NaN where 1 − M₀ < 1e-9 (both maps exactly uniform); any shape."""
    room = 1.0 - null
    cal = (value - null) / torch.where(room.abs() < 1e-9, torch.ones_like(room), room)
    return torch.where(room.abs() < 1e-9, torch.full_like(cal, float('nan')), cal)


@dataclass
class SimilaritySums:
    """Per-image cosine sums of one measure family (float64 on the CPU).

    Attributes:
        raw: (n, L, L) Σ over image i's vectors of cos(block p, block q).
        tok: (n, L, L) the same under the token null, summed over the permutations.
        img: (n, L, L) image i of block p against image i − 1 of block q (row 0: zeros, no pair).
        vectors: vectors per image (H·N, or N for head-averaged maps). permutations: K.
    """
    raw: torch.Tensor
    tok: torch.Tensor
    img: torch.Tensor
    vectors: int
    permutations: int

    def means(self, weights: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``{'raw', 'tok', 'img'}`` mean cosines, each (L, L) (or (R, L, L) for (R, n) bootstrap ``weights``
        counting how often each image is drawn), symmetrised."""
        n, L, _ = self.raw.shape
        w = torch.ones(1, n, dtype=torch.float64) if weights is None else weights.double()
        pair_w = w.clone()
        pair_w[:, 0] = 0                                       # image 0 has no predecessor in the image null
        out = {}
        for name, sums, ww in (('raw', self.raw, w), ('tok', self.tok, w), ('img', self.img, pair_w)):
            total = ww @ sums.reshape(n, -1)                   # (R, L·L)
            scale = ww.sum(dim=1, keepdim=True) * self.vectors * (self.permutations if name == 'tok' else 1)
            m = (total / scale.clamp_min(1)).reshape(-1, L, L)
            m = (m + m.transpose(-1, -2)) / 2
            out[name] = m[0] if weights is None else m
        return out


class _Family:
    """Running per-image sums of one family."""

    def __init__(self, orientation: str, centre: bool, head_avg: bool, flat_perms: List[torch.Tensor]) -> None:
        self.orientation, self.centre, self.head_avg = orientation, centre, head_avg
        self.flat_perms = flat_perms
        self.raw: List[torch.Tensor] = []
        self.tok: List[torch.Tensor] = []
        self.img: List[torch.Tensor] = []
        self.vectors = 0

    def _unit(self, maps: torch.Tensor):
        """The family's vectors of a chunk (L, b, H, N, N) as deviations from 1/√N (or centred): ``(x (b, L, h, N, N),
        flat (b, L, h·N·N) view of x, lin (b, L) float64, offset, vectors)``."""
        # one working copy per family, images first and contiguous, written once by the first out-of-place op (no
        # clone): the peak stays at about two copies of the chunk's maps (this one and a permuted one)
        src = maps.mean(dim=2, keepdim=True) if self.head_avg else maps    # (L, b, h, N, N)
        src = src.transpose(0, 1)                                           # (b, L, h, N, N)
        if self.orientation == 'row':
            src = src.transpose(-1, -2)                                    # rows become columns
        b, L, h, N, _ = src.shape
        x = torch.empty(src.shape, dtype=src.dtype, device=src.device)    # contiguous, never the caller's storage
        vectors = h * N
        if self.centre:  # centred unit vectors are orthogonal to the uniform vector: plain dot products
            torch.sub(src, src.mean(dim=-2, keepdim=True), out=x)
            x.div_(x.norm(dim=-2, keepdim=True).clamp_min_(_EPS))          # unit vectors (zero vectors stay 0)
            lin, offset = torch.zeros(b, L, dtype=torch.float64), 0
        else:            # x̂·ŷ = (x̂ − r)·(ŷ − r) + r·x̂ + r·ŷ − 1, with r = 1/√N
            norm = src.norm(dim=-2, keepdim=True).clamp_min_(_EPS)
            r = 1.0 / math.sqrt(N)
            lin = ((src.sum(dim=-2) / norm.squeeze(-2)).sum(dim=(2, 3), dtype=torch.float64) * r).cpu()   # (b, L)
            torch.addcdiv(torch.full((), -r, dtype=src.dtype, device=src.device), src, norm, out=x)   # x̂ − r
            offset = vectors
        return x, x.view(b, L, -1), lin, offset, vectors

    def add(self, maps: torch.Tensor, previous: Optional[torch.Tensor] = None) -> None:
        """Add a chunk (L, b, H, N, N); ``previous`` (L, 1, H, N, N): the image before the chunk's first, if any."""
        x, flat, lin, offset, vectors = self._unit(maps)
        b, L, _, N, _ = x.shape
        base = lin[:, :, None] + lin[:, None, :] - offset                  # (b, L, L)
        self.raw.append(torch.bmm(flat, flat.transpose(1, 2)).double().cpu() + base)
        tok = torch.zeros(b, L, L, dtype=torch.float64)
        maps_2d = x.view(-1, N * N)
        for index in self.flat_perms:   # relabelling tokens keeps r·ŷ: the same base
            permuted = maps_2d.index_select(1, index.to(x.device)).view(b, L, -1)
            tok += torch.bmm(flat, permuted.transpose(1, 2)).double().cpu() + base
            del permuted
        self.tok.append(tok)
        img = torch.zeros(b, L, L, dtype=torch.float64)                   # image i against image i − 1
        if b > 1:
            img[1:] = torch.bmm(flat[1:], flat[:-1].transpose(1, 2)).double().cpu() \
                + lin[1:, :, None] + lin[:-1, None, :] - offset
        if previous is not None:                                           # the probe's image 0 has no partner
            _, prev_flat, prev_lin, _, _ = self._unit(previous)            # recomputed: one image, not one per family
            img[0] = torch.mm(flat[0], prev_flat[0].t()).double().cpu() + lin[0][:, None] + prev_lin[0][None, :] \
                - offset
        self.img.append(img)
        self.vectors = vectors

    def sums(self, permutations: int) -> SimilaritySums:
        return SimilaritySums(torch.cat(self.raw), torch.cat(self.tok), torch.cat(self.img), self.vectors,
                              permutations)


class CrossLayerAccumulator:
    """Per-image similarity sums of every measure family of one map stage, fed chunk by chunk.

    Args:
        num_blocks: L. num_tokens: N (tokens including the class token).
        num_permutations: K token permutations averaged in the token null (≥ 1).
        seed: seed of the permutations (fixed: every run and every rank uses the same ones).

    Chunks must arrive in the probe's fixed image order (the image null pairs each image with the one before it).
    Memory: O(images · L²) float64 sums plus the maps of the last image seen (for the image null).

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
        # P A Pᵀ as one gather over the flattened (N·N) map: entry (i, t) ← (π(i), π(t)); the same for Aᵀ
        flat_perms = [(p[:, None] * num_tokens + p[None, :]).flatten() for p in self.perms]
        self._families = {name: _Family(*spec, flat_perms) for name, spec in FAMILIES.items()}
        self._previous: Optional[torch.Tensor] = None
        self.images = 0

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
        for family in self._families.values():
            family.add(a, self._previous)
        self._previous = a[:, -1:].clone()     # the raw maps of the chunk's last image, kept once for every family
        self.images += a.shape[1]

    def close(self) -> None:
        """Free the last image's maps kept for the image null (no chunk follows)."""
        self._previous = None

    def sums(self) -> Dict[str, SimilaritySums]:
        """Per-image sums of every family (input of :func:`measures` and of the bootstrap).

        Raises:
            RuntimeError: no chunk was added.
        """
        if self.images == 0:
            raise RuntimeError("CrossLayerAccumulator.sums() before any update()")
        return {name: f.sums(self.num_permutations) for name, f in self._families.items()}

    def result(self) -> Dict[str, np.ndarray]:
        """``{measure: (L, L) float64}`` for every name in :data:`VARIANTS`, plus ``'null'`` (the paper metric's
        token null M₀) and ``'image_null'`` / ``'row_null'`` / ``'row_image_null'`` (the other raw nulls)."""
        return {k: v.numpy() for k, v in measures(self.sums()).items()}


def measures(sums: Dict[str, SimilaritySums], weights: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Every measure of :data:`VARIANTS` (and the raw nulls) from per-image sums; (L, L), or (R, L, L) for (R, n)
    bootstrap ``weights``. Diagonals are set to 1 (a map with itself; the fp32 Gram gives 1 ± ~1e-5)."""
    means = {name: s.means(weights) for name, s in sums.items()}
    out = {'paper': means['column']['raw'], 'null': means['column']['tok'], 'image_null': means['column']['img'],
           'row_null': means['row']['tok'], 'row_image_null': means['row']['img']}
    for name, (family, value, null) in MEASURES.items():
        out[name] = calibrate(means[family][value], means[family][null])
    eye = torch.eye(out['paper'].shape[-1], dtype=torch.bool)
    for name in VARIANTS:
        out[name] = out[name].masked_fill(eye, 1.0)
    for name in ('row_structure', 'row_structure_head_avg'):   # a block with itself: undefined
        out[name] = out[name].masked_fill(eye, float('nan'))
    return out


def calibrated_similarity(maps: torch.Tensor, num_permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0,
                          chunk: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Every measure for a full (L, B, H, N, N) stack of maps (convenience for tests and notebooks).

    Args:
        maps: (L, B, H, N, N) float maps.
        num_permutations, seed: the token null (see :class:`CrossLayerAccumulator`).
        chunk: images per update (default all); results do not depend on it.
    Returns:
        :meth:`CrossLayerAccumulator.result` and ``'effective_keys'`` (:func:`deepvit.collapse.effective_keys`).
    Raises:
        ValueError: ``maps`` not (L, B, H, N, N).
    """
    if maps.dim() != 5 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"maps must have shape (L, B, H, N, N), got {tuple(maps.shape)}")
    acc = CrossLayerAccumulator(maps.shape[0], maps.shape[-1], num_permutations, seed)
    step = chunk or maps.shape[1]
    for start in range(0, maps.shape[1], step):
        acc.update(maps[:, start:start + step])
    return {**acc.result(), 'effective_keys': effective_keys(maps).numpy()}
