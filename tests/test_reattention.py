"""Re-attention head mixing: the paper's equation, the folded BatchNorm fast path, and the norm options."""
import copy

import pytest
import torch
import torch.nn as nn

from deepvit.models import ReAttentionMix


def softmax_maps(B=3, H=5, N=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, N, N, generator=g).mul(2).softmax(-1)


def reference(mix: ReAttentionMix, attn: torch.Tensor) -> torch.Tensor:
    """Norm(Θᵀ · A) written out with einsum: head h of the output is sum_g Θ[g, h] A_g, with Θ = ``weight``ᵀ."""
    theta = mix.weight.t()
    mixed = torch.einsum('gh,bgnm->bhnm', theta, attn)
    return mix.norm(mixed)


def test_mixing_follows_theta_transpose():
    mix = ReAttentionMix(3, norm='none')
    theta = torch.tensor([[1., 2., 0.], [0., 0., 3.], [0., 0., 0.]])
    with torch.no_grad():
        mix.weight.copy_(theta.t())   # stored as Θᵀ (H_out, H_in), as the official Conv2d and every HeadMix
    a = softmax_maps(H=3)
    out = mix(a)
    torch.testing.assert_close(out[:, 0], a[:, 0])
    torch.testing.assert_close(out[:, 1], 2 * a[:, 0])
    torch.testing.assert_close(out[:, 2], 3 * a[:, 1])


