"""ViT / DeepViT / LayerScale / talking-heads families: registry, shapes, gradients, depth range, ViT↔DeepViT
equivalence, both attention paths. Remedy-specific checks (pairing, neutral settings, ablations) are in
``tests/test_remedies.py``."""
import pytest
import timm
import torch
from timm.layers import LayerScale

import deepvit
from deepvit.models import DeepVisionTransformer, ReAttention, TalkingHeadAttention, count_params, list_variants
from deepvit.models.attention import MAP_STAGES, Attention

VARIANTS = list_variants()
# Tiny overrides that keep each variant's depth, stem and Re-attention layout but make it CPU-cheap.
SMALL = dict(img_size=32, embed_dim=24, num_heads=12, num_classes=7)


def small_overrides(name):
    return dict(SMALL, patch_size=4) if name.endswith('_32') else dict(SMALL, img_size=64)


def test_all_variants_registered_in_timm():
    registered = set(timm.list_models('*vit_*b_patch16_224') + timm.list_models('deepvit_*') +
                     timm.list_models('vit_tiny_patch4_32') + timm.list_models('layerscale_*') +
                     timm.list_models('talkinghead_*') + timm.list_models('depthscale_*'))
    assert set(VARIANTS) <= registered
    assert len(VARIANTS) == 16
    for family in ('layerscale', 'talkinghead', 'depthscale'):
        assert {f'{family}_tiny_patch4_32', f'{family}_16b_patch16_224'} <= set(VARIANTS)


@pytest.mark.parametrize('name', VARIANTS)
def test_forward_backward_every_param_gets_grad(name):
    torch.manual_seed(0)
    model = timm.create_model(name, **small_overrides(name))
    assert isinstance(model, DeepVisionTransformer)
    img = model.model_cfg['img_size']
    x = torch.randn(3, 3, img, img)
    out = model(x)
    assert out.shape == (3, SMALL['num_classes'])
    assert torch.isfinite(out).all()
    out.logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # Re-attention / talking heads exactly where the variant says, and their mixings are trained
    reattn = [i for i, blk in enumerate(model.blocks) if isinstance(blk.attn, ReAttention)]
    talking = [i for i, blk in enumerate(model.blocks) if isinstance(blk.attn, TalkingHeadAttention)]
    assert reattn == list(model.reattn_block_indices)
    assert talking == list(model.talkinghead_block_indices)
    assert model.family == name.split('_')[0]
    for i in reattn:
        assert model.blocks[i].attn.reattn.weight.grad.abs().sum() > 0
    for i in talking:
        assert model.blocks[i].attn.proj_l.weight.grad.abs().sum() > 0
        assert model.blocks[i].attn.proj_w.weight.grad.abs().sum() > 0
    has_ls = model.family == 'layerscale'
    assert all(isinstance(blk.ls1, LayerScale) == has_ls for blk in model.blocks)


@pytest.mark.parametrize('family', ['vit', 'deepvit', 'layerscale', 'talkinghead', 'depthscale'])
@pytest.mark.parametrize('depth', [1, 2, 12, 32, 48])
def test_depths_build_and_run(family, depth):
    model = timm.create_model(f'{family}_tiny_patch4_32', depth=depth, embed_dim=16, num_heads=2,
                              img_size=16, patch_size=4)
    assert len(model.blocks) == depth
    assert len(model.reattn_block_indices) == (depth if family == 'deepvit' else 0)
    assert len(model.talkinghead_block_indices) == (depth if family == 'talkinghead' else 0)
    assert model.family == family
    out = model(torch.randn(2, 3, 16, 16))
    out.sum().backward()
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_overrides_reach_the_architecture():
    model = timm.create_model('deepvit_tiny_patch4_32', depth=5, embed_dim=48, num_heads=3, img_size=24,
                              patch_size=3, in_chans=1, num_classes=4, drop_path_rate=0.2,
                              reattn_blocks=2, reattn_norm='ln', reattn_init='identity')
    cfg = model.model_cfg
    assert (cfg['depth'], cfg['embed_dim'], cfg['num_heads'], cfg['in_chans']) == (5, 48, 3, 1)
    assert cfg['reattn_blocks'] == [3, 4] and cfg['reattn_norm'] == 'ln' and cfg['reattn_init'] == 'identity'
    assert model.patch_embed.proj.in_channels == 1 and model.patch_embed.num_patches == 64
    assert model.blocks[4].drop_path1.drop_prob == pytest.approx(0.2)  # top of timm's linear ramp
    assert torch.equal(model.blocks[3].attn.reattn.weight, torch.eye(3))
    assert model(torch.randn(2, 1, 24, 24)).shape == (2, 4)


