"""The registered variants of :class:`~deepvit.models.deepvit.DeepVisionTransformer` (timm's model registry).

After ``import deepvit``, ``timm.create_model(name, **overrides)`` builds every variant below, and any field can be
overridden (``depth``, ``embed_dim``, ``num_heads``, ``mlp_ratio``, ``img_size``, ``patch_size``, ``in_chans``,
``num_classes``, ``drop_path_rate``, ``reattn_*``, ``init_values``, ``talkinghead_*``, ``residual_*``, ``stem``). All
families are one class, :class:`DeepVisionTransformer`; a family is a choice of its remedy fields, and
``model.model_cfg`` rebuilds the model (``timm.create_model(name, **model.model_cfg)``).

Size table (patch 16, 224 px, 1000 classes unless overridden; paper Table 2/3, official ``deep_vision_transformer.py``):

===========================  =====  =========  =====  ===  ============  =====  ==========================
name                         depth  embed_dim  heads  mlp  remedy        stem   params (ours)
===========================  =====  =========  =====  ===  ============  =====  ==========================
vit_16b_patch16_224          16     384        12     3    none          patch  24.42M
vit_24b_patch16_224          24     384        12     3    none          patch  36.26M
vit_32b_patch16_224          32     384        12     3    none          patch  48.09M
deepvit_16b_patch16_224      16     384        12     3    reattn, all   patch  24.42M + 16 × 168
deepvit_24b_patch16_224      24     384        12     3    reattn, all   patch  36.26M + 24 × 168
deepvit_32b_patch16_224      32     384        12     3    reattn, all   patch  48.09M + 32 × 168
layerscale_16b_patch16_224   16     384        12     3    layerscale    patch  24.42M + 16 × 768
talkinghead_16b_patch16_224  16     384        12     3    talkinghead   patch  24.42M + 16 × 300
depthscale_16b_patch16_224   16     384        12     3    depthscale    patch  24.42M (no parameter added)
deepvit_s_patch16_224        16     396        12     3    reattn, 5     conv   27.31M
deepvit_l_patch16_224        32     420        12     3    reattn, 12    conv   58.88M
vit_tiny_patch4_32           6      64         4      3    none          patch  32 px, 10 classes
deepvit_tiny_patch4_32       6      64         4      3    reattn, all   patch  32 px, 10 classes
layerscale_tiny_patch4_32    6      64         4      3    layerscale    patch  32 px, 10 classes
talkinghead_tiny_patch4_32   6      64         4      3    talkinghead   patch  32 px, 10 classes
depthscale_tiny_patch4_32    6      64         4      3    depthscale    patch  32 px, 10 classes
===========================  =====  =========  =====  ===  ============  =====  ==========================

Remedy parameters per block: Re-attention Θ (H²) + BatchNorm affine (2H); LayerScale two (C,) scales; talking
heads two H×H mixes + the post-softmax bias (2H² + H). The LayerScale variants take CaiT's ε for their depth
(:func:`~deepvit.models.remedies.cait_init_values`: 0.1 up to depth 18, 1e-5 to 24, 1e-6 beyond) unless
``init_values`` is given. The depth-scaled variants multiply every residual branch by 1/√depth (the depth actually
built; :func:`~deepvit.models.remedies.residual_branch_scale`) and add no parameter.

The tiny variants are for CPU sweeps and tests (32 px images, patch 4: 64 patches + the class token = 65 tokens;
64 wide, 4 heads of 16 dims); they are used with depth/width overrides.
"""
from typing import Any, Dict, List

from timm.models import build_model_with_cfg, register_model
from timm.models.vision_transformer import _cfg, checkpoint_filter_fn

from .deepvit import DeepVisionTransformer
from .remedies import cait_init_values

