"""ViT, DeepViT (Re-attention), LayerScale, talking-heads and depth-scaled families on timm's VisionTransformer,
registered in timm's model registry.

One model class (timm's VisionTransformer with per-block attention choices) and its field checks; the registered
variants (size table) are in :mod:`deepvit.models.variants`, the remedies' layers in their own modules.

Paired seeds: after ``torch.manual_seed(s)`` every family builds the shared tensors (patch embedding, position
embedding, class token, qkv, proj, MLPs, norms, head) bitwise equal to the ViT's of that seed and leaves the global
RNG in the same state, because remedy tensors never draw from the global RNG (:mod:`deepvit.models.remedies`).
"""
import functools
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from timm.layers import to_2tuple
from timm.models.vision_transformer import Block, VisionTransformer

from .checkpointing import checkpoint_blocks
from .attention import Attention
from .reattention import ReAttention, check_reattn_options
from .remedies import (TALKINGHEAD_INITS, ResidualScaledBlock, TalkingHeadAttention,
                       residual_branch_scale)
from .stem import ConvPatchEmbed

__all__ = ['DeepVisionTransformer', 'resolve_blocks', 'resolve_reattn_blocks', 'model_family', 'model_remedy',
           'FAMILIES', 'STEMS']

STEMS = ('patch', 'conv')
FAMILIES = ('vit', 'deepvit', 'layerscale', 'talkinghead', 'depthscale')
BlockSpec = Union[None, str, int, Sequence[int]]

# Re-attention field defaults: a non-default value on a model without Re-attention blocks is an error
_REATTN_DEFAULTS = dict(reattn_norm='bn', reattn_init='random', reattn_theta='learned')


def resolve_blocks(blocks: BlockSpec, depth: int, field: str = 'reattn_blocks') -> Tuple[int, ...]:
    """Indices (0-based, sorted) of the blocks selected by a block field (``reattn_blocks``, ``talkinghead_blocks``).

    Args:
        blocks: ``None`` or ``'all'``: every block; ``'none'`` or 0: no block; an int k: the last k blocks
            (official DeepViT-S uses Re-attention in 5 of 16, DeepViT-L in 12 of 32); a sequence of block indices.
        depth: number of blocks.
        field: the field's name, for error messages.

    Raises:
        ValueError (naming ``field`` and the value): k < 0 or k > depth, an index outside [0, depth), a repeated
            index, or another type.
    """
    if blocks is None or blocks == 'all':
        return tuple(range(depth))
    if blocks == 'none':
        return ()
    if isinstance(blocks, bool):
        raise ValueError(f"{field} must be 'all', 'none', an int or a list of block indices, got {blocks!r}")
    if isinstance(blocks, int):
        if not 0 <= blocks <= depth:
            raise ValueError(f"{field} must be between 0 and depth={depth}, got {blocks!r}")
        return tuple(range(depth - blocks, depth))
    if isinstance(blocks, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in blocks):
        bad = [i for i in blocks if not 0 <= i < depth]
        if bad:
            raise ValueError(f"{field} indices must lie in [0, depth={depth}), got {list(blocks)!r}")
        if len(set(blocks)) != len(blocks):
            raise ValueError(f"{field} has repeated indices: {list(blocks)!r}")
        return tuple(sorted(blocks))
    raise ValueError(f"{field} must be 'all', 'none', an int or a list of block indices, got {blocks!r}")


def resolve_reattn_blocks(reattn_blocks: BlockSpec, depth: int) -> Tuple[int, ...]:
    """Indices of the Re-attention blocks: :func:`resolve_blocks` for the field ``reattn_blocks``."""
    return resolve_blocks(reattn_blocks, depth, 'reattn_blocks')


def _reattn_label(norm: str, init: str, theta: str) -> str:
    if theta == 'fixed':  # Θ held at I: only the norm acts
        return f'{norm}_only'
    label = 'reattn' + {'bn': '', 'ln': '_ln', 'none': '_nonorm'}[norm]
    return label + ('_identity' if init == 'identity' else '')


