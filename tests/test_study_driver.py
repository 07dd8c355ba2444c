"""The staged study driver (``launch/study.py``, issue 23): the schedule's checks, the order of points, the frozen
learning-rate choice on a real SQLite MLflow store, and one real two-stream study on the built-in digits (grid, then
seeds at the chosen rate; a stop at the time budget, then a rerun that continues)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'launch'))
import study  # noqa: E402  (launch/study.py)

from deepvit.sweep import schedule  # noqa: E402

from mlflow_runs import create_store, log_training_run  # noqa: E402

BASE = {'experiment': 'e', 'store': 'docs/s', 'recipe': 'r.yaml', 'ds_config': 'ds.json', 'data': 'd', 'width': '32:2',
        'streams': 1, 'stages': [{'name': 'grid', 'families': ['vit', 'deepvit'], 'depths': [2, 16],
                                  'lrs': [1e-3, 2e-3], 'seeds': [0]},
                                 {'name': 'core', 'families': ['vit', 'deepvit', 'bn_only'], 'depths': [2, 16],
                                  'lr_from': 'grid', 'lr_family': {'bn_only': 'deepvit'}, 'seeds': [1, 2]}]}


def _schedule(tmp_path, **change):
    raw = {**BASE, **change}
    path = tmp_path / 'schedule.yaml'
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize('change, words', [
    ({'stages': [{'name': 'core', 'families': ['vit'], 'depths': [2], 'lr_from': 'grid', 'seeds': [0]}]},
     "lr_from='grid' is not an earlier stage with lrs"),
    ({'stages': [BASE['stages'][0], {**BASE['stages'][1], 'lr_family': {'bn_only': 'layerscale'}}]},
     'no choice for layerscale (for bn_only)'),
    ({'stages': [BASE['stages'][0], {**BASE['stages'][1], 'depths': [2, 8]}]}, 'no choice for depth 8'),
    ({'stages': [{**BASE['stages'][0], 'lr_from': 'x'}]}, 'give exactly one of lrs'),
    ({'stages': [{**BASE['stages'][0], 'depths': [0]}]}, 'depths must be positive integers, got [0]'),
    ({'stages': [{**BASE['stages'][0], 'seeds': []}]}, "field 'seeds' is missing or empty"),
    ({'streams': 99}, 'streams=99'),
    ({'epochs': 3}, "unknown field(s) ['epochs']"),
])
def test_a_bad_schedule_is_refused_in_one_line_naming_the_field(tmp_path, capsys, change, words):
    assert study.main([str(_schedule(tmp_path, **change)), '--dry-run']) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and err.startswith('study: error:') and '\n' not in err


def test_points_run_costliest_first_and_controls_borrow_a_familys_choice(tmp_path):
    s = schedule.load_schedule(_schedule(tmp_path))
    grid = schedule.stage_points(s.stages[0], {})
    assert len(grid) == 8 and [(p.family, p.depth) for p in grid[:2]] == [('deepvit', 16), ('deepvit', 16)]
    assert [p.depth for p in grid][-2:] == [2, 2] and grid[-1].family == 'vit'
    chosen = {('vit', 2): 1e-3, ('vit', 16): 2e-3, ('deepvit', 2): 2e-3, ('deepvit', 16): 1e-3}
    core = schedule.stage_points(s.stages[1], chosen)
    lrs = {(p.family, p.depth): p.lr for p in core}
    assert lrs[('bn_only', 16)] == 1e-3 and lrs[('bn_only', 2)] == 2e-3 and lrs[('vit', 16)] == 2e-3
    assert sorted({p.seed for p in core}) == [1, 2] and {p.index for p in core} == {0, 1}
    assert core[0].sweep_id == 'core-deepvit-d16-lr0.001' or core[0].sweep_id == 'core-bn_only-d16-lr0.001'
    budget = schedule.Point('fc', 'vit', 2, 1e-3, 0, 0, ('--train.budget_pflop', '0.03'))
    assert budget.cost > core[0].cost   # a fixed-compute point costs what the deepest run does


@pytest.mark.slow   # two SQLite stores migrated: ~4 s each
def test_the_lr_choice_reads_the_holdout_only_and_is_frozen_once_made(tmp_path, monkeypatch):
    store = tmp_path / 'store'
    store.mkdir()
    uri = create_store(store / 'mlflow.db')
    s = schedule.load_schedule(_schedule(tmp_path, store=str(store)))
    monkeypatch.setenv('MLFLOW_TRACKING_URI', uri)
    from mlflow import MlflowClient
    client = MlflowClient(uri)
    exp = client.create_experiment('e')
    # holdout prefers the larger rate for vit-16 and the smaller one elsewhere; the test split says the opposite
    for p in schedule.stage_points(s.stages[0], {}):
        better = (p.lr == 2e-3) == (p.family == 'vit' and p.depth == 16)
        log_training_run(client, exp, family=p.family, depth=p.depth, seed=p.seed, top1=[50, 40 if better else 60],
                         sweep_id=p.sweep_id, extra_params={'train.lr': p.lr / 16},
                         metrics={'holdout/top1': [50, 60 if better else 40]})
    chosen = schedule.frozen_choice(s, s.stages[0])
    assert chosen == {('vit', 2): 1e-3, ('vit', 16): 2e-3, ('deepvit', 2): 1e-3, ('deepvit', 16): 1e-3}
    record = json.loads((store / schedule.SELECTION_FILE).read_text())['grid']
    assert {r['family'] for r in record['choice']} == {'vit', 'deepvit'} and 'holdout' in record['rule']
    # a later run at the other rate with a better holdout score does not move a choice already made
    log_training_run(client, exp, family='vit', depth=2, seed=0, top1=[99], sweep_id='grid-vit-d2-lr0.002',
                     metrics={'holdout/top1': [99]})
    assert schedule.frozen_choice(s, s.stages[0]) == chosen


@pytest.mark.slow   # a SQLite store migrated: ~4 s
def test_the_choice_waits_for_the_whole_grid(tmp_path, monkeypatch):
    store = tmp_path / 'store'
    store.mkdir()
    monkeypatch.setenv('MLFLOW_TRACKING_URI', create_store(store / 'mlflow.db'))
    s = schedule.load_schedule(_schedule(tmp_path, store=str(store)))
    with pytest.raises(schedule.ScheduleError, match='no finished holdout score'):
        schedule.frozen_choice(s, s.stages[0])
    assert not (store / schedule.SELECTION_FILE).exists()


@pytest.mark.slow   # real DeepSpeed launches, two at once
def test_a_two_stream_study_chooses_stops_at_its_budget_and_continues(tmp_path):
    env = {**os.environ, 'DEEPVIT_DATA_CACHE': str(tmp_path / 'cache'),
           'DEEPVIT_LAUNCHER': f'{sys.executable} -m deepspeed.launcher.runner'}
    data = subprocess.run([sys.executable, '-c', 'from deepvit.data.builtin import digits_dir; print(digits_dir())'],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(yaml.safe_dump({
        'model': {'img_size': 32, 'patch_size': 8, 'in_chans': 1},
        'data': {'source': data, 'holdout': 128, 'train_eval': 64, 'num_workers': 0},
        'train': {'epochs': 1, 'warmup_epochs': 0.2, 'collapse_images': 64, 'collapse_every': 0, 'log_every': 5},
        'log': {'log_model': False}}))
    schedule_file = _schedule(tmp_path, store=str(tmp_path / 'store'), recipe=str(recipe), data=data,
                         runs=str(tmp_path / 'runs'), streams=2, ds_config='ds_configs/zero2.json', stages=[
                             {'name': 'grid', 'families': ['vit'], 'depths': [1], 'lrs': [1e-3, 2e-3, 4e-3],
                              'seeds': [0]},   # 3 points, 2 streams: the stop leaves one never started
                             {'name': 'core', 'families': ['vit'], 'depths': [1], 'lr_from': 'grid', 'seeds': [1]}])
    cmd = [sys.executable, str(REPO / 'launch' / 'study.py'), str(schedule_file)]
    stopped = subprocess.run(cmd + ['--budget-min', '0.05'], env=env, capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 143, stopped.stdout + stopped.stderr
    assert 'time budget spent' in stopped.stdout and not (tmp_path / 'store' / schedule.SELECTION_FILE).exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and 'every stage finished' in done.stdout, done.stdout + done.stderr
    assert done.stdout.count('core 0:') >= 1 and done.stdout.count('core 1:') >= 1   # both streams ran points
    choice = json.loads((tmp_path / 'store' / schedule.SELECTION_FILE).read_text())['grid']['choice']
    assert len(choice) == 1 and choice[0]['chosen_lr'] in (1e-3, 2e-3, 4e-3)
    core_dir = tmp_path / 'runs' / f'core-vit-d1-lr{choice[0]["chosen_lr"]:g}'
    assert (core_dir / 'sweep.json').is_file()
    assert json.loads((tmp_path / 'store' / 'study.json').read_text())['config']['path'] == str(recipe)
    logs = sorted((tmp_path / 'runs' / 'logs').glob('*.log'))   # appended to by every start of the point
    assert len(logs) == 4 and all('1 point(s)' in log.read_text() for log in logs)


def test_the_analysis_keeps_only_the_chosen_rate_of_each_grid_cell(tmp_path):
    import pandas as pd
    from analysis.lr_selection import apply_frozen_choice
    choice = tmp_path / 'lr_selection.json'
    choice.write_text(json.dumps({'grid': {'choice': [
        {'family': 'vit', 'depth': 16, 'chosen_lr': 0.016, 'holdout_by_lr': {'0.008': 50.0, '0.016': 52.0}}]}}))
    runs = pd.DataFrame({'sweep_id': ['grid-vit-d16-lr0.008', 'grid-vit-d16-lr0.016', 'core-vit-d16-lr0.016',
                                      'controls-bn_only-d16-lr0.008', None], 'x': range(5)})
    kept, dropped = apply_frozen_choice(runs, choice)
    assert list(kept['x']) == [1, 2, 3, 4] and dropped == ['grid-vit-d16-lr0.008']
    # a grid still running (no choice yet): its cell spans two rates, so none of its runs is read; one rate is kept
    more = pd.concat([runs, pd.DataFrame({'sweep_id': ['mid-vit-d8-lr0.008', 'mid-vit-d8-lr0.016',
                                                       'mid-deepvit-d8-lr0.008'], 'x': [5, 6, 7]})])
    kept, dropped = apply_frozen_choice(more, choice)
    assert list(kept['x']) == [1, 2, 3, 4, 7]
    assert dropped == ['grid-vit-d16-lr0.008', 'mid-vit-d8-lr0.008', 'mid-vit-d8-lr0.016']
    with pytest.raises(ValueError, match='not a readable study lr choice file'):
        apply_frozen_choice(runs, tmp_path / 'missing.json')


def test_the_edge_rule_brackets_each_cells_best_rate_up_to_its_cap():
    stage = {'name': 'g', 'families': ['vit', 'deepvit'], 'depths': [16], 'lrs': [1e-3, 2e-3, 4e-3],
             'seeds': [0, 1], 'extend_edges': 1}

    def scores(added, best):   # holdout peaks at ``best`` for vit and inside the grid for deepvit
        return {p: (-abs(np.log(p.lr / best[p.family])) + 0.01 * p.seed)
                for p in schedule.stage_points(stage, {}, added)}
    best = {'vit': 1e-4, 'deepvit': 2e-3}
    assert schedule.edge_rates(stage, scores({}, best), {}) == [(('vit', 16), 5e-4)]      # below the grid: halve
    added = {('vit', 16): [5e-4]}
    assert schedule.edge_rates(stage, scores(added, best), added) == []                  # cap 1 reached
    best['vit'] = 1e-2
    assert schedule.edge_rates(stage, scores({}, best), {}) == [(('vit', 16), 8e-3)]      # above: double
    missing = scores({}, best)
    missing[next(iter(missing))] = None
    assert schedule.edge_rates(stage, missing, {}) == []                                 # the grid is not finished
    assert schedule.edge_rates({**stage, 'extend_edges': 0}, scores({}, best), {}) == []


def test_a_grid_with_an_edge_rule_must_have_run_before_its_choice_is_read(tmp_path):
    s = schedule.load_schedule(_schedule(tmp_path, stages=[{**BASE['stages'][0], 'extend_edges': 2}, BASE['stages'][1]]))
    with pytest.raises(schedule.ScheduleError, match='an edge rule'):
        schedule.frozen_choice(s, s.stages[0])
    bad = _schedule(tmp_path, stages=[{**BASE['stages'][0], 'extend_edges': -1}])
    assert study.main([str(bad), '--dry-run']) == 2


@pytest.mark.parametrize('path', sorted((REPO / 'launch' / 'schedules').glob('*.yaml')), ids=lambda p: p.name)
def test_shipped_schedules_load_and_name_files_that_exist(path):
    s = schedule.load_schedule(path)
    assert (REPO / s.recipe).is_file() and (REPO / s.ds_config).is_file() and len(s.stages) >= 1
    assert all(p.lr > 0 for st in s.stages if 'lrs' in st for p in schedule.stage_points(st, {}))


def test_study_command_rejects_bad_arguments_before_anything_runs(tmp_path, monkeypatch, capsys):
    """The command (``launch/study.sh``: its arguments reach the driver) once, then the driver's other refusals
    in this process (each subprocess pays ~10 s of imports)."""
    res = subprocess.run(['bash', str(REPO / 'launch' / 'study.sh'), '--bogus'], capture_output=True, text=True,
                         timeout=60, env={**os.environ, 'PYTHON': sys.executable})
    assert res.returncode == 2 and 'unrecognized arguments: --bogus' in res.stderr, res.stderr
    monkeypatch.chdir(tmp_path)   # main() changes to the repository root; the fixture changes back
    schedule_file = str(REPO / 'launch' / 'schedules' / 'cifar10_study.yaml')
    for argv, needle in ((['--stage', 'later'], "--stage 'later': not a stage of"),
                         (['--budget-min', '0'], '--budget-min must be positive, got 0')):
        assert study.main([schedule_file, *argv]) == 2
        assert needle in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        study.main([schedule_file, '--budget-min', 'x'])
    assert exc.value.code == 2 and "argument --budget-min: invalid float value: 'x'" in capsys.readouterr().err
