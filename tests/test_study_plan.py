"""Study plans (issue 20.7): the plan file is checked before any run, the sequential rule's decisions on constructed
stores (narrow intervals stop, wide ones continue), the driver following it end to end, the lr axis, and the
report's plan section."""
import math
import shutil

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from mlflow_runs import log_training_run
from test_sweep import SWEEP_PY, drive, env, launches  # noqa: F401  (the driver's fixture and helpers)

from analysis.plan import PlanError, cell_decisions, load_plan, parse_plan
from analysis.records import runs_frame
from deepvit import sweep
from deepvit.sweep.launch import first_round, next_round

SEQUENTIAL = {'endpoint': 'top1_final', 'comparison': {'treatment': 'deepvit', 'control': 'vit', 'depths': [2, 8]},
              'test': 'paired-t', 'alpha': 0.05,
              'seeds': {'rule': 'sequential', 'start': 2, 'max': 4, 'half_width': 1.0}}
GRID = ['--experiment', 'study', '--families', 'vit,deepvit', '--depths', '2,8', '--widths', '32', '--num-gpus', '1']


def write_plan(tmp_path, plan=SEQUENTIAL, name='plan.yaml'):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(plan))
    return str(path)


def make(args, extra=()):
    return sweep.make_plan(sweep.build_parser().parse_args(args), list(extra))


def _with(**changes):
    plan = yaml.safe_load(yaml.safe_dump(SEQUENTIAL))
    for key, value in changes.items():
        *parents, last = key.split('.')
        node = plan
        for p in parents:
            node = node[p]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    return plan


@pytest.mark.parametrize('changes, message', [
    ({'endpoint': 'top1_test'}, "endpoint='top1_test': not a runs.csv column the analysis produces"),
    ({'comparison.treatment': 'resnet'}, "comparison.treatment='resnet': the sweep's --families ['vit', 'deepvit'] "
                                         "do not include it"),
    ({'comparison.depths': [2, 32]}, "comparison.depths: [32] not among the sweep's --depths [2, 8]"),
    ({'seeds.max': None}, 'seeds.max: a sequential rule needs a budget cap'),
    ({'seeds.start': 1}, 'seeds.start=1: must be an integer >= 2'),
    ({'alpha': 1.5}, 'alpha=1.5: must be a number in (0, 1)'),
    ({'test': 'wilcoxon'}, "test='wilcoxon': one of ['paired-t']"),
    ({'seeds': {'rule': 'fixed'}}, 'seeds.n: a fixed rule needs the number of seeds'),
    ({'power': 0.8}, "plan: unknown field(s) ['power']"),
])
def test_a_plan_the_sweep_cannot_follow_is_refused_before_any_run(tmp_path, changes, message):
    path = write_plan(tmp_path, _with(**changes))
    with pytest.raises(sweep.SweepError) as err:
        make(GRID + ['--plan', path])
    assert message in str(err.value)


def test_plan_sets_the_seeds_and_enters_the_sweep_id(tmp_path):
    path = write_plan(tmp_path)
    plan = make(GRID + ['--plan', path])
    assert sorted({p.seed for p in plan.points}) == [0, 1, 2, 3]            # up to the cap
    assert {p.seed for p in first_round(plan)} == {0, 1} and len(first_round(plan)) == 8
    assert plan.sweep_id != make(GRID + ['--plan', write_plan(tmp_path, _with(**{'seeds.max': 5}), 'p5.yaml')]).sweep_id
    with pytest.raises(sweep.SweepError, match="--seeds 0,1 and --plan .*the plan's seed rule sets the seeds"):
        make(GRID + ['--plan', path, '--seeds', '0,1'])
    with pytest.raises(PlanError, match='no such file'):
        load_plan(tmp_path / 'missing.yaml')


def test_lr_axis_is_a_first_class_option():
    plan = make(GRID + ['--lrs', '5e-4,1e-3'])
    assert len(plan.points) == 2 * 2 * 2
    assert plan.points[0].key == 'vit-d2-w32-h2-lr5e-4-s0' and plan.cell(plan.points[0]) == 'd2-w32-h2-lr5e-4'
    assert make(GRID + ['--grid', 'lr=5e-4,1e-3']).points == plan.points    # the same axis
    for args, extra, message in [(['--lrs', '1e-3,x'], (), '--lrs must be distinct positive numbers'),
                                 (['--lrs', '1e-3,0.001'], (), '--lrs must be distinct positive numbers'),
                                 (['--lrs', '1e-3', '--grid', 'lr=2e-3'], (), '--lrs and --grid lr=...'),
                                 (['--lrs', '1e-3'], ('--lr', '2e-3'), '--lr after -- and the --lr axis')]:
        with pytest.raises(sweep.SweepError, match=message):
            make(GRID + args, extra)