def on_meta(name: str, **kwargs):
    """A paper-size model built on the meta device: the same parameters and config, no memory, no weight init."""
    with torch.device('meta'):
        return timm.create_model(name, **kwargs)


@pytest.mark.parametrize('name, params', [
    ('vit_16b_patch16_224', 24_423_784),   # official 24.42M
    ('vit_24b_patch16_224', 36_257_128),   # official 36.26M
    ('vit_32b_patch16_224', 48_090_472),   # official 48.09M
])
def test_official_parameter_counts(name, params):
    vit = on_meta(name)
    assert count_params(vit) == params
    assert round(count_params(vit) / 1e6, 2) == round(params / 1e6, 2)
    deep = on_meta(name.replace('vit_', 'deepvit_'))
    depth, heads = vit.model_cfg['depth'], vit.model_cfg['num_heads']
    # DeepViT adds only Θ (H×H) and its BatchNorm affine (2H) per block
    assert count_params(deep) - params == depth * (heads * heads + 2 * heads)


def test_deepvit_s_l_sizes():
    s = on_meta('deepvit_s_patch16_224')
    l = on_meta('deepvit_l_patch16_224')
    assert s.reattn_block_indices == tuple(range(11, 16))
    assert l.reattn_block_indices == tuple(range(20, 32))
    assert s.model_cfg['stem'] == 'conv' and s.patch_embed.num_patches == 196
    # paper: 27M; official code counts ~58.9M for DeepViT-L (paper table says 55M)
    assert 27.0e6 < count_params(s) < 27.5e6
    assert 58.8e6 < count_params(l) < 59.0e6


def test_vit_weights_in_identity_deepvit_give_vit_output():
    torch.manual_seed(0)
    kw = dict(depth=4, embed_dim=32, num_heads=4)
    vit = timm.create_model('vit_tiny_patch4_32', **kw).eval()
    deep = timm.create_model('deepvit_tiny_patch4_32', reattn_init='identity', reattn_norm='none', **kw).eval()
    result = deep.load_state_dict(vit.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert sorted(result.missing_keys) == sorted(f'blocks.{i}.attn.reattn.weight' for i in range(4))
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(deep(x), vit(x), rtol=1e-5, atol=1e-5)


def test_vit_checkpoint_loads_into_bn_deepvit_with_only_reattention_missing():
    vit = timm.create_model('vit_tiny_patch4_32', depth=3)
    deep = timm.create_model('deepvit_tiny_patch4_32', depth=3)
    result = deep.load_state_dict(vit.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all('.attn.reattn.' in k for k in result.missing_keys)


@pytest.mark.parametrize('train', [False, True])
def test_sdpa_and_explicit_paths_agree(train):
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch4_32', depth=3).train(train)
    x = torch.randn(4, 3, 32, 32)
    outs, grads = [], []
    for fused in (True, False):
        model.zero_grad()
        model.set_fused_attn(fused)
        out = model(x)
        out.square().sum().backward()
        outs.append(out)
        grads.append(model.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_fused_path_is_sdpa_and_deepvit_never_uses_it(monkeypatch):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention', spy)
    x = torch.randn(2, 3, 32, 32)
    vit = timm.create_model('vit_tiny_patch4_32', depth=2)
    vit.set_fused_attn(True)
    vit(x)
    assert len(calls) == 2
    calls.clear()
    deep = timm.create_model('deepvit_tiny_patch4_32', depth=2)
    deep.set_fused_attn(True)
    deep(x)
    assert not calls


def test_attention_layers_are_ours():
    model = timm.create_model('deepvit_s_patch16_224', **small_overrides('deepvit_s_patch16_224'))
    layers = list(model.attention_layers())
    # Re-attention layers are ReAttention with their block's options bound (timm's Block takes a class), so
    # isinstance, and each one's Θ stream is its own block's index
    assert [type(a) is Attention for a in layers] == [True] * 11 + [False] * 5
    assert [isinstance(a, ReAttention) for a in layers] == [False] * 11 + [True] * 5
    assert [a.reattn.index for a in layers[11:]] == list(range(11, 16))


def test_plain_timm_loads_exported_weights(tmp_path):
    torch.manual_seed(0)
    kw = dict(depth=2, embed_dim=32, num_heads=2)
    src = timm.create_model('deepvit_tiny_patch4_32', **kw).eval()
    path = tmp_path / 'weights.pth'
    torch.save(src.state_dict(), path)
    loaded = timm.create_model('deepvit_tiny_patch4_32', pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path)), **kw).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), src(x))


