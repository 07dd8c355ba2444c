"""ViT and DeepViT (Re-attention) families on timm's VisionTransformer, registered in timm's model registry.

After ``import deepvit``, ``timm.create_model(name, **overrides)`` builds every variant below, and any size field
can be overridden (``depth``, ``embed_dim``, ``num_heads``, ``mlp_ratio``, ``img_size``, ``patch_size``,
``in_chans``, ``num_classes``, ``drop_path_rate``, ``reattn_*``, ``stem``).

Size table (patch 16, 224 px, 1000 classes unless overridden; paper Table 2/3, official ``deep_vision_transformer.py``):

=========================  =====  =========  =====  ===  ============  =====  ========================
name                       depth  embed_dim  heads  mlp  Re-attention  stem   params (ours)
=========================  =====  =========  =====  ===  ============  =====  ========================
vit_16b_patch16_224        16     384        12     3    none          patch  24.42M
vit_24b_patch16_224        24     384        12     3    none          patch  36.26M
vit_32b_patch16_224        32     384        12     3    none          patch  48.09M
deepvit_16b_patch16_224    16     384        12     3    all           patch  24.42M + 16 × 168
deepvit_24b_patch16_224    24     384        12     3    all           patch  36.26M + 24 × 168
deepvit_32b_patch16_224    32     384        12     3    all           patch  48.09M + 32 × 168
deepvit_s_patch16_224      16     396        12     3    last 5        conv   27.31M
deepvit_l_patch16_224      32     420        12     3    last 12       conv   58.94M
vit_tiny_patch4_32         6      64         4      3    none          patch  32 px, 10 classes
deepvit_tiny_patch4_32     6      64         4      3    all           patch  32 px, 10 classes
=========================  =====  =========  =====  ===  ============  =====  ========================

The tiny pair is for CPU sweeps and tests (32 px images, patch 4: 64 patches + the class token = 65 tokens; 64 wide,
4 heads of 16 dims); it is used with depth/width overrides.
"""
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch.nn as nn
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, register_model
from timm.models.vision_transformer import Block, VisionTransformer, _cfg, checkpoint_filter_fn

from .attention import Attention
from .reattention import REATTN_INITS, REATTN_NORMS, ReAttention, ReAttentionMix
from .stem import ConvPatchEmbed

__all__ = ['DeepVisionTransformer', 'resolve_reattn_blocks', 'STEMS']

STEMS = ('patch', 'conv')
ReattnBlocks = Union[None, str, int, Sequence[int]]


def resolve_reattn_blocks(reattn_blocks: ReattnBlocks, depth: int) -> Tuple[int, ...]:
    """Indices (0-based, sorted) of the blocks that use Re-attention.

    Args:
        reattn_blocks: ``None`` or ``'all'``: every block; ``'none'`` or 0: no block (plain ViT); an int k:
            the last k blocks (official DeepViT-S uses 5 of 16, DeepViT-L 12 of 32); a sequence of block indices.
        depth: number of blocks.

    Raises:
        ValueError: k < 0 or k > depth, an index outside [0, depth), a repeated index, or another type.
    """
    if reattn_blocks is None or reattn_blocks == 'all':
        return tuple(range(depth))
    if reattn_blocks == 'none':
        return ()
    if isinstance(reattn_blocks, bool):
        raise ValueError(f"reattn_blocks must be 'all', 'none', an int or a list of block indices, got {reattn_blocks!r}")
    if isinstance(reattn_blocks, int):
        if not 0 <= reattn_blocks <= depth:
            raise ValueError(f"reattn_blocks must be between 0 and depth={depth}, got {reattn_blocks!r}")
        return tuple(range(depth - reattn_blocks, depth))
    if isinstance(reattn_blocks, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool)
                                                        for i in reattn_blocks):
        bad = [i for i in reattn_blocks if not 0 <= i < depth]
        if bad:
            raise ValueError(f"reattn_blocks indices must lie in [0, depth={depth}), got {list(reattn_blocks)!r}")
        if len(set(reattn_blocks)) != len(reattn_blocks):
            raise ValueError(f"reattn_blocks has repeated indices: {list(reattn_blocks)!r}")
        return tuple(sorted(reattn_blocks))
    raise ValueError(f"reattn_blocks must be 'all', 'none', an int or a list of block indices, got {reattn_blocks!r}")


class _BlockFactory:
    """``block_fn`` for timm's VisionTransformer: timm's Block with our Attention, or ReAttention in chosen blocks."""

    def __init__(self, reattn_blocks: Tuple[int, ...], reattn_norm: str, reattn_init: str) -> None:
        self.reattn_blocks = set(reattn_blocks)
        self.reattn_norm = reattn_norm
        self.reattn_init = reattn_init

    def __call__(self, *, depth: int, attn_layer=None, device=None, dtype=None, **kwargs) -> Block:
        use_reattn = depth in self.reattn_blocks
        block = Block(depth=depth, attn_layer=ReAttention if use_reattn else Attention,
                      device=device, dtype=dtype, **kwargs)
        if use_reattn:
            block.attn.reattn = ReAttentionMix(
                block.attn.num_heads, norm=self.reattn_norm, init=self.reattn_init, device=device, dtype=dtype)
        return block


