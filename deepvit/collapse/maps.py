"""Attention maps of every block, captured from one forward pass (the input of every collapse metric).

Map stages. ``'softmax'``: Softmax(Q Kᵀ/√d), before any mixing. ``'mixed'``: the map that weights V — in a
Re-attention block Norm(Θᵀ · softmax), in a talking-heads block the post-softmax mix, in a plain block the softmax
map itself.
"""
from contextlib import contextmanager
from typing import Dict, Iterator, List

import torch
import torch.nn as nn

from ..models.attention import MAP_STAGES, Attention

__all__ = ['MAP_STAGES', 'probe_maps', 'attention_maps', 'attention_maps_by_stage']


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
