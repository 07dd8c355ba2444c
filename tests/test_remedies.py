"""Remedies and controls in one harness: LayerScale, talking heads, depth-scaled residual branches, the Re-attention
ablations (BatchNorm-only included), paired seeds, neutral settings, bad combinations, ``model_cfg`` round trips and
the regulariser hook."""
import copy
import math

import pytest
import timm
import torch
from timm.models.cait import TalkingHeadAttn

import deepvit  # noqa: F401
from deepvit.models import (FAMILIES, DeepVisionTransformer, HeadMix, ReAttentionMix, ResidualScale,
                            TalkingHeadAttention, cait_init_values, count_params, model_family, model_remedy)

VIT = 'vit_tiny_patch4_32'
# (variant, overrides, family, remedy): every family, every Re-attention ablation, and the allowed combinations
CASES = [
    ('vit_tiny_patch4_32', {}, 'vit', 'vit'),
    ('deepvit_tiny_patch4_32', {}, 'deepvit', 'reattn'),
    ('deepvit_tiny_patch4_32', dict(reattn_norm='ln'), 'deepvit', 'reattn_ln'),
    ('deepvit_tiny_patch4_32', dict(reattn_norm='none'), 'deepvit', 'reattn_nonorm'),
    ('deepvit_tiny_patch4_32', dict(reattn_init='identity'), 'deepvit', 'reattn_identity'),
    ('deepvit_tiny_patch4_32', dict(reattn_init='identity', reattn_theta='fixed'), 'deepvit', 'bn_only'),
    ('deepvit_tiny_patch4_32', dict(reattn_norm='ln', reattn_init='identity', reattn_theta='fixed'), 'deepvit',
     'ln_only'),
    ('layerscale_tiny_patch4_32', {}, 'layerscale', 'layerscale'),
    ('talkinghead_tiny_patch4_32', {}, 'talkinghead', 'talkinghead'),
    ('talkinghead_tiny_patch4_32', dict(talkinghead_init='trunc_normal'), 'talkinghead', 'talkinghead_trunc'),
    ('talkinghead_tiny_patch4_32', dict(init_values=1e-5), 'talkinghead', 'talkinghead+layerscale'),
    ('deepvit_tiny_patch4_32', dict(reattn_blocks=2, talkinghead_blocks=[0, 1]), 'deepvit', 'reattn+talkinghead'),
    ('depthscale_tiny_patch4_32', {}, 'depthscale', 'depthscale'),
    ('depthscale_tiny_patch4_32', dict(residual_alpha=3.), 'depthscale', 'depthscale_a3'),
    ('vit_tiny_patch4_32', dict(residual_scale=0.25), 'depthscale', 'resscale0.25'),
    ('deepvit_tiny_patch4_32', dict(residual_scale='depth'), 'deepvit', 'reattn+depthscale'),
]
IDS = [c[3] for c in CASES]
SMALL = dict(depth=4, embed_dim=48, num_heads=4)  # depth 4 and a non-default width
REMEDY_KEYS = ('.reattn.', '.proj_l.', '.proj_w.', '.ls1.', '.ls2.')


def build(name, seed, **overrides):
    torch.manual_seed(seed)
    model = timm.create_model(name, **{**SMALL, **overrides})
    return model, torch.get_rng_state()


def remedy_keys(state):
    return [k for k in state if any(r in k for r in REMEDY_KEYS)]


def random_remedy_keys(model):
    """State-dict keys of remedy tensors with a random init (the others are I, 0, 1 or ε by construction)."""
    cfg = model.model_cfg
    keys = []
    if cfg['reattn_blocks'] and cfg['reattn_init'] == 'random':
        keys += [f'blocks.{i}.attn.reattn.weight' for i in cfg['reattn_blocks']]
    if cfg['talkinghead_blocks'] and cfg['talkinghead_init'] == 'trunc_normal':
        keys += [f'blocks.{i}.attn.{m}.weight' for i in cfg['talkinghead_blocks'] for m in ('proj_l', 'proj_w')]
    return keys


# ---------------------------------------------------------------------------------------------------- paired seeds

