"""Parameter and multiply-accumulate counts of a ViT/DeepViT, the analytics a scaling study logs per run.

MACs count every matmul and convolution per image, forward pass only: patch embedding (or conv stem), the
qkv/proj/MLP linears, the two attention matmuls (Q Kᵀ and A V: N²·C each), the Re-attention head mixing
(H²·N² per block) and the two talking-heads mixings (logits and weights: 2·H²·N² per block); norms, LayerScale,
softmax, activations and additions are not counted (the convention of fvcore and of DeepSpeed's flops profiler for
MACs). Training FLOPs ≈ 3 × 2 × MACs. ``tests/test_complexity.py`` checks the
count against fvcore's trace of the same model.
"""
import torch.nn as nn

from .deepvit import DeepVisionTransformer
from .stem import ConvPatchEmbed


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements), not counting buffers such as BatchNorm running statistics."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def macs_per_image(model: DeepVisionTransformer) -> int:
    """Multiply-accumulates of one forward pass on one image at the model's ``img_size`` (see module docstring).

    Raises:
        TypeError: ``model`` is not a :class:`DeepVisionTransformer`.
    """
    if not isinstance(model, DeepVisionTransformer):
        raise TypeError(f"model must be a DeepVisionTransformer, got {type(model).__name__}")
    cfg = model.model_cfg
    embed = model.patch_embed
    gh, gw = embed.grid_size
    num_patches = gh * gw
    tokens = num_patches + model.num_prefix_tokens
    C = cfg['embed_dim']
    H = cfg['num_heads']

    if isinstance(embed, ConvPatchEmbed):
        macs = 0
        h, w = embed.img_size
        for layer in embed.stem:
            conv = layer.conv
            h = (h + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
            w = (w + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
            macs += h * w * conv.out_channels * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        proj = embed.proj_embed.proj
        macs += num_patches * proj.out_channels * proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]
    else:
        proj = embed.proj
        macs = num_patches * proj.out_channels * proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]

    for blk in model.blocks:
        for lin in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
            macs += tokens * lin.in_features * lin.out_features
        macs += 2 * tokens * tokens * blk.attn.attn_dim  # Q Kᵀ and A V
        if blk.attn.uses_reattention:
            macs += H * H * tokens * tokens  # Θᵀ mixing of the (N, N) maps
        if blk.attn.uses_talking_heads:
            macs += 2 * H * H * tokens * tokens  # proj_l on the logits, proj_w on the weights
    if isinstance(model.head, nn.Linear):
        macs += model.head.in_features * model.head.out_features
    return macs


def gmacs_per_image(model: DeepVisionTransformer) -> float:
    """:func:`macs_per_image` in units of 10⁹ MACs (the paper's "FLOPs" column, e.g. DeepViT-S 6.2G)."""
    return macs_per_image(model) / 1e9
