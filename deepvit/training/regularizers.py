"""Training-loss regularisers that read attention maps (with their autograd graph).

:class:`CosineRegularizer` is the official DeepViT repository's attention-similarity penalty
(zhoudaquan/dvit_repo, ``loss/cross_entropy.py``, ``SoftTargetCrossEntropyCosReg``): the training loss becomes

    loss = CE + weight · (1/n) Σ_{i<n} mean(cos_dim1(A_i, A_{i+1}))

over the first n+1 blocks' attention maps A_i (B, H, N, N) — the maps that weight V — with ``cos_dim1`` the official
``nn.CosineSimilarity(dim=1)`` (cosine along the head axis at every (image, query, key) position), official weight 0.1
and n = ``n_comn`` = 2. It pushes consecutive early blocks apart; the paper does not discuss it, the code ships it.
"""
from typing import List

import torch
import torch.nn.functional as F

from ..models.attention import Attention

__all__ = ['CosineRegularizer']


class CosineRegularizer:
    """Cosine penalty between consecutive attention maps of a model's first ``num_pairs + 1`` blocks.

    Args:
        model: a model with deepvit ``Attention`` layers (their ``keep_attn_for_loss`` flag is set here).
        weight: the penalty's weight (> 0; official 0.1).
        num_pairs: n, the number of consecutive pairs (≥ 1; official 2).
    Raises:
        ValueError: ``weight`` ≤ 0, or fewer than ``num_pairs + 1`` attention layers.
    """

    def __init__(self, model: torch.nn.Module, weight: float, num_pairs: int = 2) -> None:
        layers: List[Attention] = [m for m in model.modules() if isinstance(m, Attention)]
        if not weight > 0:
            raise ValueError(f"train.cosine_reg must be > 0 to regularise, got {weight!r}")
        if num_pairs < 1 or len(layers) < num_pairs + 1:
            raise ValueError(f"train.cosine_reg_blocks={num_pairs} needs {num_pairs + 1} attention blocks, the model "
                             f"has {len(layers)}")
        self.weight, self.num_pairs = weight, num_pairs
        self.layers = layers[:num_pairs + 1]
        for layer in self.layers:
            layer.keep_attn_for_loss = True

    def __call__(self) -> torch.Tensor:
        """The penalty (scalar, fp32) of the last forward pass; call after the forward, before backward."""
        maps = [layer.attn_for_loss for layer in self.layers]
        total = sum(F.cosine_similarity(maps[i].float(), maps[i + 1].float(), dim=1).mean()
                    for i in range(self.num_pairs))
        return self.weight * total / self.num_pairs
