"""Convergence shown (issue 20 item 6) and per-depth lr selection by holdout (item 3), on real MLflow stores."""
import shutil

import matplotlib.image
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from analysis import analyze
from analysis.convergence import add_convergence, gain_last_quarter
from analysis.lr_selection import choose_lr, select_lr
from analysis.records import runs_frame
from analysis.store import get_experiment, sweep_runs
from mlflow_runs import log_training_run

WIDTH = dict(embed_dim=32, num_heads=2)


@pytest.fixture
def store(tmp_path, store_template):
    shutil.copy(store_template, tmp_path / 'mlflow.db')
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    return client, uri, client.create_experiment('study', artifact_location=str(tmp_path / 'artifacts'))


def _frame(client):
    return runs_frame(client, sweep_runs(client, get_experiment(client, 'study'))[0], progress=False)[0]


@pytest.mark.parametrize('history, expected', [
    ([(10, 50.0), (20, 60.0), (30, 62.0), (40, 62.5)], (0.5, 30)),     # S = 40: window from step 30
    ([(40, 62.5), (10, 50.0), (30, 62.0), (20, 60.0)], (0.5, 30)),     # any order
    ([(10, 50.0), (20, 58.0)], (8.0, 10)),                             # 15 is as far from 10 as from 20: the earlier
    ([(10, 40.0), (20, 45.0), (30, 50.0), (290, 60.0), (400, 60.4)], (0.4, 290)),   # by step, not by evaluation index
    ([(10, 50.0), (100, 70.0)], (None, None)),       # closest to 75 is the last evaluation: 1 in the window
    ([(30, 50.0)], (None, None)), ([], (None, None)),
])
def test_gain_over_the_last_quarter(history, expected):
    gain, start = gain_last_quarter(history)
    assert start == expected[1] and (gain is None if expected[0] is None else gain == pytest.approx(expected[0]))


def test_still_rising_threshold_is_inclusive_and_checked():
    runs = pd.DataFrame({'run_id': ['a', 'b', 'c'], 'last_step': [20, 20, 10]})
    hist = {'a': [(10, 50.0), (20, 51.0)], 'b': [(10, 50.0), (20, 50.9)], 'c': [(10, 50.0)]}
    out = add_convergence(runs, hist, 1.0)
    assert list(out.columns) == ['run_id', 'last_step', 'top1_gain_last25', 'converge_from_step', 'still_rising']
    assert out['still_rising'].tolist() == [True, False, pd.NA]
    assert add_convergence(runs, hist, 0.5)['still_rising'].tolist()[:2] == [True, True]
    with pytest.raises(ValueError, match='still-rising threshold must be > 0'):
        add_convergence(runs, hist, 0.0)


