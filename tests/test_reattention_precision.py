"""Re-attention's folded BatchNorm in reduced precision and under autocast, its float64 gradients, BatchNorm-mode
semantics (freeze-BN, ``track_running_stats``, ``momentum=None``), a fixed Θ, and the loader's ``seeded`` RNG fork.

Reference everywhere: ``nn.BatchNorm2d(Θᵀ a)`` (``fold_norm=False``) in float32 (or float64) on the *same* map
values, i.e. bf16 maps upcast, so that only the rounding inside the path under test is measured.
"""
import copy
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from deepvit.data.dataset import seeded
from deepvit.models import ReAttentionMix
from deepvit.models import folded_bn_mix as R

U_BF16 = 2.0 ** -8  # bf16 unit roundoff: 8 significant bits (7 stored + 1 implicit), |fl(x) - x| <= 2^-8 |x|


def bn_mix(H, dtype=torch.float32, seed=0, **bn_kwargs):
    """A ReAttentionMix with BatchNorm, non-trivial affine parameters, optionally a custom BatchNorm."""
    torch.manual_seed(seed)
    mix = ReAttentionMix(H, norm='bn')
    if bn_kwargs:
        mix.norm = nn.BatchNorm2d(H, **bn_kwargs)
    with torch.no_grad():
        if mix.norm.affine:
            mix.norm.weight.uniform_(0.5, 1.5)
            mix.norm.bias.uniform_(-0.5, 0.5)
    return mix.to(dtype)


def plain(mix):
    ref = copy.deepcopy(mix)
    ref.fold_norm = False
    return ref


def maps(B, H, N, temp=2.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, N, N, generator=g) * temp).softmax(-1).to(dtype)


def run(mix, a, w, rows_sum_to_one=False):
    """Forward + backward of sum(out * w); returns output and every gradient, as float32."""
    a = a.detach().clone().requires_grad_()
    out = mix(a, rows_sum_to_one=rows_sum_to_one) if mix.fold_norm else mix(a)
    (out * w.to(out.dtype)).sum().backward()
    res = {'out': out.detach().float(), 'a': a.grad.float(), 'theta': mix.weight.grad.float()}
    if mix.norm.affine:
        res['bn.weight'] = mix.norm.weight.grad.float()
        res['bn.bias'] = mix.norm.bias.grad.float()
    return res


# ---------------------------------------------------------------------------------------------------------------
# (a) bf16 on CPU against the fp32 reference, and against the plain bf16 path


@pytest.mark.parametrize('temp', [2.0, 0.05])  # peaked maps (trained attention) and near-uniform ones (init)
def test_bf16_folded_matches_fp32_reference_and_beats_plain_bf16(temp):
    B, H, N = 4, 4, 65
    fold16 = bn_mix(H, torch.bfloat16)
    ref32 = plain(fold16).float()  # the same bf16-representable parameters, in fp32
    plain16 = plain(fold16)
    a = maps(B, H, N, temp, dtype=torch.bfloat16)
    w = torch.randn(B, H, N, N, generator=torch.Generator().manual_seed(1)).bfloat16()  # same upstream gradient
    ref, fold, pl = run(ref32, a.float(), w.float()), run(fold16, a, w), run(plain16, a, w)
    for name in ref:
        assert fold[name].dtype == torch.float32 and torch.isfinite(fold[name]).all()
    # Tolerances, as multiples of u = 2^-8 times the reference's largest magnitude (normalised outputs are O(1):
    # unit variance times affine weight <= 1.5, peaked maps reach |out| ~ 20; gradients scale with them):
    # * output: its own rounding to bf16 (<= u |out|) plus the mixer's and shift's rounding to bf16 (each entry
    #   relative u; their effect on the mean is compensated, what is left is u times the normalised spread):
    #   <= ~2u max|out|; 3u leaves a margin (measured: <= 2.0u at temp 0.3, <= 1.3u here);
    # * gradient of the maps: two bf16 roundings of map-sized results (the statistics' part, then the whole)
    #   plus the mixer's rounding: 3u (measured <= 1.2u);
    # * gradients of Θ and the affine parameters: sums accumulated in fp32 and the (H, H) fold differentiated in
    #   fp32, then one rounding to the parameters' bf16: u, doubled for the fp32 sums' own error (measured 0.8u).
    factors = {'out': 3, 'a': 3, 'theta': 2, 'bn.weight': 2, 'bn.bias': 2}
    for name, k in factors.items():
        err = (fold[name] - ref[name]).abs().max().item()
        bound = k * U_BF16 * ref[name].abs().max().item()
        assert err <= bound, f"{name}: max error {err:.3g} > {k}u * max|ref| = {bound:.3g}"
    # at least as accurate as the plain bf16 matmul + nn.BatchNorm2d path (relative Frobenius error); bn.bias's
    # gradient is the same fp32-accumulated sum of the upstream gradient on both paths, so it is not compared
    rel = lambda r: {n: ((r[n] - ref[n]).norm() / ref[n].norm()).item() for n in ('out', 'a', 'theta', 'bn.weight')}
    rf, rp = rel(fold), rel(pl)
    for name in rf:
        assert rf[name] <= rp[name], f"{name}: folded bf16 error {rf[name]:.2e} > plain bf16 error {rp[name]:.2e}"