__all__ = ['list_variants']


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
    'layerscale_16b_patch16_224': _dvcfg(),
    'talkinghead_16b_patch16_224': _dvcfg(),
    'depthscale_16b_patch16_224': _dvcfg(),
    'deepvit_s_patch16_224': _dvcfg(first_conv='patch_embed.stem.0.conv'),
    'deepvit_l_patch16_224': _dvcfg(first_conv='patch_embed.stem.0.conv'),
    'vit_tiny_patch4_32': _dvcfg(**_TINY),
    'deepvit_tiny_patch4_32': _dvcfg(**_TINY),
    'layerscale_tiny_patch4_32': _dvcfg(**_TINY),
    'talkinghead_tiny_patch4_32': _dvcfg(**_TINY),
    'depthscale_tiny_patch4_32': _dvcfg(**_TINY),
}

# The paper's depth-table architecture (official deep_vision_transformer.py): patch 16, embed 384, 12 heads,
# MLP ratio 3, qkv bias, LayerNorm eps 1e-6 (timm's default).
_PAPER = dict(patch_size=16, embed_dim=384, num_heads=12, mlp_ratio=3., qkv_bias=True)
_TINY_ARCH = dict(img_size=32, patch_size=4, num_classes=10, embed_dim=64, depth=6, num_heads=4, mlp_ratio=3.,
                  qkv_bias=True)


def _entry(variant: str, pretrained: bool, defaults: Dict[str, Any], kwargs: Dict[str, Any]):
    return _create(variant, pretrained=pretrained, **{**defaults, **kwargs})


def _layerscale_entry(variant: str, pretrained: bool, defaults: Dict[str, Any], kwargs: Dict[str, Any]):
    # CaiT's ε for the depth actually built (an explicit init_values wins; 0 switches LayerScale off)
    depth = kwargs.get('depth', defaults['depth'])
    return _entry(variant, pretrained, dict(defaults, init_values=cait_init_values(depth)), kwargs)


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
def layerscale_16b_patch16_224(pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    """ViT of the paper's depth table, 16 blocks, with CaiT's LayerScale (ε = 0.1 at depth 16, CaiT's rule)."""
    return _layerscale_entry('layerscale_16b_patch16_224', pretrained, dict(_PAPER, depth=16, reattn_blocks='none'),
                             kwargs)


@register_model
def talkinghead_16b_patch16_224(pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    """ViT of the paper's depth table, 16 blocks, with talking-heads attention in every block."""
    return _entry('talkinghead_16b_patch16_224', pretrained,
                  dict(_PAPER, depth=16, reattn_blocks='none', talkinghead_blocks='all'), kwargs)


@register_model
def depthscale_16b_patch16_224(pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    """ViT of the paper's depth table, 16 blocks, every residual branch × 1/√depth (arXiv 2309.16620, 2310.02244)."""
    return _entry('depthscale_16b_patch16_224', pretrained,
                  dict(_PAPER, depth=16, reattn_blocks='none', residual_scale='depth'), kwargs)


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


@register_model
def layerscale_tiny_patch4_32(pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    """CPU-sized ViT with CaiT's LayerScale: as ``vit_tiny_patch4_32``, ε by CaiT's depth rule (0.1 at depth 6)."""
    return _layerscale_entry('layerscale_tiny_patch4_32', pretrained, dict(_TINY_ARCH, reattn_blocks='none'), kwargs)


@register_model
def talkinghead_tiny_patch4_32(pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    """CPU-sized ViT with talking-heads attention: as ``vit_tiny_patch4_32``, talking heads in every block."""
    return _entry('talkinghead_tiny_patch4_32', pretrained,
                  dict(_TINY_ARCH, reattn_blocks='none', talkinghead_blocks='all'), kwargs)


@register_model
def depthscale_tiny_patch4_32(pretrained: bool = False, **kwargs) -> DeepVisionTransformer:
    """CPU-sized depth-scaled ViT: as ``vit_tiny_patch4_32``, every residual branch × 1/√depth (the depth built)."""
    return _entry('depthscale_tiny_patch4_32', pretrained,
                  dict(_TINY_ARCH, reattn_blocks='none', residual_scale='depth'), kwargs)


def list_variants() -> List[str]:
    """Names of the variants this module registers, in table order."""
    return list(default_cfgs)
