"""Known-answer tests of the collapse instrument's row-wise, image-null, representation and entropy measures
(deepvit.collapse), including the cases the column-wise measures cannot read (the reason the row-wise one exists).

Each case has its answer by construction: identical rank-1 maps → row-wise 1, independent rank-1 maps → 0; a shared
positional bias with independent content → structure, not content; an attention-only stack → token uniformity
collapses (Dong et al. 2021), with skips → it does not; identical blocks → CKA 1, independent features → debiased CKA
0 (the biased estimator not); uniform / one-hot attention → entropy 1 / 0; an untrained network → every calibrated
attention measure 0 with its interval covering 0.
"""
import numpy as np
import pytest
import timm
import torch

import deepvit  # noqa: F401
from deepvit.collapse import (HEADLINE, MEASURES, attention_entropy, calibrated_similarity, collapse_probe,
                              debiased_cka_matrix, linear_cka, token_uniformity)

L, B, H, N = 4, 8, 4, 65


def _rank1(z: torch.Tensor, noise: float = 0.01, seed: int = 1) -> torch.Tensor:
    """Rank-1 maps: every query of (block, image, head) attends with the distribution softmax(z) over the keys.
    ``z``: (L, B, H, N) → maps (L, B, H, N, N), plus ``noise`` × U(0, 1) per entry, rows renormalised."""
    g = torch.Generator().manual_seed(seed)
    d = torch.softmax(z, dim=-1)[..., None, :].expand(*z.shape[:-1], N, N)
    a = d + noise * torch.rand(d.shape, generator=g) / N
    return a / a.sum(-1, keepdim=True)


def _adjacent(m: np.ndarray) -> np.ndarray:
    return np.diagonal(m, offset=1)


def test_rank1_maps_row_wise_separates_identical_from_independent_column_wise_cannot():
    g = torch.Generator().manual_seed(0)
    b = 32       # each head-averaged rank-1 map is one distribution: enough images for a ±0.1 null
    shared = torch.randn(1, b, H, N, generator=g).expand(L, -1, -1, -1)
    identical = calibrated_similarity(_rank1(shared))
    independent = calibrated_similarity(_rank1(torch.randn(L, b, H, N, generator=g)))
    for name in ('row', 'row_head_avg'):
        assert _adjacent(identical[name]).min() > 0.95, name
        assert np.abs(_adjacent(independent[name])).max() < 0.1, name
    # the reason for the row-wise measure: the column-wise ones read the two opposite cases alike (paper: both ~1,
    # calibrated/centred/head_avg: both ~0), because every column of a rank-1 map is a constant vector
    for name in ('paper', 'calibrated', 'centred', 'head_avg'):
        assert abs(_adjacent(identical[name]).mean() - _adjacent(independent[name]).mean()) < 0.1, name
    assert _adjacent(identical['paper']).min() > 0.99 and _adjacent(independent['paper']).min() > 0.99
    assert HEADLINE == 'row'


def test_shared_positional_bias_reads_as_structure_not_content():
    """Logits = a fixed locality bias (the same for every block and image) + content of each block and image."""
    idx = torch.arange(N, dtype=torch.float32)
    bias = -((idx[:, None] - idx[None, :]).abs() / 4.0)                        # (N, N): attend to nearby tokens
    g = torch.Generator().manual_seed(3)
    content = torch.randn(L, B, H, N, N, generator=g)
    r = calibrated_similarity(torch.softmax(2.0 * bias + content, dim=-1))
    assert _adjacent(r['row']).min() > 0.3                  # beyond the token null: the bias is token-to-token
    np.testing.assert_allclose(_adjacent(r['row_structure']), _adjacent(r['row']), atol=0.05)   # all of it shared
    assert np.abs(_adjacent(r['row_content'])).max() < 0.05
    assert np.abs(_adjacent(r['content'])).max() < 0.05
    # and shared *content* (the same image-specific logits in every block) reads as content
    own = torch.randn(1, B, H, N, N, generator=g).expand(L, -1, -1, -1, -1)
    c = calibrated_similarity(torch.softmax(0.5 * bias + own, dim=-1))
    assert _adjacent(c['row_content']).min() > 0.9
    # the decomposition row = structure + (1 - structure) * content holds exactly
    for res in (r, c):
        s = _adjacent(res['row_structure'])
        np.testing.assert_allclose(_adjacent(res['row']), s + (1 - s) * _adjacent(res['row_content']), atol=1e-9)


