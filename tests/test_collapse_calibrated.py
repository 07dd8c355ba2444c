"""Known-answer tests of the calibrated collapse metrics (deepvit.collapse.calibrated / probe).

Each case has its answer by design: unrelated maps of any sharpness → 0, identical maps → 1, a constructed
collapsed model → ≥ 0.9 with L − 1 similar blocks, an untrained network → 0 while the paper metric reads ≈ 1.
"""
import numpy as np
import pytest
import timm
import torch

import deepvit  # noqa: F401
from deepvit.collapse import (CrossLayerAccumulator, calibrated_similarity, collapse_probe, cross_layer_similarity,
                              effective_keys, probe_chunk_size, similar_adjacent_blocks, similar_blocks)
from deepvit.collapse.calibrated import VARIANTS

L, B, H, N = 4, 8, 4, 65


def _softmax_maps(scale: float, shape=(L, B, H, N, N), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(*shape, generator=g), dim=-1)


def _off_diagonal(m: np.ndarray) -> np.ndarray:
    return m[~np.eye(m.shape[0], dtype=bool)]


@pytest.mark.parametrize('scale, keys', [(0.25, 63), (0.74, 50), (1.5, 25)])
def test_independent_random_maps_read_zero_at_any_sharpness(scale, keys):
    maps = _softmax_maps(scale)
    result = calibrated_similarity(maps)
    assert abs(result['effective_keys'].mean() - keys) < 3          # the sharpness the case is about
    paper = _off_diagonal(result['paper'])
    for variant in ('calibrated', 'centred', 'head_avg'):
        assert np.abs(_off_diagonal(result[variant])).max() < 0.05, variant
    if keys >= 60:  # the paper metric calls diffuse unrelated maps near-identical
        assert paper.min() > 0.9
        assert similar_blocks(result['paper']) == L - 1
    assert similar_blocks(result['calibrated']) == 0


def test_identical_maps_read_one_for_every_variant():
    block = _softmax_maps(1.0, shape=(1, B, H, N, N))
    result = calibrated_similarity(block.expand(L, -1, -1, -1, -1).contiguous())
    for variant in VARIANTS:
        np.testing.assert_allclose(result[variant], np.ones((L, L)), atol=1e-5, err_msg=variant)


def test_heads_permuted_only_the_head_invariant_variant_reads_one():
    block = _softmax_maps(1.0, shape=(1, B, H, N, N))
    shuffled = block[:, :, torch.tensor([2, 0, 3, 1])]
    result = calibrated_similarity(torch.cat([block, shuffled]))
    assert result['head_avg'][0, 1] == pytest.approx(1.0, abs=1e-5)
    assert result['calibrated'][0, 1] < 0.1
    assert result['centred'][0, 1] < 0.1


def test_matrices_symmetric_with_unit_diagonal_and_chunking_invariant():
    maps = _softmax_maps(0.8)
    whole = calibrated_similarity(maps)
    chunked = calibrated_similarity(maps, chunk=3)
    for variant in VARIANTS:
        np.testing.assert_allclose(whole[variant], whole[variant].T, atol=1e-12)
        np.testing.assert_allclose(np.diag(whole[variant]), 1.0, atol=1e-5)
        np.testing.assert_allclose(whole[variant], chunked[variant], atol=1e-6)


def test_paper_variant_is_eq4():
    maps = _softmax_maps(0.6)
    np.testing.assert_allclose(calibrated_similarity(maps)['paper'], cross_layer_similarity(maps).numpy(), atol=1e-6)


def test_partially_shared_maps_read_between_zero_and_one():
    """Maps mixing a shared and an own random component: calibrated grows with the shared fraction."""
    shared = torch.randn(1, B, H, N, N)
    values = []
    for w in (0.0, 0.5, 0.9):
        logits = w * shared + (1 - w ** 2) ** 0.5 * torch.randn(2, B, H, N, N)
        values.append(calibrated_similarity(torch.softmax(logits, -1))['calibrated'][0, 1])
    assert values[0] == pytest.approx(0.0, abs=0.05)
    assert values[0] < values[1] < values[2] < 1.0