def test_weight_is_the_official_conv_weight_and_a_head_mix():
    """``weight`` is laid out as the official code's 1×1 ``Conv2d(H, H)`` weight (H_out, H_in) and as timm's
    talking-heads ``proj_w``: the unnormalised mixing is that conv (bias-free) and a bias-free HeadMix (issue 18: one
    head-mix module, one layout)."""
    from deepvit.models import HeadMix
    torch.manual_seed(0)
    mix = ReAttentionMix(5, norm='none')
    assert isinstance(mix, HeadMix) and mix.bias is None
    conv = nn.Conv2d(5, 5, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(mix.weight[:, :, None, None])
    a = softmax_maps()
    torch.testing.assert_close(mix(a), conv(a))
    plain = HeadMix(5, bias=False)
    plain.load_state_dict(mix.state_dict())
    torch.testing.assert_close(plain(a), mix(a))


def test_old_layout_is_read_from_versioned_state_dicts_and_marked_weights():
    """Weights format 1 stored Θ (H_in, H_out): a torch state dict with version-1 metadata, and a flat state dict
    said to be format 1 (:func:`upgrade_state_dict`), load as the same function; format 2 loads unchanged; an unknown
    format is refused."""
    import timm
    from deepvit.models import WEIGHTS_FORMAT, upgrade_state_dict
    torch.manual_seed(0)
    model = timm.create_model('deepvit_tiny_patch4_32', depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    current = model.state_dict()
    old = type(current)((k, v.t().clone() if k.endswith('reattn.weight') else v) for k, v in current.items())
    old._metadata = copy.deepcopy(current._metadata)
    for key, meta in old._metadata.items():
        if key.endswith('reattn'):
            assert meta['version'] == 2
            meta['version'] = 1
    for state in (old, upgrade_state_dict(model, dict(old), 1), upgrade_state_dict(model, dict(current), 2),
                  dict(current)):   # no metadata: taken as current
        fresh = timm.create_model('deepvit_tiny_patch4_32', depth=2).eval()
        fresh.load_state_dict(state)
        torch.testing.assert_close(fresh(x), expected)
    assert WEIGHTS_FORMAT == 2
    with pytest.raises(ValueError, match='weights_format=3'):
        upgrade_state_dict(model, dict(current), 3)


@pytest.mark.parametrize('init, expected', [('identity', 'eye'), ('random', 'uniform')])
def test_init(init, expected):
    torch.manual_seed(0)
    mix = ReAttentionMix(12, init=init)
    if expected == 'eye':
        assert torch.equal(mix.weight, torch.eye(12))
    else:
        bound = 12 ** -0.5
        assert mix.weight.abs().max() <= bound and mix.weight.std() > bound / 4
        assert not torch.allclose(mix.weight, torch.eye(12))


def test_folded_batchnorm_training_matches_batchnorm2d():
    torch.manual_seed(0)
    fast = ReAttentionMix(5, norm='bn')
    with torch.no_grad():
        fast.norm.weight.uniform_(0.5, 1.5)
        fast.norm.bias.uniform_(-0.5, 0.5)
    slow = copy.deepcopy(fast)
    slow.fold_norm = False
    a_fast = softmax_maps().requires_grad_()
    a_slow = a_fast.detach().clone().requires_grad_()
    out_fast, out_slow = fast(a_fast), slow(a_slow)
    torch.testing.assert_close(out_fast, out_slow, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_slow, reference(copy.deepcopy(slow), a_slow.detach()), rtol=1e-4, atol=1e-4)
    w = torch.randn_like(out_fast)
    (out_fast * w).sum().backward()
    (out_slow * w).sum().backward()
    torch.testing.assert_close(a_fast.grad, a_slow.grad, rtol=1e-3, atol=1e-4)
    for p_fast, p_slow in zip(fast.parameters(), slow.parameters()):
        torch.testing.assert_close(p_fast.grad, p_slow.grad, rtol=1e-3, atol=1e-4)
    # running statistics updated as nn.BatchNorm2d does (unbiased variance, momentum 0.1)
    torch.testing.assert_close(fast.norm.running_mean, slow.norm.running_mean)
    torch.testing.assert_close(fast.norm.running_var, slow.norm.running_var, rtol=1e-4, atol=1e-6)
    assert fast.norm.num_batches_tracked.item() == slow.norm.num_batches_tracked.item() == 1


def test_folded_batchnorm_eval_matches_batchnorm2d():
    torch.manual_seed(0)
    fast = ReAttentionMix(4, norm='bn')
    for _ in range(3):
        fast(softmax_maps(H=4, seed=_))  # populate running stats
    fast.eval()
    slow = copy.deepcopy(fast)
    slow.fold_norm = False
    a = softmax_maps(H=4, seed=9)
    torch.testing.assert_close(fast(a), slow(a), rtol=1e-5, atol=1e-5)


def test_layernorm_normalises_over_heads():
    mix = ReAttentionMix(6, norm='ln')
    a = softmax_maps(H=6)
    out = mix(a)
    # at init (weight 1, bias 0): (y - mean_h y) / sqrt(var_h y + eps) at every (query, key) position
    y = torch.einsum('gh,bgnm->bhnm', mix.weight.t(), a)   # Θ = weightᵀ
    expected = (y - y.mean(1, keepdim=True)) / (y.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.mean(1), torch.zeros_like(out[:, 0]), atol=1e-5, rtol=0)


def test_batchnorm_centres_each_head():
    mix = ReAttentionMix(4, norm='bn')
    out = mix(softmax_maps(H=4))
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)


def test_bf16_training_takes_folded_batchnorm_path():
    # bf16 maps take the folded path too (fp32 statistics; tests/test_reattention_precision.py for its accuracy)
    mix = ReAttentionMix(4, norm='bn').to(torch.bfloat16)
    ref = copy.deepcopy(mix).float()
    ref.fold_norm = False
    called = []
    mix.norm.register_forward_hook(lambda *_: called.append(1))
    a = softmax_maps(H=4).to(torch.bfloat16)
    out = mix(a)
    assert not called and out.dtype == torch.bfloat16
    want = ref(a.float())
    # 3 bf16 unit roundoffs (2^-8) of the largest normalised output: see the precision tests
    torch.testing.assert_close(out.float(), want, rtol=0, atol=3 * 2.0 ** -8 * want.abs().max().item())


@pytest.mark.parametrize('kwargs, field', [(dict(norm='batch'), 'reattn_norm'), (dict(init='ones'), 'reattn_init')])
def test_bad_options(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ReAttentionMix(4, **kwargs)


def test_simplex_shortcut_keeps_every_gradient_before_the_softmax():
    torch.manual_seed(0)
    fast = ReAttentionMix(5, norm='bn')
    slow = copy.deepcopy(fast)
    slow.fold_norm = False
    logits = torch.randn(3, 5, 7, 7) * 2
    l_fast, l_slow = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    out_fast = fast(l_fast.softmax(-1), rows_sum_to_one=True)
    out_slow = slow(l_slow.softmax(-1))
    torch.testing.assert_close(out_fast, out_slow, rtol=1e-4, atol=1e-4)
    w = torch.randn_like(out_fast)
    (out_fast * w).sum().backward()
    (out_slow * w).sum().backward()
    torch.testing.assert_close(l_fast.grad, l_slow.grad, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, slow.weight.grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize('attn_drop_rate', [0.0, 0.3])
def test_deepvit_gradients_equal_with_and_without_folding(attn_drop_rate):
    import timm
    import deepvit  # noqa: F401
    torch.manual_seed(0)
    model = timm.create_model('deepvit_tiny_patch4_32', depth=2, attn_drop_rate=attn_drop_rate)
    x = torch.randn(4, 3, 32, 32)
    grads = []
    for fold in (True, False):
        for attn in model.attention_layers():
            attn.reattn.fold_norm = fold
        model.zero_grad()
        torch.manual_seed(1)  # same dropout masks
        model(x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        scale = grads[1][name].abs().max().item()
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-3, atol=1e-4 * max(scale, 1.0), msg=name)
