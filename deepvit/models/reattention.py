"""Re-attention (Zhou et al., 2021, "DeepViT: Towards Deeper Vision Transformer", arXiv 2103.11886, Sec. 4.1, Eq. 5).

The folded-BatchNorm fast path (forward and backward as custom ops) lives in :mod:`deepvit.models.folded_bn_mix`.

    Re-Attention(Q, K, V) = Norm(Θᵀ · Softmax(Q Kᵀ / sqrt(d))) · V

Θ is a learnable (H, H) matrix that mixes the H heads' attention maps after the softmax: the mixed map of head h
is ``sum_g Θ[g, h] · A_g``. It is stored as ``weight`` = Θᵀ (H_out, H_in), the layout of every head mix here
(:class:`~deepvit.models.head_mix.HeadMix`) and of the official code's Conv2d. The official code
(zhoudaquan/dvit_repo, ``models/layers.py``, class ``ReAttention``) implements Θᵀ as a 1×1 ``Conv2d(H, H)`` with bias followed by ``BatchNorm2d(H)``, with attention dropout before Θ;
lucidrains/vit-pytorch (``vit_pytorch/deepvit.py``) uses a bias-free N(0, 1) Θ and LayerNorm over the head axis.

Shapes: attention maps (B, H, N, N); Θ (H, H).

Weights format (:data:`WEIGHTS_FORMAT`). Before format 2, ``weight`` held Θ itself (H_in, H_out); checkpoints and
exports now carry the format, and :func:`upgrade_state_dict` (or ``load_state_dict`` of a torch state dict with its
version metadata) reads the old layout.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d, register_notrace_module

from .attention import Attention
from .checkpointing import recomputing
from .head_mix import HeadMix, mix_heads
from .folded_bn_mix import autocast_available, autocast_off, opmath_dtype, round_fold, folded_batchnorm_mix

REATTN_NORMS = ('bn', 'ln', 'none')
REATTN_INITS = ('random', 'identity')
REATTN_THETAS = ('learned', 'fixed')
WEIGHTS_FORMAT = 2
"""The layout of saved weights: 1 (or unmarked): a Re-attention ``weight`` is Θ (H_in, H_out); 2: it is Θᵀ
(H_out, H_in), as every :class:`~deepvit.models.head_mix.HeadMix`. DeepSpeed checkpoints carry it in their client
state (``weights_format``), safetensors exports in their metadata (``deepvit.weights_format``)."""


def check_reattn_options(norm: str, init: str, theta: str) -> None:
    """Raise ValueError naming the field (``reattn_norm``, ``reattn_init``, ``reattn_theta``) and the value when one
    is not a known choice (:data:`REATTN_NORMS`, :data:`REATTN_INITS`, :data:`REATTN_THETAS`)."""
    for field, value, choices in (('reattn_norm', norm, REATTN_NORMS), ('reattn_init', init, REATTN_INITS),
                                  ('reattn_theta', theta, REATTN_THETAS)):
        if value not in choices:
            raise ValueError(f"{field} must be one of {choices}, got {value!r}")


@register_notrace_module  # a leaf for torch.fx (timm's feature extraction): its BatchNorm mode checks are Python
class ReAttentionMix(HeadMix):
    """Θᵀ head mixing followed by the Re-attention norm: (B, H, N, N) float maps in, same shape out.

    A :class:`~deepvit.models.head_mix.HeadMix` without bias (``weight`` = Θᵀ, (H_out, H_in)) plus ``norm``.

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
    (:func:`~deepvit.models.streams.remedy_generator`, stream ``'reattn'``, seeded from ``torch.initial_seed()`` and
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

    _version = 2   # torch's state-dict version: 1 stored Θ (H_in, H_out), 2 stores Θᵀ (see _load_from_state_dict)

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
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads!r}")
        check_reattn_options(norm, init, theta)
        if theta == 'fixed' and init != 'identity':
            raise ValueError(f"reattn_theta='fixed' holds Θ at the identity and needs reattn_init='identity', "
                             f"got reattn_init={init!r}")
        dd = {'device': device, 'dtype': dtype}
        super().__init__(num_heads, bias=False, init='uniform' if init == 'random' else 'identity',
                         learned=theta == 'learned', stream='reattn', index=index, **dd)
        self.norm_type = norm
        self.reattn_init = init
        self.theta_type = theta
        if norm == 'bn':
            self.norm = nn.BatchNorm2d(num_heads, **dd)
        elif norm == 'ln':
            self.norm = LayerNorm2d(num_heads, eps=1e-5, **dd)
        else:
            self.norm = nn.Identity()
        self.fold_norm = True

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, norm={self.norm_type!r}, init={self.reattn_init!r}, "
                f"theta={self.theta_type!r}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """A torch state dict saved with version 1 of this module (its ``_metadata``) holds Θ, not Θᵀ: transposed
        on load. A state dict without version metadata (safetensors, DeepSpeed's ``zero_to_fp32``) is taken as
        current: those files carry :data:`WEIGHTS_FORMAT` themselves (:func:`upgrade_state_dict`)."""
        version = local_metadata.get('version')
        key = prefix + 'weight'
        if version is not None and version < 2 and key in state_dict:
            state_dict[key] = state_dict[key].t().contiguous()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

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
        """Θᵀ head mixing, unnormalised: (B, H, N, M) → (B, H, N, M) (:func:`~deepvit.models.head_mix.mix_heads`;
        no bias)."""
        return mix_heads(attn, self.weight)

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
        if (attn.dtype == torch.float32 and autocast_available(device_type)
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
        acc = opmath_dtype(a, self.weight)
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
        with autocast_off(device_type):  # running statistics folded into Θ: y = (Θᵀ·scale) a + shift
            scale = weight.to(acc) * torch.rsqrt(bn.running_var.to(acc) + bn.eps)
            shift = bias.to(acc) - bn.running_mean.to(acc) * scale
            mixer = self.weight.to(acc) * scale[:, None]
            mean_a = torch.full((H,), 1.0 / N, device=a.device, dtype=acc) if rows_sum_to_one else None
            mixer, shift = round_fold(mixer, shift, a.dtype, mean_a)
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
            acc = opmath_dtype(buf, batch)
            buf.copy_(batch.to(acc) * factor + buf.to(acc) * (1.0 - factor))


class ReAttention(Attention):
    """Multi-head self-attention with Re-attention: timm's Attention plus a :class:`ReAttentionMix` ``reattn``.

    Parameter names are timm's Attention's (``qkv``, ``proj``, ...) plus ``reattn.weight`` (Θᵀ) and ``reattn.norm.*``,
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


def upgrade_state_dict(model: nn.Module, state: dict, weights_format: int) -> dict:
    """``state``, a flat state dict for ``model`` written in ``weights_format``, in :data:`WEIGHTS_FORMAT`: from
    format 1, every :class:`ReAttentionMix`'s ``weight`` (Θ, (H_in, H_out)) is transposed to Θᵀ. Returns a new
    dict (the tensors not moved are the same objects).

    Raises:
        ValueError: ``weights_format`` is not 1 or 2 (a file written by newer code).
    """
    if weights_format not in (1, WEIGHTS_FORMAT):
        raise ValueError(f"weights_format={weights_format!r}: this code reads formats 1 and {WEIGHTS_FORMAT}; the "
                         f"weights were written by a newer deepvit")
    state = dict(state)
    if weights_format == 1:
        for name, module in model.named_modules():
            key = f'{name}.weight' if name else 'weight'
            if isinstance(module, ReAttentionMix) and key in state:
                state[key] = state[key].t().contiguous()
    return state