@pytest.mark.parametrize('name, overrides, family, remedy', CASES, ids=IDS)
def test_shared_tensors_and_rng_state_are_the_vits(name, overrides, family, remedy):
    remedies = {}
    for seed in (0, 1):
        vit, vit_rng = build(VIT, seed)
        model, model_rng = build(name, seed, **overrides)
        vit_state, state = vit.state_dict(), model.state_dict()
        assert set(vit_state) <= set(state)
        unequal = [k for k in vit_state if not torch.equal(vit_state[k], state[k])]
        assert not unequal, f"seed {seed}: shared tensors differ from the ViT's: {unequal}"
        assert set(state) - set(vit_state) == set(remedy_keys(state))
        # data order, dropout and everything else drawn after the build are paired too
        assert torch.equal(model_rng, vit_rng)
        remedies[seed] = {k: state[k].clone() for k in remedy_keys(state)}
    # the seed does change the shared weights (else the checks above would be vacuous)
    assert not torch.equal(build(VIT, 0)[0].blocks[0].attn.qkv.weight, build(VIT, 1)[0].blocks[0].attn.qkv.weight)
    model = build(name, 0, **overrides)[0]
    random_keys = random_remedy_keys(model)
    for key in random_keys:  # private streams: another seed gives another init
        assert not torch.equal(remedies[0][key], remedies[1][key]), key
    if len(random_keys) > 1:  # ... and another block (or mix) another init
        assert not torch.equal(remedies[0][random_keys[0]], remedies[0][random_keys[1]])
    for key in set(remedies[0]) - set(random_keys):  # deterministic inits are the same for every seed
        assert torch.equal(remedies[0][key], remedies[1][key]), key
    rebuilt = build(name, 0, **overrides)[0].state_dict()  # same seed, same remedy tensors
    assert all(torch.equal(rebuilt[k], v) for k, v in remedies[0].items())


def test_private_streams_do_not_depend_on_what_was_drawn_before():
    torch.manual_seed(3)
    a = timm.create_model('deepvit_tiny_patch4_32', **SMALL)
    torch.randn(17)  # the global RNG moves on; Θ comes from torch.initial_seed() and the block index only
    b = timm.create_model('deepvit_tiny_patch4_32', **SMALL)
    assert torch.equal(a.blocks[2].attn.reattn.weight, b.blocks[2].attn.reattn.weight)
    assert not torch.equal(a.blocks[2].attn.qkv.weight, b.blocks[2].attn.qkv.weight)


def test_reattention_mix_alone_keeps_the_global_rng_and_uses_its_index():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    mixes = [ReAttentionMix(6, index=i) for i in (0, 1)]
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(mixes[0].weight, mixes[1].weight)
    bound = 6 ** -0.5
    assert all(m.weight.abs().max() <= bound and m.weight.std() > bound / 4 for m in mixes)
    mixes[0].init_weights()  # timm's init_weights calls this again: same values
    assert torch.equal(mixes[0].weight, ReAttentionMix(6, index=0).weight)


def test_reattention_layer_builds_every_theta_itself():
    """``ReAttention`` takes the block's index and ``reattn_theta``: the BatchNorm-only control (Θ a fixed identity
    buffer) and a random Θ of block 3 are the ones the model builds (issue 18: it could not build the control)."""
    from deepvit.models import ReAttention
    fixed = ReAttention(24, num_heads=6, reattn_init='identity', reattn_theta='fixed', block_index=3).reattn
    assert 'weight' not in dict(fixed.named_parameters()) and torch.equal(fixed.weight, torch.eye(6))
    torch.manual_seed(0)
    model = timm.create_model('deepvit_tiny_patch4_32', depth=4, embed_dim=24, num_heads=6)
    torch.manual_seed(0)
    alone = ReAttention(24, num_heads=6, block_index=3).reattn
    assert torch.equal(alone.weight, model.blocks[3].attn.reattn.weight)
    assert not torch.equal(alone.weight, model.blocks[2].attn.reattn.weight)


# --------------------------------------------------------------------------------- forward / backward, every case

@pytest.mark.parametrize('name, overrides, family, remedy', CASES, ids=IDS)
def test_forward_backward_every_parameter_gets_a_nonzero_gradient(name, overrides, family, remedy):
    model = build(name, 0, **overrides)[0]
    assert (model.family, model.remedy) == (family, remedy)
    x = torch.randn(3, 3, 32, 32)
    out = model(x)
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    out.logsumexp(-1).sum().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