def _square(size: Union[int, Tuple[int, int]]) -> Union[int, List[int]]:
    """An int for square sizes (timm passes ``img_size`` as a tuple from ``pretrained_cfg``), else a list."""
    h, w = to_2tuple(size)
    return int(h) if h == w else [int(h), int(w)]


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class DeepVisionTransformer(VisionTransformer):
    """timm's VisionTransformer with probe-able attention and optional Re-attention blocks (DeepViT).

    Images (B, in_chans, img_size, img_size) float → logits (B, num_classes). ``forward_features`` returns tokens
    (B, N, embed_dim) with N = (img_size / patch_size)² + 1. With ``reattn_blocks='none'`` this is exactly timm's
    ViT (same parameters and names, same function); each Re-attention block adds Θ (H×H) and its norm.

    Args:
        img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio, qkv_bias,
        drop_path_rate, **kwargs: timm's VisionTransformer fields.
        reattn_blocks: which blocks use Re-attention (see :func:`resolve_reattn_blocks`); default all.
        reattn_norm: ``'bn'`` (default, paper + official code), ``'ln'`` (lucidrains), ``'none'``;
            see :class:`~deepvit.models.reattention.ReAttentionMix`.
        reattn_init: ``'random'`` (default, paper) or ``'identity'``.
        stem: ``'patch'`` (a patch_size-strided conv, ViT) or ``'conv'`` (the 3-conv stem of DeepViT-S/L,
            :class:`~deepvit.models.stem.ConvPatchEmbed`).

    Attributes:
        model_cfg: the resolved architecture fields (dict), enough to rebuild the model.
        reattn_block_indices: tuple of the Re-attention blocks' indices.

    Raises:
        ValueError: at construction, naming the field and the value: ``depth < 1``, ``embed_dim`` not divisible by
            ``num_heads``, ``img_size`` not divisible by ``patch_size``, unknown ``reattn_norm``/``reattn_init``/
            ``stem``, ``reattn_blocks`` larger than ``depth``.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: Union[int, Tuple[int, int]] = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            embed_dim: int = 384,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            drop_path_rate: float = 0.,
            reattn_blocks: ReattnBlocks = 'all',
            reattn_norm: str = 'bn',
            reattn_init: str = 'random',
            stem: str = 'patch',
            **kwargs,
    ) -> None:
        _check_positive_int('depth', depth)
        _check_positive_int('embed_dim', embed_dim)
        _check_positive_int('num_heads', num_heads)
        _check_positive_int('in_chans', in_chans)
        _check_positive_int('num_classes', num_classes, minimum=0)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim must be divisible by num_heads={num_heads}, got embed_dim={embed_dim!r}")
        for s, p in zip(to_2tuple(img_size), to_2tuple(patch_size)):
            _check_positive_int('patch_size', p)
            _check_positive_int('img_size', s)
            if s % p:
                raise ValueError(f"img_size must be divisible by patch_size={patch_size!r}, got img_size={img_size!r}")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio!r}")
        if not 0. <= drop_path_rate < 1.:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        if reattn_norm not in REATTN_NORMS:
            raise ValueError(f"reattn_norm must be one of {REATTN_NORMS}, got {reattn_norm!r}")
        if reattn_init not in REATTN_INITS:
            raise ValueError(f"reattn_init must be one of {REATTN_INITS}, got {reattn_init!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        reattn_idx = resolve_reattn_blocks(reattn_blocks, depth)
        if stem == 'conv':
            kwargs['embed_layer'] = ConvPatchEmbed

        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
            block_fn=_BlockFactory(reattn_idx, reattn_norm, reattn_init),
            **kwargs,
        )
        self.reattn_block_indices = reattn_idx
        self.model_cfg: Dict[str, Any] = dict(
            img_size=_square(img_size), patch_size=_square(patch_size), in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate, reattn_blocks=list(reattn_idx), reattn_norm=reattn_norm,
            reattn_init=reattn_init, stem=stem,
        )

    @property
    def family(self) -> str:
        """``'deepvit'`` when any block uses Re-attention, else ``'vit'``."""
        return 'deepvit' if self.reattn_block_indices else 'vit'

    def attention_layers(self) -> Iterator[Attention]:
        """The blocks' attention modules, in block order."""
        for blk in self.blocks:
            yield blk.attn

    def set_fused_attn(self, enable: bool = True) -> None:
        """Use fused SDPA (``True``) or the explicit path (``False``) in plain-attention blocks.

        Re-attention blocks always take the explicit path; probes force it while they run.
        """
        for attn in self.attention_layers():
            attn.fused_attn = bool(enable)