BAD_INPUTS = [
    (dict(embed_dim=30, num_heads=4), 'embed_dim', '30'),
    (dict(depth=0), 'depth', '0'),
    (dict(depth=-3), 'depth', '-3'),
    (dict(img_size=30, patch_size=4), 'img_size', '30'),
    (dict(reattn_norm='group'), 'reattn_norm', "'group'"),
    (dict(reattn_init='zeros'), 'reattn_init', "'zeros'"),
    (dict(depth=4, reattn_blocks=5), 'reattn_blocks', '5'),
    (dict(depth=4, reattn_blocks=[1, 4]), 'reattn_blocks', '[1, 4]'),
    (dict(stem='resnet'), 'stem', "'resnet'"),
    (dict(stem='conv', patch_size=5, img_size=35), 'patch_size', '5'),
    (dict(reattn_theta='frozen'), 'reattn_theta', "'frozen'"),
    (dict(talkinghead_init='zeros'), 'talkinghead_init', "'zeros'"),
    (dict(depth=4, reattn_blocks='none', talkinghead_blocks=6), 'talkinghead_blocks', '6'),
    (dict(init_values=-1e-5), 'init_values', '-1e-05'),
]


@pytest.mark.parametrize('overrides, field, value', BAD_INPUTS)
def test_bad_input_raises_value_error_naming_field_and_value(overrides, field, value):
    with pytest.raises(ValueError) as err:
        timm.create_model('deepvit_tiny_patch4_32', **overrides)
    message = str(err.value)
    assert field in message and value in message, message


# One tiny model of each family (ViT, DeepViT and the two remedies) for the TorchScript / fx checks.
TRACED = ['vit_tiny_patch4_32', 'deepvit_tiny_patch4_32', 'talkinghead_tiny_patch4_32', 'layerscale_tiny_patch4_32']
TRACED_SIZE = dict(depth=2, embed_dim=32, num_heads=4)


def _fx_tracer_kwargs():
    """The tracer settings of timm's own fx model tests (timm ``tests/test_models.py``, ``_create_fx_model``)."""
    from timm.models import get_notrace_functions, get_notrace_modules
    return dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                param_shapes_constant=True)


def _assert_same_grads(model, other):
    """Every parameter of ``other`` (a scripted or traced copy of ``model``) has ``model``'s gradient, to 1e-3 of
    the gradient's largest entry (float32 rounding: e.g. the folded vs. unfolded Re-attention BatchNorm)."""
    params = dict(other.named_parameters())
    assert params.keys() == dict(model.named_parameters()).keys()
    for name, p in model.named_parameters():
        assert params[name].grad is not None, name
        scale = p.grad.abs().max().item()
        torch.testing.assert_close(params[name].grad, p.grad, rtol=1e-4, atol=1e-3 * scale + 1e-8, msg=name)


@pytest.mark.parametrize('name', TRACED)
def test_torchscript_matches_eager_forward_and_backward(name):
    """``torch.jit.script`` (timm's ``test_model_forward_torchscript``, built under ``set_scriptable(True)``) gives
    the eager model's outputs in eval and train mode, its gradients for every parameter, its Re-attention
    BatchNorm running statistics after a training step, and its probed attention maps (``keep_maps``).

    DeepViT's scripted Re-attention is the unfolded ``BatchNorm2d(Θᵀ a)`` (equal to the folded eager path up to
    rounding, hence allclose). Fails on the original code for every family: TorchScript could not see
    Attention's class flags (``uses_reattention``), nor compile ReAttentionMix's custom autograd Function and
    thread-local checkpoint state, nor the ``super()`` call in ``forward_features``."""
    import copy
    from timm import set_scriptable
    torch.manual_seed(0)
    with set_scriptable(True):
        model = timm.create_model(name, **TRACED_SIZE)
    model.blocks[1].attn.keep_maps = True
    scripted = torch.jit.script(copy.deepcopy(model))
    x = torch.randn(2, 3, 32, 32)
    for train in (False, True):
        model.train(train)
        scripted.train(train)
        model.zero_grad()
        scripted.zero_grad()
        out, out_s = model(x), scripted(x)
        torch.testing.assert_close(out_s, out, rtol=1e-5, atol=1e-5)
        out.square().sum().backward()
        out_s.square().sum().backward()
        _assert_same_grads(model, scripted)
        maps = getattr(scripted.blocks, '1').attn.maps
        for stage in MAP_STAGES:
            torch.testing.assert_close(maps[stage], model.blocks[1].attn.maps[stage], rtol=1e-5, atol=1e-6)
    buffers = dict(scripted.named_buffers())
    assert len(buffers) == len(dict(model.named_buffers()))
    for key, buf in model.named_buffers():
        torch.testing.assert_close(buffers[key], buf, rtol=1e-5, atol=1e-7, msg=key)


