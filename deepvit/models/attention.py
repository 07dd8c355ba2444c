"""Multi-head self-attention with two paths, an attention-map probe and a regulariser hook.

The layer is timm's :class:`timm.layers.Attention` (same parameters, same state-dict names) with two additions:
when :attr:`Attention.keep_maps` is set, it takes the explicit path and stores detached attention maps of the last
forward in :attr:`Attention.maps`; when :attr:`Attention.keep_attn_for_loss` is set, it stores the map that weights
``v`` *with* its autograd graph in :attr:`Attention.attn_for_loss`, for a loss on the maps (e.g. the official DeepViT
repo's cross-layer cosine-similarity regulariser). Otherwise it uses fused SDPA (``F.scaled_dot_product_attention``)
whenever ``fused_attn`` is on, exactly as timm does.

Subclasses change the maps through two hooks: :meth:`Attention.mix_logits` (before the softmax; talking heads) and
:meth:`Attention.mix_maps` (after it; Re-attention, talking heads).

Shapes: tokens ``x`` (B, N, C); ``q, k, v`` (B, H, N, D) with C = H * D; attention maps (B, H, N, N).
"""
from typing import Dict, Final, Optional

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask

MAP_STAGES = ('softmax', 'mixed')


class Attention(TimmAttention):
    """timm's multi-head self-attention with an explicit path that can expose its attention maps.

    Paths (timm ``layers/attention.py``): fused SDPA when ``fused_attn`` is true, no maps are requested and the
    layer does not mix heads; otherwise the explicit path

        logits = mix_logits(q kᵀ / sqrt(D)) (+ mask);   s = softmax(logits)
        a = mix_maps(drop(s))   (or drop(mix_maps(s)), see ``dropout_before_mix``);   out = a v

    with the (B, H, N, N) maps materialised. For this class both hooks are the identity and both paths compute the
    same function (checked in ``tests/test_models.py``).

    Attributes:
        keep_maps: when true, the next forward takes the explicit path and stores detached float32 copies of its
            maps in ``maps`` (computed in float32 from q and k whatever the model's dtype): ``maps['softmax']`` is the
            softmax output ``s`` (B, H, N, N), rows summing to 1;
            ``maps['mixed']`` is ``a``, the map that weights ``v`` (the same tensor here, up to attention dropout;
            Re-attention and talking heads change it).
        maps: the stored maps of the last probed forward, or ``None``.
        keep_attn_for_loss: when true, every forward takes the explicit path and stores ``a`` (B, H, N, N), the
            map that weights ``v``, in the compute dtype and **not detached**, in ``attn_for_loss`` (overwritten by
            every forward), so that a regulariser on the maps back-propagates into ``qkv`` and the mixing
            parameters. The stored tensor keeps its graph alive until the next forward or until
            ``attn_for_loss`` is set to ``None``; leave the flag off when no loss reads it.
        attn_for_loss: the map of the last forward with ``keep_attn_for_loss`` set, or ``None``.
        uses_reattention, uses_talking_heads: class flags, true in the subclasses that mix heads (those always take
            the explicit path).
        dropout_before_mix: class flag: attention dropout on the softmax maps before :meth:`mix_maps` (true:
            Re-attention, official DeepViT code) or on the mixed maps after it (false: talking heads, timm
            ``cait.py``).

    TorchScript: the class flags are ``Final`` constants; ``fused_attn`` (timm's ``Final``) is declared again here
    because TorchScript reads only the nearest class's annotations, which subclasses without annotations inherit.
    """

    fused_attn: Final[bool]
    uses_reattention: Final[bool] = False
    uses_talking_heads: Final[bool] = False
    dropout_before_mix: Final[bool] = True
    maps: Optional[Dict[str, torch.Tensor]]
    attn_for_loss: Optional[torch.Tensor]

    def __init__(self, dim: int, num_heads: int = 8, **kwargs) -> None:
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.keep_maps = False
        self.maps: Optional[Dict[str, torch.Tensor]] = None
        self.keep_attn_for_loss = False
        self.attn_for_loss: Optional[torch.Tensor] = None

    @property
    def mixes_heads(self) -> bool:
        """Whether the layer mixes maps across heads (and so always takes the explicit path)."""
        return self.uses_reattention or self.uses_talking_heads

    def mix_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Transform the scaled logits (B, H, N, N) before the mask and the softmax; the identity here."""
        return logits

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

        if self.fused_attn and not (self.keep_maps or self.keep_attn_for_loss or self.mixes_heads):
            x = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=attn_mask,
                dropout_p=self.attn_drop.p if self.training else 0.,
                is_causal=is_causal,
            )
        else:
            if self.keep_maps and q.dtype != torch.float32:
                # the collapse probe: maps (logits, softmax, mixing) in float32 whatever the training precision, so a
                # bf16 run's maps compare with a float32 run's; only the weighted sum of v below is in v's dtype
                q, k = q.float(), k.float()
            attn = self.mix_logits((q * self.scale) @ k.transpose(-2, -1))  # (B, H, N, N)
            attn = maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
            attn = attn.softmax(dim=-1)
            softmax_maps = attn
            if self.dropout_before_mix:
                attn = self.mix_maps(self.attn_drop(attn))
            else:
                attn = self.attn_drop(self.mix_maps(attn))
            if self.keep_maps:
                self.maps = {'softmax': softmax_maps.detach().float(), 'mixed': attn.detach().float()}
            if self.keep_attn_for_loss:
                self.attn_for_loss = attn
            x = attn.to(v.dtype) @ v  # (B, H, N, D)

        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        x = self.proj(x)
        x = self.proj_drop(x)
        return x