def _store(tmp_path, store_template, plan, diffs):
    """A store with the first round of ``plan`` finished: vit at 50, deepvit at 50 + diffs[depth][seed]."""
    shutil.copy(store_template, tmp_path / 'mlflow.db')
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp_id = client.create_experiment('study', artifact_location=str(tmp_path / 'artifacts'))
    for p in first_round(plan):
        top1 = 50.0 + (diffs[p.depth][p.seed] if p.family == 'deepvit' else 0.0)
        log_training_run(client, exp_id, family=p.family, depth=p.depth, embed_dim=32, num_heads=2, seed=p.seed,
                         top1=[top1], sweep_id=plan.sweep_id, sweep_point=p.key)
    return client, exp_id


def test_sequential_rule_stops_narrow_cells_and_continues_wide_ones(tmp_path, store_template):
    plan = make(GRID + ['--plan', write_plan(tmp_path)])
    # depth 2: both seeds +1.0 (sd 0: half-width 0, done); depth 8: +6 and -4 (wide: one more seed, both families)
    client, exp_id = _store(tmp_path, store_template, plan, {2: [1.0, 1.0], 8: [6.0, -4.0]})
    more = next_round(plan, client, exp_id, launched={p.key for p in first_round(plan)})
    assert sorted(p.key for p in more) == ['deepvit-d8-w32-h2-s2', 'vit-d8-w32-h2-s2']
    frame, _ = runs_frame(client, client.search_runs([exp_id]), progress=False)
    table = cell_decisions(frame, plan.study).set_index('cell')
    assert table.loc['d2-w32-h2', 'done'] and table.loc['d2-w32-h2', 'half_width'] == 0
    # the repeated interval: t at level 1 - 0.05 / 3 (K = 3 looks: 2, 3, 4 seeds), wider than the plain 95 % one
    level = 1 - 0.05 / 3
    assert table.loc['d8-w32-h2', 'level'] == pytest.approx(level)
    from scipy import stats
    assert table.loc['d8-w32-h2', 'half_width'] == pytest.approx(stats.t.ppf(1 - (1 - level) / 2, 1)
                                                                  * np.std([6.0, -4.0], ddof=1) / math.sqrt(2))
    assert not table.loc['d8-w32-h2', 'done'] and table.loc['d8-w32-h2', 'next_seed'] == 2


def test_sequential_rule_stops_when_every_interval_is_narrow(tmp_path, store_template):
    plan = make(GRID + ['--plan', write_plan(tmp_path)])
    client, exp_id = _store(tmp_path, store_template, plan, {2: [1.0, 1.02], 8: [-2.0, -2.01]})
    assert next_round(plan, client, exp_id, launched={p.key for p in first_round(plan)}) == []


def test_fixed_rule_is_met_with_n_pairs():
    plan = parse_plan(_with(seeds={'rule': 'fixed', 'n': 3}))
    assert plan.seeds.seeds == [0, 1, 2] and plan.level == pytest.approx(0.95)


@pytest.mark.slow  # drives the sweep command in subprocesses (12 fake launches)
def test_driver_follows_a_sequential_plan_to_the_cap(tmp_path, env):  # noqa: F811
    """Depth 2 is narrow after the first round; depth 8 stays wide (+6/-4/+6/-4) and gets seeds 2 and 3, then stops at
    the cap. The report lists the plan, what the data met and the deviation (depth 8 still wide at the cap)."""
    path = write_plan(tmp_path)
    diffs = {'d2': [1.0] * 4, 'd8': [6.0, -4.0, 6.0, -4.0]}
    top1 = {f'{f}-{d}-w32-h2-s{s}': 50.0 + (v if f == 'deepvit' else 0.0)
            for f in ('vit', 'deepvit') for d, vs in diffs.items() for s, v in enumerate(vs)}
    import json
    res = drive(GRID + ['--plan', path], {**env, 'FAKE_TOP1': json.dumps(top1)}, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    keys = [r[r.index('--sweep-point') + 1] for r in launches(tmp_path)]
    assert len(keys) == 12 and not any(k.startswith(('vit-d2', 'deepvit-d2')) and k.endswith(('-s2', '-s3'))
                                       for k in keys)
    assert sorted(k for k in keys if k.endswith(('-s2', '-s3'))) == [
        'deepvit-d8-w32-h2-s2', 'deepvit-d8-w32-h2-s3', 'vit-d8-w32-h2-s2', 'vit-d8-w32-h2-s3']
    assert 'sequential plan: d8-w32-h2: 4 pairs' in res.stdout
    again = drive(GRID + ['--plan', path], env, tmp_path)     # a rerun launches nothing more
    assert again.returncode == 0 and len(launches(tmp_path)) == 12

    from analysis.report import analyze
    out = tmp_path / 'analysis'
    analyze('study', out, tracking_uri=env['MLFLOW_TRACKING_URI'], progress=False, plan=path)
    report = (out / 'report.md').read_text()
    assert '## Plan' in report and 'met in 1 of 2 cell(s)' in report
    assert 'd8-w32-h2: stopped at 4 pairs with half-width' in report