def test_bf16_second_moment_accumulates_in_fp32(monkeypatch):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 3, 1000, generator=g).bfloat16()
    exact = torch.einsum('bhm,bkm->hk', a.double(), a.double())
    full = R._gram(a, a, torch.float32)
    monkeypatch.setattr(R, '_UPCAST_CHUNK_ELEMS', 2 * 3 * 1000)  # one batch element per chunk (x and y)
    chunked = R._gram(a, a, torch.float32)
    assert full.dtype == chunked.dtype == torch.float32
    # fp32 sums of 5000 products: relative error ~ 1e-6, far below bf16's 2^-8 ≈ 4e-3 (a bf16 result would show it)
    torch.testing.assert_close(full.double(), exact, rtol=1e-5, atol=0)
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=0)
    grad = torch.randn(5, 3, 1000, generator=g).bfloat16()
    torch.testing.assert_close(R._gram(grad, a, torch.float32).double(),
                               torch.einsum('bhm,bkm->hk', grad.double(), a.double()), rtol=1e-5, atol=1e-4)


def test_fp16_maps_take_the_folded_path():
    mix = bn_mix(4, torch.float16)
    a = maps(2, 4, 9, dtype=torch.float16)
    called = []
    mix.norm.register_forward_hook(lambda *_: called.append(1))
    out = mix(a.requires_grad_())
    out.float().square().sum().backward()
    assert not called and out.dtype == a.grad.dtype == mix.weight.grad.dtype == torch.float16
    ref = plain(mix).float()(a.detach().float())
    # fp16 has 11 significant bits (u = 2^-11); 4u of the largest normalised output
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=4 * 2.0 ** -11 * ref.abs().max().item())


# ---------------------------------------------------------------------------------------------------------------
# autocast


