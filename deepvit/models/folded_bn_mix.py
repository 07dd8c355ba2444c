"""Re-attention's fast path: BatchNorm2d(Θᵀ a) with batch statistics folded into one ``baddbmm``, forward and backward.

The map-sized work of Re-attention's ``'bn'`` norm (paper Eq. 5 with the official code's BatchNorm2d, zhoudaquan/dvit_repo
``models/layers.py``) in two passes over the maps instead of four, registered as ``torch.library.custom_op``\ s with
``register_autograd`` so that ``torch.compile`` traces it. Used by
:class:`deepvit.models.reattention.ReAttentionMix`; checked against ``nn.BatchNorm2d(Conv2d 1×1)`` in fp32, fp64 and
bf16 in ``tests/test_reattention.py`` and ``tests/test_reattention_precision.py``.

Shapes: maps ``a`` (B, H, M) with M = N·N; the head mix ``mix`` = Θᵀ (H_out, H_in); BatchNorm weight and bias (H,).
"""
import contextlib
import math
from typing import Tuple

import torch


def opmath_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The precision of the statistics and the (H, H) fold math: float64 if any input is float64, else float32
    (so bf16/fp16 maps get float32 statistics)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def autocast_available(device_type: str) -> bool:
    check = getattr(torch.amp, 'is_autocast_available', None)
    return check(device_type) if check is not None else device_type in ('cpu', 'cuda')


def autocast_off(device_type: str):
    """A context with autocast disabled on ``device_type``: inside the folded path every op's dtype is explicit."""
    if autocast_available(device_type):
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


def _fold(mix, weight, bias, mean_a, second, eps):
    """BatchNorm of ``mix · a`` folded into (mixer (H, H), shift (H,)), from mean(a) (H,) and E[a aᵀ] (H, H).

    ``mix`` is the head mix's weight Θᵀ (H_out, H_in). All inputs in one float dtype (float32 or float64, see
    :func:`opmath_dtype`); returns mixer, shift, and the mixed maps' batch mean and biased variance (H,):
    mean(Θᵀa) = Θᵀ mean(a), E[(Θᵀa)²] = diag(Θᵀ E[a aᵀ] Θ).
    """
    mean = mix @ mean_a  # mean of the mixed maps, per head
    var = (((mix @ second) * mix).sum(1) - mean * mean).clamp_min(0.)  # biased variance
    scale = weight * torch.rsqrt(var + eps)
    return mix * scale[:, None], bias - mean * scale, mean, var


def _fold_backward(mix, weight, mean_a, second, eps, grad_mixer, grad_shift):
    """The vector-Jacobian product of :func:`_fold`'s (mixer, shift) for (mix, weight, bias, mean_a, second), by
    hand (a custom op's body runs below autograd): with t = ``mix`` = Θᵀ, μ = t m, v = diag(t S tᵀ) − μ² (0 where
    clamped), r = (v + ε)^-½, s = w r, mixer = t · s[:, None], shift = b − μ s."""
    t = mix
    mean = t @ mean_a
    raw = ((t @ second) * t).sum(1) - mean * mean
    r = torch.rsqrt(raw.clamp_min(0.) + eps)
    scale = weight * r
    d_scale = (grad_mixer * t).sum(1) - grad_shift * mean
    d_var = torch.where(raw > 0, d_scale * weight * -0.5 * r.pow(3), torch.zeros_like(raw))
    d_mean = -grad_shift * scale - 2. * d_var * mean
    d_t = grad_mixer * scale[:, None] + d_var[:, None] * (t @ (second + second.t())) + d_mean[:, None] * mean_a[None, :]
    d_second = t.t() @ (d_var[:, None] * t)   # Σ_h d_var_h θ_h θ_hᵀ
    return d_t, d_scale * r, grad_shift, t.t() @ d_mean, d_second


