"""Re-attention (Zhou et al., 2021, "DeepViT: Towards Deeper Vision Transformer", arXiv 2103.11886, Sec. 4.1, Eq. 5).

Over 400 lines: Re-attention's module, its folded-BatchNorm fast path (forward and the custom backward)
and the scripted fallback are one computation, checked against each other in tests/test_reattention*.py.

    Re-Attention(Q, K, V) = Norm(Θᵀ · Softmax(Q Kᵀ / sqrt(d))) · V

Θ is a learnable (H, H) matrix that mixes the H heads' attention maps after the softmax: the mixed map of head h
is ``sum_g Θ[g, h] · A_g``. The official code (zhoudaquan/dvit_repo, ``models/layers.py``, class ``ReAttention``)
implements Θᵀ as a 1×1 ``Conv2d(H, H)`` with bias followed by ``BatchNorm2d(H)``, with attention dropout before Θ;
lucidrains/vit-pytorch (``vit_pytorch/deepvit.py``) uses a bias-free N(0, 1) Θ and LayerNorm over the head axis.

Shapes: attention maps (B, H, N, N); Θ (H, H).
"""
import contextlib
import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d, register_notrace_module

from .attention import Attention, mix_heads
from .checkpointing import recomputing

REATTN_NORMS = ('bn', 'ln', 'none')
REATTN_INITS = ('random', 'identity')


def check_reattn_options(norm: str, init: str, theta: str) -> None:
    """Raise ValueError naming the field (``reattn_norm``, ``reattn_init``, ``reattn_theta``) and the value when one
    is not a known choice (:data:`REATTN_NORMS`, :data:`REATTN_INITS`, ``remedies.REATTN_THETAS``)."""
    from .remedies import REATTN_THETAS
    for field, value, choices in (('reattn_norm', norm, REATTN_NORMS), ('reattn_init', init, REATTN_INITS),
                                  ('reattn_theta', theta, REATTN_THETAS)):
        if value not in choices:
            raise ValueError(f"{field} must be one of {choices}, got {value!r}")