def test_cpu_autocast_matches_plain_path_and_fp32_reference():
    B, H, N = 4, 4, 17
    fold = bn_mix(H)  # fp32 parameters, as under autocast
    pl, ref = plain(fold), plain(fold)
    w = torch.randn(B, H, N, N, generator=torch.Generator().manual_seed(1)).bfloat16()
    for a in (maps(B, H, N, dtype=torch.bfloat16), maps(B, H, N, seed=3)):  # bf16 maps (CPU autocast's softmax of
        with torch.autocast('cpu', dtype=torch.bfloat16):                  # bf16 logits) and fp32 maps (CUDA's)
            r_fold, r_plain = run(fold, a, w), run(pl, a, w)
        r_ref = run(ref, a.bfloat16().float(), w.float())  # fp32 reference on the maps autocast rounds to bf16
        assert fold.weight.grad.dtype == fold.norm.weight.grad.dtype == torch.float32
        for name in r_ref:
            scale = r_ref[name].abs().max().item()
            torch.testing.assert_close(r_fold[name], r_ref[name], rtol=0, atol=3 * U_BF16 * scale, msg=name)
            torch.testing.assert_close(r_fold[name], r_plain[name], rtol=0, atol=6 * U_BF16 * scale, msg=name)
        for m in (fold, pl, ref):
            m.zero_grad()
    with torch.autocast('cpu', dtype=torch.bfloat16):  # output dtype as the plain path under autocast
        a = maps(B, H, N)
        assert fold(a).dtype == pl(a).dtype == torch.bfloat16


def test_deepvit_trains_under_cpu_autocast():
    import timm
    import deepvit  # noqa: F401
    torch.manual_seed(0)
    model = timm.create_model('deepvit_tiny_patch4_32', depth=1, embed_dim=32, num_heads=4)
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = model(x).float().square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for n, g in zip(
        [n for n, p in model.named_parameters() if p.requires_grad], grads) if n.endswith('reattn.weight'))


# ---------------------------------------------------------------------------------------------------------------
# (b) float64 gradcheck of the custom Function


def test_gradcheck_folded_function_general_maps():
    g = torch.Generator().manual_seed(0)
    B, H, M = 2, 3, 6
    a = torch.rand(B, H, M, generator=g, dtype=torch.float64).requires_grad_()
    theta = torch.randn(H, H, generator=g, dtype=torch.float64).requires_grad_()
    weight = torch.rand(H, generator=g, dtype=torch.float64).add(0.5).requires_grad_()
    bias = torch.randn(H, generator=g, dtype=torch.float64).requires_grad_()
    f = lambda *t: R.folded_batchnorm_mix(*t, 1e-5, False)[0]
    assert torch.autograd.gradcheck(f, (a, theta, weight, bias))
    # fixed Θ (no grad wanted): still correct for the rest, none computed for Θ
    assert torch.autograd.gradcheck(f, (a, theta.detach(), weight, bias))


def test_gradcheck_folded_function_simplex_through_softmax():
    # rows_sum_to_one=True: the maps' gradient is exact only up to a per-head constant (mean(a) = 1/N is fixed by
    # the simplex), which the softmax's backward removes: the gradient of the logits is exact
    g = torch.Generator().manual_seed(0)
    B, H, N = 2, 3, 3
    logits = torch.randn(B, H, N, N, generator=g, dtype=torch.float64).requires_grad_()
    theta = torch.randn(H, H, generator=g, dtype=torch.float64).requires_grad_()
    weight = torch.rand(H, generator=g, dtype=torch.float64).add(0.5).requires_grad_()
    bias = torch.randn(H, generator=g, dtype=torch.float64).requires_grad_()

    def f(logits, theta, weight, bias):
        a = logits.softmax(-1).reshape(B, H, N * N)
        return R.folded_batchnorm_mix(a, theta, weight, bias, 1e-5, True)[0]
    assert torch.autograd.gradcheck(f, (logits, theta, weight, bias))


def test_gradcheck_module_float64_train_and_frozen_bn():
    mix = bn_mix(3, torch.float64)
    a = maps(2, 3, 3, dtype=torch.float64).requires_grad_()
    for bn_train in (True, False):
        mix.norm.train(bn_train)
        assert torch.autograd.gradcheck(lambda a, *p: mix(a), (a,) + tuple(mix.parameters()))


# ---------------------------------------------------------------------------------------------------------------
# (c) BatchNorm semantics keyed on the BatchNorm's own mode


def _stats(bn):
    return {k: v.clone() for k, v in bn.state_dict().items()}


def _populate(mix, H, N=7, times=3):
    for i in range(times):
        mix(maps(3, H, N, seed=10 + i))


