"""The study's durable record and its statistics: a store made the way launch/study.py makes it (relative SQLite URI,
artifacts beside it) is copied to another checkout location and analysed there; the paired differences and the depth
interaction are checked against a hand computation; one study per folder."""
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from mlflow_runs import log_training_run
from analysis import analyze
from analysis.store import load_array
from deepvit.training.tracking import get_or_create_experiment

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 100
# final top-1 (%) per (family, depth) and seed 0, 1, 2 (integers: exactly that many of 100 test images right)
TOP1 = {('vit', 2): [50, 53, 47], ('vit', 16): [52, 54, 50],
        ('deepvit', 2): [51, 52, 49], ('deepvit', 16): [56, 57, 55]}
T_975_2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)   # Student t quantile, df 2: t = (2p - 1) / sqrt(2 p (1 - p))


def _correct(top1: int, seed: int) -> np.ndarray:
    """Per-image correctness with exactly ``top1`` of 100 right, a different subset per seed."""
    order = np.random.default_rng(seed).permutation(N_IMAGES)
    out = np.zeros(N_IMAGES, dtype=np.int8)
    out[order[:top1]] = 1
    return np.concatenate([out, [-1, -1]])   # two padding positions at the end, as a padded last batch leaves


@pytest.fixture
def moved_study(tmp_path, monkeypatch, store_template):
    """A study store written at checkout A (relative SQLite URI), then the folder copied to checkout B and A deleted."""
    a, b = tmp_path / 'a', tmp_path / 'b'
    # a folder name of its own per test: MLflow caches one database engine per URI string, and a relative URI
    # would otherwise reach the previous test's (deleted) file
    study = Path('docs') / f'study-{tmp_path.name}'
    (a / study).mkdir(parents=True)
    shutil.copy(store_template, a / study / 'mlflow.db')
    monkeypatch.chdir(a)
    uri = f'sqlite:///{study.as_posix()}/mlflow.db'
    client = MlflowClient(uri)
    exp_id = get_or_create_experiment(client, 'cifar10-study', uri)
    for (family, depth), values in TOP1.items():
        for seed, top1 in enumerate(values):
            log_training_run(client, exp_id, family=family, depth=depth, seed=seed, top1=[top1 - 10, top1],
                             correct=_correct(top1, 10 * seed + depth + len(family)),
                             extra_params={'world_size': 1, 'data.num_workers': 1, 'data.source': 'runs/data/c'})
    shutil.copytree(a / study, b / study)
    shutil.rmtree(a)
    monkeypatch.chdir(b)
    return b, uri, study


@pytest.mark.slow  # the whole analysis with every figure (6 s)
def test_moved_store_analyses_with_hand_computed_statistics(moved_study):
    where, uri, study = moved_study
    # the store records checkout A's absolute artifact paths (MLflow's public API): B reads them beside the database
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name('cifar10-study').experiment_id],
                             "params.`model.family` = 'vit' and params.`model.depth` = '16' and "
                             "params.`train.seed` = '1'")[0]
    assert not Path(run.info.artifact_uri.replace('file://', '')).exists()
    assert np.array_equal(load_array(client, run.info.run_id, 'eval/correct.npy'), _correct(54, 10 + 16 + 3))
    result = analyze('cifar10-study', where / 'out', tracking_uri=uri, progress=False, n_boot=400)
    diffs = pd.read_csv(where / 'out' / 'differences.csv').set_index('depth')
    for depth in (2, 16):
        d = np.subtract(TOP1[('deepvit', depth)], TOP1[('vit', depth)]).astype(float)
        mean, sd = d.mean(), d.std(ddof=1)
        half = T_975_2 * sd / math.sqrt(3)
        row = diffs.loc[depth]
        assert (row['n_pairs'], row['mean_diff']) == (3, pytest.approx(mean))
        assert row['sd_diff'] == pytest.approx(sd) and row['t_low'] == pytest.approx(mean - half)
        assert row['t_high'] == pytest.approx(mean + half)
        assert row['boot_low'] <= mean <= row['boot_high']
    # depth 16: differences 4, 3, 5 -> mean 4, sd 1, t interval 4 ± 2.484: resolved; depth 2: 1, -1, 2: not
    assert bool(diffs.loc[16, 'resolved']) and not bool(diffs.loc[2, 'resolved'])
    # interaction per seed: (dv16 - dv2) - (v16 - v2) = (5 - 2), (5 - 1), (6 - 3) = 3, 4, 3
    report = (where / 'out' / 'report.md').read_text()
    mean, sd = np.mean([3, 4, 3]), np.std([3, 4, 3], ddof=1)
    half = T_975_2 * sd / math.sqrt(3)
    assert f'| deepvit w64/h4 | 2 → 16 | 3 | +{mean:.2f} | {sd:.2f} | [+{mean - half:.2f}, +{mean + half:.2f}]' in report
    assert 'and test images' in report               # per-image results found for every run, images resampled
    assert 'A 1-point interaction (95 % half-width ≤ 1 pp) needs' in report
    assert result['files'] and (where / 'out' / 'figures' / 'difference_vs_depth.png').is_file()


