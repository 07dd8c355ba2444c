"""The paper's attention-collapse metric (Zhou et al., 2021, arXiv 2103.11886, Sec. 3.2, Eq. 4 and Fig. 3).

Attention collapse: in deep ViTs the attention maps of successive blocks become near-identical. The paper
measures it with the cross-layer similarity

    M^{p,q}_{h,t} = A^p_{h,:,t}ᵀ A^q_{h,:,t} / (‖A^p_{h,:,t}‖ ‖A^q_{h,:,t}‖)

where A^p_{h,:,t} is column t of head h's (N, N) map in block p (how much token t contributes to every output
token), and averages it over heads and tokens (we also average over images). A block is a *similar block* when its
map is near-identical (M ≥ threshold, 0.9 in the paper's Fig. 3) to an earlier block's.

This is the *paper metric* everywhere in this project (metric and artifact names without a prefix:
``collapse/similar_blocks_<stage>``). It is a cosine of non-negative softmax columns, close to 1 for any diffuse
attention (two independent random maps over 65 tokens with ~63 effective keys score 0.94), so it is read together with
the calibrated similarity of :mod:`deepvit.collapse.calibrated` and the attention sharpness (effective keys).

No official code exists for these metrics (official repo, issue 12); this module is our implementation of Eq. 4.
"""
import torch

__all__ = ['cross_layer_similarity', 'similar_blocks', 'similar_adjacent_blocks', 'DEFAULT_SIMILARITY_THRESHOLD']

DEFAULT_SIMILARITY_THRESHOLD = 0.9


def cross_layer_similarity(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """The paper's cross-layer similarity M^{p,q} (Eq. 4), averaged over heads, tokens and images.

    Args:
        maps: (L, B, H, N, N) attention maps, e.g. from :func:`deepvit.collapse.attention_maps`. Column t of each (N, N) map is
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


def similar_blocks(similarity, threshold: float = DEFAULT_SIMILARITY_THRESHOLD) -> int:
    """Number of *similar blocks*: blocks p ≥ 1 whose map matches an earlier block's, max_{q<p} M[p, q] ≥ threshold.

    Rule (paper Sec. 3.2 and Fig. 3: "the ratio of the number of similar blocks to the total number of blocks",
    similarity counted above 90%): block 0 is never similar; block p is similar when its cross-layer similarity with
    some earlier block reaches ``threshold``. In a collapsed ViT these are the trailing blocks whose maps repeat their
    predecessors' (the paper's 5 / 11 / 15 of 16 / 24 / 32 blocks); Re-attention aims for 0.

    Args:
        similarity: (L, L) matrix (tensor or ndarray) from :func:`cross_layer_similarity` or any calibrated
            variant; NaN entries never count.
        threshold: cosine at or above which two blocks' maps count as near-identical (default 0.9).

    Returns:
        int in [0, L - 1].

    Raises:
        ValueError: ``similarity`` not square 2-D, or ``threshold`` outside (0, 1].
    """
    sim = _as_matrix(similarity)
    _check_threshold(threshold)
    L = sim.shape[0]
    return sum(1 for p in range(1, L) if bool((sim[p, :p] >= threshold).any()))


def similar_adjacent_blocks(similarity, threshold: float = DEFAULT_SIMILARITY_THRESHOLD) -> int:
    """Blocks p ≥ 1 whose map matches the block just before it: M[p, p − 1] ≥ threshold (adjacent pairs only).

    Same arguments, result range and errors as :func:`similar_blocks`; a lower bound of it.
    """
    sim = _as_matrix(similarity)
    _check_threshold(threshold)
    return int((sim.diagonal(offset=-1) >= threshold).sum()) if sim.shape[0] > 1 else 0


def _as_matrix(similarity) -> torch.Tensor:
    sim = torch.as_tensor(similarity)
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be an (L, L) matrix, got shape {tuple(sim.shape)}")
    return sim


def _check_threshold(threshold: float) -> None:
    if not 0. < threshold <= 1.:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