def test_shared_class_token_sink_reads_as_structure():
    """Every query of every block puts most of its weight on token 0; the rest is each block's own."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(L, B, H, N, N, generator=g)
    logits[..., 0] += 5.0
    r = calibrated_similarity(torch.softmax(logits, -1))
    assert _adjacent(r['row']).min() > 0.5
    np.testing.assert_allclose(_adjacent(r['row_structure']), _adjacent(r['row']), atol=0.05)
    assert abs(_adjacent(r['calibrated']).mean()) < 0.1          # the column-wise measure does not see the sink


def test_heads_permuted_only_head_averaged_row_measure_reads_one():
    g = torch.Generator().manual_seed(5)
    block = torch.softmax(torch.randn(1, B, H, N, N, generator=g), -1)
    r = calibrated_similarity(torch.cat([block, block[:, :, torch.tensor([2, 0, 3, 1])]]))
    assert r['row_head_avg'][0, 1] == pytest.approx(1.0, abs=1e-5)
    assert r['row'][0, 1] < 0.1


def _token_residuals(depth: int, skip: bool) -> np.ndarray:
    """Token residual after each layer of a random attention-only stack (pre-LayerNorm, no MLP), x ← attn(LN(x))
    or, with skips, x ← x + attn(LN(x))."""
    g = torch.Generator().manual_seed(6)
    D = 32
    x = torch.randn(4, 17, D, generator=g)
    out = []
    for _ in range(depth):
        wq, wk, wv = (torch.randn(D, D, generator=g) / D ** 0.5 for _ in range(3))
        h = torch.nn.functional.layer_norm(x, (D,))
        attn = torch.softmax((h @ wq) @ (h @ wk).transpose(1, 2) / D ** 0.5, dim=-1)
        y = attn @ h @ wv
        x = x + y if skip else y
        out.append(float(token_uniformity(x)[:, 0].mean()))
    return np.array(out)


def test_attention_only_stack_collapses_to_rank_one_with_skips_it_does_not():
    pure, skipped = _token_residuals(12, skip=False), _token_residuals(12, skip=True)
    assert pure[-1] < 1e-3 < 0.3 < skipped[-1]                   # Dong et al. 2021: doubly exponential decay
    assert pure[-1] < pure[0] / 100


def test_token_uniformity_known_cases():
    same = torch.ones(2, 10, 8) * torch.randn(1, 1, 8)
    u = token_uniformity(same)
    np.testing.assert_allclose(u[:, 0], 0.0, atol=1e-9)          # residual 0 at rank-1 collapse
    np.testing.assert_allclose(u[:, 1], 1.0, atol=1e-9)          # all token pairs identical
    orth = torch.eye(10)[None]                                   # orthogonal tokens: cosine 0
    assert float(token_uniformity(orth)[0, 1]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match='N >= 2'):
        token_uniformity(torch.randn(2, 1, 8))


def test_cka_identical_one_independent_zero_only_when_debiased():
    g = torch.Generator().manual_seed(7)
    n, d = 512, 64                                     # the probe's scale: ~1k examples, tiny widths
    x = torch.randn(n, d, generator=g)
    y = torch.randn(n, d, generator=g)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, x @ torch.linalg.qr(torch.randn(d, d, generator=g))[0] * 3) == pytest.approx(1.0, abs=1e-9)
    assert abs(linear_cka(x, y)) < 0.02
    assert linear_cka(x, y, debiased=False) > 0.08             # the biased estimator reads unrelated features alike
    m = debiased_cka_matrix(torch.stack([x, x * 2, y]))
    assert m[0, 1] == pytest.approx(1.0, abs=1e-9) and abs(float(m[0, 2])) < 0.02
    assert float(m[0, 2]) == pytest.approx(linear_cka(x, y), abs=1e-9)
    with pytest.raises(ValueError, match='same examples'):
        linear_cka(x, y[:10])


@pytest.mark.parametrize('budget_mib', [128, 0.1, 0.0])   # all Grams at once, two at a time, feature space
def test_cka_matrix_within_any_memory_budget_equals_the_pairwise_estimator(budget_mib):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(40, 12, generator=g)
    feats = torch.stack([base + s * torch.randn(40, 12, generator=g) for s in (0.0, 0.3, 1.0, 3.0, 10.0)])
    m = debiased_cka_matrix(feats, budget_mib=budget_mib)
    want = torch.tensor([[linear_cka(a, b) for b in feats] for a in feats], dtype=torch.float64)
    assert torch.allclose(m, want, atol=1e-10)
    assert m[0, 1] > m[0, 2] > m[0, 3] > m[0, 4]                # less shared signal, lower CKA


def test_entropy_uniform_one_one_hot_zero():
    uniform = torch.full((2, 3, 4, N, N), 1.0 / N)
    one_hot = torch.eye(N).expand(2, 3, 4, N, N)
    np.testing.assert_allclose(attention_entropy(uniform).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(attention_entropy(one_hot).numpy(), 0.0, atol=1e-6)
    assert attention_entropy(uniform).shape == (3, 2, 4)        # (B, L, H)


_ATTENTION_MEASURES = [m for m in MEASURES if not m.startswith('row_structure')]


@pytest.mark.parametrize('name, depth', [('vit_tiny_patch4_32', 8), ('deepvit_tiny_patch4_32', 8),   # depth 16: 1.2 s each
                                         pytest.param('vit_tiny_patch4_32', 16, marks=pytest.mark.slow),
                                         pytest.param('deepvit_tiny_patch4_32', 16, marks=pytest.mark.slow)])
def test_untrained_models_read_chance_on_every_attention_measure(name, depth):
    torch.manual_seed(0)
    model = timm.create_model(name, depth=depth, in_chans=3)
    images = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    result = collapse_probe(model, [images[:20], images[20:]], num_images=32, bootstrap=100)
    s = result.summary()
    for stage in ('softmax', 'mixed'):
        for m in _ATTENTION_MEASURES:
            key = f'{m}_mean_adjacent_{stage}'
            if m.endswith('head_avg'):   # a small real offset at init (the shared residual stream): < 0.03
                assert abs(s[key]) < 0.03, (key, s[key])
            else:   # per head: the interval covers 0, or misses it by the null's own noise (not in the interval)
                assert s[f'{key}_lo'] <= 0.0 <= s[f'{key}_hi'] or abs(s[key]) < 0.015, \
                    (key, s[key], s[f'{key}_lo'], s[f'{key}_hi'])
        assert s[f'row_similar_blocks_{stage}'] == 0
        assert 0.9 < s[f'entropy_{stage}'] <= 1.0                      # diffuse at init
    # representation measures are not 0 at init (the residual stream), hence read against step 0
    assert s['cka_mean_adjacent'] > 0.5
    assert 0 < s['token_residual_last'] <= 1


def test_probe_profiles_intervals_and_bad_input():
    torch.manual_seed(0)
    model = timm.create_model('deepvit_tiny_patch4_32', depth=4, in_chans=3)
    images = torch.randn(12, 3, 32, 32)
    result = collapse_probe(model, [images[:5], images[5:]], num_images=12, bootstrap=100, cka_examples=64)
    p = result.profiles()
    assert len(p['row_prev_softmax']) == 4 and p['row_prev_softmax'][0] is None
    assert p['cka_first'][0] == 1.0 and len(p['token_residual']) == 4
    s = result.summary()
    assert s['row_mean_adjacent_softmax_lo'] <= s['row_mean_adjacent_softmax_hi']
    assert s['token_residual_last_lo'] <= s['token_residual_last'] <= s['token_residual_last_hi']
    with pytest.raises(ValueError, match='collapse_images=4: .* at least 8'):
        collapse_probe(model, [images], num_images=4)
    with pytest.raises(ValueError, match=r'cka_examples=9999: must be in \[4, 780\]'):
        collapse_probe(model, [images], num_images=12, cka_examples=9999)


def test_the_analysis_reads_every_collapse_figure_under_the_name_the_probe_logs_it():
    """The headline's interval was logged as collapse/row_mean_adjacent_softmax_lo and read as
    collapse/row_mean_adjacent_lo_softmax: runs.csv's interval columns were always empty (seen in the mini-study).
    Every collapse column of the records must be a figure the probe's summary holds."""
    import timm
    from analysis.records import COLLAPSE_COLUMNS
    torch.manual_seed(0)
    model = timm.create_model('deepvit_tiny_patch4_32', depth=2, embed_dim=32, num_heads=2).eval()
    result = collapse_probe(model, [torch.randn(8, 3, 32, 32)], num_images=8, bootstrap=100)
    logged = set(result.summary())
    missing = [c for c in COLLAPSE_COLUMNS if not c.endswith('_step0') and c not in logged]
    assert not missing, missing
    assert {'row_mean_adjacent_softmax_lo', 'row_mean_adjacent_mixed_hi'} <= set(COLLAPSE_COLUMNS)
