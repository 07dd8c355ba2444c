"""Re-attention (Zhou et al., 2021, "DeepViT: Towards Deeper Vision Transformer", arXiv 2103.11886, Sec. 4.1, Eq. 5).

    Re-Attention(Q, K, V) = Norm(Θᵀ · Softmax(Q Kᵀ / sqrt(d))) · V

Θ is a learnable (H, H) matrix that mixes the H heads' attention maps after the softmax: the mixed map of head h
is ``sum_g Θ[g, h] · A_g``. The official code (zhoudaquan/dvit_repo, ``models/layers.py``, class ``ReAttention``)
implements Θᵀ as a 1×1 ``Conv2d(H, H)`` with bias followed by ``BatchNorm2d(H)``, with attention dropout before Θ;
lucidrains/vit-pytorch (``vit_pytorch/deepvit.py``) uses a bias-free N(0, 1) Θ and LayerNorm over the head axis.

Shapes: attention maps (B, H, N, N); Θ (H, H).
"""
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d

from .attention import Attention

REATTN_NORMS = ('bn', 'ln', 'none')
REATTN_INITS = ('random', 'identity')


class ReAttentionMix(nn.Module):
    """Θᵀ head mixing followed by the Re-attention norm: (B, H, N, N) float maps in, same shape out.

    Args:
        num_heads: H, the number of heads mixed.
        norm: ``'bn'``: ``BatchNorm2d(H)``, per-head statistics over the batch and both token axes, as in the paper
            and the official code (the author confirms BatchNorm in the official repo's issue 1); ``'ln'``:
            LayerNorm over the head axis at every (query, key) position, as lucidrains/vit-pytorch; ``'none'``:
            no norm (with ``init='identity'`` the layer is then exactly the identity).
        init: ``'random'``: Θ ~ U(-1/sqrt(H), 1/sqrt(H)), the default init of the official code's 1×1 Conv2d
            (the paper says only "randomly initialised"); ``'identity'``: Θ = I, each head starts from its own map
            (the author reports similar accuracy, official issue 1).

    Differences from the official code: Θ has no bias. Before BatchNorm a per-head bias is removed by the mean
    subtraction, so the official bias has no effect there (12 dead parameters per block); for ``'ln'``/``'none'`` we
    follow the paper's equation, which has none. The official DeepViT-S also multiplies the normalised maps by
    ``head_dim ** -0.5`` (``transform_scale``); this is not reproduced (it is absorbed by the BatchNorm affine
    weight).

    Speed: the mixing is one batched matmul over the flattened (N*N) maps. In training with ``'bn'`` and fp32 maps,
    the BatchNorm statistics of the mixed maps are computed from the (H, H) second-moment matrix of the unmixed maps
    (mean(Θᵀa) = Θᵀ mean(a), E[(Θᵀa)²] = diag(Θᵀ E[a aᵀ] Θ)), and the normalisation is folded into Θ and a bias,
    so the mixed maps are produced in one ``baddbmm`` and never stored un-normalised. In eval mode the running
    statistics are folded the same way. Both give ``BatchNorm2d(Θᵀ a)`` (``tests/test_reattention.py``).

    Raises:
        ValueError: unknown ``norm`` or ``init``, or ``num_heads < 1``.
    """

    def __init__(self, num_heads: int, norm: str = 'bn', init: str = 'random', device=None, dtype=None) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads!r}")
        if norm not in REATTN_NORMS:
            raise ValueError(f"reattn_norm must be one of {REATTN_NORMS}, got {norm!r}")
        if init not in REATTN_INITS:
            raise ValueError(f"reattn_init must be one of {REATTN_INITS}, got {init!r}")
        dd = {'device': device, 'dtype': dtype}
        self.num_heads = num_heads
        self.norm_type = norm
        self.init_type = init
        self.weight = nn.Parameter(torch.empty(num_heads, num_heads, **dd))  # Θ (H_in, H_out)
        if norm == 'bn':
            self.norm = nn.BatchNorm2d(num_heads, **dd)
        elif norm == 'ln':
            self.norm = LayerNorm2d(num_heads, eps=1e-5, **dd)
        else:
            self.norm = nn.Identity()
        self.fold_norm = True
        self.init_weights()

    def init_weights(self) -> None:
        """(Re)initialise Θ as ``init`` says (called by timm's ViT init through ``named_apply``)."""
        with torch.no_grad():
            if self.init_type == 'identity':
                self.weight.copy_(torch.eye(self.num_heads))
            else:
                bound = self.num_heads ** -0.5
                self.weight.uniform_(-bound, bound)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, norm={self.norm_type!r}, init={self.init_type!r}"

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        B, H, N, M = attn.shape
        a = attn.reshape(B, H, N * M)  # (B, H, N*N)
        theta_t = self.weight.t()  # Θᵀ: (H_out, H_in)
        if isinstance(self.norm, nn.BatchNorm2d) and self.fold_norm:
            batch_stats = self.training or not self.norm.track_running_stats
            # batch statistics from second moments lose precision in bf16/fp16: those take the plain path
            if not batch_stats or a.dtype == torch.float32:
                scale, shift = self._folded_bn(a, theta_t, batch_stats)
                weight = (theta_t * scale[:, None]).to(a.dtype)
                out = torch.baddbmm(shift.to(a.dtype).view(1, H, 1), weight.expand(B, H, H), a)
                return out.view(B, H, N, M)
        out = torch.matmul(theta_t, a).view(B, H, N, M)
        return self.norm(out)

    def _folded_bn(self, a: torch.Tensor, theta_t: torch.Tensor, batch_stats: bool):
        """Per-head (scale, shift) such that ``scale * (Θᵀ a) + shift == BatchNorm2d(Θᵀ a)``; both (H,)."""
        bn = self.norm
        if batch_stats:
            B, H, M = a.shape
            count = B * M
            mean_a = a.mean(dim=(0, 2))  # (H,)
            second = torch.bmm(a, a.transpose(1, 2)).sum(0) / count  # E[a aᵀ]: (H, H)
            mean = theta_t @ mean_a  # (H,) mean of the mixed maps
            var = ((theta_t @ second) * theta_t).sum(1) - mean * mean  # biased variance, (H,)
            var = var.clamp_min(0.)
            if self.training and bn.track_running_stats:
                self._update_running_stats(mean, var, count)
        else:
            mean, var = bn.running_mean, bn.running_var
        inv_std = torch.rsqrt(var + bn.eps)
        weight = bn.weight if bn.affine else torch.ones_like(inv_std)
        bias = bn.bias if bn.affine else torch.zeros_like(inv_std)
        scale = weight * inv_std
        return scale, bias - mean * scale

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        bn = self.norm
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        unbiased = var * (count / max(count - 1, 1))
        bn.running_mean.lerp_(mean.detach().to(bn.running_mean.dtype), momentum)
        bn.running_var.lerp_(unbiased.detach().to(bn.running_var.dtype), momentum)


