"""The analysis package on an MLflow store filled with runs of known metrics and artifacts."""
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from analysis import AnalysisError, analyze, saturation_depth
from analysis.store import open_store
from mlflow_runs import log_training_run

REPO = Path(__file__).resolve().parent.parent
SWEEP = 'abc12345'
WIDTH = dict(embed_dim=32, num_heads=2)
# best val/top1 per (family, depth) and seed; each run's curve is [best - 5, best, best - 1], so final = best - 1
BEST = {('vit', 2): (60.0, 61.0), ('vit', 4): (70.0, 70.4), ('vit', 8): (70.3, 70.5),
        ('deepvit', 2): (61.0, 62.0), ('deepvit', 4): (72.0, 73.0), ('deepvit', 8): (75.0, 76.0)}


@pytest.fixture
def store(tmp_path, store_template):
    """``(client, uri, experiment_id)`` on a fresh copy, experiment ``study`` with artifacts under tmp_path."""
    shutil.copy(store_template, tmp_path / 'mlflow.db')
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment('study', artifact_location=str(tmp_path / 'artifacts'))
    return client, uri, exp_id


def _similarity(depth: int, level: float) -> np.ndarray:
    m = np.full((depth, depth), level)
    np.fill_diagonal(m, 1.0)
    return m


def _rising(depth: int, slope: float) -> np.ndarray:
    """A row-wise matrix whose block p is ``slope * p`` alike with block p − 1 (collapse growing with depth)."""
    m = np.eye(depth)
    for p in range(1, depth):
        m[p, p - 1] = m[p - 1, p] = slope * p
    return m


