"""Convolutional patch stem used by DeepViT-S and DeepViT-L.

Official code: zhoudaquan/dvit_repo, ``models/layers.py``, class ``PatchEmbed_CNN`` ("Following T2T, we use 3 layers
of CNN"): conv 7×7 stride 2 (in_chans → 64) + BN + ReLU, conv 3×3 (64 → 64) + BN + ReLU, then a
(patch_size/2)-sized, (patch_size/2)-strided conv projection to ``embed_dim``. The token grid is the same as a plain
``patch_size`` patch embedding. Built from timm's ``ConvNormAct`` and ``PatchEmbed``.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, ConvNormAct, PatchEmbed, to_2tuple

STEM_WIDTH = 64


class Fp32BatchNormAct2d(BatchNormAct2d):
    """timm's ``BatchNormAct2d`` computed in float32 when the input or the affine parameters are in a lower
    precision, the output cast back: the usual mixed-precision practice of keeping BatchNorm in float32 (apex amp's
    ``keep_batchnorm_fp32``). DeepSpeed's bf16 mode casts parameters, not buffers, so the stem's BatchNorm otherwise
    meets bf16 weights beside float32 running statistics ("expected scalar type BFloat16 but found Float").
    In float32 it is ``BatchNormAct2d`` unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and (self.weight is None or self.weight.dtype == torch.float32):
            return super().forward(x)
        # BatchNormAct2d.forward (torch's BatchNorm2d.forward), the input and the affine parameters in float32
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        tracked = not self.training or self.track_running_stats
        out = F.batch_norm(x.float(), self.running_mean if tracked else None, self.running_var if tracked else None,
                           None if self.weight is None else self.weight.float(),
                           None if self.bias is None else self.bias.float(), batch_stats, factor, self.eps)
        return self.act(self.drop(out)).to(x.dtype)


def _fp32_norm_act(num_features: int, **kwargs) -> Fp32BatchNormAct2d:
    """The stem's norm + ReLU for ``ConvNormAct(norm_layer=...)`` (timm takes a function as a norm-act factory)."""
    return Fp32BatchNormAct2d(num_features, **kwargs)


class ConvPatchEmbed(nn.Module):
    """Images (B, in_chans, H_img, W_img) → tokens (B, N, embed_dim), N = (H_img/patch_size)·(W_img/patch_size).

    Drop-in for timm's ``PatchEmbed`` inside ``VisionTransformer(embed_layer=...)``.

    Raises:
        ValueError: ``patch_size`` odd or ``img_size`` odd (the 7×7 stride-2 conv halves the image).
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: Union[int, Tuple[int, int]] = 16,
            in_chans: int = 3,
            embed_dim: int = 768,
            bias: bool = True,
            stem_width: int = STEM_WIDTH,
            device=None,
            dtype=None,
            **kwargs,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        img_size, patch_size = to_2tuple(img_size), to_2tuple(patch_size)
        if any(p % 2 for p in patch_size):
            raise ValueError(f"patch_size must be even for stem='conv', got {patch_size!r}")
        if any(s % 2 for s in img_size):
            raise ValueError(f"img_size must be even for stem='conv', got {img_size!r}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.stem = nn.Sequential(
            ConvNormAct(in_chans, stem_width, 7, stride=2, padding=3, norm_layer=_fp32_norm_act, **dd),
            ConvNormAct(stem_width, stem_width, 3, stride=1, padding=1, norm_layer=_fp32_norm_act, **dd),
        )
        self.proj_embed = PatchEmbed(
            img_size=tuple(s // 2 for s in img_size),
            patch_size=tuple(p // 2 for p in patch_size),
            in_chans=stem_width,
            embed_dim=embed_dim,
            bias=bias,
            **kwargs,
            **dd,
        )
        self.grid_size = self.proj_embed.grid_size
        self.num_patches = self.proj_embed.num_patches
        self.flatten = self.proj_embed.flatten
        self.output_fmt = self.proj_embed.output_fmt

    def set_input_size(
            self,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            patch_size: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> None:
        """Change the image size and/or patch size in place, as timm's ``PatchEmbed.set_input_size`` (called by
        ``VisionTransformer.set_input_size``): the projection gets half of each (the stem halves the image), and a
        new patch size resamples the projection's kernel as timm does. ``None`` keeps the current value.

        Raises:
            ValueError: an odd ``img_size`` or ``patch_size``, as at construction.
        """
        img_size = to_2tuple(img_size) if img_size is not None else self.img_size
        patch_size = to_2tuple(patch_size) if patch_size is not None else self.patch_size
        if any(p % 2 for p in patch_size):
            raise ValueError(f"patch_size must be even for stem='conv', got {patch_size!r}")
        if any(s % 2 for s in img_size):
            raise ValueError(f"img_size must be even for stem='conv', got {img_size!r}")
        self.proj_embed.set_input_size(img_size=tuple(s // 2 for s in img_size),
                                       patch_size=tuple(p // 2 for p in patch_size))
        self.img_size, self.patch_size = tuple(img_size), tuple(patch_size)
        self.grid_size = self.proj_embed.grid_size
        self.num_patches = self.proj_embed.num_patches

    def feat_ratio(self, as_scalar: bool = True):
        return max(self.patch_size) if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_embed(self.stem(x))
