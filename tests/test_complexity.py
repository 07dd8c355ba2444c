"""Parameter and MAC counts against an independent count (fvcore's trace of the same model)."""
import pytest
import timm
import torch
from fvcore.nn import FlopCountAnalysis

import deepvit  # noqa: F401
from deepvit.models import gmacs_per_image, macs_per_image

MATMUL_OPS = ('linear', 'matmul', 'bmm', 'baddbmm', 'addmm', 'conv', 'einsum')


def _baddbmm_macs(inputs, outputs):
    # aten::baddbmm(input, batch1 (B, n, k), batch2 (B, k, m)) → B·n·k·m multiply-accumulates
    b1 = inputs[1].type().sizes()
    b2 = inputs[2].type().sizes()
    return b1[0] * b1[1] * b1[2] * b2[2]


def fvcore_macs(model, img_size, in_chans=3):
    model.eval()
    model.set_fused_attn(False)  # fvcore cannot see inside fused SDPA
    x = torch.randn(1, in_chans, img_size, img_size)
    analysis = FlopCountAnalysis(model, x).set_op_handle('aten::baddbmm', _baddbmm_macs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return sum(v for k, v in analysis.by_operator().items() if k in MATMUL_OPS)


@pytest.mark.parametrize('name, overrides', [
    ('vit_tiny_patch4_32', dict(depth=3)),
    ('deepvit_tiny_patch4_32', dict(depth=3, reattn_blocks=2)),
    ('deepvit_tiny_patch4_32', dict(depth=2, reattn_norm='none')),
    ('deepvit_s_patch16_224', dict(img_size=64, embed_dim=48, depth=3, reattn_blocks=1)),
    ('vit_16b_patch16_224', dict(depth=2)),
    ('talkinghead_tiny_patch4_32', dict(depth=2)),
    ('layerscale_tiny_patch4_32', dict(depth=2)),
    ('deepvit_tiny_patch4_32', dict(depth=3, reattn_blocks=1, talkinghead_blocks=[0])),
])
def test_macs_match_fvcore(name, overrides):
    model = timm.create_model(name, **overrides)
    ours = macs_per_image(model)
    theirs = fvcore_macs(model, model.model_cfg['img_size'])
    assert ours == theirs


def test_reattention_mix_is_counted():
    vit = timm.create_model('vit_tiny_patch4_32', depth=4)
    deep = timm.create_model('deepvit_tiny_patch4_32', depth=4)
    heads, tokens = 4, 65
    assert macs_per_image(deep) - macs_per_image(vit) == 4 * heads * heads * tokens * tokens


def test_talking_heads_mixes_are_counted():
    vit = timm.create_model('vit_tiny_patch4_32', depth=4)
    talking = timm.create_model('talkinghead_tiny_patch4_32', depth=4)
    heads, tokens = 4, 65
    # proj_l on the logits and proj_w on the weights: two H×H mixes of the (N, N) maps per block
    assert macs_per_image(talking) - macs_per_image(vit) == 4 * 2 * heads * heads * tokens * tokens
    assert macs_per_image(timm.create_model('layerscale_tiny_patch4_32', depth=4)) == macs_per_image(vit)


def test_paper_table_gmacs():
    # full-size counts (documented in docs/models.md); the attention matmuls are part of them
    with torch.device('meta'):   # the counts need the config and the layers' shapes, not weights
        vit, deep = timm.create_model('vit_16b_patch16_224'), timm.create_model('deepvit_s_patch16_224')
    assert gmacs_per_image(vit) == pytest.approx(5.183, abs=1e-3)
    assert gmacs_per_image(deep) == pytest.approx(6.361, abs=1e-3)