def model_remedy(cfg: Dict[str, Any]) -> str:
    """Canonical short label of the exact variant described by a ``model_cfg`` dict.

    ``'vit'`` for no remedy; the Re-attention part is ``'reattn'`` (BatchNorm, random Θ, learned: the paper's),
    ``'reattn_ln'``, ``'reattn_nonorm'``, ``'reattn_identity'`` (suffixes combine, e.g. ``'reattn_ln_identity'``),
    or ``'bn_only'`` / ``'ln_only'`` (Θ fixed at I, ``reattn_theta='fixed'``); then ``'talkinghead'`` (identity
    init) or ``'talkinghead_trunc'`` (timm's CaiT init), then ``'layerscale'``, then the residual scale:
    ``'depthscale'`` (α/√depth with α = 1), ``'depthscale_a<α>'`` (another α) or ``'resscale<s>'`` (a fixed s);
    several remedies are joined with ``'+'`` in that order (e.g. ``'talkinghead+layerscale'``, CaiT's attention).
    Which blocks carry a remedy is not part of the label (it is in ``reattn_blocks`` / ``talkinghead_blocks``).
    """
    parts = []
    if cfg.get('reattn_blocks'):
        parts.append(_reattn_label(cfg.get('reattn_norm', 'bn'), cfg.get('reattn_init', 'random'),
                                   cfg.get('reattn_theta', 'learned')))
    if cfg.get('talkinghead_blocks'):
        parts.append('talkinghead' if cfg.get('talkinghead_init', 'identity') == 'identity' else 'talkinghead_trunc')
    if cfg.get('init_values'):
        parts.append('layerscale')
    scale, alpha = cfg.get('residual_scale', 'none'), float(cfg.get('residual_alpha', 1.))
    if scale == 'depth':
        parts.append('depthscale' if alpha == 1. else f'depthscale_a{alpha:g}')
    elif scale != 'none':
        parts.append(f'resscale{float(scale):g}')
    return '+'.join(parts) or 'vit'


def model_family(cfg: Dict[str, Any]) -> str:
    """The family of a ``model_cfg`` dict, one of :data:`FAMILIES`: ``'deepvit'`` when any block uses Re-attention,
    else ``'talkinghead'`` when any block uses talking heads, else ``'layerscale'`` with LayerScale, else
    ``'depthscale'`` with a residual scale (``'depth'`` or a fixed number), else ``'vit'`` (so a combination takes
    the first of these; :func:`model_remedy` names it exactly)."""
    if cfg.get('reattn_blocks'):
        return 'deepvit'
    if cfg.get('talkinghead_blocks'):
        return 'talkinghead'
    if cfg.get('init_values'):
        return 'layerscale'
    if cfg.get('residual_scale', 'none') != 'none':
        return 'depthscale'
    return 'vit'


def _with_options(layer: type, **options: Any) -> type:
    """``layer`` with ``options`` bound to its constructor, still a class: a subclass of the same name.

    timm 1.0's Block takes its ``attn_layer`` as a class (``_create_attn`` calls ``issubclass`` on it), so a
    ``functools.partial`` cannot carry a block's own fields (its index, the Re-attention options) into the attention
    layer; a bound subclass can, and the layer is then built once, inside the Block, like timm's own.
    """
    init = functools.partialmethod(layer.__init__, **options)
    return type(layer.__name__, (layer,), {'__init__': init, '__module__': layer.__module__,
                                           '__qualname__': layer.__qualname__})


class _BlockFactory:
    """``block_fn`` for timm's VisionTransformer: per block, timm's Block (or :class:`ResidualScaledBlock` when
    ``residual_scale`` is a number) with our Attention, ReAttention or TalkingHeadAttention as its ``attn_layer``,
    built with the block's index (the remedy modules' private random stream) and the remedy's options.

    None of the remedy modules draws from the global RNG, so the Block's shared layers get the same draws as in
    the ViT.
    """

    def __init__(self, reattn_blocks: Tuple[int, ...], reattn_norm: str, reattn_init: str, reattn_theta: str,
                 talkinghead_blocks: Tuple[int, ...], talkinghead_init: str,
                 residual_scale: Optional[float] = None) -> None:
        self.reattn_blocks = set(reattn_blocks)
        self.reattn_options = dict(reattn_norm=reattn_norm, reattn_init=reattn_init, reattn_theta=reattn_theta)
        self.talkinghead_blocks = set(talkinghead_blocks)
        self.talkinghead_init = talkinghead_init
        self.residual_scale = residual_scale

    def attn_layer(self, depth: int) -> type:
        """The attention class of block ``depth`` (0-based), its options bound."""
        if depth in self.reattn_blocks:
            return _with_options(ReAttention, block_index=depth, **self.reattn_options)
        if depth in self.talkinghead_blocks:
            return _with_options(TalkingHeadAttention, block_index=depth, talkinghead_init=self.talkinghead_init)
        return Attention

    def __call__(self, *, depth: int, attn_layer=None, **kwargs) -> Block:
        if self.residual_scale is None:
            return Block(depth=depth, attn_layer=self.attn_layer(depth), **kwargs)
        return ResidualScaledBlock(depth=depth, attn_layer=self.attn_layer(depth),
                                   residual_scale=self.residual_scale, **kwargs)


