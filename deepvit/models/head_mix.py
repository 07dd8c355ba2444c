"""The H×H mixing of attention heads: one module for Re-attention's Θ and talking heads' ``proj_l``/``proj_w``.

Re-attention (Zhou et al., 2021, arXiv 2103.11886, Sec. 4.1, Eq. 5) mixes the softmax maps with Θᵀ; talking heads
(Shazeer et al., 2020, arXiv 2003.02436, Sec. 4; timm ``cait.py::TalkingHeadAttn``) mix the logits and the weights
with ``nn.Linear(H, H)`` layers applied to the head axis. Both compute

    out[:, h] = Σ_g W[h, g] · x[:, g]  (+ b[h])

with W stored (H_out, H_in): the layout of ``nn.Linear``, of timm's ``proj_l``/``proj_w``, and of the official
DeepViT code's 1×1 ``Conv2d(H, H)`` (zhoudaquan/dvit_repo ``models/layers.py``), whose weight (H_out, H_in, 1, 1)
is W. The paper's Θ is Wᵀ. :class:`HeadMix` is the module; :class:`~deepvit.models.reattention.ReAttentionMix`
is a :class:`HeadMix` followed by the Re-attention norm.

Shapes: maps or logits (B, H, N, M); W (H, H); b (H,).
"""
from typing import Optional

import torch
import torch.nn as nn

from .streams import remedy_trunc_normal_, remedy_uniform_

__all__ = ['HEAD_MIX_INITS', 'HeadMix', 'mix_heads']

HEAD_MIX_INITS = ('identity', 'trunc_normal', 'uniform')


def mix_heads(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``out[:, h] = Σ_g weight[h, g] · x[:, g] (+ bias[h])``: (B, H, N, M) → (B, H, N, M), as one
    ``bmm``/``baddbmm`` over the flattened maps. ``weight`` (H_out, H_in) and ``bias`` (H,) are cast to ``x``'s
    dtype (a fixed Θ is a float32 buffer, which DeepSpeed's bf16 cast of parameters leaves)."""
    B, H, N, M = x.shape
    flat = x.reshape(B, H, N * M)
    weight = weight.to(x.dtype).expand(B, H, H)
    if bias is None:
        out = torch.bmm(weight, flat)
    else:
        out = torch.baddbmm(bias.to(x.dtype).view(1, H, 1), weight, flat)
    return out.view(B, H, N, M)


class HeadMix(nn.Module):
    """A mixing of the head axis of attention logits or maps: (B, H, N, M) → (B, H, N, M), same dtype.

    ``out[:, h] = Σ_g weight[h, g] · x[:, g] + bias[h]``, i.e. an ``nn.Linear(H, H)`` on the head axis (same
    parameter names and shapes: ``weight`` (H_out, H_in), ``bias`` (H,)), computed by :func:`mix_heads`.

    Args:
        num_heads: H.
        bias: add a learned per-head bias (zero-initialised).
        init: ``'identity'``: weight = I (the mixing starts as a no-op); ``'trunc_normal'``: timm's
            ``trunc_normal_(std=.02)``, the init timm's CaiT gives every ``nn.Linear`` including ``proj_l``/``proj_w``;
            ``'uniform'``: U(-1/sqrt(H), 1/sqrt(H)), the default init of a 1×1 ``Conv2d(H, H)`` (the official
            DeepViT Θ), drawn in the paper's orientation Θ = weightᵀ. Random inits draw from
            :func:`~deepvit.models.streams.remedy_generator` (stream ``stream``, index ``index``), never from the
            global RNG.
        learned: ``True``: ``weight`` is an ``nn.Parameter``; ``False``: a buffer of the same name, not trained
            (Re-attention's fixed-Θ control).
        stream, index: the private random stream of a random init.

    Raises:
        ValueError: ``num_heads < 1`` or ``init`` not in :data:`HEAD_MIX_INITS`.
    """

    def __init__(
            self,
            num_heads: int,
            bias: bool = True,
            init: str = 'identity',
            learned: bool = True,
            stream: str = 'talkinghead',
            index: int = 0,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads!r}")
        if init not in HEAD_MIX_INITS:
            raise ValueError(f"head-mix init must be one of {HEAD_MIX_INITS}, got {init!r}")
        dd = {'device': device, 'dtype': dtype}
        self.num_heads = num_heads
        self.init_type = init
        self.stream = stream
        self.index = index
        if learned:
            self.weight = nn.Parameter(torch.empty(num_heads, num_heads, **dd))
        else:
            self.register_buffer('weight', torch.empty(num_heads, num_heads, **dd))
        self.bias = nn.Parameter(torch.empty(num_heads, **dd)) if bias else None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise as ``init`` says, without touching the global RNG (timm's ViT init calls this through
        ``named_apply``)."""
        if self.init_type == 'identity':
            self.weight.copy_(torch.eye(self.num_heads))
        elif self.init_type == 'trunc_normal':
            remedy_trunc_normal_(self.weight, .02, self.stream, self.index)
        else:  # drawn as Θ (H_in, H_out), stored transposed
            remedy_uniform_(self.weight.t(), self.num_heads ** -0.5, self.stream, self.index)
        if self.bias is not None:
            self.bias.zero_()

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, bias={self.bias is not None}, init={self.init_type!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mix_heads(x, self.weight, self.bias)