@pytest.mark.slow  # the whole analysis with every figure (9 s)
def test_convergence_reads_the_holdout_when_runs_have_it(store, tmp_path):
    client, uri, exp = store
    # depth 2: the holdout has plateaued (+0.3 over the last quarter), the test split is still rising (+10);
    # depth 4: the holdout is still rising (+3)
    for depth, holdout in ((2, [50.0, 60.0, 60.2, 60.5]), (4, [40.0, 50.0, 55.0, 58.0])):
        for seed in (0, 1):
            log_training_run(client, exp, family='vit', depth=depth, seed=seed, top1=[50.0, 55.0, 60.0, 70.0],
                             metrics={'holdout/top1': holdout}, **WIDTH)
    log_training_run(client, exp, family='vit', depth=8, top1=[50.0, 60.0], **WIDTH)   # no holdout: no gain
    out = tmp_path / 'r'
    analyze('study', out, tracking_uri=uri, progress=False)
    runs = pd.read_csv(out / 'runs.csv')
    by_depth = runs.groupby('depth')
    assert by_depth['top1_gain_last25'].mean().round(2).to_dict()[2] == 0.3
    assert by_depth['still_rising'].apply(list).to_dict()[2] == [False, False]
    assert by_depth['still_rising'].apply(list).to_dict()[4] == [True, True]
    assert runs.loc[runs['depth'] == 8, 'top1_gain_last25'].isna().all()
    assert (runs.loc[runs['depth'] == 4, 'converge_from_step'] == 30).all()
    table = (out / 'depth_table.md').read_text()
    assert 'from `holdout/top1`' in table
    assert '| vit | 2 | 32/2 | 70.00 ± 0.00 | 70.00 | 2/2 | 0/2 [+0.30] |' in table
    assert '| vit | 4 | 32/2 | 70.00 ± 0.00 | 70.00 | 2/2 | 2/2 [+3.00] |' in table
    assert '| vit | 8 | 32/2 | 60.00 | 60.00 | 1/1 | — |' in table
    report = (out / 'report.md').read_text()
    assert 'Metric: `holdout/top1`' in report and 'still rising: gain ≥ 1 points' in report
    assert '- vit w32/h2, depth 4: 2 of 2 measured finished runs (mean gain +3.00 points)' in report
    assert 'depth 2:' not in report
    analyze('study', out, tracking_uri=uri, progress=False, rising_threshold=0.25)   # the threshold is a parameter
    assert '- vit w32/h2, depth 2: 2 of 2' in (out / 'report.md').read_text()


# final holdout / test (val/top1) top-1 per (depth, lr); seed s adds 0.2·s. The test split prefers the other rate in
# both cells, so a choice that read it would differ.
HOLDOUT = {(2, 1e-3): 60.0, (2, 3e-3): 62.0, (8, 1e-3): 65.0, (8, 3e-3): 63.0}
TEST = {(2, 1e-3): 70.0, (2, 3e-3): 69.0, (8, 1e-3): 72.0, (8, 3e-3): 75.0}


@pytest.fixture
def lr_store(store):
    """vit, depths 2 and 8, lr 1e-3 (3 seeds: the most common rate) and 3e-3 (2 seeds), with a holdout."""
    client, uri, exp = store
    for (depth, lr), h in HOLDOUT.items():
        for seed in range(3 if lr == 1e-3 else 2):
            log_training_run(client, exp, family='vit', depth=depth, seed=seed,
                             top1=[TEST[depth, lr] - 5, TEST[depth, lr] + 0.2 * seed],
                             metrics={'holdout/top1': [h - 5, h + 0.2 * seed]},
                             extra_params={'train.lr': lr, 'train.base_lr': lr / 2}, **WIDTH)
    return store


def test_lr_choice_never_reads_the_test_split(lr_store):
    client, _, _ = lr_store
    runs = _frame(client)
    assert set(runs['series']) == {'vit w32/h2'}                  # the lr does not split series
    before = select_lr(runs).set_index('depth')
    assert before['chosen_lr'].to_dict() == {2: 3e-3, 8: 1e-3}
    assert before.loc[2, 'lr_grid'] == [1e-3, 3e-3] and before.loc[2, 'holdout_n'] == 2
    assert before.loc[2, 'holdout_mean'] == pytest.approx(62.1) and before.loc[8, 'holdout_mean'] == pytest.approx(65.2)
    assert before.loc[2, 'test_mean'] == pytest.approx(69.1) and before.loc[2, 'test_n'] == 2
    assert before.loc[8, 'test_std'] == pytest.approx(0.2)
    assert before['reference_lr'].tolist() == [1e-3, 1e-3]
    assert before.loc[2, 'shift'] == pytest.approx(69.1 - 70.2) and before.loc[8, 'shift'] == 0
    # poison: every non-chosen run's test top-1 becomes 100 (a later evaluation, so the final value)
    for r in runs.itertuples(index=False):
        if r.lr != before.loc[r.depth, 'chosen_lr']:
            client.log_batch(r.run_id, metrics=[Metric('val/top1', 100.0, 0, 1000)])
    poisoned = _frame(client)
    assert (poisoned.loc[poisoned['lr'] == 1e-3, 'top1_final'] == 100).sum() == 3        # the poison is there
    after = select_lr(poisoned).set_index('depth')
    pd.testing.assert_series_equal(after['chosen_lr'], before['chosen_lr'])
    pd.testing.assert_series_equal(after['holdout_mean'], before['holdout_mean'])
    assert after.loc[2, 'reference_test_mean'] == 100                  # the test split is read only after the choice
    with pytest.raises(ValueError, match=r"reads only the holdout; got columns \['top1_final'\]"):
        choose_lr(runs[['series', 'depth', 'lr', 'holdout_top1_final', 'top1_final']])