def test_bn_only_holds_theta_at_the_identity_and_trains_the_batchnorm():
    model = build('deepvit_tiny_patch4_32', 0, reattn_init='identity', reattn_theta='fixed')[0]
    learned = build('deepvit_tiny_patch4_32', 0, reattn_init='identity')[0]
    mix = model.blocks[1].attn.reattn
    names = dict(model.named_parameters())
    assert 'blocks.1.attn.reattn.weight' not in names and 'blocks.1.attn.reattn.weight' in model.state_dict()
    assert not mix.weight.requires_grad
    heads = SMALL['num_heads']
    assert count_params(learned) - count_params(model) == SMALL['depth'] * heads * heads
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    bn_before = mix.norm.weight.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 3, 32, 32)).logsumexp(-1).sum().backward()
        opt.step()
    assert torch.equal(mix.weight, torch.eye(heads))
    assert not torch.equal(mix.norm.weight, bn_before)


@pytest.mark.parametrize('train', [True, False])
def test_fixed_theta_folded_batchnorm_matches_plain_batchnorm(train):
    torch.manual_seed(0)
    fast = ReAttentionMix(5, norm='bn', init='identity', theta='fixed')
    with torch.no_grad():
        fast.norm.weight.uniform_(0.5, 1.5)
        fast.norm.bias.uniform_(-0.5, 0.5)
        fast.norm.running_mean.uniform_(0., 0.1)
        fast.norm.running_var.uniform_(0.5, 2.)
    fast.train(train)
    slow = copy.deepcopy(fast)
    slow.fold_norm = False
    a = torch.randn(3, 5, 7, 7).mul(2).softmax(-1)
    a_fast, a_slow = a.clone().requires_grad_(), a.clone().requires_grad_()
    out_fast, out_slow = fast(a_fast), slow(a_slow)
    torch.testing.assert_close(out_fast, out_slow, rtol=1e-4, atol=1e-4)
    w = torch.randn_like(out_fast)
    (out_fast * w).sum().backward()
    (out_slow * w).sum().backward()
    torch.testing.assert_close(a_fast.grad, a_slow.grad, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(fast.norm.weight.grad, slow.norm.weight.grad, rtol=1e-3, atol=1e-4)
    assert fast.weight.grad is None


# ------------------------------------------------------------------------------------------------ neutral settings

def _same_function(model, vit):
    model.eval(), vit.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), vit(x), rtol=1e-5, atol=1e-5)


def test_identity_talking_heads_are_the_vit():
    model, vit = build('talkinghead_tiny_patch4_32', 0)[0], build(VIT, 0)[0]
    assert torch.equal(model.blocks[0].attn.proj_l.weight, torch.eye(4))
    assert torch.equal(model.blocks[0].attn.proj_w.bias, torch.zeros(4))
    _same_function(model, vit)
    with torch.no_grad():  # the mixing is really applied: moving it changes the output
        model.blocks[2].attn.proj_w.weight.add_(0.1)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(model(x), vit(x), rtol=1e-3, atol=1e-3)


def test_layerscale_without_init_values_is_the_vit():
    vit = build(VIT, 0)[0]
    cfg = build('layerscale_tiny_patch4_32', 0)[0].model_cfg
    torch.manual_seed(0)
    direct = DeepVisionTransformer(**{**cfg, 'init_values': None})
    # timm.create_model drops None-valued kwargs, so through the registry "no LayerScale" is spelled 0
    spelled = build('layerscale_tiny_patch4_32', 0, init_values=0)[0]
    for model in (direct, spelled):
        assert (model.family, model.remedy, model.model_cfg['init_values']) == ('vit', 'vit', 0.)
        assert model.state_dict().keys() == vit.state_dict().keys()
        _same_function(model, vit)
    # init_values=1.0 computes the same function at init but is another model: it has (and trains) the scales
    one = build('layerscale_tiny_patch4_32', 0, init_values=1.0)[0]
    assert set(one.state_dict()) - set(vit.state_dict()) == {f'blocks.{i}.ls{j}.gamma' for i in range(4)
                                                              for j in (1, 2)}
    _same_function(one, vit)


def test_layerscale_scales_the_residual_branches():
    model = build('layerscale_tiny_patch4_32', 0, init_values=1e-3)[0]
    blk = model.blocks[0]
    assert torch.equal(blk.ls1.gamma, torch.full((48,), 1e-3)) and torch.equal(blk.ls2.gamma, blk.ls1.gamma)
    x = torch.randn(2, 65, 48)
    expected = x + 1e-3 * blk.attn(blk.norm1(x))
    expected = expected + 1e-3 * blk.mlp(blk.norm2(expected))
    torch.testing.assert_close(blk(x), expected)


