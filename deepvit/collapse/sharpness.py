"""Attention sharpness: the entropy of each query's attention row, per block and head.

Entropy collapse — attention concentrating on one key — is a failure mode of its own (Zhai et al. 2023, arXiv
2303.06296), separate from the cross-layer similarity of :mod:`.calibrated`. Two readings of the same entropy:

- ``entropy``: mean row entropy divided by log N, in [0, 1]: 0 for one-hot rows, 1 for uniform rows.
- ``effective_keys``: exp(row entropy), in [1, N] (the measure this project logged first).

Rows with negative entries (BatchNorm-centred mixed maps of Re-attention) are taken as |a| / Σ|a|.
"""
from __future__ import annotations

import math

import torch

__all__ = ['row_entropy', 'attention_entropy', 'effective_keys', 'per_image_sharpness']

_EPS = 1e-12


def row_entropy(a: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of every row of (..., N, N) maps → (..., N); rows of |a| normalised to sum 1.

    With s = Σ|a| per row and p = |a|/s: H = −Σ p log p = log s − (Σ |a| log |a|)/s (no normalised copy).
    """
    p = a.abs()
    total = p.sum(dim=-1).clamp_min(_EPS)
    return total.log() + torch.special.entr(p).sum(dim=-1) / total


def attention_entropy(maps: torch.Tensor) -> torch.Tensor:
    """Normalised row entropy per image, block and head.

    Args:
        maps: (L, B, H, N, N) float maps.
    Returns:
        (B, L, H) float64 tensor in [0, 1]: mean over queries of H(row) / log N (0 one-hot, 1 uniform; NaN if N = 1).
    """
    N = maps.shape[-1]
    ent = row_entropy(maps.detach().float()).mean(dim=-1)          # (L, B, H)
    return (ent.double() / (math.log(N) if N > 1 else float('nan'))).permute(1, 0, 2).cpu()


def per_image_sharpness(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both readings per image from one entropy pass, as the probe accumulates them.

    Args:
        maps: (L, B, H, N, N) float maps.
    Returns:
        ``(entropy, keys)``: (B, L, H) float64 normalised entropy (as :func:`attention_entropy`) and (B, L) float64
        effective keys, mean over heads and queries (per image: :func:`effective_keys` is their mean over images).
    """
    N = maps.shape[-1]
    ent = row_entropy(maps.detach().float())                         # (L, B, H, N)
    entropy = (ent.mean(-1).double() / (math.log(N) if N > 1 else float('nan'))).permute(1, 0, 2).cpu()
    keys = ent.exp().mean(dim=(2, 3)).double().t().cpu()             # (B, L)
    return entropy, keys


def effective_keys(maps: torch.Tensor) -> torch.Tensor:
    """Attention sharpness per block: exp(row entropy), mean over images, heads and queries.

    Args:
        maps: (L, B, H, N, N) float maps.
    Returns:
        (L,) float64 tensor in [1, N]: N for uniform rows, 1 for one-hot rows.
    """
    return row_entropy(maps.detach().float()).exp().mean(dim=(1, 2, 3)).double()