def test_freeze_bn_idiom_uses_and_keeps_running_stats():
    H = 5
    fold = bn_mix(H)
    _populate(fold, H)
    ref = plain(fold)
    for m in (fold, ref):
        m.train()
        m.norm.eval()  # freeze-BN: the model trains, the BatchNorm does not
    before = _stats(fold.norm)
    a = maps(3, H, 7, seed=5)
    w = torch.randn(3, H, 7, 7, generator=torch.Generator().manual_seed(1))
    rf, rr = run(fold, a, w, rows_sum_to_one=True), run(ref, a, w)
    torch.testing.assert_close(rf['out'], rr['out'], rtol=1e-5, atol=1e-5)
    for name in ('theta', 'bn.weight', 'bn.bias'):
        torch.testing.assert_close(rf[name], rr[name], rtol=1e-4, atol=1e-5, msg=name)
    for k, v in _stats(fold.norm).items():
        assert torch.equal(v, before[k]), f"{k} changed in eval-mode BatchNorm"
    assert _stats(ref.norm)['num_batches_tracked'] == before['num_batches_tracked']


def test_eval_module_with_training_bn_uses_batch_stats_and_updates():
    H = 4
    fold = bn_mix(H)
    ref = plain(fold)
    for m in (fold, ref):
        m.eval()
        m.norm.train()
    a = maps(3, H, 7, seed=2)
    torch.testing.assert_close(fold(a), ref(a), rtol=1e-4, atol=1e-4)
    for k, v in _stats(ref.norm).items():
        torch.testing.assert_close(_stats(fold.norm)[k], v, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_no_running_stats_always_uses_batch_stats(mode):
    H = 4
    fold = bn_mix(H, track_running_stats=False)
    assert fold.norm.running_mean is None
    ref = plain(fold)
    for m in (fold, ref):
        m.norm.train(mode == 'train')
    a = maps(3, H, 7, seed=4)
    torch.testing.assert_close(fold(a), ref(a), rtol=1e-4, atol=1e-4)


def test_track_running_stats_switched_off_after_construction():
    # nn.BatchNorm2d: training -> batch statistics and no update; eval -> the (kept) running statistics
    H = 4
    fold = bn_mix(H)
    _populate(fold, H)
    ref = plain(fold)
    for m in (fold, ref):
        m.norm.track_running_stats = False
    before = _stats(fold.norm)
    a = maps(3, H, 7, seed=6)
    for train in (True, False):
        for m in (fold, ref):
            m.norm.train(train)
        torch.testing.assert_close(fold(a), ref(a), rtol=1e-4, atol=1e-4)
    for k, v in _stats(fold.norm).items():
        assert torch.equal(v, before[k]) and torch.equal(_stats(ref.norm)[k], v), k


def test_momentum_none_is_a_cumulative_average():
    H = 4
    fold = bn_mix(H, momentum=None)
    ref = plain(fold)
    for i in range(4):
        a = maps(3, H, 7, seed=20 + i)
        torch.testing.assert_close(fold(a), ref(a), rtol=1e-4, atol=1e-4)
    for k, v in _stats(ref.norm).items():
        torch.testing.assert_close(_stats(fold.norm)[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert fold.norm.num_batches_tracked.item() == 4


def test_single_value_per_channel_raises_like_batchnorm2d():
    fold = bn_mix(3)
    with pytest.raises(ValueError, match='more than 1 value per channel'):
        plain(fold)(torch.ones(1, 3, 1, 1))
    with pytest.raises(ValueError, match='more than 1 value per channel'):
        fold(torch.ones(1, 3, 1, 1))


# ---------------------------------------------------------------------------------------------------------------
# (d) running statistics in bf16


def test_bf16_running_stats_match_batchnorm2d():
    H, N = 4, 17
    fold16 = bn_mix(H, torch.bfloat16)
    ref32 = plain(fold16).float()   # fp32 statistics of the same maps, fp32 buffers
    plain16 = plain(fold16)         # nn.BatchNorm2d in bf16 on bf16 mixed maps, bf16 buffers
    steps = 3
    for i in range(steps):
        a = maps(4, H, N, temp=0.5, seed=30 + i, dtype=torch.bfloat16)
        fold16(a), plain16(a), ref32(a.float())
    assert fold16.norm.running_mean.dtype == torch.bfloat16
    # Each update r <- m·batch + (1 - m)·r is computed in fp32 from fp32 batch statistics and rounded once into
    # the bf16 buffer (relative error <= u); the reference keeps fp32 buffers, and an earlier rounding error
    # decays by (1 - m) per step: |error| <= u·|r|·Σ_k (1 - m)^k <= steps·u·|r|. Batch statistics in fp32 add
    # ~1e-6 relative, negligible.
    for name in ('running_mean', 'running_var'):
        got, want = getattr(fold16.norm, name).float(), getattr(ref32.norm, name)
        torch.testing.assert_close(got, want, rtol=steps * U_BF16, atol=1e-7, msg=name)
        # nn.BatchNorm2d in bf16 computes its statistics from the mixed maps rounded to bf16 (an error ~u of the
        # maps' mean, ~u·mean/std relative in the variance): same tolerance plus its own error, doubled
        torch.testing.assert_close(got, getattr(plain16.norm, name).float(), rtol=2 * steps * U_BF16, atol=1e-6,
                                   msg=name)
    assert fold16.norm.num_batches_tracked.item() == plain16.norm.num_batches_tracked.item() == steps


# ---------------------------------------------------------------------------------------------------------------
# (e) fixed Θ: a Θ that does not require grad (or a buffer)


@pytest.mark.parametrize('as_buffer', [False, True])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_fixed_theta(as_buffer, dtype):
    H = 4
    fold = bn_mix(H, dtype)
    if as_buffer:
        theta = fold.weight.detach().clone()
        del fold.weight
        fold.register_buffer('weight', theta)
    else:
        fold.weight.requires_grad_(False)
    ref = plain(fold).float()
    a = maps(3, H, 9, dtype=dtype)
    w = torch.randn(3, H, 9, 9, generator=torch.Generator().manual_seed(1)).to(dtype)
    for bn_train in (True, False):
        for m in (fold, ref):
            m.norm.train(bn_train)
            m.zero_grad()
        af, ar = a.clone().requires_grad_(), a.float().clone().requires_grad_()
        (fold(af) * w).float().sum().backward()
        (ref(ar) * w.float()).sum().backward()
        assert fold.weight.grad is None and not fold.weight.requires_grad
        for got, want in ((af.grad, ar.grad), (fold.norm.weight.grad, ref.norm.weight.grad)):
            if dtype == torch.float32:
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            else:  # as in the bf16 accuracy test: 3u of the largest magnitude
                torch.testing.assert_close(got.float(), want, rtol=0, atol=3 * U_BF16 * want.abs().max().item())


# ---------------------------------------------------------------------------------------------------------------
# deepvit.data.dataset.seeded: every generator it seeds is restored


def _rng_states():
    return random.getstate(), np.random.get_state(), torch.random.get_rng_state()


def _assert_same_states(a, b):
    assert a[0] == b[0]
    assert all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a[1], b[1]))
    assert torch.equal(a[2], b[2])


def test_seeded_restores_python_numpy_and_torch_cpu():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    before = _rng_states()
    with seeded(7, 0, 0, 1, 5):
        draws = random.random(), np.random.rand(), torch.rand(3)
    _assert_same_states(before, _rng_states())
    with seeded(7, 0, 0, 1, 5):  # reproducible per batch
        again = random.random(), np.random.rand(), torch.rand(3)
    assert draws[0] == again[0] and draws[1] == again[1] and torch.equal(draws[2], again[2])
    with seeded(7, 0, 0, 1, 6):
        assert not torch.equal(torch.rand(3), draws[2])
    # the same seeds as before the fix reach the CPU generators (CPU behaviour unchanged)
    s = np.random.SeedSequence([7, 0, 0, 1, 5]).generate_state(2)
    assert torch.equal(torch.rand(3, generator=torch.Generator().manual_seed(int(s[0]) << 32 | int(s[1]))), draws[2])
    assert random.Random(int(s[0])).random() == draws[0]
    with pytest.raises(KeyError):  # restored when the block raises too
        with seeded(1, 2):
            torch.rand(5), random.random(), np.random.rand()
            raise KeyError('boom')
    _assert_same_states(before, _rng_states())


def test_seeded_restores_every_cuda_generator(monkeypatch):
    """The CUDA part, on a CPU machine: a fake two-device CUDA, initialised, records what seeded does to it."""
    states = {0: torch.tensor([0], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}
    seeds = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_initialized', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'get_rng_state', lambda device='cuda': states[device].clone())
    monkeypatch.setattr(torch.cuda, 'set_rng_state', lambda state, device='cuda': states.__setitem__(device, state))

    def manual_seed_all(seed):
        seeds.append(seed)
        for d in states:
            states[d] = torch.tensor([200 + d], dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, 'manual_seed_all', manual_seed_all)
    with seeded(3, 1):
        assert [int(states[d]) for d in (0, 1)] == [200, 201]  # every device seeded inside the block
    s = np.random.SeedSequence([3, 1]).generate_state(2)
    assert seeds == [int(s[0]) << 32 | int(s[1])]
    assert [int(states[d]) for d in (0, 1)] == [0, 1]  # and every device restored


def test_seeded_leaves_uninitialised_cuda_alone(monkeypatch):
    # a CPU run, or a DataLoader worker forked from a CUDA process: CUDA must be neither seeded nor initialised
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_initialized', lambda: False)
    for name in ('get_rng_state', 'set_rng_state', 'manual_seed_all', 'manual_seed'):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: pytest.fail('CUDA touched'))
    before = _rng_states()
    with seeded(4):
        torch.rand(2)
    _assert_same_states(before, _rng_states())


def test_fixed_theta_mixes_bf16_maps_under_a_parameters_only_cast():
    """Issue 21.2: DeepSpeed's bf16 mode casts parameters, not buffers; the fixed-Θ control keeps Θ in a float32
    buffer, and the mix multiplied float32 by bf16 ("expected m1 and m2 to have the same dtype")."""
    import timm
    import deepvit  # noqa: F401
    model = timm.create_model('deepvit_tiny_patch4_32', depth=2, reattn_norm='ln', reattn_theta='fixed',
                              reattn_init='identity')
    for p in model.parameters():          # what DeepSpeed's bf16 engine does to the module
        p.data = p.data.to(torch.bfloat16)
    x = torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)
    out = model(x)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_world_size_of_a_bf16_checkpoint_is_read(tmp_path):
    """Issue 21.1: with bf16 on, DeepSpeed names its optimizer partitions bf16_zero_pp_rank_* at every ZeRO stage;
    the resume's world-size check globbed only zero_pp_rank_* and never saw a change of GPU count."""
    from deepvit.training.resume import _checkpoint_world_size
    for r in range(3):
        (tmp_path / f'bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt').write_bytes(b'')
    assert _checkpoint_world_size(tmp_path) == 3
    (tmp_path / 'zero_pp_rank_0_mp_rank_00_model_states.pt').write_bytes(b'')   # ZeRO-3's model files: not counted
    assert _checkpoint_world_size(tmp_path) == 3


