"""Paired-seed random streams: the private generators every remedy tensor draws its random init from.

A remedy must not change the shared weights (patch embedding, position embedding, class token, qkv, proj, MLPs,
norms, head) that the same seed gives the ViT, nor the global RNG state that data order and dropout draw from
afterwards. Remedy tensors therefore never draw from the global torch RNG: a random init draws from a private CPU
generator, :func:`remedy_generator`, seeded from ``torch.initial_seed()``, a stream name and the block index (so
blocks differ, seeds differ, and the same seed gives the same tensors on every device and dtype). Used by
:mod:`deepvit.models.head_mix` (Θ of Re-attention, talking heads' ``proj_l``/``proj_w``).
"""
import hashlib

import torch
import torch.nn as nn

__all__ = ['remedy_generator', 'remedy_uniform_', 'remedy_trunc_normal_']


def remedy_generator(stream: str, index: int = 0) -> torch.Generator:
    """A CPU generator private to one remedy tensor, seeded from ``torch.initial_seed()``, ``stream`` and ``index``.

    Building it reads the global generator's initial seed and never advances the global generator. The 64-bit
    seed is a BLAKE2b hash of the three values, so it is the same in every process and differs between streams,
    blocks and global seeds.
    """
    digest = hashlib.blake2b(f'{torch.initial_seed()}/{stream}/{index}'.encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, 'little') & ((1 << 63) - 1))


@torch.no_grad()
def remedy_uniform_(tensor: torch.Tensor, bound: float, stream: str, index: int = 0) -> torch.Tensor:
    """Fill ``tensor`` in place with U(-bound, bound) from :func:`remedy_generator` (drawn on CPU in float32, then
    copied, so the values do not depend on the tensor's device or dtype). Returns ``tensor``."""
    values = torch.empty(tensor.shape, dtype=torch.float32)
    values.uniform_(-bound, bound, generator=remedy_generator(stream, index))
    return tensor.copy_(values)


@torch.no_grad()
def remedy_trunc_normal_(tensor: torch.Tensor, std: float, stream: str, index: int = 0) -> torch.Tensor:
    """Fill ``tensor`` in place with timm's ``trunc_normal_(std=std)`` (N(0, std²) cut at ±2, absolute) from
    :func:`remedy_generator`, drawn on CPU in float32. Returns ``tensor``."""
    values = torch.empty(tensor.shape, dtype=torch.float32)
    nn.init.trunc_normal_(values, std=std, a=-2., b=2., generator=remedy_generator(stream, index))
    return tensor.copy_(values)
