"""Remedies for attention collapse that run in the same harness as Re-attention.

* LayerScale (Touvron et al., 2021, "Going deeper with Image Transformers" (CaiT), arXiv 2103.17239, the LayerScale
  paragraph): a learnable per-channel scale on the output of every residual branch, initialised to a small ε. It is
  timm's own :class:`timm.layers.LayerScale` through the Block's ``init_values`` (``ls1``/``ls2.gamma``); only the
  depth rule for ε, :func:`cait_init_values`, lives here.
* Talking-heads attention (Shazeer et al., 2020, "Talking-Heads Attention", arXiv 2003.02436, Sec. 4): learned H×H
  mixings across heads of the attention logits before the softmax and of the attention weights after it, as timm's
  ``timm/models/cait.py::TalkingHeadAttn`` (``proj_l``, ``proj_w``): :class:`TalkingHeadAttention`, built from
  :class:`~deepvit.models.head_mix.HeadMix`.
* Depth-scaled residual branches (Bordelon et al., ICLR 2024, "Depthwise Hyperparameter Transfer in Residual
  Networks: Dynamics and Scaling Limit", arXiv 2309.16620, Eq. 1 and Table 1; Yang et al. 2023, "Tensor Programs
  VI: Feature Learning in Infinite-Depth Neural Networks" (Depth-μP), arXiv 2310.02244): every residual branch
  multiplied by a fixed α/√L, the branch weights keeping their depth-independent initialisation:
  :class:`ResidualScale` in place of timm's ``ls1``/``ls2``, its value from :func:`residual_branch_scale`.

Paired seeds. A remedy must not change the weights the same seed gives the ViT, nor the global RNG state: its random
inits draw from the private streams of :mod:`deepvit.models.streams`, and its modules have their own
``init_weights`` that timm's ``init_weights_vit_timm`` calls instead of re-drawing them as ``nn.Linear`` layers
(``tests/test_remedies.py``).
"""
import math
from typing import Any, Optional, Union

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from .attention import Attention
from .head_mix import HeadMix

__all__ = ['TALKINGHEAD_INITS', 'RESIDUAL_SCALES', 'ResidualScale', 'ResidualScaledBlock',
           'TalkingHeadAttention', 'cait_init_values', 'residual_branch_scale']

TALKINGHEAD_INITS = ('identity', 'trunc_normal')
RESIDUAL_SCALES = ('none', 'depth')   # besides a number > 0