def test_conv_stem_batchnorm_runs_in_float32_under_a_parameters_only_bf16_cast():
    """Issue 21.3: DeepSpeed's bf16 cast left the conv stem's BatchNorm with bf16 weights and float32 running
    statistics ("expected scalar type BFloat16 but found Float"). The stem's norm computes in float32: its bf16
    output equals timm's float32 BatchNormAct2d on the same input (to bf16 rounding), and it updates the float32
    running statistics exactly as that layer does."""
    import timm
    from timm.layers import BatchNormAct2d
    import deepvit  # noqa: F401
    from deepvit.models.stem import Fp32BatchNormAct2d
    torch.manual_seed(0)
    bn, ref = Fp32BatchNormAct2d(8), BatchNormAct2d(8)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    bn.load_state_dict(ref.state_dict())
    bn.weight.data, bn.bias.data = bn.weight.data.bfloat16(), bn.bias.data.bfloat16()
    x = torch.randn(4, 8, 5, 5).bfloat16()
    out = bn(x)
    expected = ref(x.float().clone())      # float32 reference (inplace ReLU: its own copy)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert bn.running_mean.dtype == torch.float32 and int(bn.num_batches_tracked) == 1
    torch.testing.assert_close(out.float(), expected, atol=0.03, rtol=0.02)   # bf16 weights and output rounding
    model = timm.create_model('deepvit_s_patch16_224', depth=2, reattn_blocks='all', img_size=64)  # the same stem
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    model(torch.randn(2, 3, 64, 64, dtype=torch.bfloat16)).float().sum().backward()
    assert model.patch_embed.stem[0].bn.weight.grad is not None
    model.eval()
    assert torch.isfinite(model(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16)).float()).all()