def _create(variant: str, pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        DeepVisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _dvcfg(**kwargs) -> Dict[str, Any]:
    # The official configs normalise with mean = std = 0.5 (timm's IMAGENET_INCEPTION_*), as timm's _cfg does.
    return _cfg(url='', license='apache-2.0', **kwargs)


_TINY = dict(input_size=(3, 32, 32), num_classes=10, crop_pct=1.0, fixed_input_size=True)

default_cfgs = {
    'vit_16b_patch16_224': _dvcfg(),
    'vit_24b_patch16_224': _dvcfg(),
    'vit_32b_patch16_224': _dvcfg(),
    'deepvit_16b_patch16_224': _dvcfg(),
    'deepvit_24b_patch16_224': _dvcfg(),
    'deepvit_32b_patch16_224': _dvcfg(),
    'deepvit_s_patch16_224': _dvcfg(first_conv='patch_embed.stem.0.conv'),
    'deepvit_l_patch16_224': _dvcfg(first_conv='patch_embed.stem.0.conv'),
    'vit_tiny_patch4_32': _dvcfg(**_TINY),
    'deepvit_tiny_patch4_32': _dvcfg(**_TINY),
}

# The paper's depth-table architecture (official deep_vision_transformer.py): patch 16, embed 384, 12 heads,
# MLP ratio 3, qkv bias, LayerNorm eps 1e-6 (timm's default).
_PAPER = dict(patch_size=16, embed_dim=384, num_heads=12, mlp_ratio=3., qkv_bias=True)
_TINY_ARCH = dict(img_size=32, patch_size=4, num_classes=10, embed_dim=64, depth=6, num_heads=4, mlp_ratio=3.,
                  qkv_bias=True)


def _entry(variant: str, pretrained: bool, defaults: Dict[str, Any], kwargs: Dict[str, Any]):
    return _create(variant, pretrained=pretrained, **{**defaults, **kwargs})


@register_model
def vit_16b_patch16_224(pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    """ViT baseline of the paper's depth table, 16 blocks (24.42M params)."""
    return _entry('vit_16b_patch16_224', pretrained, dict(_PAPER, depth=16, reattn_blocks='none'), kwargs)


@register_model
def vit_24b_patch16_224(pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    """ViT baseline of the paper's depth table, 24 blocks (36.26M params)."""
    return _entry('vit_24b_patch16_224', pretrained, dict(_PAPER, depth=24, reattn_blocks='none'), kwargs)


@register_model
def vit_32b_patch16_224(pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    """ViT baseline of the paper's depth table, 32 blocks (48.09M params)."""
    return _entry('vit_32b_patch16_224', pretrained, dict(_PAPER, depth=32, reattn_blocks='none'), kwargs)


@register_model
def deepvit_16b_patch16_224(pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    """DeepViT of the paper's depth table, 16 blocks, Re-attention in every block."""
    return _entry('deepvit_16b_patch16_224', pretrained, dict(_PAPER, depth=16, reattn_blocks='all'), kwargs)


@register_model
def deepvit_24b_patch16_224(pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    """DeepViT of the paper's depth table, 24 blocks, Re-attention in every block."""
    return _entry('deepvit_24b_patch16_224', pretrained, dict(_PAPER, depth=24, reattn_blocks='all'), kwargs)


@register_model
def deepvit_32b_patch16_224(pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    """DeepViT of the paper's depth table, 32 blocks, Re-attention in every block."""
    return _entry('deepvit_32b_patch16_224', pretrained, dict(_PAPER, depth=32, reattn_blocks='all'), kwargs)


@register_model
def deepvit_s_patch16_224(pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    """DeepViT-S (paper Table 6): 16 blocks, embed 396, Re-attention in the last 5, convolutional stem."""
    return _entry('deepvit_s_patch16_224', pretrained,
                  dict(_PAPER, embed_dim=396, depth=16, reattn_blocks=5, stem='conv'), kwargs)


@register_model
def deepvit_l_patch16_224(pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    """DeepViT-L (paper Table 6): 32 blocks, embed 420, Re-attention in the last 12, convolutional stem."""
    return _entry('deepvit_l_patch16_224', pretrained,
                  dict(_PAPER, embed_dim=420, depth=32, reattn_blocks=12, stem='conv'), kwargs)


@register_model
def vit_tiny_patch4_32(pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    """CPU-sized ViT for 32 px images: 6 blocks, embed 64, 4 heads, patch 4 (65 tokens), 10 classes."""
    return _entry('vit_tiny_patch4_32', pretrained, dict(_TINY_ARCH, reattn_blocks='none'), kwargs)


@register_model
def deepvit_tiny_patch4_32(pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    """CPU-sized DeepViT for 32 px images: as ``vit_tiny_patch4_32`` with Re-attention in every block."""
    return _entry('deepvit_tiny_patch4_32', pretrained, dict(_TINY_ARCH, reattn_blocks='all'), kwargs)


def list_variants() -> List[str]:
    """Names of the variants this module registers, in table order."""
    return list(default_cfgs)