def cait_init_values(depth: int) -> float:
    """LayerScale's initial ε for a network of ``depth`` blocks, CaiT's rule (arXiv 2103.17239, LayerScale paragraph).

    The paper: "ε = 0.1 until depth 18, ε = 10⁻⁵ for depth 24 and ε = 10⁻⁶ for deeper networks" (timm's
    ``cait.py`` variants: 1e-5 at depth 24, 1e-6 at depth 36/48). Depths 19-23, which the paper does not name, get
    the depth-24 value.

    Raises:
        ValueError: ``depth`` is not an integer >= 1.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    if depth <= 18:
        return 0.1
    if depth <= 24:
        return 1e-5
    return 1e-6


def _is_positive_number(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and 0. < float(value) < float('inf'))


def residual_branch_scale(residual_scale: Union[str, float], depth: int,
                          residual_alpha: float = 1.) -> Optional[float]:
    """The fixed multiplier of every residual branch (dimensionless), or ``None`` for none (the ViT).

    ``'depth'`` gives Depth-μP's / Bordelon et al.'s branch multiplier α/√L with L = ``depth`` (the number of
    transformer blocks; each block has two branches, attention and MLP, and both get the same multiplier), α =
    ``residual_alpha`` (arXiv 2309.16620 Eq. 1: ``h_{l+1} = h_l + β₀/√L · branch``; arXiv 2310.02244: block
    multiplier ``a·L^{-1/2}``). A number s > 0 gives s on every branch whatever the depth (a control: s = 1 is the
    ViT's function). ``'none'`` gives ``None``.

    Raises:
        ValueError (naming the field and the value): ``residual_scale`` neither ``'none'``, ``'depth'`` nor a finite
            number > 0; ``residual_alpha`` not a finite number > 0; ``residual_alpha`` other than 1 without
            ``residual_scale='depth'`` (it would have no effect); ``depth`` not an integer >= 1.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    if not _is_positive_number(residual_alpha):
        raise ValueError(f"residual_alpha must be a finite number > 0, got {residual_alpha!r}")
    if isinstance(residual_scale, str) and residual_scale in RESIDUAL_SCALES:
        if residual_scale == 'depth':
            return float(residual_alpha) / math.sqrt(depth)
    elif not _is_positive_number(residual_scale):
        raise ValueError(f"residual_scale must be one of {RESIDUAL_SCALES} or a finite number > 0, "
                         f"got {residual_scale!r}")
    if float(residual_alpha) != 1.:
        raise ValueError(f"residual_alpha={residual_alpha!r} would have no effect: it scales only "
                         f"residual_scale='depth', got residual_scale={residual_scale!r}")
    return None if residual_scale == 'none' else float(residual_scale)


class ResidualScale(nn.Module):
    """A fixed (not learned) multiplier on a residual branch's output: (..., C) → (..., C), same dtype and device.

    It sits where timm's :class:`~timm.layers.LayerScale` sits (a Block's ``ls1`` after attention, ``ls2`` after
    the MLP, before drop-path), so a block computes ``x + s·attn(norm1(x))``, then ``x + s·mlp(norm2(x))``. It has
    no parameters and no buffers: the model's state dict is the ViT's, its weights are the ViT's of the same seed
    (standard depth-independent init, which is what both papers prescribe: the depth dependence is in the forward
    multiplier, not in the init variance), and a checkpoint does not carry ``s``: ``model_cfg`` does.

    Args:
        scale: s, a finite number > 0 (see :func:`residual_branch_scale`).

    Raises:
        ValueError: ``scale`` not a finite number > 0.
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        if not _is_positive_number(scale):
            raise ValueError(f"residual scale must be a finite number > 0, got {scale!r}")
        self.scale = float(scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class ResidualScaledBlock(Block):
    """timm's :class:`~timm.models.vision_transformer.Block` with a fixed :class:`ResidualScale` as its ``ls1`` and
    ``ls2`` (in place of timm's ``nn.Identity``): ``x + s·attn(norm1(x))``, then ``x + s·mlp(norm2(x))``.

    Args:
        residual_scale: s, a finite number > 0 (see :func:`residual_branch_scale`).
        *args, **kwargs: as timm's Block; ``init_values`` must be unset (LayerScale and a fixed scale are two
            choices for the same place; :class:`~deepvit.models.deepvit.DeepVisionTransformer` checks it).

    Raises:
        ValueError: ``residual_scale`` not a finite number > 0.
    """

    def __init__(self, *args: Any, residual_scale: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ls1 = ResidualScale(residual_scale)
        self.ls2 = ResidualScale(residual_scale)


class TalkingHeadAttention(Attention):
    """Talking-heads attention: our :class:`~deepvit.models.attention.Attention` with H×H head mixings
    ``proj_l`` on the logits (before the mask and the softmax) and ``proj_w`` on the softmax weights.

        a = drop(proj_w(softmax(proj_l(q kᵀ / sqrt(D)))));   out = a v

    as timm's ``cait.py::TalkingHeadAttn`` (attention dropout after ``proj_w``) and Shazeer et al. 2020, Sec. 4.
    Parameter names are timm's Attention's plus ``proj_l.weight``, ``proj_w.weight``, ``proj_w.bias`` (those of
    timm's CaiT), so a ViT state dict loads with only these missing. Always takes the explicit path. Probe:
    ``maps['softmax']`` is the softmax output (after the logit mixing), ``maps['mixed']`` the map that weights ``v``
    (after the weight mixing); neither is a distribution over keys in general once ``proj_w`` has moved.

    Init: identity weights and a zero bias by default, so the layer starts as exactly plain attention and the model
    as exactly the ViT of the same seed (its shared weights are bitwise the ViT's); the remedy is then only what
    training learns, which is what a paired comparison needs. timm's CaiT init (``trunc_normal_(std=.02)``, the
    generic init of every ``nn.Linear``) is available as ``talkinghead_init='trunc_normal'``: at that init the mixed
    logits and the mixed weights are of order 0.02·sqrt(H) times the unmixed ones, so the attention starts
    near-uniform and the attention branch near zero.

    Difference from timm's CaiT: ``proj_l`` has no bias. A per-head constant added to the logits is constant along
    the key axis, so the softmax removes it: in ``TalkingHeadAttn`` those H parameters per block have no effect and
    a zero gradient (the reasoning behind the dropped bias of Θ in
    :class:`~deepvit.models.reattention.ReAttentionMix`).

    Args:
        dim, num_heads, **kwargs: as timm's :class:`timm.layers.Attention`.
        talkinghead_init: ``'identity'`` (default) or ``'trunc_normal'``, see above.
        block_index: the block's index, selecting the private random stream of a random init.

    Raises:
        ValueError: ``talkinghead_init`` not in :data:`TALKINGHEAD_INITS`.
    """

    uses_talking_heads = True
    dropout_before_mix = False

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            talkinghead_init: str = 'identity',
            block_index: int = 0,
            device=None,
            dtype=None,
            **kwargs,
    ) -> None:
        if talkinghead_init not in TALKINGHEAD_INITS:
            raise ValueError(f"talkinghead_init must be one of {TALKINGHEAD_INITS}, got {talkinghead_init!r}")
        super().__init__(dim, num_heads=num_heads, device=device, dtype=dtype, **kwargs)
        dd = {'device': device, 'dtype': dtype}
        self.proj_l = HeadMix(num_heads, bias=False, init=talkinghead_init, stream='talkinghead.proj_l',
                              index=block_index, **dd)
        self.proj_w = HeadMix(num_heads, bias=True, init=talkinghead_init, stream='talkinghead.proj_w',
                              index=block_index, **dd)

    def mix_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return self.proj_l(logits)

    def mix_maps(self, attn: torch.Tensor) -> torch.Tensor:
        return self.proj_w(attn)

