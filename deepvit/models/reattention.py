"""Re-attention (Zhou et al., 2021, "DeepViT: Towards Deeper Vision Transformer", arXiv 2103.11886, Sec. 4.1, Eq. 5).

    Re-Attention(Q, K, V) = Norm(Θᵀ · Softmax(Q Kᵀ / sqrt(d))) · V

Θ is a learnable (H, H) matrix that mixes the H heads' attention maps after the softmax: the mixed map of head h
is ``sum_g Θ[g, h] · A_g``. The official code (zhoudaquan/dvit_repo, ``models/layers.py``, class ``ReAttention``)
implements Θᵀ as a 1×1 ``Conv2d(H, H)`` with bias followed by ``BatchNorm2d(H)``, with attention dropout before Θ;
lucidrains/vit-pytorch (``vit_pytorch/deepvit.py``) uses a bias-free N(0, 1) Θ and LayerNorm over the head axis.

Shapes: attention maps (B, H, N, N); Θ (H, H).
"""
import math
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

    def forward(self, attn: torch.Tensor, rows_sum_to_one: bool = False) -> torch.Tensor:
        """Mix and normalise maps (B, H, N, N) → (B, H, N, N), same dtype.

        ``rows_sum_to_one``: the caller guarantees every row of ``attn`` sums to 1 (softmax maps without dropout).
        Then mean(a) = 1/N per head is used without a pass over the maps; the gradient returned for ``attn`` may
        differ from the exact one by a per-head constant, which the softmax's backward removes exactly
        (d softmax ⟂ constants), so gradients of everything before the softmax are unchanged.
        """
        B, H, N, M = attn.shape
        a = attn.reshape(B, H, N * M)  # (B, H, N*N)
        theta_t = self.weight.t()  # Θᵀ: (H_out, H_in)
        if isinstance(self.norm, nn.BatchNorm2d) and self.fold_norm:
            bn = self.norm
            batch_stats = self.training or not bn.track_running_stats
            weight = bn.weight if bn.affine else torch.ones(H, device=a.device, dtype=a.dtype)
            bias = bn.bias if bn.affine else torch.zeros(H, device=a.device, dtype=a.dtype)
            if not batch_stats:
                scale = weight * torch.rsqrt(bn.running_var + bn.eps)
                shift = bias - bn.running_mean * scale
                mixer = (theta_t * scale[:, None]).to(a.dtype)
                out = torch.baddbmm(shift.to(a.dtype).view(1, H, 1), mixer.expand(B, H, H), a)
                return out.view(B, H, N, M)
            # batch statistics from second moments lose precision in bf16/fp16: those take the plain path
            if a.dtype == torch.float32:
                out, mean, var = _FoldedBatchNormMix.apply(a, self.weight, weight, bias, bn.eps, rows_sum_to_one)
                if self.training and bn.track_running_stats:
                    self._update_running_stats(mean, var, B * N * M)
                return out.view(B, H, N, M)
        out = torch.matmul(theta_t, a).view(B, H, N, M)
        return self.norm(out)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        bn = self.norm
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        unbiased = var * (count / max(count - 1, 1))
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
        bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)


def _fold(theta, weight, bias, mean_a, second, eps):
    """BatchNorm of Θᵀa folded into (mixer (H, H), shift (H,)), from mean(a) (H,) and E[a aᵀ] (H, H)."""
    theta_t = theta.t()
    mean = theta_t @ mean_a  # mean of the mixed maps, per head
    var = (((theta_t @ second) * theta_t).sum(1) - mean * mean).clamp_min(0.)  # biased variance
    scale = weight * torch.rsqrt(var + eps)
    return theta_t * scale[:, None], bias - mean * scale, mean, var


class _FoldedBatchNormMix(torch.autograd.Function):
    """BatchNorm2d(Θᵀ a) in training mode, as one ``baddbmm``; a (B, H, M) float32 → (B, H, M).

    Forward: mean(a) and E[a aᵀ] (one ``bmm``) give the mixed maps' batch statistics; the normalisation is folded
    into the mixer and a shift. Backward: the (H, H)-sized part is differentiated by autograd; the map-sized gradient
    da = mixerᵀ g + (dS + dSᵀ)/n · a + dm/n is formed in two fused ``baddbmm`` passes. Nothing map-sized is saved
    beyond ``a`` itself (already kept by the softmax).
    """

    @staticmethod
    def forward(ctx, a, theta, weight, bias, eps, rows_sum_to_one):
        B, H, M = a.shape
        count = B * M
        if rows_sum_to_one:  # M = N*N entries, N rows each summing to 1
            mean_a = a.new_full((H,), 1.0 / math.isqrt(M))
        else:
            mean_a = a.mean(dim=(0, 2))
        second = torch.bmm(a, a.transpose(1, 2)).sum(0) / count
        mixer, shift, mean, var = _fold(theta, weight, bias, mean_a, second, eps)
        out = torch.baddbmm(shift.view(1, H, 1), mixer.expand(B, H, H), a)
        ctx.save_for_backward(a, theta, weight, bias, mean_a, second)
        ctx.eps = eps
        ctx.rows_sum_to_one = rows_sum_to_one
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        a, theta, weight, bias, mean_a, second = ctx.saved_tensors
        B, H, M = a.shape
        count = B * M
        with torch.enable_grad():
            small = [t.detach().requires_grad_() for t in (theta, weight, bias, mean_a, second)]
            mixer, shift, _, _ = _fold(*small, ctx.eps)
        grad_mixer = torch.bmm(grad_out, a.transpose(1, 2)).sum(0)
        grad_shift = grad_out.sum(dim=(0, 2))
        d_theta, d_weight, d_bias, d_mean, d_second = torch.autograd.grad(
            (mixer, shift), small, (grad_mixer, grad_shift))
        mixer = mixer.detach()
        if ctx.rows_sum_to_one:  # mean(a) is fixed by the simplex: its gradient is a constant softmax removes
            grad_a = torch.bmm(mixer.t().expand(B, H, H), grad_out)
        else:
            grad_a = torch.baddbmm((d_mean / count).view(1, H, 1), mixer.t().expand(B, H, H), grad_out)
        grad_a.baddbmm_(((d_second + d_second.t()) / count).expand(B, H, H), a)
        return grad_a, d_theta, d_weight, d_bias, None, None


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
        # rows still sum to 1 unless attention dropout just zeroed some entries
        rows_sum_to_one = not (self.training and self.attn_drop.p > 0)
        return self.reattn(attn, rows_sum_to_one=rows_sum_to_one)
