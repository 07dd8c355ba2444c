"""Multi-head self-attention with two paths and an attention-map probe.

The layer is timm's :class:`timm.layers.Attention` (same parameters, same state-dict names) with one addition:
when :attr:`Attention.keep_maps` is set, it takes the explicit path and stores the attention maps of the last
forward in :attr:`Attention.maps`. Otherwise it uses fused SDPA (``F.scaled_dot_product_attention``) whenever
``fused_attn`` is on, exactly as timm does.

Shapes: tokens ``x`` (B, N, C); ``q, k, v`` (B, H, N, D) with C = H * D; attention maps (B, H, N, N).
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask

MAP_STAGES = ('softmax', 'mixed')


class Attention(TimmAttention):
    """timm's multi-head self-attention with an explicit path that can expose its attention maps.

    Paths (timm ``layers/attention.py``): fused SDPA when ``fused_attn`` is true and no maps are requested;
    otherwise ``softmax(q k^T / sqrt(D)) v`` with the (B, H, N, N) maps materialised. Both paths compute the
    same function (checked in ``tests/test_models.py``).

    Attributes:
        keep_maps: when true, the next forward takes the explicit path and stores detached copies of its maps
            in ``maps``: ``maps['softmax']`` is ``softmax(q k^T / sqrt(D))`` (B, H, N, N), float, rows summing to
            1; ``maps['mixed']`` is the map that weights ``v`` (the same tensor here; Re-attention changes it).
        maps: the stored maps of the last probed forward, or ``None``.
    """

    uses_reattention = False

    def __init__(self, dim: int, num_heads: int = 8, **kwargs) -> None:
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.keep_maps = False
        self.maps: Optional[Dict[str, torch.Tensor]] = None

    def mix_maps(self, attn: torch.Tensor) -> torch.Tensor:
        """Transform the softmax maps (B, H, N, N) before they weight ``v``; the identity for plain attention."""
        return attn

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, D) each
        q, k = self.q_norm(q), self.k_norm(k)

        if self.fused_attn and not self.keep_maps and not self.uses_reattention:
            x = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=attn_mask,
                dropout_p=self.attn_drop.p if self.training else 0.,
                is_causal=is_causal,
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
            attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
            attn = attn.softmax(dim=-1)
            softmax_maps = attn
            attn = self.attn_drop(attn)
            attn = self.mix_maps(attn)
            if self.keep_maps:
                self.maps = {'softmax': softmax_maps.detach().float(), 'mixed': attn.detach().float()}
            x = attn @ v  # (B, H, N, D)

        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        x = self.proj(x)
        x = self.proj_drop(x)
        return x