@register_notrace_module  # a leaf for torch.fx (timm's feature extraction): its BatchNorm mode checks are Python
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
        theta: ``'learned'`` (default): Θ is a trained ``nn.Parameter``; ``'fixed'``: Θ is a non-trainable buffer
            (same state-dict key ``weight``) held at the identity, while the norm stays and trains. With
            ``norm='bn'`` this is the BatchNorm-only control of the ablation: it separates the head mixing from
            the normalisation. Needs ``init='identity'``.
        index: the block's index, selecting the private random stream of Θ's random init.

    Paired seeds: the random init draws Θ from a private generator
    (:func:`~deepvit.models.remedies.remedy_generator`, stream ``'reattn'``, seeded from ``torch.initial_seed()`` and
    ``index``), never from the global RNG, so building a DeepViT leaves the ViT's weights of the same seed and the
    global RNG state untouched; the same seed and index give the same Θ, other blocks and seeds another.

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
        ValueError: unknown ``norm``, ``init`` or ``theta``, ``theta='fixed'`` with ``init='random'``, or
            ``num_heads < 1``.
    """

    def __init__(
            self,
            num_heads: int,
            norm: str = 'bn',
            init: str = 'random',
            theta: str = 'learned',
            index: int = 0,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads!r}")
        check_reattn_options(norm, init, theta)
        if theta == 'fixed' and init != 'identity':
            raise ValueError(f"reattn_theta='fixed' holds Θ at the identity and needs reattn_init='identity', "
                             f"got reattn_init={init!r}")
        dd = {'device': device, 'dtype': dtype}
        self.num_heads = num_heads
        self.norm_type = norm
        self.init_type = init
        self.theta_type = theta
        self.index = index
        if theta == 'fixed':
            self.register_buffer('weight', torch.empty(num_heads, num_heads, **dd))  # Θ = I, not trained
        else:
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
        """(Re)initialise Θ as ``init`` says (called by timm's ViT init through ``named_apply``), without drawing
        from the global RNG."""
        from .remedies import remedy_uniform_
        with torch.no_grad():
            if self.init_type == 'identity':
                self.weight.copy_(torch.eye(self.num_heads))
            else:
                remedy_uniform_(self.weight, self.num_heads ** -0.5, 'reattn', self.index)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, norm={self.norm_type!r}, init={self.init_type!r}, "
                f"theta={self.theta_type!r}")

    def forward(self, attn: torch.Tensor, rows_sum_to_one: bool = False) -> torch.Tensor:
        """Mix and normalise maps (B, H, N, N) → (B, H, N, N) (Eq. 5 of the paper; official ``ReAttention``).

        Dtypes: ``attn`` may be float32, float64, bfloat16 or float16, and need not match the parameters' dtype
        (bf16 maps with bf16 parameters under DeepSpeed bf16, or fp32 parameters under ``torch.autocast``). The
        output has the maps' dtype; under autocast, float32 maps are first cast to the autocast dtype, as
        autocast's own ``matmul`` does on the plain path, so both paths return the same dtype.

        ``'bn'`` with ``fold_norm`` (the default) takes the folded path, for every float dtype: the BatchNorm
        statistics are accumulated in float32 (float64 for float64 inputs), the (H, H)/(H,) fold math runs in that
        precision, and only the map-sized products run in the maps' dtype (:func:`folded_batchnorm_mix`).
        Batch statistics versus running statistics, the running-stat update (momentum, ``momentum=None``
        cumulative average, unbiased variance) and ``num_batches_tracked`` follow the BatchNorm's *own* mode and
        flags exactly as :class:`torch.nn.BatchNorm2d` decides them, not this module's ``training`` flag (so the
        freeze-BN idiom ``model.train(); bn.eval()`` uses the running statistics and leaves them untouched).

        ``rows_sum_to_one``: the caller guarantees every row of ``attn`` sums to 1 (softmax maps without dropout).
        Then mean(a) = 1/N per head is used without a pass over the maps; the gradient returned for ``attn`` may
        differ from the exact one by a per-head constant, which the softmax's backward removes exactly
        (d softmax ⟂ constants), so gradients of everything before the softmax are unchanged.

        TorchScript (``torch.jit.script``) compiles the unfolded path, ``norm(Θᵀ a)`` as ``fold_norm=False`` computes
        it (the same function as the folded path up to rounding; ``rows_sum_to_one`` is not needed there); the folded
        path's custom op and the checkpoint-recomputation state are Python-only.

        Raises:
            ValueError: batch statistics from a single value per head (B * N * N == 1), as ``nn.BatchNorm2d``.
        """
        if torch.jit.is_scripting():
            return self.norm(self._mix(attn))
        return self._forward_eager(attn, rows_sum_to_one)

    def _mix(self, attn: torch.Tensor) -> torch.Tensor:
        """Θᵀ head mixing, unnormalised: (B, H, N, M) → (B, H, N, M) (:func:`~deepvit.models.attention.mix_heads`
        with Θ stored (H_in, H_out), as the paper writes Θᵀ)."""
        return mix_heads(attn, self.weight.t())

    @torch.jit.unused
    def _forward_eager(self, attn: torch.Tensor, rows_sum_to_one: bool) -> torch.Tensor:
        """:meth:`forward` outside TorchScript: the folded BatchNorm path and checkpoint-recomputation handling."""
        B, H, N, M = attn.shape
        recompute = recomputing()  # a checkpoint's backward-time replay: batch statistics, running ones untouched
        if not (isinstance(self.norm, nn.BatchNorm2d) and self.fold_norm):
            out = self._mix(attn)
            if recompute and isinstance(self.norm, nn.BatchNorm2d) and self.norm.training:
                # the same op as the first forward (non-reentrant checkpointing checks that the recomputation saves
                # the same tensors: F.batch_norm without running statistics does not), its buffers put back
                buffers = [b for b in self.norm.buffers()]
                kept = [b.clone() for b in buffers]
                out = self.norm(out)
                with torch.no_grad():
                    for b, k in zip(buffers, kept):
                        b.copy_(k)
                return out
            return self._norm_in_own_dtype(out)
        bn = self.norm
        device_type = attn.device.type
        if (attn.dtype == torch.float32 and _autocast_available(device_type)
                and torch.is_autocast_enabled(device_type)):
            attn = attn.to(torch.get_autocast_dtype(device_type))
        a = attn.reshape(B, H, N * M)  # (B, H, N*N)
        # torch.nn.modules.batchnorm._BatchNorm.forward, decision for decision
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None and not recompute:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
        update = bn.training and bn.track_running_stats and bn.running_mean is not None and not recompute
        acc = _opmath_dtype(a, self.weight)
        weight = bn.weight if bn.affine else torch.ones(H, device=a.device, dtype=acc)
        bias = bn.bias if bn.affine else torch.zeros(H, device=a.device, dtype=acc)
        if batch_stats:
            if B * N * M == 1:
                raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                                 f"{attn.size()}")
            out, mean, var, _, _ = folded_batchnorm_mix(a, self.weight, weight, bias, bn.eps, rows_sum_to_one)
            if update:
                self._update_running_stats(mean, var, B * N * M, factor)
            return out.view(B, H, N, M)
        with _autocast_off(device_type):  # running statistics folded into Θ: y = (Θᵀ·scale) a + shift
            scale = weight.to(acc) * torch.rsqrt(bn.running_var.to(acc) + bn.eps)
            shift = bias.to(acc) - bn.running_mean.to(acc) * scale
            mixer = self.weight.t().to(acc) * scale[:, None]
            mean_a = torch.full((H,), 1.0 / N, device=a.device, dtype=acc) if rows_sum_to_one else None
            mixer, shift = _round_fold(mixer, shift, a.dtype, mean_a)
            out = torch.baddbmm(shift.view(1, H, 1), mixer.expand(B, H, H), a)
        return out.view(B, H, N, M)

    def _norm_in_own_dtype(self, x: torch.Tensor) -> torch.Tensor:
        """``self.norm(x)`` computed in ``x``'s dtype when the norm's parameters have another: the collapse probe's
        float32 maps in a bf16 model (DeepSpeed casts parameters, not the maps the probe upcasts), for LayerNorm and
        an evaluation-mode BatchNorm; a training-mode BatchNorm (its buffers must update in their own dtype) gets
        ``x`` in its parameters' dtype."""
        norm = self.norm
        params = [t for t in norm.parameters()]
        if not params or all(t.dtype == x.dtype for t in params):
            return norm(x)
        cast = (lambda t: None if t is None else t.to(x.dtype))
        if isinstance(norm, LayerNorm2d):
            y = F.layer_norm(x.permute(0, 2, 3, 1), norm.normalized_shape, cast(norm.weight), cast(norm.bias), norm.eps)
            return y.permute(0, 3, 1, 2)
        if isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.running_mean is not None:
            return F.batch_norm(x, cast(norm.running_mean), cast(norm.running_var), cast(norm.weight),
                                cast(norm.bias), False, 0.0, norm.eps)
        return norm(x.to(params[0].dtype)).to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int, factor: float) -> None:
        """Running-stat update of ``nn.BatchNorm2d``: r ← factor·batch + (1 − factor)·r, the variance unbiased
        (× count / (count − 1)); computed in the statistics' float32/float64 and rounded once into the buffers'
        dtype. ``mean``, ``var`` (H,): the batch mean and biased variance of the mixed maps; ``factor``: the
        momentum, or 1 / num_batches_tracked for ``momentum=None``."""
        bn = self.norm
        unbiased = var * (count / (count - 1))
        for buf, batch in ((bn.running_mean, mean), (bn.running_var, unbiased)):
            acc = _opmath_dtype(buf, batch)
            buf.copy_(batch.to(acc) * factor + buf.to(acc) * (1.0 - factor))