@pytest.mark.slow  # the whole analysis with every figure (5 s)
def test_select_lr_mode_writes_table_figure_and_report(lr_store, tmp_path):
    _, uri, _ = lr_store
    out = tmp_path / 'r'
    result = analyze('study', out, tracking_uri=uri, progress=False, select_lr=True)
    table = pd.read_csv(out / 'lr_selection.csv')
    assert table['chosen_lr'].tolist() == [3e-3, 1e-3] and result['lr_selection']['depth'].tolist() == [2, 8]
    img = matplotlib.image.imread(out / 'figures' / 'lr_grid.png')
    assert img.ndim == 3 and img.std() > 0 and (out / 'figures' / 'lr_grid.svg').exists()
    report = (out / 'report.md').read_text()
    assert '| vit w32/h2 | 2 | 0.001, 0.003 | 60.20, 62.10 | 0.003 | 62.10 | 69.10 ± 0.14 | 2 | 0.001 | 70.20 ' \
           '| -1.10 |' in report
    assert '- vit w32/h2: shift d2 -1.10, d8 +0.00 points; saturation depth (threshold 0.5) none at the reference ' \
           'rate, none at the selected rates' in report
    assert '![lr_grid](figures/lr_grid.png)' in report


def test_select_lr_refuses_before_writing(store, tmp_path):
    client, uri, exp = store
    # one rate used: 2e-3 given as the rate used (train.lr) and as an older run's train.scaled_lr beside its base rate
    log_training_run(client, exp, family='vit', depth=2, seed=0, top1=[50.0], metrics={'holdout/top1': [40.0]},
                     extra_params={'train.lr': 2e-3}, **WIDTH)
    log_training_run(client, exp, family='vit', depth=2, seed=1, top1=[50.0], metrics={'holdout/top1': [40.0]},
                     extra_params={'train.lr': 1e-3, 'train.scaled_lr': 2e-3}, **WIDTH)
    out = tmp_path / 'r'
    with pytest.raises(ValueError, match=r"needs an lr axis .*'vit w32/h2' at depth 2 has 1: 0\.002$"):
        analyze('study', out, tracking_uri=uri, progress=False, select_lr=True)
    with pytest.raises(ValueError, match='cannot be split by it: drop train.lr'):
        analyze('study', out, tracking_uri=uri, progress=False, select_lr=True, group_by=['train.lr'])
    for seed, lr in ((2, 1e-3), (3, 1e-3)):    # an lr axis, but these runs have no holdout ...
        log_training_run(client, exp, family='vit', depth=4, seed=seed, top1=[50.0], extra_params={'train.lr': lr},
                         **WIDTH)
    log_training_run(client, exp, family='vit', depth=4, seed=4, top1=[50.0], extra_params={'train.lr': 3e-3},
                     **WIDTH)
    client.delete_run(_frame(client).iloc[0]['run_id']), client.delete_run(_frame(client).iloc[0]['run_id'])
    with pytest.raises(ValueError, match='needs the holdout metric holdout/top1, and no finished run logged it'):
        analyze('study', out, tracking_uri=uri, progress=False, select_lr=True)
    assert not out.exists()