@pytest.mark.parametrize('depth, eps', [(1, 0.1), (6, 0.1), (16, 0.1), (18, 0.1), (19, 1e-5), (24, 1e-5),
                                        (25, 1e-6), (32, 1e-6), (48, 1e-6)])
def test_cait_init_values_rule(depth, eps):
    assert cait_init_values(depth) == eps


@pytest.mark.parametrize('depth', [6, 24, 32])
def test_layerscale_variants_take_cait_eps_for_the_depth_built(depth):
    model = timm.create_model('layerscale_tiny_patch4_32', depth=depth, embed_dim=16, num_heads=2)
    assert model.model_cfg['init_values'] == cait_init_values(depth)
    assert torch.equal(model.blocks[-1].ls2.gamma, torch.full((16,), cait_init_values(depth)))
    explicit = timm.create_model('layerscale_tiny_patch4_32', depth=depth, embed_dim=16, num_heads=2, init_values=0.5)
    assert explicit.model_cfg['init_values'] == 0.5
    with torch.device('meta'):   # a paper-size config: no weights needed
        big = timm.create_model('layerscale_16b_patch16_224')
    assert big.model_cfg['init_values'] == 0.1


# ---------------------------------------------------------------------------------- depth-scaled residual branches

@pytest.mark.parametrize('overrides', [dict(residual_scale=1.0),      # a fixed s = 1
                                       dict(residual_alpha=2.),        # α/√L = 2/√4 = 1 (SMALL has depth 4)
                                       dict(depth=1)],                 # 1/√1 = 1
                         ids=['fixed1', 'alpha2_depth4', 'depth1'])
def test_residual_scale_one_is_the_vit_exactly(overrides):
    depth = overrides.get('depth', SMALL['depth'])
    vit = build(VIT, 0, depth=depth)[0].eval()
    model = build('depthscale_tiny_patch4_32', 0, **overrides)[0].eval()
    assert model.residual_branch_scale == 1. and isinstance(model.blocks[0].ls1, ResidualScale)
    assert model.state_dict().keys() == vit.state_dict().keys()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), vit(x))


def test_depth_scale_multiplies_both_branches_of_every_block_by_one_over_sqrt_depth():
    vit = build(VIT, 0)[0].eval()
    model = build('depthscale_tiny_patch4_32', 0)[0].eval()   # depth 4: s = 1/2, exact in floating point
    assert model.residual_branch_scale == 1 / math.sqrt(SMALL['depth']) == 0.5
    assert all(blk.ls1.scale == blk.ls2.scale == 0.5 for blk in model.blocks)
    branches = {}
    blk = model.blocks[2]
    blk.attn.register_forward_hook(lambda m, i, o: branches.__setitem__('attn', o))
    blk.mlp.register_forward_hook(lambda m, i, o: branches.__setitem__('mlp', o))
    x = torch.randn(2, 65, 48)
    with torch.no_grad():
        out = blk(x)
        after_attn = x + 0.5 * branches['attn']
        assert torch.equal(branches['attn'], blk.attn(blk.norm1(x)))
        assert torch.equal(out, after_attn + 0.5 * branches['mlp'])
        assert torch.equal(branches['mlp'], blk.mlp(blk.norm2(after_attn)))
        images = torch.randn(2, 3, 32, 32)
        assert not torch.allclose(model(images), vit(images), rtol=1e-3, atol=1e-3)   # same weights, other function
    for depth in (9, 16):  # the depth actually built sets the scale
        built = timm.create_model('depthscale_tiny_patch4_32', depth=depth, embed_dim=16, num_heads=2)
        assert built.residual_branch_scale == pytest.approx(depth ** -0.5, rel=1e-12)
        assert built.blocks[-1].ls2.scale == built.residual_branch_scale
    with torch.device('meta'):
        assert timm.create_model('depthscale_16b_patch16_224').residual_branch_scale == 0.25


def test_residual_scale_fields_and_training_flags():
    # records from before the residual scale (no residual_* keys) read as the ViT
    assert (model_family({'reattn_blocks': []}), model_remedy({'reattn_blocks': []})) == ('vit', 'vit')
    with pytest.raises(ValueError, match=r'residual scale must be a finite number > 0, got -1'):
        ResidualScale(-1)
    from deepvit.training import build_parser, resolve
    from deepvit.training.config import model_overrides
    for flag, value in (('depth', 'depth'), ('0.25', 0.25), ('none', 'none')):
        cfg = resolve(build_parser().parse_args(['--deepspeed', 'ds.json', '--model.name', 'depthscale_tiny_patch4_32',
                                                 '--residual-scale', flag, '--residual-alpha', '2']))
        overrides = model_overrides(cfg.model)
        assert (overrides['residual_scale'], overrides['residual_alpha']) == (value, 2.)


