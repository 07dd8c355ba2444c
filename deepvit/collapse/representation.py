"""Representation measures on the blocks' outputs: token uniformity and centred kernel alignment (CKA).

Token uniformity (rank collapse of the token representations; Dong et al. 2021, arXiv 2103.03404, Sec. 2):

- ``token_residual``: the relative residual ‖X − 1 x̄ᵀ‖_F / ‖X‖_F of one image's (N, D) block output X, x̄ the mean
  token. 0 when every token is the same vector (rank-1 collapse); about 1 for unrelated tokens. Dong et al. prove it
  decays doubly exponentially with depth in a stack of attention layers without skip connections and MLPs.
- ``token_cosine``: the mean pairwise cosine between an image's tokens (Noci et al. 2022, arXiv 2206.03126): 1 at
  rank-1 collapse.

CKA between blocks (Kornblith et al. 2019, arXiv 1905.00414), linear kernel, *debiased*: HSIC is the unbiased
estimator of Song et al. (2012, JMLR 13, Eq. 5), as in Nguyen, Raghu & Kornblith (2021, arXiv 2010.15327, Sec. 3.1).
The biased estimator scores independent random features as similar when the number of examples is not large next to
the width (``tests/test_collapse_instrument.py`` shows both). Examples are (image, token) pairs: a fixed random
subset of the tokens of each probe image, ``cka_examples`` in all.

Representation measures are not 0 at initialisation: the residual stream makes adjacent blocks alike. They are read
against the same model's step-0 probe (the analysis reports both).
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch

__all__ = ['token_uniformity', 'linear_cka', 'debiased_cka_matrix', 'CKAAccumulator', 'DEFAULT_CKA_EXAMPLES']

DEFAULT_CKA_EXAMPLES = 1024
_EPS = 1e-12


def token_uniformity(x: torch.Tensor) -> torch.Tensor:
    """Token residual and mean pairwise token cosine of every image.

    Args:
        x: (B, N, D) float tokens of one block (N ≥ 2).
    Returns:
        (B, 2) float64 tensor: column 0 the relative residual ‖X − 1x̄ᵀ‖_F / ‖X‖_F, column 1 the mean over token
        pairs i ≠ j of cos(x_i, x_j).
    Raises:
        ValueError: ``x`` not (B, N, D) with N ≥ 2.
    """
    if x.dim() != 3 or x.shape[1] < 2:
        raise ValueError(f"tokens must have shape (B, N >= 2, D), got {tuple(x.shape)}")
    x = x.detach().double()
    N = x.shape[1]
    residual = (x - x.mean(dim=1, keepdim=True)).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(_EPS)
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    cosine = (unit.sum(dim=1).pow(2).sum(dim=-1) - unit.pow(2).sum(dim=(1, 2))) / (N * (N - 1))
    return torch.stack([residual, cosine], dim=1).cpu()


def _hsic_parts(k: torch.Tensor):
    """K̃ (zero diagonal), its row sums K̃1 and total 1ᵀK̃1 for (…, n, n) Gram matrices."""
    k = k - torch.diag_embed(torch.diagonal(k, dim1=-2, dim2=-1))
    rows = k.sum(dim=-1)
    return k, rows, rows.sum(dim=-1)


def _unbiased_hsic(k, k_rows, k_total, l, l_rows, l_total, n: int) -> torch.Tensor:
    # Song et al. (2012), Eq. 5: [tr(K̃L̃) + 1ᵀK̃1 1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2) 1ᵀK̃L̃1] / (n(n−3))
    trace = (k * l).sum(dim=(-2, -1))
    return (trace + k_total * l_total / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (k_rows * l_rows).sum(-1)) / (n * (n - 3))


def linear_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = True) -> float:
    """Linear CKA between two representations of the same n examples.

    Args:
        x: (n, D1), y: (n, D2) float features (rows are examples).
        debiased: the unbiased HSIC estimator (default; n ≥ 4), else the biased one of Kornblith et al. (Eq. 3).
    Returns:
        CKA as a float: 1 for representations equal up to rotation and isotropic scaling; about 0 for independent
        features when debiased.
    Raises:
        ValueError: different example counts, or n < 4 with ``debiased``.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same examples, got {x.shape[0]} and {y.shape[0]} rows")
    n = x.shape[0]
    x, y = x.detach().double().flatten(1), y.detach().double().flatten(1)
    if not debiased:
        x, y = x - x.mean(0), y - y.mean(0)
        return float((y.t() @ x).pow(2).sum() / ((x.t() @ x).norm() * (y.t() @ y).norm()).clamp_min(_EPS))
    if n < 4:
        raise ValueError(f"debiased CKA needs at least 4 examples, got {n}")
    kx, ky = _hsic_parts(x @ x.t()), _hsic_parts(y @ y.t())
    xy = _unbiased_hsic(*kx, *ky, n)
    xx, yy = _unbiased_hsic(*kx, *kx, n), _unbiased_hsic(*ky, *ky, n)
    return float(xy / (xx * yy).clamp_min(_EPS).sqrt())