class ReAttention(Attention):
    """Multi-head self-attention with Re-attention: timm's Attention plus a :class:`ReAttentionMix` ``reattn``.

    Parameter names are timm's Attention's (``qkv``, ``proj``, ...) plus ``reattn.weight`` (Θ) and ``reattn.norm.*``,
    so a ViT state dict loads into a DeepViT of the same size with only the Re-attention entries missing.
    Always takes the explicit path (the mixing needs the maps). ``maps['softmax']`` holds the maps before the mixing,
    ``maps['mixed']`` the normalised, mixed maps that weight ``v``.

    Args:
        dim, num_heads, **kwargs: as timm's :class:`timm.layers.Attention`.
        reattn_norm, reattn_init: see :class:`ReAttentionMix` (``norm``, ``init``).
    """

    uses_reattention = True

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            reattn_norm: str = 'bn',
            reattn_init: str = 'random',
            device=None,
            dtype=None,
            **kwargs,
    ) -> None:
        super().__init__(dim, num_heads=num_heads, device=device, dtype=dtype, **kwargs)
        self.reattn = ReAttentionMix(num_heads, norm=reattn_norm, init=reattn_init, device=device, dtype=dtype)

    def mix_maps(self, attn: torch.Tensor) -> torch.Tensor:
        return self.reattn(attn)