def _opmath_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The precision of the statistics and the (H, H) fold math: float64 if any input is float64, else float32
    (so bf16/fp16 maps get float32 statistics)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _autocast_available(device_type: str) -> bool:
    check = getattr(torch.amp, 'is_autocast_available', None)
    return check(device_type) if check is not None else device_type in ('cpu', 'cuda')


def _autocast_off(device_type: str):
    """A context with autocast disabled on ``device_type``: inside the folded path every op's dtype is explicit."""
    if _autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


# bmm with a float32 result from bf16/fp16 operands (fp32 accumulation, no upcast copy): CUDA/XPU, torch >= 2.8
_BMM_OUT_DTYPE = 'dtype' in torch.ops.aten.bmm.overloads()
# elsewhere (CPU) bf16/fp16 maps are upcast this many elements at a time: 16 MiB of float32 per chunk
_UPCAST_CHUNK_ELEMS = 1 << 22


def _gram(x: torch.Tensor, y: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Σ_b x_b y_bᵀ: x (B, H, M), y (B, K, M) of one dtype → (H, K) in ``acc``, products accumulated in ``acc``.

    Same dtype: one ``bmm``. bf16/fp16 → float32 on CUDA/XPU: ``bmm(..., out_dtype=float32)``. Otherwise (CPU,
    whose bf16 ``bmm`` returns bf16-rounded sums): chunks of the batch are upcast and multiplied in ``acc``, so
    no ``acc`` copy of the whole maps is ever materialised.
    """
    if x.dtype == acc:
        return torch.bmm(x, y.transpose(1, 2)).sum(0)
    if _BMM_OUT_DTYPE and acc == torch.float32 and x.device.type in ('cuda', 'xpu'):
        return torch.bmm(x, y.transpose(1, 2), out_dtype=acc).sum(0)
    B = x.shape[0]
    step = max(1, _UPCAST_CHUNK_ELEMS // max(1, x[0].numel() + y[0].numel()))
    total = torch.zeros(x.shape[1], y.shape[1], device=x.device, dtype=acc)
    for i in range(0, B, step):
        xc = x[i:i + step].to(acc)
        yc = xc if y is x else y[i:i + step].to(acc)
        total += torch.bmm(xc, yc.transpose(1, 2)).sum(0)
    return total


def _fold(theta, weight, bias, mean_a, second, eps):
    """BatchNorm of Θᵀa folded into (mixer (H, H), shift (H,)), from mean(a) (H,) and E[a aᵀ] (H, H).

    All inputs in one float dtype (float32 or float64, see :func:`_opmath_dtype`); returns mixer, shift, and the
    mixed maps' batch mean and biased variance (H,): mean(Θᵀa) = Θᵀ mean(a), E[(Θᵀa)²] = diag(Θᵀ E[a aᵀ] Θ).
    """
    theta_t = theta.t()
    mean = theta_t @ mean_a  # mean of the mixed maps, per head
    var = (((theta_t @ second) * theta_t).sum(1) - mean * mean).clamp_min(0.)  # biased variance
    scale = weight * torch.rsqrt(var + eps)
    return theta_t * scale[:, None], bias - mean * scale, mean, var


def _fold_backward(theta, weight, mean_a, second, eps, grad_mixer, grad_shift):
    """The vector-Jacobian product of :func:`_fold`'s (mixer, shift) for (theta, weight, bias, mean_a, second), by
    hand (a custom op's body runs below autograd): with t = Θᵀ, μ = t m, v = diag(t S tᵀ) − μ² (0 where clamped),
    r = (v + ε)^-½, s = w r, mixer = t · s[:, None], shift = b − μ s."""
    t = theta.t()
    mean = t @ mean_a
    raw = ((t @ second) * t).sum(1) - mean * mean
    r = torch.rsqrt(raw.clamp_min(0.) + eps)
    scale = weight * r
    d_scale = (grad_mixer * t).sum(1) - grad_shift * mean
    d_var = torch.where(raw > 0, d_scale * weight * -0.5 * r.pow(3), torch.zeros_like(raw))
    d_mean = -grad_shift * scale - 2. * d_var * mean
    d_t = grad_mixer * scale[:, None] + d_var[:, None] * (t @ (second + second.t())) + d_mean[:, None] * mean_a[None, :]
    d_second = theta @ (d_var[:, None] * t)   # Σ_h d_var_h θ_h θ_hᵀ
    return d_t.t().contiguous(), d_scale * r, grad_shift, theta @ d_mean, d_second


def _round_fold(mixer, shift, dtype, mean_a=None, var_a=None):
    """Round the fold (mixer (H, H), shift (H,), float32/64) to the maps' ``dtype`` for the map-sized ``baddbmm``.

    Returns (mixer_low (H, H), shift_low (H,)) in ``dtype``. Why not a plain rounding: with near-uniform maps the
    mixed maps' mean is large against their spread, so mixer · a and the shift nearly cancel, and rounding either
    moves a whole normalised head by ~2^-8 · |shift| (a per-head constant that dominates the bf16 error). So:

    * with ``mean_a`` (H,), the maps' mean per head: the mixer's rounding error in the mean,
      (mixer - mixer_low) mean(a), goes into the shift before the shift is rounded;
    * with ``var_a`` (H,) too, the maps' variance per head: the shift's own rounding residual r_h goes into one
      entry (h, g) of the mixer, g chosen to minimise the error this adds, |r_h| · std(a_g) / mean(a_g) (the
      change r_h / mean(a_g) times the map's spread) plus the entry's rounding, and only where that is smaller
      than |r_h| (near-uniform maps; peaked maps keep the plain shift).

    A plain rounding when ``dtype`` is the fold's own precision or ``mean_a`` is ``None``.
    """
    mixer_low = mixer.to(dtype)
    if mean_a is None or dtype == mixer.dtype:
        return mixer_low, shift.to(dtype)
    acc = mixer.dtype
    target = mixer @ mean_a + shift  # each output head's exact mean
    shift_low = (target - mixer_low.to(acc) @ mean_a).to(dtype)
    if var_a is None:
        return mixer_low, shift_low
    residual = (target - mixer_low.to(acc) @ mean_a - shift_low.to(acc))[:, None]  # (H, 1)
    usable = mean_a > 0
    mu = torch.where(usable, mean_a, 1.)
    unit = torch.finfo(dtype).eps / 2  # unit roundoff: 2^-8 for bf16, 2^-11 for fp16
    spread = residual.abs() * var_a.clamp_min(0).sqrt() / mu  # (H, H): error the change adds, by column
    rounding = unit * (mixer_low.to(acc).abs() * mean_a + residual.abs())
    cost = torch.where(usable, spread.square() + rounding.square(), torch.inf)
    best, col = cost.min(1)
    row = torch.arange(mixer.shape[0], device=mixer.device)
    old = mixer_low[row, col]
    new = (old.to(acc) + residual[:, 0] / mu[col]).to(dtype)
    take = best < residual[:, 0].square()
    return mixer_low.index_put((row, col), torch.where(take, new, old)), shift_low


@torch.library.custom_op('deepvit::folded_batchnorm_mix', mutates_args=())
def folded_batchnorm_mix(a: torch.Tensor, theta: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                         rows_sum_to_one: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                         torch.Tensor]:
    """BatchNorm2d(Θᵀ a) with batch statistics, as one ``baddbmm``: a (B, H, M) → (B, H, M), plus the batch mean
    and biased variance (H,) of the mixed maps (for the running-stat update) and mean(a) (H,), E[a aᵀ] (H, H) (what
    the backward needs); only the first output is differentiable.

    Source: paper Eq. 5 (Norm(Θᵀ · A)) with Norm = BatchNorm2d(H) as in the official dvit_repo ``models/layers.py``
    ``ReAttention`` (1×1 Conv2d then BatchNorm2d); the fold is ours.

    Forward: mean(a) and E[a aᵀ] (one ``bmm``) give the mixed maps' batch statistics; the normalisation is folded
    into the mixer and a shift. Backward: the (H, H)-sized part is differentiated by autograd; the map-sized gradient
    da = mixerᵀ g + (dS + dSᵀ)/n · a + dm/n is formed in two fused ``baddbmm`` passes. Nothing map-sized is saved
    beyond ``a`` itself (already kept by the softmax).

    Dtypes: ``a`` float32/float64/bfloat16/float16; ``theta`` (H, H), ``weight``, ``bias`` (H,) any float dtype.
    The statistics mean(a), E[a aᵀ] and the gradient's (H, H) sums Σ g aᵀ, Σ g are accumulated in float32
    (float64 if any input is float64; :func:`_gram`), the fold and its derivative run in that precision, and only
    the map-sized products (the output, the gradient of ``a``) run in ``a``'s dtype, with the mixer and shift
    rounded to it so as to keep each head's mean (:func:`_round_fold`). Gradients come back in each input's own
    dtype; inputs that do not require grad (a fixed Θ, a non-affine BatchNorm's ones/zeros) get none computed.

    Autocast: both passes run with autocast disabled on ``a``'s device and cast explicitly, so an enclosing
    ``torch.autocast`` (CPU or CUDA) cannot re-cast the statistics or the fold math to bf16/fp16; the caller
    (:meth:`ReAttentionMix.forward`) casts float32 maps to the autocast dtype first, as autocast's ``matmul``
    would. Not twice differentiable.

    A ``torch.library.custom_op`` with ``register_autograd`` (and fake implementations), so ``torch.compile`` traces a
    Re-attention block as one graph (was: an autograd Function whose backward called ``torch.autograd.grad``, a
    graph break in every block).
    """
    B, H, M = a.shape
    count = B * M
    acc = _opmath_dtype(a, theta, weight, bias)
    with _autocast_off(a.device.type):
        if rows_sum_to_one:  # M = N*N entries, N rows each summing to 1
            mean_a = torch.full((H,), 1.0 / math.isqrt(M), device=a.device, dtype=acc)
        else:
            mean_a = a.sum(dim=(0, 2), dtype=acc) / count
        second = _gram(a, a, acc) / count
        mixer, shift, mean, var = _fold(theta.to(acc), weight.to(acc), bias.to(acc), mean_a, second, eps)
        var_a = second.diagonal() - mean_a.square() if a.dtype != acc else None
        mixer_low, shift_low = _round_fold(mixer, shift, a.dtype, mean_a, var_a)
        out = torch.baddbmm(shift_low.view(1, H, 1), mixer_low.expand(B, H, H), a)
    return out, mean, var, mean_a, second


@folded_batchnorm_mix.register_fake
def _(a, theta, weight, bias, eps, rows_sum_to_one):
    B, H, M = a.shape
    acc = _opmath_dtype(a, theta, weight, bias)
    return (a.new_empty(B, H, M), a.new_empty(H, dtype=acc), a.new_empty(H, dtype=acc), a.new_empty(H, dtype=acc),
            a.new_empty(H, H, dtype=acc))


@torch.library.custom_op('deepvit::folded_batchnorm_mix_backward', mutates_args=())
def _folded_batchnorm_mix_backward(grad_out: torch.Tensor, a: torch.Tensor, theta: torch.Tensor, weight: torch.Tensor,
                                   bias: torch.Tensor, mean_a: torch.Tensor, second: torch.Tensor, eps: float,
                                   rows_sum_to_one: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
    """The gradients of :func:`folded_batchnorm_mix`'s ``out`` for (a, theta, weight, bias), each in its input's dtype:
    the (H, H)-sized fold differentiated by autograd, the map-sized da = mixerᵀ g + (dS + dSᵀ)/n · a + dm/n in two
    fused ``baddbmm`` passes."""
    B, H, M = a.shape
    count = B * M
    acc = mean_a.dtype
    with _autocast_off(a.device.type):
        grad_out = grad_out.to(a.dtype)
        theta_acc, weight_acc = theta.to(acc), weight.to(acc)
        mixer = _fold(theta_acc, weight_acc, bias.to(acc), mean_a, second, eps)[0]
        grad_mixer = _gram(grad_out, a, acc)
        grad_shift = grad_out.sum(dim=(0, 2), dtype=acc)
        d_theta, d_weight, d_bias, d_mean, d_second = _fold_backward(theta_acc, weight_acc, mean_a, second, eps,
                                                                     grad_mixer, grad_shift)
        # da = (dS + dSᵀ)/n · a + dm/n + mixerᵀ g: the statistics' part first, so that its rounding (it is usually the
        # smaller part) and not the whole gradient's is the extra one; its mean is rounded as the forward's fold is
        # (_round_fold), as it too nearly cancels for near-uniform maps
        d_sym = (d_second + d_second.t()) / count
        if rows_sum_to_one:  # mean(a) is fixed by the simplex: its gradient is a constant the softmax removes
            grad_a = torch.bmm(d_sym.to(a.dtype).expand(B, H, H), a)
        else:
            var_a = second.diagonal() - mean_a.square() if a.dtype != acc else None
            d_low, d_mean_low = _round_fold(d_sym, d_mean / count, a.dtype, mean_a, var_a)
            grad_a = torch.baddbmm(d_mean_low.view(1, H, 1), d_low.expand(B, H, H), a)
        grad_a.baddbmm_(mixer.detach().t().to(a.dtype).expand(B, H, H), grad_out)
    return grad_a, d_theta.to(theta.dtype), d_weight.to(weight.dtype), d_bias.to(bias.dtype)


@_folded_batchnorm_mix_backward.register_fake
def _(grad_out, a, theta, weight, bias, mean_a, second, eps, rows_sum_to_one):
    return torch.empty_like(a), torch.empty_like(theta), torch.empty_like(weight), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    a, theta, weight, bias, eps, rows_sum_to_one = inputs
    _, _, _, mean_a, second = output
    ctx.save_for_backward(a, theta, weight, bias, mean_a, second)
    ctx.eps, ctx.rows_sum_to_one = eps, rows_sum_to_one


def _backward(ctx, grad_out, _grad_mean, _grad_var, _grad_mean_a, _grad_second):
    a, theta, weight, bias, mean_a, second = ctx.saved_tensors
    grads = _folded_batchnorm_mix_backward(grad_out, a, theta, weight, bias, mean_a, second, ctx.eps,
                                           ctx.rows_sum_to_one)
    return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:4])), None, None)


folded_batchnorm_mix.register_autograd(_backward, setup_context=_setup_context)


class ReAttention(Attention):
    """Multi-head self-attention with Re-attention: timm's Attention plus a :class:`ReAttentionMix` ``reattn``.

    Parameter names are timm's Attention's (``qkv``, ``proj``, ...) plus ``reattn.weight`` (Θ) and ``reattn.norm.*``,
    so a ViT state dict loads into a DeepViT of the same size with only the Re-attention entries missing.
    Always takes the explicit path (the mixing needs the maps). ``maps['softmax']`` holds the maps before the mixing,
    ``maps['mixed']`` the normalised, mixed maps that weight ``v``.

    Args:
        dim, num_heads, **kwargs: as timm's :class:`timm.layers.Attention`.
        reattn_norm, reattn_init, reattn_theta: see :class:`ReAttentionMix` (``norm``, ``init``, ``theta``;
            ``reattn_theta='fixed'`` is the BatchNorm-only control).
        block_index: the block's index, selecting Θ's private random stream (``ReAttentionMix(index=...)``).

    Raises:
        ValueError: as :class:`ReAttentionMix`.
    """

    uses_reattention = True

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            reattn_norm: str = 'bn',
            reattn_init: str = 'random',
            reattn_theta: str = 'learned',
            block_index: int = 0,
            device=None,
            dtype=None,
            **kwargs,
    ) -> None:
        super().__init__(dim, num_heads=num_heads, device=device, dtype=dtype, **kwargs)
        self.reattn = ReAttentionMix(num_heads, norm=reattn_norm, init=reattn_init, theta=reattn_theta,
                                     index=block_index, device=device, dtype=dtype)

    def mix_maps(self, attn: torch.Tensor) -> torch.Tensor:
        # rows still sum to 1 unless attention dropout just zeroed some entries
        rows_sum_to_one = not (self.training and self.attn_drop.p > 0)
        return self.reattn(attn, rows_sum_to_one=rows_sum_to_one)
