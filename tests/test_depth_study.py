"""The verdict numbers of a staged depth study (analysis/depth_study.py) on run tables whose answers are known."""
import math

import numpy as np
import pandas as pd

from analysis.depth_study import FIXED_COMPUTE, FIXED_EPOCHS, add_view, paired, verdict, verdict_markdown

# true top-1 (points) by (remedy, depth): ViT gains 2 from 2 to 16 blocks, DeepViT 5 (interaction +3); BatchNorm-only
# is DeepViT's equal; 1/√depth is ViT + 1 at 16
TRUTH = {('vit', 2): 50.0, ('vit', 16): 52.0, ('reattn', 2): 50.0, ('reattn', 16): 55.0, ('bn_only', 16): 55.0,
         ('depthscale', 16): 53.0, ('layerscale', 16): 52.0}


def _runs(seeds=range(6), noise=0.3, rng=None, drop=()):
    rng = rng or np.random.default_rng(0)
    rows = []
    for seed in seeds:
        shared = rng.normal(0, 2.0)               # one seed's luck, shared by all its runs: pairing removes it
        for (remedy, depth), top1 in TRUTH.items():
            if (remedy, depth, seed) in drop:
                continue
            rows.append({'remedy': remedy, 'depth': depth, 'seed': seed, 'status': 'FINISHED',
                         'top1_final': top1 + shared + rng.normal(0, noise), 'train.budget_pflop': 'None',
                         'row_mean_adjacent_softmax': 0.02 * depth * (remedy == 'vit') + rng.normal(0, 0.01),
                         'top1_gain_last25': 1.5 if depth == 16 else 0.5})
    # a fixed-compute run with an absurd value: it must never enter a fixed-epoch comparison
    rows.append({'remedy': 'vit', 'depth': 2, 'seed': 0, 'status': 'FINISHED', 'top1_final': 99.0,
                 'train.budget_pflop': '0.02835', 'row_mean_adjacent_softmax': 0.0, 'top1_gain_last25': 0.0})
    return add_view(pd.DataFrame(rows))


def test_the_views_split_on_the_compute_budget():
    runs = _runs()
    assert (runs['view'] == FIXED_COMPUTE).sum() == 1 and (runs['view'] == FIXED_EPOCHS).sum() == 6 * len(TRUTH)
    assert set(add_view(runs.drop(columns=['train.budget_pflop']))['view']) == {FIXED_EPOCHS}


def test_every_question_recovers_its_planted_effect_within_its_interval():
    v = verdict(_runs())
    for key, truth in (('q1_vit_gain', 2.0), ('q1_deepvit_gain', 5.0), ('q2_interaction', 3.0),
                       ('q3_bn_only_vs_deepvit', 0.0), ('q4_depthscale_vs_vit', 1.0),
                       ('q4_depthscale_vs_deepvit', -2.0), ('q4_layerscale_vs_vit', 0.0)):
        p = v[key]
        assert p['n'] == 6 and abs(p['mean'] - truth) < 0.6 and p['hi'] - p['lo'] < 1.5, (key, p)
    assert v['q2_interaction']['resolved'] and not v['q3_bn_only_vs_deepvit']['resolved']
    assert v['q2_interaction']['hi'] - v['q2_interaction']['lo'] < 2   # pairing removed the 2-point seed luck
    assert v['q5_collapse_growth']['vit']['mean'] > 0.25 and abs(v['q5_collapse_growth']['reattn']['mean']) < 0.05
    assert [c['still_rising'] for c in v['convergence'] if c['depth'] == 16][0] == 6
    assert v['curves']['vit|fixed-compute'][0]['mean'] == 99.0   # the fixed-compute view is kept apart


def test_a_seed_missing_from_one_cell_leaves_that_comparison_only():
    v = verdict(_runs(drop={('reattn', 2, 5)}))
    assert v['q2_interaction']['n'] == 5 and v['q2_interaction']['seeds'] == [0, 1, 2, 3, 4]
    assert v['q1_vit_gain']['n'] == 6
    one = paired(_runs(seeds=[0]), [('vit', 16, FIXED_EPOCHS)], [('vit', 2, FIXED_EPOCHS)])
    assert one['n'] == 1 and math.isnan(one['lo']) and not one['resolved']