def _pair_traces(features: torch.Tensor, budget_bytes: float) -> torch.Tensor:
    """(L, L) float64 tr(K_p K_q) of the linear Gram matrices K_p = X_p X_pᵀ, within ``budget_bytes``.

    Gram form, blocked: groups of G Gram matrices (n² float64 each), two groups resident at a time, G as large as
    the budget allows (each group's Grams are recomputed once per earlier group). When the budget holds too few
    Grams for that to be the cheaper form (n ≥ G·D, two Grams over budget included), the feature form
    tr(K_p K_q) = ‖X_pᵀ X_q‖²_F, one (D, D) product at a time (memory D² + nD).
    """
    L, n, D = features.shape
    traces = torch.empty(L, L, dtype=torch.float64)
    group = int(budget_bytes // (2 * 8 * n * (n + D)))                # two groups of Grams and their float64 inputs
    # cost: blocked Grams ≈ L²/(2G) · 2n²D multiply-adds, feature form ≈ L²/2 · 2nD²: the Gram form wins while n < G·D
    if group < 1 or n >= group * D:
        for p in range(L):
            xp = features[p].double()
            for q in range(p, L):
                traces[p, q] = traces[q, p] = (xp.t() @ features[q].double()).pow(2).sum()
        return traces

    def grams(lo: int, hi: int) -> torch.Tensor:
        f = features[lo:hi].double()
        return (f @ f.transpose(1, 2)).reshape(hi - lo, -1)

    for i in range(0, L, group):
        a = grams(i, min(i + group, L))
        traces[i:i + group, i:i + group] = a @ a.t()
        for j in range(i + group, L, group):
            traces[i:i + group, j:j + group] = block = a @ grams(j, min(j + group, L)).t()
            traces[j:j + group, i:i + group] = block.t()
    return traces


def debiased_cka_matrix(features: torch.Tensor, budget_mib: float = 128) -> torch.Tensor:
    """Debiased linear CKA between every pair of L representations of the same n examples.

    Args:
        features: (L, n, D) float features (n ≥ 4); any float dtype, computed in float64.
        budget_mib: working memory for the Gram matrices, beyond ``features`` itself (MiB). Within it the Grams are
            computed in blocks of blocks; past it (n ≳ √(budget / 16)), in feature space.
    Returns:
        (L, L) float64 tensor, symmetric, diagonal 1.
    Raises:
        ValueError: n < 4.

    The unbiased HSIC (Song et al. 2012, Eq. 5) needs, per pair, tr(K̃_p K̃_q) with K̃ = K − diag(K), and per block
    K̃1 and 1ᵀK̃1. For a linear kernel the per-block parts come from the features (K̃1 = X(Xᵀ1) − diag(K)), and
    tr(K̃_p K̃_q) = tr(K_p K_q) − diag(K_p)·diag(K_q), so no Gram matrix is kept beyond the pair traces.
    """
    L, n, _ = features.shape
    if n < 4:
        raise ValueError(f"debiased CKA needs at least 4 examples, got {n}")
    features = features.detach()
    diag = torch.empty(L, n, dtype=torch.float64)                        # diag(K_p) = ‖x_i‖²
    rows = torch.empty(L, n, dtype=torch.float64)                        # K̃_p 1
    for p in range(L):
        x = features[p].double()
        diag[p] = x.pow(2).sum(1)
        rows[p] = x @ x.sum(0) - diag[p]
    total = rows.sum(1)                                                  # 1ᵀ K̃_p 1
    trace = _pair_traces(features, budget_mib * 2 ** 20) - diag @ diag.t()
    hsic = (trace + total[:, None] * total[None, :] / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (rows @ rows.t())) / (n * (n - 3))
    scale = hsic.diagonal().clamp_min(_EPS).sqrt()
    cka = hsic / (scale[:, None] * scale[None, :])
    cka = (cka + cka.t()) / 2
    cka.fill_diagonal_(1.0)
    return cka


class CKAAccumulator:
    """Collects a fixed subsample of (image, token) examples of every block's output, chunk by chunk.

    Args:
        num_images: images the probe will see (sets the tokens taken per image: ⌈examples / num_images⌉).
        num_tokens: N. examples: total examples wanted (≤ num_images · N); ``None``: :data:`DEFAULT_CKA_EXAMPLES`
            or all the probe holds, whichever is fewer. seed: fixed token choice.
    Raises:
        ValueError: ``examples`` < 4 or more than the probe holds.
    """

    def __init__(self, num_images: int, num_tokens: int, examples: Optional[int] = None, seed: int = 0) -> None:
        if examples is None:
            examples = min(DEFAULT_CKA_EXAMPLES, num_images * num_tokens)
        if examples < 4 or examples > num_images * num_tokens:
            raise ValueError(f"cka_examples={examples}: must be in [4, {num_images * num_tokens}] "
                             f"({num_images} probe images × {num_tokens} tokens)")
        self.examples = examples
        self.per_image = math.ceil(examples / num_images)
        self.generator = torch.Generator().manual_seed(seed)
        self.num_tokens = num_tokens
        self.chunks: List[torch.Tensor] = []
        self.taken = 0

    def update(self, blocks: torch.Tensor) -> None:
        """Add a chunk of block outputs (L, b, N, D) (any float dtype/device; kept as float32 on the CPU)."""
        need = self.examples - self.taken
        if need <= 0:
            return
        L, b, N, D = blocks.shape
        idx = torch.stack([torch.randperm(N, generator=self.generator)[:self.per_image] for _ in range(b)])
        picked = torch.gather(blocks.detach(), 2, idx.to(blocks.device)[None, :, :, None].expand(L, b, -1, D))
        picked = picked.reshape(L, -1, D)[:, :need].float().cpu()
        self.chunks.append(picked)
        self.taken += picked.shape[1]

    def result(self) -> torch.Tensor:
        """(L, L) debiased CKA over the collected examples."""
        return debiased_cka_matrix(torch.cat(self.chunks, dim=1))
