"""The sweep driver (``deepvit.sweep``, run as ``launch/sweep.py``): grid parsing, sweep id, dry run, and skip/resume
against a store with finished and interrupted runs, using a fake launcher that records its argv and logs a FINISHED
run as train.py would."""
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlflow_runs import log_training_run

from deepvit import sweep

REPO = Path(__file__).resolve().parent.parent
SWEEP_PY = REPO / 'launch' / 'sweep.py'   # the shim the shell scripts run: the subprocess tests drive it

FAKE_LAUNCHER = textwrap.dedent('''
    """Stands in for `deepspeed`: records argv, then logs a FINISHED run for the point (or fails on request)."""
    import json, os, sys
    from mlflow import MlflowClient
    from mlflow_runs import log_training_run
    argv = sys.argv[1:]
    with open(os.environ['FAKE_LOG'], 'a') as f:
        f.write(json.dumps(argv) + '\\n')
    a = {k[2:]: v for k, v in zip(argv, argv[1:]) if k.startswith('--')}
    if a['sweep-point'] in os.environ.get('FAKE_FAIL', ''):
        sys.exit(3)
    client = MlflowClient()
    exp = client.get_experiment_by_name(a['experiment'])
    log_training_run(client, exp.experiment_id, family=a['model.name'].split('_')[0], depth=int(a['depth']),
                     embed_dim=int(a['embed-dim']), num_heads=int(a['num-heads']), seed=int(a['seed']),
                     top1=[json.loads(os.environ.get('FAKE_TOP1', '{}')).get(a['sweep-point'], 50.0)],
                     sweep_id=a['sweep-id'], sweep_point=a['sweep-point'], parent_run_id=a['parent-run-id'])
''')


@pytest.fixture
def env(tmp_path, store_template):
    """Environment for driver subprocesses: a copied store, the fake launcher and its log, cwd = tmp_path."""
    shutil.copy(store_template, tmp_path / 'mlflow.db')
    (tmp_path / 'fake_launcher.py').write_text(FAKE_LAUNCHER)
    return {**os.environ, 'MLFLOW_TRACKING_URI': f"sqlite:///{tmp_path / 'mlflow.db'}",
            'FAKE_LOG': str(tmp_path / 'launches.jsonl'),
            'DEEPVIT_LAUNCHER': f"{sys.executable} {tmp_path / 'fake_launcher.py'}",
            'PYTHONPATH': os.pathsep.join([str(REPO), str(REPO / 'tests'), os.environ.get('PYTHONPATH', '')])}