@pytest.mark.parametrize('name, kwargs', [
    ('vit_tiny_patch4_32', {}), ('deepvit_tiny_patch4_32', {}), ('talkinghead_tiny_patch4_32', {}),
    ('deepvit_tiny_patch4_32', dict(reattn_norm='ln')),
    ('deepvit_tiny_patch4_32', dict(reattn_norm='ln', reattn_theta='fixed', reattn_init='identity')),
    ('deepvit_tiny_patch4_32', dict(reattn_norm='bn', fold='off'))])
def test_probe_maps_are_float32_computations_in_a_bf16_model(name, kwargs):
    """Issue 21.1: a bf16 model's probe maps were bf16 softmaxes cast to float32 (quantised to bf16's 8-bit
    mantissa), so a GPU run's collapse numbers did not compare with the float32 CPU study. The logits, softmax and
    head mixing now run in float32 whenever maps are kept (a LayerNorm or unfolded BatchNorm over the heads with its
    bf16 parameters cast up): the maps hold values no bf16 can, match a float32 recomputation from the same bf16
    weights, and the forward's output is still bf16."""
    import timm
    from deepvit.collapse import attention_maps_by_stage
    torch.manual_seed(0)
    kwargs = dict(kwargs)
    fold = kwargs.pop('fold', 'on')
    model = timm.create_model(name, depth=2, **kwargs).eval()
    if fold == 'off':                                   # the unfolded BatchNorm path
        for block in model.blocks:
            block.attn.reattn.fold_norm = False
    x = torch.randn(3, 3, 32, 32)
    half = copy.deepcopy(model).to(torch.bfloat16)
    maps = attention_maps_by_stage(half, x.bfloat16())
    reference = attention_maps_by_stage(copy.deepcopy(half).float(), x.bfloat16().float())
    for stage in ('softmax', 'mixed'):
        m = maps[stage]
        assert m.dtype == torch.float32
        assert (m != m.bfloat16().float()).float().mean() > 0.5          # not bf16 values cast up
        # the same q, k in float32: only the bf16 residual stream before each block differs (a LayerNorm over 4 heads
        # of near-equal maps amplifies that difference: 1 % of the mixed maps' scale there)
        tol = 2e-3 if stage == 'softmax' else 1e-2 * max(1.0, float(reference[stage][0].abs().max()))
        assert torch.allclose(m[0], reference[stage][0], atol=tol)
    assert half(x.bfloat16()).dtype == torch.bfloat16
