"""Attention-collapse probes: map shapes and stages, the paper's cross-layer similarity, the similar-blocks count."""
import pytest
import timm
import torch

import deepvit  # noqa: F401
from deepvit.collapse import attention_maps, cross_layer_similarity, similar_blocks


@pytest.fixture(scope='module')
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize('family', ['vit', 'deepvit'])
def test_maps_shapes_rows_and_no_side_effects(family, images):
    torch.manual_seed(0)
    model = timm.create_model(f'{family}_tiny_patch4_32', depth=3).train()
    model.eval()
    before = model(images)
    model.train()
    maps = {stage: attention_maps(model, images, stage=stage) for stage in ('softmax', 'mixed')}
    assert model.training  # mode restored
    assert all(not a.keep_maps and a.maps is None for a in model.attention_layers())
    for stage, m in maps.items():
        assert m.shape == (3, 3, 4, 65, 65) and m.dtype == torch.float32
    torch.testing.assert_close(maps['softmax'].sum(-1), torch.ones(3, 3, 4, 65))
    model.eval()
    torch.testing.assert_close(model(images), before)  # forward output unchanged by probing
    if family == 'vit':
        torch.testing.assert_close(maps['mixed'], maps['softmax'])
    else:
        expected = torch.stack([blk.attn.reattn(maps['softmax'][i]) for i, blk in enumerate(model.blocks)])
        torch.testing.assert_close(maps['mixed'], expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(maps['mixed'], maps['softmax'])


def test_probe_works_with_fused_attention(images):
    model = timm.create_model('vit_tiny_patch4_32', depth=2)
    model.set_fused_attn(True)
    model.eval()
    maps = attention_maps(model, images)
    model.set_fused_attn(False)
    torch.testing.assert_close(attention_maps(model, images), maps)


def test_similarity_diagonal_symmetry_and_identical_maps():
    maps = torch.rand(4, 2, 3, 5, 5).softmax(-1)
    sim = cross_layer_similarity(maps)
    assert sim.shape == (4, 4)
    torch.testing.assert_close(sim, sim.t())
    torch.testing.assert_close(sim.diagonal(), torch.ones(4, dtype=torch.float64))
    same = cross_layer_similarity(maps[:1].expand(3, -1, -1, -1, -1))
    torch.testing.assert_close(same, torch.ones(3, 3, dtype=torch.float64))


def test_similarity_compares_columns_per_head_and_token():
    N = 4
    eye = torch.eye(N)
    # block 0: each token attends to itself; block 1: every row attends to token 0 (column 0 is all ones, other
    # columns zero). Column t of block 0 is e_t; block 1's column 0 is all-ones, others are zero vectors.
    a0 = eye.expand(1, 1, 1, N, N)
    a1 = torch.zeros(N, N)
    a1[:, 0] = 1
    maps = torch.cat([a0, a1.expand(1, 1, 1, N, N)])
    sim = cross_layer_similarity(maps)
    # token 0: cos(e_0, 1/‖1‖) = 1/2; tokens 1..3: zero column → cosine 0; mean over 4 tokens = 1/8
    assert sim[0, 1].item() == pytest.approx(0.5 / N)
    # the row-wise cosine (the wrong axis) would give 1/2 for every token
    assert sim[0, 1].item() != pytest.approx(0.5)


def test_similar_blocks_rule():
    sim = torch.tensor([
        [1.00, 0.50, 0.20, 0.10],
        [0.50, 1.00, 0.95, 0.30],
        [0.20, 0.95, 1.00, 0.85],
        [0.10, 0.30, 0.85, 1.00],
    ])
    assert similar_blocks(sim) == 1  # block 2 (≥ 0.9 with block 1); block 3 peaks at 0.85
    assert similar_blocks(sim, threshold=0.8) == 2
    assert similar_blocks(sim, threshold=0.4) == 3
    assert similar_blocks(torch.eye(5)) == 0
    assert similar_blocks(torch.ones(5, 5)) == 4


@pytest.mark.parametrize('call', [
    lambda: cross_layer_similarity(torch.rand(2, 3, 4, 4)),
    lambda: similar_blocks(torch.rand(3, 4)),
    lambda: similar_blocks(torch.eye(3), threshold=1.5),
])
def test_bad_inputs(call):
    with pytest.raises(ValueError):
        call()


def test_bad_stage(images):
    model = timm.create_model('vit_tiny_patch4_32', depth=1)
    with pytest.raises(ValueError, match="stage"):
        attention_maps(model, images, stage='logits')