def drive(args, env, cwd):
    return subprocess.run([sys.executable, str(SWEEP_PY)] + args, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def launches(tmp_path):
    log = tmp_path / 'launches.jsonl'
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


GRID = ['--experiment', 'study', '--families', 'vit', '--depths', '2,4,8', '--widths', '32', '--num-gpus', '1']


def _plan(args, extra=()):
    return sweep.make_plan(sweep.build_parser().parse_args(args), list(extra))


# ------------------------------------------------------------------------------------------------ pure parts
def test_widths_and_point_keys():
    assert sweep.parse_widths('64,96:6,384') == [(64, 4), (96, 6), (384, 24)]
    # heads from the size's registered head dimension: the paper's is 32 (was: 768 -> 48 heads, silently)
    assert _plan(['--experiment', 'e', '--depths', '4', '--size', 'paper', '--widths', '768']).spec['widths'] == [(768, 24)]
    assert _plan(['--experiment', 'e', '--depths', '4', '--size', 'paper']).spec['widths'] == [(384, 12)]
    point = sweep.Point('deepvit', 8, 64, 4, 0)
    assert point.key == 'deepvit-d8-w64-h4-s0'                 # the schema's example
    assert sweep.Point('vit', 2, 32, 2, 1, (('--drop-path-rate', '0.1'),)).key == 'vit-d2-w32-h2-drop-path-rate0.1-s1'


@pytest.mark.parametrize('args, message', [
    (['--families', 'vit,cnn'], '--families must be distinct names'),
    (['--depths', '2,x'], "--depths must be comma-separated integers, got '2,x'"),
    (['--depths', '0,2'], '--depths must be distinct integers >= 1'),
    (['--widths', '60:8'], "--widths '60:8': embed_dim 60 must be a positive multiple of num_heads 8"),
    (['--seeds', '0,0'], '--seeds must be distinct'),
    (['--grid', 'depth=2,4'], '--depth is set by the sweep (use --depths)'),
    (['--grid', 'drop-path-rat=0,0.1'], "--grid 'drop-path-rat=0,0.1': --drop-path-rat is not a flag of "
                                         "launch/train.py"),   # was: every point failed at its launch
    (['--point-index', '9'], '--point-index 9 out of range: the grid has 6 points'),
])
def test_bad_requests_name_the_field(args, message):
    base = {'--experiment': 'e', '--families': 'vit,deepvit', '--depths': '2,4,8'}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    with pytest.raises(sweep.SweepError, match=message.replace('(', r'\(').replace(')', r'\)')):
        _plan([x for kv in base.items() for x in kv])


def test_a_grid_value_the_trainer_refuses_stops_the_sweep_before_anything_starts(tmp_path, monkeypatch, capsys):
    """Issue 22.6: every point's train.py arguments go through the trainer's own parser and checks first; a refused
    value names the point and the trainer's words, and nothing is created (was: launched, refused point by point,
    counted as pending, and "rerun to resume" failed the same way)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('MLFLOW_TRACKING_URI', f"sqlite:///{tmp_path / 'mlflow.db'}")
    rc = sweep.main(GRID + ['--grid', 'drop-path=0,1.5', '--', '--epochs', '2'])
    err = capsys.readouterr().err
    assert rc == 2 and 'error: point vit-d2-w32-h2-drop-path1.5-s0: launch/train.py would refuse it: ' \
                       'model.drop_path_rate=1.5 is out of range: must be in [0, 1)' in err
    assert not (tmp_path / 'mlflow.db').exists() and not (tmp_path / 'runs').exists()


def test_extra_args_output_dir_and_forbidden_flags():
    assert sweep.split_output_dir(['--epochs', '2', '--output-dir=/x', '--data.source', 'd']) == \
        ('/x', ['--epochs', '2', '--data.source', 'd'])
    assert sweep.split_output_dir(['--output_dir', '/y']) == ('/y', [])      # any spelling of output_dir
    with pytest.raises(sweep.SweepError, match='--depth after -- is set by the sweep'):
        sweep.split_output_dir(['--depth', '4'])
    with pytest.raises(sweep.SweepError, match=r'--model.depth after -- is set by the sweep .*\(use --depths\)'):
        sweep.split_output_dir(['--model.depth', '4'])                        # the same field, dotted
    with pytest.raises(sweep.SweepError, match='--model.name after -- is set by the sweep'):
        sweep.split_output_dir(['--model.name=x'])


def test_a_config_file_after_the_double_dash_does_not_override_the_point(tmp_path):
    """train.py applies its arguments in order, so the sweep writes EXTRA (a recipe's --config) before the point's
    flags: the recipe's depth, seed and --grid value lose to the point's; its other fields apply."""
    from deepvit.training import build_parser as train_parser, resolve
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text('model:\n  depth: 99\n  drop_path_rate: 0.3\n  img_size: 32\ntrain:\n  seed: 5\n')
    plan = _plan(['--experiment', 'e', '--families', 'vit', '--depths', '3', '--widths', '96:6', '--seeds', '7',
                  '--grid', 'drop-path=0.1'], ['--config', str(recipe)])
    point = plan.points[0]
    argv = sweep.point_command(point, launcher=[], launcher_flags=[], train_script=REPO / 'launch' / 'train.py',
                               ds_config='ds_configs/zero2.json', model=plan.model(point), root=plan.root,
                               experiment='e', sweep_id=plan.sweep_id, parent_run_id='p', extra=plan.extra)[1:]
    cfg = resolve(train_parser().parse_args(argv))
    assert (cfg.model.depth, cfg.train.seed, cfg.model.drop_path_rate, cfg.model.img_size) == (3, 7, 0.1, 32)


def test_sweep_id_is_stable_and_tracks_the_grid_not_the_launcher():
    a = _plan(GRID, ['--epochs', '2', '--output-dir', 'x']).sweep_id
    assert a == _plan(GRID[:5] + ['8,2,4'] + GRID[6:], ['--epochs', '2']).sweep_id   # order, root: same sweep
    assert a == _plan(GRID + ['--hostfile', 'h', '--launcher-args', '--master_port 1'], ['--epochs', '2']).sweep_id
    assert a != _plan(GRID, ['--epochs', '3']).sweep_id
    assert a != _plan(GRID[:5] + ['2,4'] + GRID[6:], ['--epochs', '2']).sweep_id
    assert _plan(GRID + ['--sweep-id', 'mine']).sweep_id == 'mine'


# ------------------------------------------------------------------------------------------------ dry run
@pytest.mark.slow  # drives the sweep command in subprocesses
def test_dry_run_prints_every_command(tmp_path, env):
    os.remove(tmp_path / 'mlflow.db')
    args = ['--experiment', 'study', '--families', 'vit,deepvit', '--depths', '2,4,8', '--widths', '64,96:6',
            '--seeds', '0,1', '--num-gpus', '2', '--launcher-args', '--master_port 29612', '--dry-run',
            '--', '--output-dir', 'out', '--epochs', '3']
    res = drive(args, env, tmp_path)
    assert res.returncode == 0, res.stderr
    cmds = [shlex.split(ln) for ln in res.stdout.splitlines() if not ln.startswith(('#', 'sweep '))]
    assert len(cmds) == 2 * 3 * 2 * 2
    seen = set()
    for cmd in cmds:
        a = dict(zip(cmd, cmd[1:]))
        seen.add((a['--model.name'], a['--depth'], a['--embed-dim'], a['--num-heads'], a['--seed']))
        point = a['--sweep-point']
        assert cmd[:6] == shlex.split(env['DEEPVIT_LAUNCHER']) + ['--num_gpus', '2', '--master_port', '29612']
        assert cmd[6].endswith('launch/train.py') and a['--deepspeed'].endswith('ds_configs/zero2.json')
        assert a['--output-dir'] == f'out/{point}' and a['--run-name'] == point and a['--experiment'] == 'study'
        assert point == f"{a['--model.name'].split('_')[0]}-d{a['--depth']}-w{a['--embed-dim']}-h{a['--num-heads']}-" \
                        f"s{a['--seed']}"
        assert a['--epochs'] == '3' and cmd.count('--resume') == 1 and a['--parent-run-id'] == '<PARENT_RUN_ID>'
        assert len({c[c.index('--sweep-id') + 1] for c in cmds}) == 1
    assert seen == {(f'{f}_tiny_patch4_32', str(d), str(e), str(h), str(s)) for f in ('vit', 'deepvit')
                    for d in (2, 4, 8) for e, h in ((64, 4), (96, 6)) for s in (0, 1)}
    assert not (tmp_path / 'mlflow.db').exists() and not (tmp_path / 'out').exists()   # a dry run writes nothing
    assert launches(tmp_path) == []


# ------------------------------------------------------------------------------------------------ skip / resume
@pytest.mark.slow  # drives the sweep command in subprocesses
def test_skips_finished_and_resumes_interrupted_points(tmp_path, env):
    plan = _plan(GRID)
    client = MlflowClient(tracking_uri=env['MLFLOW_TRACKING_URI'])
    exp_id = client.create_experiment('study', artifact_location=str(tmp_path / 'artifacts'))
    parent = client.create_run(exp_id, run_name=f'sweep-{plan.sweep_id}',
                               tags={'sweep_id': plan.sweep_id, 'deepvit.kind': 'sweep'}).info.run_id
    p2, p4, p8 = (p.key for p in plan.points)
    common = dict(family='vit', embed_dim=32, num_heads=2, sweep_id=plan.sweep_id, parent_run_id=parent)
    log_training_run(client, exp_id, depth=2, top1=[60.0], sweep_point=p2, **common)                     # done
    log_training_run(client, exp_id, depth=4, top1=[40.0], sweep_point=p4, status='RUNNING', **common)   # SIGKILLed
    log_training_run(client, exp_id, depth=4, top1=[40.0], sweep_id='other-sweep', family='vit', embed_dim=32,
                     num_heads=2, sweep_point=p8)                           # another sweep's FINISHED p8: not ours

    dry = drive(GRID + ['--dry-run'], env, tmp_path)
    assert f'{p2}: skip (finished)' in dry.stdout and f'{p4}: resume (was RUNNING)' in dry.stdout
    assert f'{p8}: start' in dry.stdout and f'--parent-run-id {parent}' in dry.stdout

    res = drive(GRID, env, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = launches(tmp_path)
    assert [r[r.index('--sweep-point') + 1] for r in runs] == [p4, p8]
    for r in runs:
        assert '--resume' in r and r[r.index('--parent-run-id') + 1] == parent
        assert r[r.index('--output-dir') + 1] == f'runs/sweeps/study/{plan.sweep_id}/{r[r.index("--run-name") + 1]}'
    assert f'sweep {plan.sweep_id}: 3/3 points finished' in res.stdout
    assert client.get_run(parent).info.status == 'FINISHED'
    assert json.loads((tmp_path / 'runs/sweeps/study' / plan.sweep_id / 'sweep.json').read_text())['sweep_id'] \
        == plan.sweep_id

    # the parent summarises the sweep: children by status, best final top-1 per remedy and depth, the analysis
    summary = client.get_run(parent).data.metrics
    assert {k: v for k, v in summary.items() if k.startswith('sweep/children_')} == {
        'sweep/children_finished': 3, 'sweep/children_running': 0, 'sweep/children_killed': 0,
        'sweep/children_failed': 0, 'sweep/children_pending': 0}
    assert (summary['sweep/best_top1/vit/d2'], summary['sweep/best_top1/vit/d4'], summary['sweep/best_top1/vit/d8']) \
        == (60.0, 50.0, 50.0)  # d4: the FINISHED relaunch (50), not the interrupted run (40)
    top = {a.path for a in client.list_artifacts(parent, 'analysis')}
    figures = {a.path for a in client.list_artifacts(parent, 'analysis/figures')}
    assert {'analysis/depth_table.md', 'analysis/saturation.json', 'analysis/report.md'} <= top
    assert 'analysis/figures/top1_vs_depth.png' in figures

    again = drive(GRID, env, tmp_path)                 # idempotent: nothing left to launch
    assert again.returncode == 0 and len(launches(tmp_path)) == 2 and '3 finished, 0 to run' in again.stdout
    parents = [r for r in client.search_runs([exp_id]) if r.data.tags.get('deepvit.kind') == 'sweep']
    assert len(parents) == 1
    history = client.get_metric_history(parent, 'sweep/children_finished')   # the rerun changed nothing: no duplicate
    assert len(history) == len({(m.step, m.value) for m in history})


@pytest.mark.slow  # drives the sweep command in subprocesses
def test_failed_point_is_reported_and_retried(tmp_path, env):
    plan = _plan(GRID)
    p2, p4, p8 = (p.key for p in plan.points)
    res = drive(GRID, {**env, 'FAKE_FAIL': p4}, tmp_path)
    assert res.returncode == 1
    assert f'{p4}: FAILED (exit status 3)' in res.stderr and f'failed: {p4}' in res.stdout
    client = MlflowClient(tracking_uri=env['MLFLOW_TRACKING_URI'])
    exp = client.get_experiment_by_name('study')                       # created by the driver
    parent = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get('deepvit.kind') == 'sweep']
    assert len(parent) == 1 and parent[0].info.status == 'FAILED' and parent[0].info.run_name == f'sweep-{plan.sweep_id}'
    assert parent[0].data.params['sweep.depths'] == '[2, 4, 8]'
    counts = {k: v for k, v in parent[0].data.metrics.items() if k.startswith('sweep/children_')}
    assert counts['sweep/children_finished'] == 2 and counts['sweep/children_pending'] == 1  # p4 left no run

    retry = drive(GRID, env, tmp_path)                 # the rerun launches only the failed point, with --resume
    assert retry.returncode == 0, retry.stderr
    assert [r[r.index('--sweep-point') + 1] for r in launches(tmp_path)] == [p2, p4, p8, p4]
    assert client.get_run(parent[0].info.run_id).info.status == 'FINISHED'


@pytest.mark.slow  # drives the sweep command in subprocesses
def test_point_index_runs_one_point_and_root_is_guarded(tmp_path, env):
    plan = _plan(GRID)
    res = drive(GRID + ['--point-index', '1', '--', '--output-dir', 'root'], env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert [r[r.index('--sweep-point') + 1] for r in launches(tmp_path)] == [plan.points[1].key]
    assert drive(GRID + ['--count'], env, tmp_path).stdout.strip() == '3'
    other = drive(GRID[:5] + ['2,4'] + GRID[6:] + ['--', '--output-dir', 'root'], env, tmp_path)
    assert other.returncode == 2
    assert f'holds sweep {plan.sweep_id!r}' in other.stderr and f'--sweep-id {plan.sweep_id}' in other.stderr


@pytest.mark.slow  # drives the sweep command in subprocesses
def test_remedy_families_launch_their_model_and_flags(tmp_path, env):
    os.remove(tmp_path / 'mlflow.db')
    res = drive(['--experiment', 'e', '--families', 'vit,layerscale,talkinghead,bn_only,reattn_ln,deepvit_cosreg',
                 '--depths', '2', '--widths', '96:6', '--num-gpus', '1', '--dry-run'], env, tmp_path)
    assert res.returncode == 0, res.stderr
    cmds = {c[c.index('--sweep-point') + 1]: c for c in
            (shlex.split(ln) for ln in res.stdout.splitlines() if not ln.startswith(('#', 'sweep ')))}
    def flags(key):
        c = cmds[key]
        return c[c.index('--model.name'):c.index('--depth')]
    assert flags('vit-d2-w96-h6-s0') == ['--model.name', 'vit_tiny_patch4_32']
    assert flags('layerscale-d2-w96-h6-s0') == ['--model.name', 'layerscale_tiny_patch4_32']
    assert flags('talkinghead-d2-w96-h6-s0') == ['--model.name', 'talkinghead_tiny_patch4_32']
    assert flags('bn_only-d2-w96-h6-s0') == ['--model.name', 'deepvit_tiny_patch4_32', '--reattn-init', 'identity',
                                             '--reattn-theta', 'fixed']
    assert flags('reattn_ln-d2-w96-h6-s0') == ['--model.name', 'deepvit_tiny_patch4_32', '--reattn-norm', 'ln']
    assert flags('deepvit_cosreg-d2-w96-h6-s0') == ['--model.name', 'deepvit_tiny_patch4_32', '--cosine-reg', '0.1']


def test_remedy_flags_are_training_flags():
    """Every flag a remedy family adds is one train.py's parser knows (no drift between the two)."""
    from deepvit.training.config import flag_fields
    known = flag_fields()
    for family, (model_family, flags) in sweep.REMEDIES.items():
        assert all(f in known for f in flags[::2]), family
        assert f'{model_family}_tiny_patch4_32' in __import__('deepvit').models.list_variants()


def test_driver_flags_are_training_flags():
    """Every flag the driver reserves (DRIVER_FLAGS) is one train.py's parser accepts, spelled exactly, and lands in
    the field the driver means: a point's real command, after the launcher, parsed by the training parser."""
    from deepvit.training import build_parser as train_parser, resolve
    plan = _plan(['--experiment', 'e', '--families', 'bn_only', '--depths', '3', '--widths', '96:6', '--seeds', '7',
                  '--grid', 'drop-path=0.1'], ['--epochs', '3'])
    point = plan.points[0]
    cmd = sweep.point_command(point, launcher=['deepspeed'], launcher_flags=['--num_gpus', '1'],
                              train_script=REPO / 'launch' / 'train.py', ds_config='ds_configs/zero2.json',
                              model=plan.model(point), root=plan.root, experiment='e', sweep_id=plan.sweep_id,
                              parent_run_id='abc123', extra=plan.extra)
    assert cmd[3].endswith('launch/train.py')
    argv = cmd[4:]
    assert set(sweep.DRIVER_FLAGS) <= set(argv)          # the argv carries every reserved flag
    parser = train_parser()
    parser.allow_abbrev = False                           # a renamed flag must not pass as an abbreviation
    cfg = resolve(parser.parse_args(argv))                # SystemExit on a flag the parser does not know
    assert (cfg.model.name, cfg.model.depth, cfg.model.embed_dim, cfg.model.num_heads, cfg.train.seed) == \
        ('deepvit_tiny_patch4_32', 3, 96, 6, 7)
    assert (cfg.log.experiment, cfg.log.run_name, cfg.log.sweep_id, cfg.log.sweep_point, cfg.log.parent_run_id) == \
        ('e', point.key, plan.sweep_id, point.key, 'abc123')
    assert cfg.resume is True and cfg.output_dir == argv[argv.index('--output-dir') + 1]
    assert (cfg.model.reattn_init, cfg.model.reattn_theta, cfg.model.drop_path_rate, cfg.train.epochs) == \
        ('identity', 'fixed', 0.1, 3)                     # the remedy's flags, the --grid axis and EXTRA


@pytest.mark.slow  # builds every registered variant (1.7 s)
def test_sizes_come_from_the_registered_variants():
    """A size's default width and head dimension are its registered variant's, the same for every family."""
    import timm
    for size, template in sweep.SIZES.items():
        embed, heads = sweep.size_defaults(size)
        for family in {model_family for model_family, _ in sweep.REMEDIES.values()}:
            cfg = timm.create_model(template.format(family=family), device='meta').model_cfg
            assert (cfg['embed_dim'], cfg['num_heads']) == (embed, heads), (size, family)
        plan = _plan(['--experiment', 'e', '--depths', '2', '--size', size])
        assert plan.spec['widths'] == [(embed, heads)]
        assert _plan(['--experiment', 'e', '--depths', '2', '--size', size, '--widths', str(4 * embed)]
                     ).spec['widths'] == [(4 * embed, 4 * heads)]
    with pytest.raises(sweep.SweepError, match="--size must be one of .*, got 'huge'"):
        sweep.size_defaults('huge')


@pytest.mark.slow  # drives the sweep command in subprocesses
def test_new_store_keeps_artifacts_beside_it(tmp_path, env):
    """A store made with a relative SQLite URI keeps its artifacts in the same folder (database + artifacts move as
    one: the moved-store read is tests/test_study.py's). The location is absolute, as MLflow's public API records it
    (it was relative, set by SQL on MLflow's table, until issue 18)."""
    env = {**env, 'MLFLOW_TRACKING_URI': 'sqlite:///study/mlflow.db'}
    res = drive(GRID, env, tmp_path)
    assert res.returncode == 0, res.stderr
    client = MlflowClient('sqlite:///' + str(tmp_path / 'study' / 'mlflow.db'))
    assert client.get_experiment_by_name('study').artifact_location == str(tmp_path / 'study' / 'artifacts' / 'study')