@pytest.mark.parametrize('name', TRACED)
def test_fx_tracing_forward_and_backward(name):
    """torchvision's fx feature extraction with timm's leaf modules (timm's own fx model tests) traces every
    family: the Re-attention mix is a registered leaf (its BatchNorm mode checks are Python control flow). The
    traced model equals the eager one in eval; in train mode its outputs and the gradients of every parameter
    equal the eager model's. Scripting the traced eval graph (timm's ``test_model_forward_fx_torchscript``) gives
    the same outputs; that part fails on the original code for DeepViT (the leaf ReAttentionMix was not
    scriptable)."""
    import copy
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    torch.manual_seed(0)
    model = timm.create_model(name, **TRACED_SIZE).eval()
    x = torch.randn(2, 3, 32, 32)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=_fx_tracer_kwargs())
    traced = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                      tracer_kwargs=_fx_tracer_kwargs())
    expected = model(x)
    torch.testing.assert_close(next(iter(traced.eval()(x).values())), expected)
    torch.testing.assert_close(next(iter(torch.jit.script(traced)(x).values())), expected, rtol=1e-5, atol=1e-5)

    eager, traced = copy.deepcopy(model).train(), copy.deepcopy(traced).train()
    out, out_fx = eager(x), next(iter(traced(x).values()))
    torch.testing.assert_close(out_fx, out)
    out.square().sum().backward()
    out_fx.square().sum().backward()
    _assert_same_grads(eager, traced)


@pytest.mark.parametrize('name', VARIANTS)
def test_default_cfg_describes_the_model(name):
    """Each variant's ``pretrained_cfg`` has timm's fields (timm ``vision_transformer._cfg``) and they match the
    model built from it, as timm's ``test_model_default_cfgs_non_std`` checks (built on the meta device)."""
    model = timm.create_model(name, device='meta')
    cfg = model.pretrained_cfg
    assert cfg['architecture'] == name
    assert cfg['url'] == '' and cfg['license'] == 'apache-2.0'
    assert cfg['num_classes'] == model.num_classes
    assert tuple(cfg['input_size']) == (model.in_chans, *model.patch_embed.img_size)
    assert cfg['pool_size'] is None and cfg['fixed_input_size'] is True
    assert cfg['interpolation'] == 'bicubic' and 0. < cfg['crop_pct'] <= 1.
    assert tuple(cfg['mean']) == tuple(cfg['std']) == (0.5, 0.5, 0.5)
    state = model.state_dict()
    first_conv, classifier = state[cfg['first_conv'] + '.weight'], state[cfg['classifier'] + '.weight']
    assert first_conv.shape[1] == cfg['input_size'][0]
    assert classifier.shape == (cfg['num_classes'], model.num_features)


def test_conv_stem_set_input_size():
    """timm's ``VisionTransformer.set_input_size`` (called by timm's default-cfg test) works with the conv stem:
    a new image size changes the token grid and resamples the position embedding; a new patch size resamples the
    projection; odd sizes raise as at construction. Fails on the original code (``ConvPatchEmbed`` had no
    ``set_input_size``)."""
    model = timm.create_model('deepvit_s_patch16_224', **small_overrides('deepvit_s_patch16_224'), depth=2,
                              reattn_blocks=1)
    model.set_input_size(img_size=(96, 96))
    stem = model.patch_embed
    assert (stem.img_size, stem.grid_size, stem.num_patches) == ((96, 96), (6, 6), 36)
    assert model.pos_embed.shape == (1, 37, SMALL['embed_dim'])
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, SMALL['num_classes'])
    model.set_input_size(patch_size=(8, 8))
    assert stem.patch_size == (8, 8) and stem.proj_embed.proj.kernel_size == (4, 4) and stem.grid_size == (12, 12)
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, SMALL['num_classes'])
    with pytest.raises(ValueError, match='img_size'):
        model.set_input_size(img_size=(95, 95))
    with pytest.raises(ValueError, match='patch_size'):
        model.set_input_size(patch_size=(5, 5))