@pytest.mark.slow  # the whole analysis with every figure (6 s)
def test_moved_store_reads_from_another_working_directory(moved_study, tmp_path, monkeypatch):
    """The artifacts are found through the database's location too, not only through the working directory."""
    where, _, study = moved_study
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"sqlite:///{where / study / 'mlflow.db'}"
    analyze('cifar10-study', elsewhere / 'out', tracking_uri=uri, progress=False, n_boot=100)
    assert 'and test images' in (elsewhere / 'out' / 'report.md').read_text()   # eval/correct.npy of every run read


def _guard(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / 'launch' / 'study_guard.py'), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_one_study_per_folder(tmp_path):
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / '_info.json').write_text('{"name": "c", "splits": {"train": {"num_samples": 5}}}')
    (tmp_path / 'cfg.yaml').write_text('train:\n  epochs: 2\n')
    (tmp_path / 'ds.json').write_text('{}')
    args = ['study', 'cfg.yaml', 'ds.json', 'data']
    assert _guard(*args, cwd=tmp_path).returncode == 0 and (tmp_path / 'study' / 'study.json').is_file()
    assert _guard(*args, cwd=tmp_path).returncode == 0          # the same study continues
    (tmp_path / 'cfg.yaml').write_text('# a comment changes nothing\ntrain:\n  epochs: 2\n')
    assert _guard(*args, cwd=tmp_path).returncode == 0
    (tmp_path / 'cfg.yaml').write_text('train:\n  epochs: 2\nlog:\n  log_model: false\n')  # what is recorded only
    assert _guard(*args, cwd=tmp_path).returncode == 0
    (tmp_path / 'cfg.yaml').write_text('train:\n  epochs: 3\n')
    res = _guard(*args, cwd=tmp_path)
    assert res.returncode == 2 and 'holds a study made with another config (cfg.yaml)' in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = _guard('study', 'cfg.yaml', 'ds.json', 'nodata', cwd=tmp_path)
    assert res.returncode == 2 and 'data _info.json not found' in res.stderr


def test_statistics_compare_series_of_the_baseline_width_only():
    from analysis.study import study_statistics, statistics_markdown
    rows = []
    for width, shift in (('w64/h4', 0.0), ('w96/h6', 10.0)):
        for family, gain in (('vit', 0.0), ('reattn', 1.0)):
            for depth in (2, 16):
                for seed in (0, 1):
                    rows.append({'run_id': f'{family}{width}{depth}{seed}', 'status': 'FINISHED',
                                 'series': f'{family} {width}', 'depth': depth, 'seed': seed,
                                 'top1_final': 50.0 + shift + gain + seed, 'top1_best': 0.0})
    result = study_statistics(pd.DataFrame(rows), None, 'vit w64/h4', n_boot=50)
    assert set(result.differences['series']) == {'reattn w64/h4'}     # never reattn w96 vs vit w64
    assert (result.differences['mean_diff'] == 1.0).all()
    assert 'reattn w96/h6, vit w96/h6' in ' '.join(statistics_markdown(result))


def test_per_image_results_pair_across_world_sizes_only_in_sample_order(tmp_path, store_template):
    """Issue 20.8: runs whose eval/correct.npy is in sample order (tag eval.correct_order=sample) pair image by image
    whatever their world size and workers, and images one run skipped (-1) drop out of every run; older loader-order
    arrays of different world sizes are refused (their positions name different images)."""
    from analysis.records import runs_frame
    from analysis.study import load_correct
    shutil.copy(store_template, tmp_path / 'mlflow.db')
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = client.create_experiment('e', artifact_location=str(tmp_path / 'artifacts'))
    a = _correct(60, 0)[:N_IMAGES]
    b = _correct(40, 1)[:N_IMAGES]
    b[7] = -1                                                # skipped as bad in one run
    ids = [log_training_run(client, exp_id, family=f, depth=2, seed=0, top1=[50.0], correct=c,
                            extra_params={'world_size': w, 'data.num_workers': k, 'data.source': 'd'})
           for f, c, w, k in (('vit', a, 1, 1), ('deepvit', b, 4, 2))]

    def frame():
        return runs_frame(client, client.search_runs([exp_id]), progress=False)[0]

    assert len(frame()) == 2, frame()[["status", "world_size", "family"]]
    assert load_correct(client, frame(), progress=False) is None     # loader order, world sizes 1 and 4
    for rid in ids:
        client.set_tag(rid, 'eval.correct_order', 'sample')
    got = load_correct(client, frame(), progress=False)
    keep = np.arange(N_IMAGES) != 7
    assert np.array_equal(got[ids[0]], a[keep]) and np.array_equal(got[ids[1]], b[keep])
