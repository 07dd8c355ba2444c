"""Attention-collapse probes (Zhou et al., 2021, arXiv 2103.11886, Sec. 3.2, Eq. 4 and Fig. 3).

Attention collapse: in deep ViTs the attention maps of successive blocks become near-identical. The paper
measures it with the cross-layer similarity

    M^{p,q}_{h,t} = A^p_{h,:,t}ᵀ A^q_{h,:,t} / (‖A^p_{h,:,t}‖ ‖A^q_{h,:,t}‖)

where A^p_{h,:,t} is column t of head h's (N, N) map in block p (how much token t contributes to every output
token), and averages it over heads and tokens (we also average over images). A block is a *similar block* when its
map is near-identical (M ≥ threshold, 0.9 in the paper's Fig. 3) to an earlier block's.

Map stages. ``'softmax'``: Softmax(Q Kᵀ/√d), before any mixing. ``'mixed'``: the map that weights V — in a
Re-attention block Norm(Θᵀ · softmax), in a plain block the softmax map itself. The paper computes its similarity on
"the attention maps" that each block uses, i.e. the mixed stage for DeepViT (the official ``ReAttention`` returns
the normalised map as ``attn_next``). With BatchNorm the mixed maps are centred per head, which by itself pushes
cosines towards 0, so collapse comparisons should report both stages.

No official code exists for these metrics (official repo, issue 12); this module is our implementation of Eq. 4.
"""
from contextlib import contextmanager
from typing import Dict, Iterator, List

import torch
import torch.nn as nn

from .models.attention import MAP_STAGES, Attention

__all__ = ['attention_maps', 'attention_maps_by_stage', 'cross_layer_similarity', 'similar_blocks', 'probe_maps', 'MAP_STAGES',
           'DEFAULT_SIMILARITY_THRESHOLD']

DEFAULT_SIMILARITY_THRESHOLD = 0.9


def _attention_layers(model: nn.Module) -> List[Attention]:
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no deepvit Attention layers to probe")
    return layers


@contextmanager
def probe_maps(model: nn.Module) -> Iterator[List[Attention]]:
    """Context in which every deepvit attention layer of ``model`` stores its maps on forward.

    Yields the layers in module order. On exit the flags and stored maps are cleared, whatever happened inside.
    """
    layers = _attention_layers(model)
    try:
        for layer in layers:
            layer.keep_maps = True
            layer.maps = None
        yield layers
    finally:
        for layer in layers:
            layer.keep_maps = False
            layer.maps = None


@torch.no_grad()
def attention_maps(model: nn.Module, images: torch.Tensor, stage: str = 'softmax') -> torch.Tensor:
    """Every block's attention maps for a batch of images, in eval mode.

    The model's train/eval mode and its forward output are left unchanged (the forward runs in eval mode, so
    BatchNorm uses running statistics and dropout is off, as at test time).

    Args:
        model: a model built from :mod:`deepvit.models` (or any module containing its ``Attention`` layers).
        images: (B, C, H_img, W_img) float tensor on the model's device.
        stage: ``'softmax'`` or ``'mixed'`` (see the module docstring).

    Returns:
        (L, B, H, N, N) float32 tensor, L = number of blocks, N = tokens including the class token.

    Raises:
        ValueError: unknown ``stage``, or a model without probe-able attention layers.
    """
    if stage not in MAP_STAGES:
        raise ValueError(f"stage must be one of {MAP_STAGES}, got {stage!r}")
    return attention_maps_by_stage(model, images)[stage]


@torch.no_grad()
def attention_maps_by_stage(model: nn.Module, images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Both stages from one forward pass: ``{'softmax': (L, B, H, N, N), 'mixed': (L, B, H, N, N)}``.

    Same conditions as :func:`attention_maps` (eval mode, mode restored, output unchanged). One forward matters when
    the forward is a collective (ZeRO-3 gathers parameters in it) or the model is large.
    """
    was_training = model.training
    model.eval()
    try:
        with probe_maps(model) as layers:
            model(images)
            maps = {stage: torch.stack([layer.maps[stage] for layer in layers]) for stage in MAP_STAGES}
    finally:
        model.train(was_training)
    return maps


def cross_layer_similarity(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """The paper's cross-layer similarity M^{p,q} (Eq. 4), averaged over heads, tokens and images.

    Args:
        maps: (L, B, H, N, N) attention maps, e.g. from :func:`attention_maps`. Column t of each (N, N) map is
            token t's attention vector.
        eps: guards the norm of all-zero columns (their cosine is taken as 0).

    Returns:
        (L, L) float64 tensor: entry (p, q) is the mean over images b, heads h and tokens t of the cosine between
        column t of block p's and block q's map for head h. Symmetric; diagonal 1 (for non-zero columns).

    Raises:
        ValueError: ``maps`` is not 5-D or its last two axes differ.
    """
    if maps.dim() != 5 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"maps must have shape (L, B, H, N, N), got {tuple(maps.shape)}")
    L, B, H, N, _ = maps.shape
    x = maps.detach().to(torch.float64)
    x = x / x.norm(dim=-2, keepdim=True).clamp_min(eps)  # unit columns: (L, B, H, N, N)
    x = x.reshape(L, -1)
    sim = (x @ x.t()) / (B * H * N)  # sum over b, h, t of cosines, then mean
    return (sim + sim.t()) / 2


def similar_blocks(similarity: torch.Tensor, threshold: float = DEFAULT_SIMILARITY_THRESHOLD) -> int:
    """Number of *similar blocks*: blocks p ≥ 1 whose map matches an earlier block's, max_{q<p} M[p, q] ≥ threshold.

    Rule (paper Sec. 3.2 and Fig. 3: "the ratio of the number of similar blocks to the total number of blocks",
    similarity counted above 90%): block 0 is never similar; block p is similar when its cross-layer similarity with
    some earlier block reaches ``threshold``. In a collapsed ViT these are the trailing blocks whose maps repeat their
    predecessors' (the paper's 5 / 11 / 15 of 16 / 24 / 32 blocks); Re-attention aims for 0.

    Args:
        similarity: (L, L) matrix from :func:`cross_layer_similarity`.
        threshold: cosine at or above which two blocks' maps count as near-identical (default 0.9).

    Returns:
        int in [0, L - 1].

    Raises:
        ValueError: ``similarity`` not square 2-D, or ``threshold`` outside (0, 1].
    """
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be an (L, L) matrix, got shape {tuple(similarity.shape)}")
    if not 0. < threshold <= 1.:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    L = similarity.shape[0]
    count = 0
    for p in range(1, L):
        if float(similarity[p, :p].max()) >= threshold:
            count += 1
    return count