def _square(size: Union[int, Tuple[int, int]]) -> Union[int, List[int]]:
    """An int for square sizes (timm passes ``img_size`` as a tuple from ``pretrained_cfg``), else a list."""
    h, w = to_2tuple(size)
    return int(h) if h == w else [int(h), int(w)]


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _resolve_init_values(value: Any) -> float:
    """``None`` or 0 (timm's falsy "no LayerScale") → 0.0; a finite number > 0 → that float."""
    if value is None:
        return 0.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0. <= value < float('inf'):
        raise ValueError(f"init_values must be None or 0 (no LayerScale) or a finite number > 0, got {value!r}")
    return float(value)


class DeepVisionTransformer(VisionTransformer):
    """timm's VisionTransformer with probe-able attention and optional remedies for attention collapse: Re-attention
    (DeepViT), LayerScale (CaiT), talking-heads attention and depth-scaled residual branches, each a field of this
    one class.

    Images (B, in_chans, img_size, img_size) float → logits (B, num_classes). ``forward_features`` returns tokens
    (B, N, embed_dim) with N = (img_size / patch_size)² + 1. With no remedy (``reattn_blocks='none'``,
    ``talkinghead_blocks='none'``, ``init_values=None`` or 0, ``residual_scale='none'``) this is exactly timm's ViT
    (same parameters and names, same function). Remedies add: Re-attention Θ (H×H) and its norm per block
    (``blocks.i.attn.reattn.*``); LayerScale ``blocks.i.ls1.gamma``, ``blocks.i.ls2.gamma`` (C,); talking heads
    ``blocks.i.attn.proj_l.weight``, ``proj_w.weight`` (H×H) and ``proj_w.bias`` (H,); the residual scale nothing
    (a fixed multiplier in ``ls1``/``ls2``).

    Args:
        img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio, qkv_bias,
        drop_path_rate, **kwargs: timm's VisionTransformer fields.
        reattn_blocks: which blocks use Re-attention (see :func:`resolve_blocks`); default all.
        reattn_norm: ``'bn'`` (default, paper + official code), ``'ln'`` (lucidrains), ``'none'``;
            see :class:`~deepvit.models.reattention.ReAttentionMix`.
        reattn_init: ``'random'`` (default, paper) or ``'identity'``.
        reattn_theta: ``'learned'`` (default) or ``'fixed'``: Θ a non-trainable identity buffer while the norm
            stays, the BatchNorm-only control (needs ``reattn_init='identity'`` and a norm).
        init_values: LayerScale (timm's Block field): ``None`` (default) or 0 for none, else the initial value ε of
            the per-channel scales on both residual branches of every block. CaiT's depth rule is
            :func:`~deepvit.models.remedies.cait_init_values` (the ``layerscale_*`` variants' default). Spell "none"
            as ``init_values=0`` through ``timm.create_model``, which drops ``None``-valued kwargs (so
            ``init_values=None`` cannot override a variant's default); ``model_cfg`` records 0.0 for none, so that
            it rebuilds the model under any registered name.
        talkinghead_blocks: which blocks use talking-heads attention
            (:class:`~deepvit.models.remedies.TalkingHeadAttention`), same forms as ``reattn_blocks``; default
            ``'none'``.
        talkinghead_init: ``'identity'`` (default: the layer starts as plain attention) or ``'trunc_normal'``
            (timm's CaiT init, std 0.02).
        residual_scale: a fixed (not learned) multiplier on both residual branches of every block:
            ``'none'`` (default), ``'depth'`` (``residual_alpha``/√depth: the branch multiplier of Bordelon et al.
            2024, arXiv 2309.16620, and Depth-μP, arXiv 2310.02244; the ``depthscale_*`` variants' default) or a
            number s > 0 (s at every depth; 1 is the ViT's function). Only the forward multiplier: the branch
            weights keep the ViT's depth-independent init (as both papers prescribe), and the learning-rate rule
            Depth-μP gives for Adam (branch weights at η/√L) and the μP width scalings are **not** applied here
            (one learning rate for every parameter, the standard parametrisation in width); see docs/models.md.
        residual_alpha: α of ``residual_scale='depth'`` (default 1).
        stem: ``'patch'`` (a patch_size-strided conv, ViT) or ``'conv'`` (the 3-conv stem of DeepViT-S/L,
            :class:`~deepvit.models.stem.ConvPatchEmbed`).

    Attributes:
        model_cfg: the resolved architecture fields (dict), enough to rebuild the model:
            ``timm.create_model(name, **model.model_cfg)``. Block fields are resolved to index lists.
        reattn_block_indices, talkinghead_block_indices: tuples of those blocks' indices.
        residual_branch_scale: the multiplier of every residual branch (float), ``None`` for none.
        family, remedy: see :func:`model_family`, :func:`model_remedy` (derived from ``model_cfg``).

    Raises:
        ValueError: at construction, naming the field and the value: ``depth < 1``, ``embed_dim`` not divisible by
            ``num_heads``, ``img_size`` not divisible by ``patch_size``, unknown ``reattn_norm``/``reattn_init``/
            ``reattn_theta``/``talkinghead_init``/``stem``, ``reattn_blocks``/``talkinghead_blocks`` larger than
            ``depth``, ``init_values`` negative or not finite; and nonsense combinations: ``reattn_theta='fixed'`` with
            ``reattn_init='random'`` or ``reattn_norm='none'`` (that is the ViT), a non-default ``reattn_*`` field
            with no Re-attention block or ``talkinghead_init`` with no talking-heads block (it would be ignored),
            a block in both ``reattn_blocks`` and ``talkinghead_blocks``; ``residual_scale`` not ``'none'``,
            ``'depth'`` or a finite number > 0, ``residual_alpha`` not > 0 or given without ``'depth'``, and a
            residual scale together with LayerScale (both sit in ``ls1``/``ls2``).
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
            reattn_blocks: BlockSpec = 'all',
            reattn_norm: str = 'bn',
            reattn_init: str = 'random',
            reattn_theta: str = 'learned',
            init_values: Optional[float] = None,
            talkinghead_blocks: BlockSpec = 'none',
            talkinghead_init: str = 'identity',
            residual_scale: Union[str, float] = 'none',
            residual_alpha: float = 1.,
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
        check_reattn_options(reattn_norm, reattn_init, reattn_theta)
        if talkinghead_init not in TALKINGHEAD_INITS:
            raise ValueError(f"talkinghead_init must be one of {TALKINGHEAD_INITS}, got {talkinghead_init!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        init_values = _resolve_init_values(init_values)
        branch_scale = residual_branch_scale(residual_scale, depth, residual_alpha)
        if branch_scale is not None and init_values:
            raise ValueError(f"residual_scale={residual_scale!r} and init_values={init_values!r} (LayerScale) both "
                             f"scale the residual branches (timm's ls1/ls2); set init_values=0 or "
                             f"residual_scale='none'")
        reattn_idx = resolve_blocks(reattn_blocks, depth, 'reattn_blocks')
        talkinghead_idx = resolve_blocks(talkinghead_blocks, depth, 'talkinghead_blocks')
        self._check_combinations(reattn_idx, talkinghead_idx, dict(
            reattn_norm=reattn_norm, reattn_init=reattn_init, reattn_theta=reattn_theta), talkinghead_init,
            (reattn_blocks, talkinghead_blocks))
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
            init_values=init_values or None,
            drop_path_rate=drop_path_rate,
            block_fn=_BlockFactory(reattn_idx, reattn_norm, reattn_init, reattn_theta,
                                   talkinghead_idx, talkinghead_init, branch_scale),
            **kwargs,
        )
        self.reattn_block_indices = reattn_idx
        self.talkinghead_block_indices = talkinghead_idx
        self.residual_branch_scale = branch_scale
        self.model_cfg: Dict[str, Any] = dict(
            img_size=_square(img_size), patch_size=_square(patch_size), in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate, reattn_blocks=list(reattn_idx), reattn_norm=reattn_norm,
            reattn_init=reattn_init, reattn_theta=reattn_theta,
            init_values=init_values,
            talkinghead_blocks=list(talkinghead_idx), talkinghead_init=talkinghead_init,
            residual_scale=residual_scale if isinstance(residual_scale, str) else float(residual_scale),
            residual_alpha=float(residual_alpha), stem=stem,
        )

    @staticmethod
    def _check_combinations(reattn_idx: Tuple[int, ...], talkinghead_idx: Tuple[int, ...],
                            reattn_fields: Dict[str, str], talkinghead_init: str,
                            specs: Tuple[BlockSpec, BlockSpec]) -> None:
        if reattn_fields['reattn_theta'] == 'fixed':
            if reattn_fields['reattn_init'] != 'identity':
                raise ValueError(f"reattn_theta='fixed' holds Θ at the identity and needs reattn_init='identity', "
                                 f"got reattn_init={reattn_fields['reattn_init']!r}")
            if reattn_fields['reattn_norm'] == 'none':
                raise ValueError("reattn_theta='fixed' with reattn_norm='none' is the plain ViT (Θ = I, no norm); "
                                 "use reattn_blocks='none' instead, got reattn_norm='none'")
        if not reattn_idx:
            given = [f"{field}={value!r}" for field, value in reattn_fields.items() if value != _REATTN_DEFAULTS[field]]
            if given:
                raise ValueError(f"{', '.join(given)} would have no effect: no block uses Re-attention "
                                 f"(reattn_blocks='none'); set reattn_blocks or leave the Re-attention fields at "
                                 f"their defaults {_REATTN_DEFAULTS}")
        if not talkinghead_idx and talkinghead_init != 'identity':
            raise ValueError(f"talkinghead_init={talkinghead_init!r} would have no effect: no block uses talking "
                             f"heads (talkinghead_blocks='none'); set talkinghead_blocks or leave talkinghead_init "
                             f"at 'identity'")
        both = sorted(set(reattn_idx) & set(talkinghead_idx))
        if both:
            raise ValueError(f"talkinghead_blocks={specs[1]!r} and reattn_blocks={specs[0]!r} share blocks {both}: "
                             f"a block mixes heads by Re-attention or by talking heads, not both (set "
                             f"reattn_blocks='none' for a talking-heads model)")

    __jit_unused_properties__ = ['family', 'remedy']  # Python-only (they read the model_cfg dict)

    @property
    def family(self) -> str:
        """One of :data:`FAMILIES` (see :func:`model_family`)."""
        return model_family(self.model_cfg)

    @property
    def remedy(self) -> str:
        """Canonical label of the exact variant, e.g. ``'reattn'``, ``'bn_only'`` (see :func:`model_remedy`)."""
        return model_remedy(self.model_cfg)

    def forward_features(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                         is_causal: bool = False) -> torch.Tensor:
        """timm's ``VisionTransformer.forward_features`` (timm ``models/vision_transformer.py``): images
        (B, in_chans, H, W) → tokens (B, N, embed_dim). With ``set_grad_checkpointing(True)`` and gradients enabled,
        each block is checkpointed by :func:`~deepvit.models.checkpointing.checkpoint_blocks` (BatchNorm statistics
        updated once per step, not again when a block is recomputed) instead of timm's ``checkpoint_seq``.

        timm's body is repeated rather than called through ``super()``, which TorchScript cannot compile; under
        TorchScript the blocks are never checkpointed, as in timm."""
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        if attn_mask is not None or is_causal:
            for blk in self.blocks:
                x = blk(x, attn_mask=attn_mask, is_causal=is_causal)
        elif self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            x = checkpoint_blocks(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def attention_layers(self) -> Iterator[Attention]:
        """The blocks' attention modules, in block order."""
        for blk in self.blocks:
            yield blk.attn

    def set_fused_attn(self, enable: bool = True) -> None:
        """Use fused SDPA (``True``) or the explicit path (``False``) in plain-attention blocks.

        Blocks that mix heads (Re-attention, talking heads) always take the explicit path; probes and
        ``keep_attn_for_loss`` force it while they are on.
        """
        for attn in self.attention_layers():
            attn.fused_attn = bool(enable)