def round_fold(mixer, shift, dtype, mean_a=None, var_a=None):
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
def folded_batchnorm_mix(a: torch.Tensor, mix: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
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

    Dtypes: ``a`` float32/float64/bfloat16/float16; ``mix`` = Θᵀ (H_out, H_in), ``weight``, ``bias`` (H,) any float
    dtype.
    The statistics mean(a), E[a aᵀ] and the gradient's (H, H) sums Σ g aᵀ, Σ g are accumulated in float32
    (float64 if any input is float64; :func:`_gram`), the fold and its derivative run in that precision, and only
    the map-sized products (the output, the gradient of ``a``) run in ``a``'s dtype, with the mixer and shift
    rounded to it so as to keep each head's mean (:func:`round_fold`). Gradients come back in each input's own
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
    acc = opmath_dtype(a, mix, weight, bias)
    with autocast_off(a.device.type):
        if rows_sum_to_one:  # M = N*N entries, N rows each summing to 1
            mean_a = torch.full((H,), 1.0 / math.isqrt(M), device=a.device, dtype=acc)
        else:
            mean_a = a.sum(dim=(0, 2), dtype=acc) / count
        second = _gram(a, a, acc) / count
        mixer, shift, mean, var = _fold(mix.to(acc), weight.to(acc), bias.to(acc), mean_a, second, eps)
        var_a = second.diagonal() - mean_a.square() if a.dtype != acc else None
        mixer_low, shift_low = round_fold(mixer, shift, a.dtype, mean_a, var_a)
        out = torch.baddbmm(shift_low.view(1, H, 1), mixer_low.expand(B, H, H), a)
    return out, mean, var, mean_a, second


@folded_batchnorm_mix.register_fake
def _(a, mix, weight, bias, eps, rows_sum_to_one):
    B, H, M = a.shape
    acc = opmath_dtype(a, mix, weight, bias)
    return (a.new_empty(B, H, M), a.new_empty(H, dtype=acc), a.new_empty(H, dtype=acc), a.new_empty(H, dtype=acc),
            a.new_empty(H, H, dtype=acc))


@torch.library.custom_op('deepvit::folded_batchnorm_mix_backward', mutates_args=())
def _folded_batchnorm_mix_backward(grad_out: torch.Tensor, a: torch.Tensor, mix: torch.Tensor, weight: torch.Tensor,
                                   bias: torch.Tensor, mean_a: torch.Tensor, second: torch.Tensor, eps: float,
                                   rows_sum_to_one: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
    """The gradients of :func:`folded_batchnorm_mix`'s ``out`` for (a, mix, weight, bias), each in its input's dtype:
    the (H, H)-sized fold differentiated by autograd, the map-sized da = mixerᵀ g + (dS + dSᵀ)/n · a + dm/n in two
    fused ``baddbmm`` passes."""
    B, H, M = a.shape
    count = B * M
    acc = mean_a.dtype
    with autocast_off(a.device.type):
        grad_out = grad_out.to(a.dtype)
        mix_acc, weight_acc = mix.to(acc), weight.to(acc)
        mixer = _fold(mix_acc, weight_acc, bias.to(acc), mean_a, second, eps)[0]
        grad_mixer = _gram(grad_out, a, acc)
        grad_shift = grad_out.sum(dim=(0, 2), dtype=acc)
        d_mix, d_weight, d_bias, d_mean, d_second = _fold_backward(mix_acc, weight_acc, mean_a, second, eps,
                                                                     grad_mixer, grad_shift)
        # da = (dS + dSᵀ)/n · a + dm/n + mixerᵀ g: the statistics' part first, so that its rounding (it is usually the
        # smaller part) and not the whole gradient's is the extra one; its mean is rounded as the forward's fold is
        # (round_fold), as it too nearly cancels for near-uniform maps
        d_sym = (d_second + d_second.t()) / count
        if rows_sum_to_one:  # mean(a) is fixed by the simplex: its gradient is a constant the softmax removes
            grad_a = torch.bmm(d_sym.to(a.dtype).expand(B, H, H), a)
        else:
            var_a = second.diagonal() - mean_a.square() if a.dtype != acc else None
            d_low, d_mean_low = round_fold(d_sym, d_mean / count, a.dtype, mean_a, var_a)
            grad_a = torch.baddbmm(d_mean_low.view(1, H, 1), d_low.expand(B, H, H), a)
        grad_a.baddbmm_(mixer.detach().t().to(a.dtype).expand(B, H, H), grad_out)
    return grad_a, d_mix.to(mix.dtype), d_weight.to(weight.dtype), d_bias.to(bias.dtype)


@_folded_batchnorm_mix_backward.register_fake
def _(grad_out, a, mix, weight, bias, mean_a, second, eps, rows_sum_to_one):
    return torch.empty_like(a), torch.empty_like(mix), torch.empty_like(weight), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    a, mix, weight, bias, eps, rows_sum_to_one = inputs
    _, _, _, mean_a, second = output
    ctx.save_for_backward(a, mix, weight, bias, mean_a, second)
    ctx.eps, ctx.rows_sum_to_one = eps, rows_sum_to_one


def _backward(ctx, grad_out, _grad_mean, _grad_var, _grad_mean_a, _grad_second):
    a, mix, weight, bias, mean_a, second = ctx.saved_tensors
    grads = _folded_batchnorm_mix_backward(grad_out, a, mix, weight, bias, mean_a, second, ctx.eps,
                                           ctx.rows_sum_to_one)
    return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:4])), None, None)


folded_batchnorm_mix.register_autograd(_backward, setup_context=_setup_context)