def test_effective_keys_known_cases():
    uniform = torch.full((1, 1, 1, N, N), 1.0 / N)
    one_hot = torch.eye(N)[None, None, None]
    assert float(effective_keys(uniform)[0]) == pytest.approx(N, rel=1e-5)
    assert float(effective_keys(one_hot)[0]) == pytest.approx(1.0, abs=1e-5)
    centred = torch.randn(1, 2, 2, N, N)   # negative entries: |a| normalised
    assert 1.0 <= float(effective_keys(centred)[0]) <= N


def _untrained(name: str, depth: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, depth=depth, in_chans=3)


@pytest.mark.parametrize('name', ['vit_tiny_patch4_32', 'deepvit_tiny_patch4_32'])
def test_untrained_model_calibrated_zero_while_paper_metric_reads_collapsed(name):
    model = _untrained(name)
    images = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    result = collapse_probe(model, [images[:40], images[40:]], num_images=64)
    s = result.summary()
    for stage in ('softmax', 'mixed'):
        adjacent = np.diagonal(result.matrices[stage]['calibrated'], offset=1)
        assert abs(s[f'calibrated_mean_adjacent_{stage}']) < 0.05
        assert np.abs(adjacent).max() < 0.1
        assert s[f'calibrated_similar_blocks_{stage}'] == 0
    # the contrast the calibration exists for: the paper metric calls the softmax maps fully collapsed
    assert s['similar_blocks_softmax'] == 7
    assert s['mean_adjacent_similarity_softmax'] > 0.99
    assert s['effective_keys_softmax'] > 60


def test_constructed_collapsed_model_reads_collapsed():
    """Every block with block 0's attention weights, residual branches scaled down: tokens barely change, so
    every block's maps are (nearly) the same."""
    model = _untrained('vit_tiny_patch4_32')
    with torch.no_grad():
        first = model.blocks[0]
        first.attn.qkv.weight.mul_(4.0)  # sharper maps than at init, so the case is not only the diffuse limit
        for blk in model.blocks:
            blk.attn.qkv.load_state_dict(first.attn.qkv.state_dict())
            blk.norm1.load_state_dict(first.norm1.state_dict())
            blk.attn.proj.weight.mul_(1e-3)
            blk.attn.proj.bias.zero_()
            blk.mlp.fc2.weight.mul_(1e-3)
            blk.mlp.fc2.bias.zero_()
    images = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    result = collapse_probe(model, [images], num_images=32)
    s = result.summary()
    cal = result.matrices['softmax']['calibrated']
    assert _off_diagonal(cal).min() >= 0.9
    assert s['calibrated_similar_blocks_softmax'] == 7
    assert s['calibrated_similar_adjacent_softmax'] == 7
    assert s['calibrated_similar_blocks_fraction_softmax'] == pytest.approx(7 / 8)
    assert result.matrices['softmax']['head_avg'].min() >= 0.9


def test_probe_chunking_and_truncation():
    model = _untrained('deepvit_tiny_patch4_32', depth=3)
    images = torch.randn(20, 3, 32, 32)
    one = collapse_probe(model, [images[:16]], num_images=16)
    many = collapse_probe(model, [images[i:i + 5] for i in range(0, 20, 5)], num_images=16)
    # forwards of other batch sizes differ by fp32 rounding (~1e-7 relative), and the Gram products accumulate over
    # ~1e6 entries in fp32 (~1e-5 relative); the calibrated variants divide by 1 - M0 ~ 1e-3 for these diffuse
    # untrained maps, so they agree to ~3e-3, the paper metric and the sharpness to 1e-4
    for stage in one.matrices:
        for key in one.matrices[stage]:
            atol = 1e-4 if key in ('paper', 'null', 'effective_keys') else 3e-3
            np.testing.assert_allclose(one.matrices[stage][key], many.matrices[stage][key], atol=atol, rtol=1e-5)
    assert model.training  # mode restored