# ------------------------------------------------------------------------------------------ talking heads details

def test_talking_heads_match_timm_cait():
    torch.manual_seed(0)
    ours = TalkingHeadAttention(32, num_heads=4, qkv_bias=True, talkinghead_init='trunc_normal').eval()
    with torch.no_grad():
        ours.proj_l.weight.normal_()
        ours.proj_w.weight.normal_()
        ours.proj_w.bias.normal_()
    ref = TalkingHeadAttn(32, num_heads=4, qkv_bias=True).eval()
    state = {k: v for k, v in ours.state_dict().items()}
    state['proj_l.bias'] = torch.zeros(4)  # timm's proj_l bias has no effect (softmax is shift-invariant)
    missing = ref.load_state_dict(state, strict=False)
    assert not missing.missing_keys
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # ... which is why ours has none
        ref.proj_l.bias.normal_()
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_head_mix_is_a_linear_layer_on_the_head_axis():
    torch.manual_seed(0)
    mix = HeadMix(5, bias=True, init='trunc_normal')
    with torch.no_grad():
        mix.bias.normal_()
    lin = torch.nn.Linear(5, 5)
    lin.load_state_dict(mix.state_dict())
    x = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(mix(x), lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    assert 0.005 < mix.weight.std() < 0.05  # timm's trunc_normal_(std=.02)


def test_talking_heads_probe_maps_and_fused_path_never_used(monkeypatch):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    model = build('talkinghead_tiny_patch4_32', 0, talkinghead_init='trunc_normal')[0].eval()
    model.set_fused_attn(True)
    attn = model.blocks[1].attn
    attn.keep_maps = True
    x = torch.randn(2, 3, 32, 32)
    model(x)
    assert not calls
    soft, mixed = attn.maps['softmax'], attn.maps['mixed']
    assert soft.shape == mixed.shape == (2, 4, 65, 65)
    torch.testing.assert_close(soft.sum(-1), torch.ones(2, 4, 65))
    expected = torch.einsum('hg,bgnm->bhnm', attn.proj_w.weight, soft) + attn.proj_w.bias.view(1, 4, 1, 1)
    torch.testing.assert_close(mixed, expected.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(mixed, soft, atol=1e-3)


# ----------------------------------------------------------------------------------------------- regulariser hook

@pytest.mark.parametrize('name, overrides', [(VIT, {}), ('deepvit_tiny_patch4_32', {}),
                                             ('talkinghead_tiny_patch4_32', {})], ids=['vit', 'reattn', 'talking'])
def test_attn_for_loss_keeps_the_graph_into_qkv(name, overrides):
    model = build(name, 0, **overrides)[0]
    model.set_fused_attn(True)
    x = torch.randn(3, 3, 32, 32)
    reference = model(x).detach()
    assert all(a.attn_for_loss is None for a in model.attention_layers())
    for a in model.attention_layers():
        a.keep_attn_for_loss = True
        a.keep_maps = True
    out = model(x)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)  # same function on the explicit path
    first = model.blocks[0].attn
    maps = first.attn_for_loss
    assert maps.shape == (3, 4, 65, 65) and maps.requires_grad
    torch.testing.assert_close(maps.detach(), first.maps['mixed'])  # the map that weights V
    model.zero_grad()
    loss = torch.nn.functional.cosine_similarity(maps, model.blocks[1].attn.attn_for_loss, dim=1).mean()
    loss.backward()
    assert first.qkv.weight.grad.abs().sum() > 0
    assert model.blocks[1].mlp.fc1.weight.grad is None and model.head.weight.grad is None  # only layers before
    model(torch.randn(3, 3, 32, 32))  # overwritten by every forward
    assert first.attn_for_loss is not maps


def test_attn_for_loss_forces_the_explicit_path(monkeypatch):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    model = build(VIT, 0, depth=2)[0]
    model.set_fused_attn(True)
    model.blocks[0].attn.keep_attn_for_loss = True
    model(torch.randn(2, 3, 32, 32))
    assert len(calls) == 1  # block 1 only
    assert model.blocks[1].attn.attn_for_loss is None


# --------------------------------------------------------------------------------- configuration and round trips

@pytest.mark.parametrize('name, overrides, family, remedy', CASES, ids=IDS)
def test_model_cfg_round_trip(name, overrides, family, remedy):
    model = build(name, 0, **overrides)[0]
    assert model_family(model.model_cfg) == family and model_remedy(model.model_cfg) == remedy
    assert family in FAMILIES
    torch.manual_seed(0)
    rebuilt = timm.create_model(name, **model.model_cfg)
    assert rebuilt.model_cfg == model.model_cfg
    a, b = model.state_dict(), rebuilt.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # any registered name rebuilds it: the variant only supplies defaults
    for other_name in (VIT, 'layerscale_tiny_patch4_32', 'talkinghead_tiny_patch4_32', 'deepvit_tiny_patch4_32',
                       'depthscale_tiny_patch4_32'):
        torch.manual_seed(0)
        other = timm.create_model(other_name, **model.model_cfg)
        assert other.model_cfg == model.model_cfg, other_name
        assert other.state_dict().keys() == a.keys()


BAD_COMBINATIONS = [
    ('deepvit_tiny_patch4_32', dict(reattn_theta='fixed'), 'reattn_init', "'random'"),
    ('deepvit_tiny_patch4_32', dict(reattn_theta='fixed', reattn_init='identity', reattn_norm='none'),
     'reattn_norm', "'none'"),
    (VIT, dict(reattn_norm='ln'), 'reattn_norm', "'ln'"),
    (VIT, dict(reattn_init='identity', reattn_theta='fixed'), 'reattn_theta', "'fixed'"),
    ('talkinghead_tiny_patch4_32', dict(reattn_blocks='all'), 'talkinghead_blocks', "'all'"),
    ('deepvit_tiny_patch4_32', dict(talkinghead_blocks=[1]), 'talkinghead_blocks', '[1]'),
    (VIT, dict(talkinghead_init='trunc_normal'), 'talkinghead_init', "'trunc_normal'"),
    (VIT, dict(init_values=True), 'init_values', 'True'),
    (VIT, dict(init_values=float('nan')), 'init_values', 'nan'),
    ('layerscale_tiny_patch4_32', dict(depth=0), 'depth', '0'),
    (VIT, dict(residual_scale=0), 'residual_scale', '0'),
    (VIT, dict(residual_scale=-0.5), 'residual_scale', '-0.5'),
    (VIT, dict(residual_scale=float('inf')), 'residual_scale', 'inf'),
    (VIT, dict(residual_scale=True), 'residual_scale', 'True'),
    (VIT, dict(residual_scale='sqrt'), 'residual_scale', "'sqrt'"),
    ('depthscale_tiny_patch4_32', dict(residual_alpha=0.), 'residual_alpha', '0.0'),
    ('depthscale_tiny_patch4_32', dict(residual_alpha=float('nan')), 'residual_alpha', 'nan'),
    (VIT, dict(residual_alpha=2.), 'residual_alpha', '2.0'),          # α without 'depth' would be ignored
    ('depthscale_tiny_patch4_32', dict(init_values=0.1), 'init_values', '0.1'),   # both live in ls1/ls2
    ('layerscale_tiny_patch4_32', dict(residual_scale='depth'), 'residual_scale', "'depth'"),
]


@pytest.mark.parametrize('name, overrides, field, value', BAD_COMBINATIONS)
def test_bad_combinations_raise_value_error_naming_field_and_value(name, overrides, field, value):
    with pytest.raises(ValueError) as err:
        timm.create_model(name, **overrides)
    message = str(err.value)
    assert field in message and value in message, message


def test_default_valued_reattention_fields_are_accepted_on_a_vit():
    # explicit defaults (as in a ViT's own model_cfg) are not an error
    model = timm.create_model(VIT, depth=2, reattn_norm='bn', reattn_init='random', reattn_theta='learned',
                              talkinghead_init='identity')
    assert model.remedy == 'vit'


@pytest.mark.parametrize('kwargs, field', [(dict(theta='fixed'), 'reattn_init'), (dict(theta='no'), 'reattn_theta')])
def test_reattention_mix_refuses_bad_theta(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ReAttentionMix(4, **kwargs)


def test_head_mix_refuses_unknown_init():
    # the field is named by the layer that owns it (HeadMix now also serves Re-attention, issue 18)
    with pytest.raises(ValueError, match="talkinghead_init.*'zeros'"):
        TalkingHeadAttention(8, num_heads=4, talkinghead_init='zeros')
    with pytest.raises(ValueError, match="init.*'zeros'"):
        HeadMix(4, init='zeros')