def test_the_verdict_table_states_each_interval_and_its_seeds():
    text = verdict_markdown(verdict(_runs()))
    assert 'primary' in text and text.count('6 paired seeds') >= 7 and 'resolved' in text
    empty = verdict(_runs(seeds=[]).iloc[0:0])
    assert 'no paired seeds yet' in verdict_markdown(empty)


def test_the_collapse_correlation_never_pools_a_grids_learning_rates():
    runs = _runs()
    runs['lr'] = np.where(runs['seed'] < 3, 1e-3, 2e-3)   # two rates per cell: three seeds each
    res = verdict(runs)['q5_correlation']
    assert res['n_cells'] == 2 * verdict(_runs())['q5_correlation']['n_cells']


def test_the_fixed_compute_view_pairs_the_deep_runs_with_the_shallow_runs_of_their_compute():
    """Shallow runs given the deep ViT's compute gain 1.5 points (ViT) and 1.0 (DeepViT) over their fixed-epoch
    selves: the fixed-compute gains shrink by that much, the interaction by -0.5; absent, no estimate."""
    runs = _runs()
    rng = np.random.default_rng(1)
    extra = runs[(runs['depth'] == 2) & runs['remedy'].isin(['vit', 'reattn']) & (runs['view'] == FIXED_EPOCHS)]
    extra = extra.assign(view=FIXED_COMPUTE, top1_final=extra['top1_final'] + np.where(
        extra['remedy'] == 'vit', 1.5, 1.0) + rng.normal(0, 0.05, len(extra)))
    runs = pd.concat([runs[runs['view'] == FIXED_EPOCHS], extra], ignore_index=True)
    v = verdict(runs)
    for key, truth in (('fc_vit_gain', 0.5), ('fc_deepvit_gain', 4.0), ('fc_interaction', 3.5),
                       ('q3_bn_only_vs_vit', 3.0)):
        assert v[key]['n'] == 6 and abs(v[key]['mean'] - truth) < 0.6, (key, v[key])
    assert abs(v['q1_vit_gain']['mean'] - 2.0) < 0.6          # the fixed-epoch view is untouched
    text = verdict_markdown(v)
    assert 'fixed compute: depth interaction | +3.' in text
    assert [ln.endswith('6 paired seeds, resolved |') for ln in text.splitlines() if 'BatchNorm-only − ViT' in ln] == [True]
    assert verdict(_runs())['fc_vit_gain']['n'] == 1           # _runs' one fixed-compute run: seed 0 only


def test_the_accuracy_vs_collapse_figure_is_drawn_from_the_fixed_epoch_runs(tmp_path):
    import matplotlib.image
    from analysis.depth_study import plot_accuracy_vs_collapse
    paths = plot_accuracy_vs_collapse(_runs(), tmp_path)
    assert [p.name for p in paths] == ['accuracy_vs_collapse.png', 'accuracy_vs_collapse.svg']
    img = matplotlib.image.imread(paths[0])
    assert img.ndim == 3 and img.std() > 0
    svg = paths[1].read_text()
    assert 'within a cell (seeds only): r = ' in svg and '42 runs in 7 cells' in svg   # _runs' fixed-epoch runs only


def test_the_frozen_choice_file_becomes_the_lr_grid_table(tmp_path):
    import json
    from analysis.lr_selection import frozen_choice_table, plot_lr_grid
    path = tmp_path / 'lr_selection.json'
    path.write_text(json.dumps({'grid-ext': {'rule': 'r', 'choice': [
        {'family': 'vit', 'depth': 16, 'chosen_lr': 0.008, 'holdout_by_lr': {'0.016': 49.5, '0.004': 51.4, '0.008': 52.3}},
        {'family': 'vit', 'depth': 2, 'chosen_lr': 0.004, 'holdout_by_lr': {'0.004': 48.9, '0.008': 48.7}}]}}))
    table = frozen_choice_table(path)
    assert list(table['depth']) == [2, 16] and set(table['series']) == {'vit (grid-ext)'}
    deep = table[table['depth'] == 16].iloc[0]
    assert deep['lr_grid'] == [0.004, 0.008, 0.016] and deep['holdout_by_lr'] == [51.4, 52.3, 49.5]
    assert (deep['chosen_lr'], deep['holdout_mean']) == (0.008, 52.3)
    paths = plot_lr_grid(table, tmp_path, lr_label='base learning rate (log scale)')
    assert 'base learning rate' in paths[1].read_text() and '0.016' in paths[1].read_text()