def test_probe_errors():
    model = _untrained('vit_tiny_patch4_32', depth=2)
    with pytest.raises(ValueError, match='only 4'):
        collapse_probe(model, [torch.randn(4, 3, 32, 32)], num_images=8)
    with pytest.raises(ValueError, match='threshold'):
        collapse_probe(model, [torch.randn(4, 3, 32, 32)], num_images=4, threshold=1.5)
    with pytest.raises(ValueError, match='num_permutations'):
        CrossLayerAccumulator(2, 5, num_permutations=0)
    with pytest.raises(ValueError, match='shape'):
        CrossLayerAccumulator(2, 5).update(torch.rand(3, 1, 1, 5, 5))


def test_counts_rules():
    sim = np.array([[1.0, 0.95, 0.2], [0.95, 1.0, 0.3], [0.2, 0.3, 1.0]])
    sim2 = np.array([[1.0, 0.2, 0.95], [0.2, 1.0, 0.3], [0.95, 0.3, 1.0]])
    assert similar_blocks(sim) == 1 and similar_adjacent_blocks(sim) == 1
    assert similar_blocks(sim2) == 1 and similar_adjacent_blocks(sim2) == 0   # block 2 matches block 0 only
    with pytest.raises(ValueError, match='threshold'):
        similar_adjacent_blocks(sim, threshold=0)


def test_chunk_size_bounds_memory():
    assert probe_chunk_size(32, 12, 197) == 1
    small = probe_chunk_size(8, 4, 65)
    assert small == int(256 * 2 ** 20 // (2 * 8 * 4 * 65 ** 2 * 4 * 4))
    assert 2 * 8 * 4 * 65 ** 2 * 4 * 4 * small <= 256 * 2 ** 20


def test_probe_budget_on_a_gpu_comes_from_free_memory(monkeypatch):
    """Issue 21.6: on CUDA the chunk is sized by a quarter of the free device memory or of the host's available
    memory, whichever is less (never under the CPU default); on CPU the default budget stays."""
    import types
    import psutil
    from deepvit.collapse import probe_budget_mib
    assert probe_budget_mib('cpu') == 256
    gib = 2 ** 30
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device=None: (100 * gib, 141 * gib))
    monkeypatch.setattr(psutil, 'virtual_memory', lambda: types.SimpleNamespace(available=64 * gib))
    assert probe_budget_mib('cuda:0') == 16 * 1024                    # host-bound: 64 GiB / 4
    assert probe_chunk_size(32, 12, 197, probe_budget_mib('cuda:0')) == 36
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device=None: (8 * gib, 141 * gib))
    assert probe_budget_mib('cuda:0') == 2 * 1024                     # device-bound: 8 GiB / 4
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device=None: (gib // 2, 141 * gib))
    assert probe_budget_mib('cuda:0') == 256                          # never under the default


def _brute_force(maps: torch.Tensor, perms) -> dict:
    """Float64 reference straight from the definitions: per-head column cosines, P A Pᵀ nulls, explicit loops."""
    x = maps.double()
    L, B, H, N, _ = x.shape

    def mean_cos(a, b):  # (B, H', N, N) each: mean over images, heads, columns of the column cosine
        num = (a * b).sum(-2)
        den = a.norm(dim=-2) * b.norm(dim=-2)
        return float((num / den).mean())

    def variant(t):
        out = np.zeros((L, L))
        for p in range(L):
            for q in range(L):
                m = mean_cos(t[p], t[q])
                null = np.mean([mean_cos(t[p], t[q][..., pi, :][..., :, pi]) for pi in perms])
                null_rev = np.mean([mean_cos(t[q], t[p][..., pi, :][..., :, pi]) for pi in perms])
                null = (null + null_rev) / 2
                out[p, q] = 1.0 if p == q else (m - null) / (1 - null)
        return out
    return {'calibrated': variant(x), 'centred': variant(x - x.mean(-2, keepdim=True)),
            'head_avg': variant(x.mean(2, keepdim=True))}


def test_matches_a_float64_brute_force_reference():
    maps = _softmax_maps(0.7, shape=(3, 2, 3, 9, 9))
    acc = CrossLayerAccumulator(3, 9, num_permutations=3, seed=5)
    acc.update(maps)
    result = acc.result()
    reference = _brute_force(maps, acc.perms)
    for variant, expected in reference.items():
        np.testing.assert_allclose(result[variant], expected, atol=2e-5, err_msg=variant)