@pytest.fixture
def filled(store):
    """12 finished runs (2 families × depths 2/4/8 × 2 seeds), a RUNNING and a FAILED run in sweep SWEEP, and one
    finished run of another sweep."""
    client, uri, exp_id = store
    parent = client.create_run(exp_id, run_name=f'sweep-{SWEEP}',
                               tags={'sweep_id': SWEEP, 'deepvit.kind': 'sweep'}).info.run_id
    for (family, depth), bests in BEST.items():
        for seed, best in enumerate(bests):
            log_training_run(client, exp_id, family=family, depth=depth, seed=seed, top1=[best - 5, best, best - 1],
                             sweep_id=SWEEP, parent_run_id=parent, n_params=1000 * depth, gmacs=0.01 * depth,
                             similar_blocks={'softmax': depth // 2, 'mixed': 0 if family == 'deepvit' else depth // 2},
                             similarity={'softmax': _similarity(depth, 0.95), 'mixed': _similarity(depth, 0.3)},
                             row={'softmax': _rising(depth, 0.1 if family == 'vit' else 0.0),
                                  'mixed': _rising(depth, 0.05)}, **WIDTH)
    log_training_run(client, exp_id, family='vit', depth=16, top1=[30.0], sweep_id=SWEEP, status='RUNNING', **WIDTH)
    log_training_run(client, exp_id, family='deepvit', depth=16, top1=[], sweep_id=SWEEP, status='FAILED', **WIDTH)
    log_training_run(client, exp_id, family='vit', depth=2, top1=[99.0], sweep_id='other', **WIDTH)
    return store


@pytest.mark.parametrize('points, threshold, expected', [
    ([(16, 78.88), (24, 79.35), (32, 79.27)], 0.5, 16),     # paper Table 1, ViT: saturated at 16
    ([(16, 79.10), (24, 79.99), (32, 80.90)], 0.5, None),   # paper Table 1, DeepViT: still improving
    ([(32, 79.27), (16, 78.88), (24, 79.35)], 0.4, 24),     # any order; 24 -> 32 is not a gain
    ([(2, 50.0), (4, 60.0), (8, 60.2), (16, 61.0)], 0.5, None),  # a late gain beats an early plateau
    ([(2, 50.0), (4, 60.0), (8, 60.2), (16, 60.1)], 0.5, 4),
    ([(2, 50.0)], 0.5, None),                                # one depth: no answer
    ([(2, 50.0), (4, float('nan'))], 0.5, None),
])
def test_saturation_depth_rule(points, threshold, expected):
    assert saturation_depth(points, threshold) == expected


def test_saturation_depth_rejects_bad_input():
    with pytest.raises(ValueError, match='threshold'):
        saturation_depth([(2, 1.0), (4, 2.0)], 0.0)
    with pytest.raises(ValueError, match='once'):
        saturation_depth([(2, 1.0), (2, 2.0)])


@pytest.mark.slow  # the whole analysis with every figure (10 s)
def test_analyze_tables_and_saturation(filled, tmp_path):
    _, uri, _ = filled
    out = tmp_path / 'report'
    result = analyze('study', out, sweep=SWEEP, tracking_uri=uri, metric='best', progress=False)

    runs = pd.read_csv(out / 'runs.csv')
    assert len(runs) == 14 and set(runs['sweep_id']) == {SWEEP}
    for col in ('family', 'depth', 'embed_dim', 'num_heads', 'seed', 'params', 'gmacs', 'top1_best', 'top1_final',
                'similar_blocks_softmax', 'similar_blocks_mixed', 'status', 'run_id'):
        assert col in runs.columns
    row = runs[(runs['family'] == 'vit') & (runs['depth'] == 4) & (runs['seed'] == 1)].iloc[0]
    assert (row['top1_best'], row['top1_final'], row['params'], row['embed_dim']) == (70.4, 69.4, 4000, 32)
    assert row['top1_best_step'] == 20 and row['similar_blocks_softmax'] == 2
    assert sorted(runs['status'].unique()) == ['FAILED', 'FINISHED', 'RUNNING']

    table = (out / 'depth_table.md').read_text()
    # columns: top-1 (best here), best mean, runs, params, GMACs, similar blocks paper / calibrated per stage (these
    # fixture runs predate the calibrated metric: —), calibrated adjacent, effective keys
    # rising: curves [b - 5, b, b - 1] at steps 10/20/30 -> window from step 20 (closest to 22.5), gain -1: 0 of 2
    assert '| vit | 4 | 32/2 | 70.20 ± 0.28 | 70.20 | 2/2 | 0/2 [-1.00] | 4.0K | 0.04 | 2 / — | 2 / — | — / — ' \
           '| — / — |' in table
    assert '| deepvit | 8 | 32/2 | 75.50 ± 0.71 | 75.50 | 2/2 | 0/2 [-1.00] | 8.0K | 0.08 | 4 / — | 0 / — |' in table
    assert '| vit | 16 | 32/2 | — | — | 0/1 (1 running) | — |' in table
    assert '| deepvit | 16 | 32/2 | — | — | 0/1 (1 failed) | — |' in table
    assert 'from `val/top1`' in table      # no run has a holdout
    assert runs.loc[runs['depth'] == 16, 'top1_gain_last25'].isna().all()   # one evaluation or none: no gain
    lines = [ln for ln in table.splitlines() if ln.startswith('| vit') or ln.startswith('| deepvit')]
    assert [ln.split('|')[1].strip() + ln.split('|')[2].strip() for ln in lines] == \
        ['vit2', 'vit4', 'vit8', 'vit16', 'deepvit2', 'deepvit4', 'deepvit8', 'deepvit16']

    sat = json.loads((out / 'saturation.json').read_text())
    assert sat['threshold_pp'] == 0.5 and sat['sweep'] == SWEEP
    by = {s['family']: s for s in sat['series']}
    assert by['vit']['saturation_depth'] == 4 and by['vit']['top1_mean'] == [60.5, 70.2, 70.4]
    assert by['deepvit']['saturation_depth'] is None and by['deepvit']['best_depth'] == 8
    assert by['vit']['incomplete_depths'] == [16]
    assert result['saturation'] == {k: v for k, v in sat.items() if k not in ('experiment', 'sweep')}


@pytest.mark.slow  # the whole analysis with every figure (10 s)
def test_final_metric_and_threshold_change_the_answer(filled, tmp_path):
    _, uri, _ = filled
    result = analyze('study', tmp_path / 'r', sweep=SWEEP, tracking_uri=uri, metric='final', threshold=0.1,
                     progress=False)
    by = {s['family']: s for s in result['saturation']['series']}
    assert by['vit']['top1_mean'] == [59.5, 69.2, 69.4] and by['vit']['saturation_depth'] is None
    assert '69.20 ± 0.28' in (tmp_path / 'r' / 'depth_table.md').read_text()


@pytest.mark.slow  # the whole analysis with every figure (10 s)
def test_figures_are_valid_png_and_svg(filled, tmp_path):
    _, uri, _ = filled
    analyze('study', tmp_path / 'r', sweep=SWEEP, tracking_uri=uri, progress=False)
    fig_dir = tmp_path / 'r' / 'figures'
    stems = ['top1_vs_depth', 'top1_vs_gmacs', 'similar_blocks_vs_depth', 'similarity_softmax', 'similarity_mixed',
             'effective_keys_vs_depth', 'collapse_over_training',
             'difference_vs_depth', 'curves_vit', 'curves_deepvit', 'row_softmax', 'row_mixed', 'collapse_profiles']
    assert sorted(p.name for p in fig_dir.iterdir()) == sorted(f'{s}.{e}' for s in stems for e in ('png', 'svg'))
    for stem in stems:
        img = matplotlib.image.imread(fig_dir / f'{stem}.png')
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 0
        root = ET.parse(fig_dir / f'{stem}.svg').getroot()
        assert root.tag.endswith('svg')
    # the grid holds one panel per run: 14 runs -> 14 titled panels, the unfinished two say why they are empty
    svg = (fig_dir / 'similarity_softmax.svg').read_text()
    assert svg.count('32/h2 s0 d') == 8 and svg.count('32/h2 s1 d') == 6 and 'RUNNING' in svg and 'FAILED' in svg
    report = (tmp_path / 'r' / 'report.md').read_text()
    assert '![top1_vs_depth](figures/top1_vs_depth.png)' in report


@pytest.mark.slow  # the whole analysis with every figure (11 s)
def test_collapse_profiles_per_block_and_measure_choice(filled, tmp_path):
    from analysis.heatmaps import load_similarities
    from analysis.profiles import mean_profiles
    from analysis.records import runs_frame
    from analysis.store import open_store, sweep_runs, get_experiment
    client, uri, _ = filled
    runs, _ = runs_frame(client, sweep_runs(client, get_experiment(client, 'study'), SWEEP)[0], progress=False)
    prof = mean_profiles(runs, load_similarities(client, runs, progress=False, variant='row'), 'softmax')
    values, n = prof[('vit w32/h2', 8)]
    assert n == 2 and np.isnan(values[0])
    np.testing.assert_allclose(values[1:], 0.1 * np.arange(1, 8))          # block p vs p - 1, in block order
    np.testing.assert_allclose(prof[('deepvit w32/h2', 8)][0][1:], 0.0)
    assert ('vit w32/h2', 16) not in prof                                   # no finished run: no line
    # older runs without the new measures keep empty cells, and an unknown measure is refused before any work
    assert runs['row_mean_adjacent_softmax'].isna().all() and runs['cka_mean_adjacent_step0'].isna().all()
    with pytest.raises(ValueError, match="collapse measure 'rowwise' is not one the analysis knows; choose one of "
                                         "similar_blocks, .*row_mean_adjacent"):
        analyze('study', tmp_path / 'r', sweep=SWEEP, tracking_uri=uri, progress=False, collapse_measure='rowwise')
    assert not (tmp_path / 'r').exists()
    analyze('study', tmp_path / 'r', sweep=SWEEP, tracking_uri=uri, progress=False,
            collapse_measure='cka_mean_adjacent')   # a representation measure: one row of panels
    assert (tmp_path / 'r' / 'figures' / 'collapse_over_training.png').exists()


@pytest.mark.slow  # the whole analysis twice (22 s)
def test_figures_are_byte_stable(filled, tmp_path):
    _, uri, _ = filled
    for name in ('a', 'b'):
        analyze('study', tmp_path / name, sweep=SWEEP, tracking_uri=uri, progress=False)
    for ext in ('png', 'svg'):
        a = (tmp_path / 'a' / 'figures' / f'top1_vs_depth.{ext}').read_bytes()
        assert a == (tmp_path / 'b' / 'figures' / f'top1_vs_depth.{ext}').read_bytes()


@pytest.mark.slow  # the whole analysis with every figure (10 s)
def test_whole_experiment_mixes_sweeps_with_a_note(filled, tmp_path):
    _, uri, _ = filled
    result = analyze('study', tmp_path / 'r', tracking_uri=uri, progress=False)
    assert len(result['runs']) == 15
    assert 'mixes 2 sweeps (abc12345, other)' in (tmp_path / 'r' / 'depth_table.md').read_text()


@pytest.mark.slow  # the whole analysis with every figure (4.5 s)
def test_group_by_splits_series(store, tmp_path):
    client, uri, exp_id = store
    for dpr, top1 in (('0.0', 50.0), ('0.1', 55.0)):
        for depth in (2, 4):
            log_training_run(client, exp_id, family='vit', depth=depth, top1=[top1 + depth],
                             extra_params={'model.drop_path_rate': dpr}, **WIDTH)
    result = analyze('study', tmp_path / 'r', tracking_uri=uri, group_by=['model.drop_path_rate'], progress=False)
    assert [s['series'] for s in result['saturation']['series']] == \
        ['vit w32/h2 model.drop_path_rate=0.0', 'vit w32/h2 model.drop_path_rate=0.1']
    assert '| vit model.drop_path_rate=0.1 | 4 | 32/2 | 59.00 |' in (tmp_path / 'r' / 'depth_table.md').read_text()


@pytest.mark.slow  # the whole analysis with every figure (5 s)
def test_a_series_with_no_finished_run_yet_is_drawn_hollow_not_a_crash(store, tmp_path):
    """A sweep's first minutes: ViT finished at one depth, DeepViT still running everywhere. The analysis used to
    stop at the saturation figure ("cannot convert float NaN to integer"); now the report is written and the
    unfinished series is listed with its status."""
    client, uri, exp_id = store
    log_training_run(client, exp_id, family='vit', depth=2, top1=[40.0, 50.0], **WIDTH)
    log_training_run(client, exp_id, family='deepvit', depth=2, top1=[41.0], status='RUNNING', **WIDTH)
    result = analyze('study', tmp_path / 'r', tracking_uri=uri, progress=False, n_boot=200)
    assert (tmp_path / 'r' / 'figures' / 'top1_vs_depth.png').is_file()
    assert set(result['runs']['status']) == {'FINISHED', 'RUNNING'}
    assert '0/1 (1 running)' in (tmp_path / 'r' / 'depth_table.md').read_text()


def test_missing_experiment_sweep_and_store_are_clear_errors(filled, tmp_path):
    _, uri, _ = filled
    with pytest.raises(AnalysisError, match=r"experiment 'nope' not found .*experiments there: Default, study"):
        analyze('nope', tmp_path / 'r', tracking_uri=uri, progress=False)
    with pytest.raises(AnalysisError, match=r"sweep 'zzz' not found .*sweeps there: abc12345, other"):
        analyze('study', tmp_path / 'r', sweep='zzz', tracking_uri=uri, progress=False)
    missing = tmp_path / 'absent' / 'mlflow.db'
    with pytest.raises(AnalysisError, match='no MLflow store'):
        open_store(f'sqlite:///{missing}')
    assert not missing.parent.exists() and not (tmp_path / 'r').exists()


@pytest.mark.slow  # runs the analysis CLI in a subprocess (~18 s)
def test_cli(filled, tmp_path):
    _, uri, _ = filled
    out = tmp_path / 'cli'
    cmd = [sys.executable, '-m', 'analysis', '--experiment', 'study', '--out', str(out), '--tracking-uri', uri,
           '--no-progress']
    ok = subprocess.run(cmd + ['--sweep', SWEEP], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert '14 runs (12 finished, 1 running, 1 failed)' in ok.stdout
    assert 'vit w32/h2: saturation depth 4' in ok.stdout
    assert (out / 'depth_table.md').exists() and (out / 'figures' / 'top1_vs_depth.svg').exists()
    bad = subprocess.run(cmd + ['--sweep', 'missing'], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "error: sweep 'missing' not found in experiment 'study'" in bad.stderr
