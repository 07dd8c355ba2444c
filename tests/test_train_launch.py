"""The main job for real: DeepSpeed's launcher, 2 CPU ranks (gloo), every ZeRO stage, kill/preempt-and-resume,
two "nodes" on one machine, the MLflow record and the exported weights.

A 2-rank launch costs ~30 s (mostly imports), so the suite shares one uninterrupted ZeRO-2 run as the reference.
"""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import launching
from launching import (COLLAPSE_ARRAYS, COLLAPSE_METRICS, DIGITS_VAL, ROOT, TINY, assert_same_weights, client,
                       final_metric, finish, free_port, launcher_cmd, log_of, rank_pids, run_id, run_ok,
                       shm_buffers_left, start, wait_for, weights)

pytestmark = pytest.mark.slow  # real multi-process launches: not in the fast lane


def _head() -> str:
    """The commit of the checkout the launched jobs run from (``ROOT``), or ``'unknown'`` outside a git checkout."""
    try:
        done = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', 'HEAD'], capture_output=True, text=True)
    except OSError:   # no git executable
        return 'unknown'
    return done.stdout.strip() if done.returncode == 0 else 'unknown'

@pytest.mark.parametrize('stage', [1, 2, 3])
def test_zero_stages_train_and_record(stage, env, references, tmp_path):
    out = references(stage)
    c = client(env)
    run = c.get_run(run_id(out))
    assert run.info.status == 'FINISHED'
    p = run.data.params
    assert (p['ds.zero_stage'], p['world_size'], p['precision'], p['model.depth']) == (str(stage), '2', 'fp32', '2')
    assert p['model.name'] == 'deepvit_tiny_patch4_32' and run.data.tags['family'] == 'deepvit'
    assert int(p['model.params']) > 0 and float(p['model.gmacs']) > 0
    assert p['ds.global_batch_size'] == str(2 * 32)
    hist = c.get_metric_history(run.info.run_id, 'val/num_samples')
    assert [m.value for m in hist] == [DIGITS_VAL] * 3  # each val image counted once per epoch, across 2 ranks
    assert len(c.get_metric_history(run.info.run_id, 'val/top1')) == 3
    steps = [m.step for m in c.get_metric_history(run.info.run_id, 'train/loss')]
    assert steps == sorted(steps) and steps[-1] == 66  # 1437 // (2 × 32) = 22 steps/epoch × 3
    for key in ('train/lr', 'train/grad_norm', 'train/samples_per_sec', 'val/top5', 'val/loss',
                'data/skipped_samples', 'collapse/similar_blocks_softmax', 'collapse/similar_blocks_mixed',
                'memory/peak_mib/rank0', 'memory/peak_mib/rank1'):
        assert c.get_metric_history(run.info.run_id, key), key
    for key in COLLAPSE_METRICS:  # the collapse probe: the initialised model (step 0) and the end (default cadence
        assert [m.step for m in c.get_metric_history(run.info.run_id, key)] == [0, 66], key  # 12 > 3 epochs)
    assert p['collapse.threshold'] == '0.9' and p['collapse.num_images'] == '64'   # TINY's probe images
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)} | \
        {a.path for a in c.list_artifacts(run.info.run_id, 'collapse')} | \
        {a.path for a in c.list_artifacts(run.info.run_id, 'eval')}
    for path in ('config.yaml', 'ds_config.json', 'collapse/similarity_softmax.png', 'collapse/similarity_mixed.png',
                 'collapse/calibrated_softmax.png', 'eval/correct.npy') + COLLAPSE_ARRAYS:
        assert path in artifacts, path
    correct = np.load(c.download_artifacts(run.info.run_id, 'eval/correct.npy', str(tmp_path)))
    top1 = final_metric(c, run.info.run_id, 'val/top1')  # logged rounded to 1e-4 points
    assert correct.shape == (DIGITS_VAL,) and set(np.unique(correct)) <= {0, 1}   # sample order: no padding
    assert 100 * correct.mean() == pytest.approx(top1, abs=5e-5) and run.data.tags['eval.correct_order'] == 'sample'
    sim = np.load(c.download_artifacts(run.info.run_id, 'collapse/similarity_softmax.npy', str(tmp_path)))
    assert sim.shape == (2, 2) and np.allclose(sim, sim.T) and np.allclose(np.diag(sim), 1)
    text = log_of(out)
    assert text.count('[deepvit] epoch 1/3') == 1  # only rank 0 prints
    assert (Path(out) / 'model.safetensors').is_file()


def test_the_record_a_researcher_reads_in_the_ui(env, reference, tmp_path):
    """Issue 13: what MLflow's UI shows for a training run — experiment kind, tags to group and filter by, a
    description and MLflow's source/user tags, params that mean what they say, the best top-1 as a metric, MLflow's
    own system metrics, the datasets as inputs, the weights as a logged model, artifacts beside the store."""
    c = client(env)
    run = c.get_run(run_id(reference))
    exp = c.get_experiment(run.info.experiment_id)
    assert exp.tags['mlflow.experimentKind'] == 'custom_model_development' and exp.tags['mlflow.note.content']
    store_dir = Path(env['MLFLOW_TRACKING_URI'][len('sqlite:///'):]).parent
    # ours beside the database (MLflow's own Default keeps MLflow's ./mlruns/0: no public API moves it, and no run
    # of the project is logged there)
    assert Path(exp.artifact_location.replace('file://', '')).resolve().is_relative_to(store_dir / 'artifacts')
    t, p = run.data.tags, run.data.params
    assert {k: t[k] for k in ('family', 'remedy', 'model', 'depth', 'embed_dim', 'num_heads', 'seed', 'hardware',
                              'deepvit.kind')} == {
        'family': 'deepvit', 'remedy': 'reattn', 'model': 'deepvit_tiny_patch4_32', 'depth': '2', 'embed_dim': '32',
        'num_heads': '2', 'seed': '0', 'hardware': 'cpu', 'deepvit.kind': 'train'}
    assert t['mlflow.user'] and t['mlflow.source.name'].endswith('train.py') and t['mlflow.source.type'] == 'LOCAL'
    # the code version (issue 20): this checkout's commit, or 'unknown' in a copy that is not a git checkout
    assert (t['code.commit'], t['code.resumes']) == (_head(), '0') and t['code.dirty'] in ('true', 'false', 'unknown')
    assert (t['code.dirty'] == 'unknown') == (_head() == 'unknown')
    note = t['mlflow.note.content']
    assert 'deepvit_tiny_patch4_32' in note and 'depth 2' in note and '2 rank(s)' in note and 'fp32' in note
    # params: the architecture built (mlp_ratio was never overridden), overrides apart, the rate actually used
    assert (p['model.depth'], p['model.override.depth'], p['model.mlp_ratio']) == ('2', '2', '3.0')
    assert 'model.override.mlp_ratio' not in p and 'model.resolved.depth' not in p
    assert float(p['train.base_lr']) == 3.2e-2 and float(p['train.lr']) == pytest.approx(3.2e-2 * 64 / 512)
    lrs = [m.value for m in c.get_metric_history(run.info.run_id, 'train/lr')]
    assert 0.9 * float(p['train.lr']) < max(lrs) <= float(p['train.lr'])  # the schedule peaks at the logged rate
    assert float(p['train.base_lr']) > 5 * max(lrs)  # (the base rate never ran: global batch 64 of 512)
    top1 = c.get_metric_history(run.info.run_id, 'val/top1')
    best = max(top1, key=lambda m: m.value)
    assert run.data.metrics['val/top1_best'] == best.value
    assert run.data.metrics['val/top1_best_step'] == best.step
    assert [m.value for m in c.get_metric_history(run.info.run_id, 'val/top1_best')] == \
        list(np.maximum.accumulate([m.value for m in top1]))
    system = [k for k in run.data.metrics if k.startswith('system/')]
    assert 'system/cpu_utilization_percentage' in system and 'system/system_memory_usage_megabytes' in system
    assert len(c.get_metric_history(run.info.run_id, 'system/cpu_utilization_percentage')) >= 2
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {'training', 'validation'}
    assert json.loads(inputs['training'].profile)['num_samples'] == 1437
    assert json.loads(inputs['validation'].profile) == {'num_samples': DIGITS_VAL, 'num_classes': 10, 'split': 'val'}
    assert inputs['training'].digest != inputs['validation'].digest and len(inputs['training'].digest) == 16
    (output,) = run.outputs.model_outputs
    model = c.get_logged_model(output.model_id)
    assert model.source_run_id == run.info.run_id and str(model.status) == 'READY' and model.params['depth'] == '2'
    files = {Path(f.path).name for f in c.list_logged_model_artifacts(model.model_id)}
    assert {'model.safetensors', 'model.json'} <= files
    local = Path(c.download_artifacts(run.info.run_id, 'config.yaml', str(tmp_path)))
    assert local.is_file()


def test_one_rank_one_epoch_records_the_probe_with_the_same_step0_numbers(env, references, tmp_path):
    """A 1-epoch, 1-rank ZeRO-3 run: every collapse metric at step 0 and at the end, and the step-0 numbers equal
    the 2-rank ZeRO-3 run's of the same seed (same initial weights, same probe images, every rank probing).
    It also holds out 101 training images (data.holdout): training reads the other 1336, the holdout is scored
    every evaluation as holdout/* and recorded as a dataset input of its own. And its length is a compute budget
    (train.budget_pflop) that buys 60 steps: 1 epoch of 41 steps and 19 of the next, one cosine over the 60.
    Train accuracy is scored on 96 of the 1336 (data.train_eval) as train_eval/*."""
    import timm
    from deepvit.models import gmacs_per_image
    from deepvit.training.budget import pflop_per_step
    two = references(3)
    gmacs = gmacs_per_image(timm.create_model('deepvit_tiny_patch4_32', depth=2, embed_dim=32, num_heads=2, in_chans=1))
    budget = 60.5 * pflop_per_step(gmacs, 32)
    one = run_ok(env, tmp_path / 'one-rank', '--epochs', '1', '--warmup-epochs', '0.5', '--data.holdout', '101',
                 '--train.budget_pflop', repr(budget), '--data.train_eval', '96', ds='zero3.json', num_gpus=1)
    c = client(env)
    steps_per_epoch = 60      # the budget's steps: the probe runs at step 0 and at the end
    held = {k: c.get_metric_history(run_id(one), f'holdout/{k}') for k in ('top1', 'loss', 'num_samples')}
    assert [m.step for m in held['top1']] == [41, 60] and held['num_samples'][0].value == 101
    assert 0 <= held['top1'][0].value <= 100 and held['loss'][0].value > 0
    train_acc = {k: c.get_metric_history(run_id(one), f'train_eval/{k}') for k in ('top1', 'num_samples')}
    assert [m.step for m in train_acc['top1']] == [41, 60] and train_acc['num_samples'][0].value == 96
    assert 0 <= train_acc['top1'][-1].value <= 100
    p = c.get_run(run_id(one)).data.params
    assert (p['train.planned_steps'], p['train.epochs'], p['train.max_steps']) == ('60', '2', '60')
    assert 0 < budget - float(p['train.planned_pflop']) < pflop_per_step(gmacs, 32)
    lrs = [m.value for m in c.get_metric_history(run_id(one), 'train/lr')]
    assert lrs[-1] < 0.05 * max(lrs)     # the cosine ends with the budget, not with a 2-epoch plan
    inputs = {i.tags[0].value: json.loads(i.dataset.profile) for i in c.get_run(run_id(one)).inputs.dataset_inputs}
    assert (inputs['holdout']['num_samples'], inputs['training']['num_samples']) == (101, 1336)
    for key in COLLAPSE_METRICS:
        h1 = c.get_metric_history(run_id(one), key)
        assert [m.step for m in h1] == [0, steps_per_epoch], key
        h2 = c.get_metric_history(run_id(two), key)
        assert h1[0].value == pytest.approx(h2[0].value, abs=1e-6), key


def test_exported_weights_reload_in_plain_timm(env, reference):
    import timm
    import deepvit  # noqa: F401
    from deepvit.data import create_loader
    spec = json.loads((Path(reference) / 'model.json').read_text())
    model = timm.create_model(spec['name'], pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(Path(reference) / 'model.safetensors')),
                              **spec['kwargs']).eval()
    os.environ['DEEPVIT_DATA_CACHE'] = env['DEEPVIT_DATA_CACHE']
    loader = create_loader('digits', 'val', batch_size=100, train=False, img_size=32, in_chans=1, rank=0,
                           world_size=1, interpolation='bicubic')
    correct = n = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            n += len(y)
    assert n == DIGITS_VAL
    logged = final_metric(client(env), run_id(reference), 'val/top1')
    assert abs(100 * correct / n - logged) <= 100 / DIGITS_VAL + 1e-9  # same top-1 (one borderline image at most)


@pytest.mark.parametrize('stage', [2, 3])
def test_sigkill_of_a_rank_then_resume_matches_uninterrupted(stage, env, references, tmp_path):
    reference = references(stage)
    out = tmp_path / 'killed'
    proc = start(env, out, ds=f'zero{stage}.json')
    wait_for(out / 'checkpoints' / 'epoch0001', proc)
    wait_for(out / 'checkpoints' / 'latest', proc)
    import psutil
    victim = psutil.Process(rank_pids(proc.pid)[1])
    helpers = victim.children(recursive=True)   # its loader's forkserver, worker, resource tracker
    victim.kill()
    assert finish(proc) != 0
    assert shm_buffers_left(proc) == []   # was: 2 × 66 MiB of /dev/shm (RAM) left by every CPU job, killed or not
    assert not psutil.wait_procs(helpers, timeout=30)[1]   # nothing of the killed rank is left running
    assert not (out / 'model.safetensors').exists()
    first_id = run_id(out)
    assert client(env).get_run(first_id).info.status in ('RUNNING', 'FAILED')
    run_ok(env, out, '--resume', ds=f'zero{stage}.json')
    assert run_id(out) == first_id  # the same MLflow run continues
    assert '[deepvit] resumed from' in log_of(out)
    assert_same_weights(out, reference)
    c = client(env)
    assert client(env).get_run(first_id).info.status == 'FINISHED'
    for key in ('val/top1', 'val/loss'):
        assert final_metric(c, first_id, key) == pytest.approx(final_metric(c, run_id(reference), key), abs=1e-6)
    # the replayed steps (between the last checkpoint and the kill) are not logged twice: (key, step) pairs unique
    for key in c.get_run(first_id).data.metrics:
        steps = [m.step for m in c.get_metric_history(first_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)
    assert [m.step for m in c.get_metric_history(first_id, 'train/loss')] == \
        [m.step for m in c.get_metric_history(run_id(reference), 'train/loss')]
    if stage == 2:  # resuming a finished run does nothing and says so
        run_ok(env, out, '--resume', ds=f'zero{stage}.json')
        assert 'already finished its 3 epochs' in log_of(out)
        assert_same_weights(out, reference)


@pytest.mark.parametrize('source', ['export', 'checkpoint'])
def test_eval_only_scores_weights_and_records_an_eval_run(source, env, reference, tmp_path):
    """--eval-only on the exported weights or the run's checkpoint, 1 rank: the same top-1 as the training run's
    final evaluation (2 ranks), recorded as a run of kind 'eval' with the probe; bad weights are one-line errors."""
    weights = str(Path(reference) / 'model.safetensors') if source == 'export' else str(reference)
    out = tmp_path / 'eval'
    run_ok(env, out, '--eval-only', '--eval-weights', weights, num_gpus=1)
    c = client(env)
    exp = c.get_experiment_by_name('launch-tests')
    (run,) = [r for r in c.search_runs([exp.experiment_id], "tags.`deepvit.kind` = 'eval'")
              if r.data.params.get('eval.weights') == weights]
    assert run.info.status == 'FINISHED' and run.data.params['eval.split'] == 'val'
    assert run.data.params['eval.weights_format'] == '2'   # read from the export's metadata / checkpoint's state
    assert run.data.metrics['val/num_samples'] == DIGITS_VAL
    trained = final_metric(c, run_id(reference), 'val/top1')
    assert abs(run.data.metrics['val/top1'] - trained) <= 100 / DIGITS_VAL + 1e-9  # one borderline image at most
    assert 'collapse/calibrated_mean_adjacent_softmax' in run.data.metrics
    assert 'eval/correct.npy' in {a.path for a in c.list_artifacts(run.info.run_id, 'eval')}
    if source == 'export':  # weights of another architecture: refused in one line, exit 2
        bad = subprocess.run(launcher_cmd(num_gpus=1) + [
            '--deepspeed', str(ROOT / 'ds_configs' / 'zero2.json'), '--output-dir', str(tmp_path / 'bad'), *TINY,
            '--depth', '3', '--eval-only', '--eval-weights', weights], env=env, cwd=ROOT, capture_output=True,
            text=True, timeout=300)
        assert bad.returncode == 2 and 'do not fit' in bad.stdout + bad.stderr
        assert 'tensor(s) the model has are not in the weights (e.g. blocks.2.' in bad.stderr   # says what misfits


def test_resume_on_another_world_size_with_another_global_batch_stops_before_loading(env, reference, tmp_path,
                                                                                    monkeypatch):
    """A 2-rank ZeRO-2 checkpoint (global batch 64) resumed by 1 rank with the same DeepSpeed config (global batch
    32): preflight (before any process group) refuses in one paragraph naming the accumulation that keeps the run
    one run, and the MLflow run is untouched (was: a DeepSpeed traceback and a run left RUNNING). The launch script
    prints a preflight ConfigError as one line with exit 2 (test_train_config.py)."""
    import shutil
    from deepvit.training.config import ConfigError, build_parser, resolve
    from deepvit.training.preflight import preflight
    copy = tmp_path / 'copy'
    shutil.copytree(reference, copy)  # the same MLflow run (run.json), the reference's files left alone
    before = client(env).get_run(run_id(copy)).info.status
    for key in ('DEEPVIT_DATA_CACHE', 'MLFLOW_TRACKING_URI'):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setenv('RANK', '0')
    zero2 = str(ROOT / 'ds_configs' / 'zero2.json')
    with pytest.raises(ConfigError) as err:
        preflight(resolve(build_parser().parse_args(['--deepspeed', zero2, '--output-dir', str(copy), *TINY,
                                                     '--resume'])), zero2)
    text = str(err.value)
    assert 'was written by 2 rank(s), this job has 1' in text and 'ds_to_universal' in text
    assert 'global batch would change from 64 to 32' in text and 'gradient_accumulation_steps to 2' in text
    assert client(env).get_run(run_id(copy)).info.status == before
    assert not (copy / 'checkpoints' / 'epoch0003_universal').exists()   # nothing converted, nothing loaded


def _as_weights_format_1(tag_dir: Path) -> None:
    """Make checkpoint ``tag_dir`` look written before weights format 2: no ``weights_format`` in its client state."""
    name = tag_dir / 'mp_rank_00_model_states.pt'
    state = torch.load(name, map_location='cpu', weights_only=False)
    assert state.pop('weights_format') == 2
    torch.save(state, name)


def test_an_older_weights_format_resumes_only_where_it_reads_the_same(env, reference, tmp_path, monkeypatch):
    """Issue 18 (one head-mix layout): checkpoints and exports carry weights format 2. A DeepViT checkpoint of format
    1 (Θ stored untransposed) is refused by preflight before anything loads (ZeRO's flat partitions cannot be
    transposed on load); a ViT, whose weights read the same in both formats, passes the same check."""
    import shutil
    import timm
    from safetensors import safe_open
    from deepvit.training.checkpoint import latest_tag, saved_weights_format
    from deepvit.training.config import ConfigError, build_parser, resolve
    from deepvit.training.preflight import preflight
    from deepvit.training.resume import _check_weights_format
    ckpt = Path(reference) / 'checkpoints'
    assert saved_weights_format(ckpt / latest_tag(ckpt)) == 2
    with safe_open(str(Path(reference) / 'model.safetensors'), 'pt') as f:
        assert f.metadata()['deepvit.weights_format'] == '2'
    copy = tmp_path / 'copy'
    shutil.copytree(reference, copy)
    tag = latest_tag(copy / 'checkpoints')
    _as_weights_format_1(copy / 'checkpoints' / tag)
    for key in ('DEEPVIT_DATA_CACHE', 'MLFLOW_TRACKING_URI'):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '1')   # not rank 0: no job lock taken
    zero2 = str(ROOT / 'ds_configs' / 'zero2.json')
    with pytest.raises(ConfigError, match=f"checkpoint {tag} in .* is in weights format 1, this code writes format 2"):
        preflight(resolve(build_parser().parse_args(['--deepspeed', zero2, '--output-dir', str(copy), *TINY,
                                                     '--resume'])), zero2)
    vit = timm.create_model('vit_tiny_patch4_32', depth=2, device='meta')
    _check_weights_format(copy / 'checkpoints', tag, vit)   # no Θ: nothing to refuse
    bn_only = timm.create_model('deepvit_tiny_patch4_32', depth=2, reattn_init='identity', reattn_theta='fixed',
                                device='meta')
    _check_weights_format(copy / 'checkpoints', tag, bn_only)   # Θ = I reads the same transposed


def test_eval_weights_are_read_in_the_format_they_say_or_the_user_says(env, reference, tmp_path, monkeypatch):
    """--eval-only reads the weights format an export's metadata or a checkpoint's client state names. An unmarked
    .safetensors file is ambiguous for a learned Θ (an old export holds Θ, a file saved since by other means Θᵀ):
    preflight refuses it until --eval-weights-format says which, then the loader converts. Bad markers, a format
    that contradicts the file, and a 'latest' naming no folder are refused in one line, before anything is built."""
    import shutil
    from types import SimpleNamespace
    import timm
    from safetensors.torch import load_file, save_file
    from deepvit.training.checkpoint import latest_tag
    from deepvit.training.config import ConfigError, build_parser, resolve
    from deepvit.training.evaluation import load_weights
    from deepvit.training.preflight import _eval_weights_format, preflight
    spec = json.loads((Path(reference) / 'model.json').read_text())
    model = timm.create_model(spec['name'], **spec['kwargs'])

    def fmt(path, given=None, net=model):
        return _eval_weights_format(SimpleNamespace(eval_weights=str(path), eval_weights_format=given), net)
    export = Path(reference) / 'model.safetensors'
    assert fmt(export) == 2 and fmt(reference) == 2
    current = load_weights(str(export), model, 2)
    thetas = [k for k in current if k.endswith('attn.reattn.weight')]
    assert thetas and all(not torch.equal(current[k], current[k].t()) for k in thetas)
    old = {k: (v.t().contiguous() if k in thetas else v) for k, v in load_file(str(export)).items()}
    save_file(old, str(tmp_path / 'old.safetensors'))   # an export written before the marker: Θ, no metadata

    for key in ('DEEPVIT_DATA_CACHE', 'MLFLOW_TRACKING_URI'):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setenv('RANK', '0')
    zero2 = str(ROOT / 'ds_configs' / 'zero2.json')
    argv = ['--deepspeed', zero2, '--output-dir', str(tmp_path / 'eval'), *TINY, '--eval-only', '--eval-weights',
            str(tmp_path / 'old.safetensors')]
    with pytest.raises(ConfigError, match='has no deepvit.weights_format metadata.*--eval-weights-format 1'):
        preflight(resolve(build_parser().parse_args(argv)), zero2)
    assert not (tmp_path / 'eval').exists()   # refused before the output folder is made
    plan = preflight(resolve(build_parser().parse_args(argv + ['--eval-weights-format', '1'])), zero2)
    assert plan.cfg.eval_weights_format == 1
    loaded = load_weights(str(tmp_path / 'old.safetensors'), model, 1)
    assert loaded.keys() == current.keys() and all(torch.equal(loaded[k], current[k]) for k in current)
    vit = timm.create_model('vit_tiny_patch4_32', depth=2, device='meta')
    assert fmt(tmp_path / 'old.safetensors', net=vit) == 2   # no Θ: either format reads the same

    with pytest.raises(ConfigError, match=r"eval_weights_format=1, but eval_weights=.* says it is in format 2"):
        fmt(export, 1)
    with pytest.raises(ConfigError, match=r'eval_weights_format=3: must be 1 or 2'):
        fmt(export, 3)
    for value, words in (('two', "is 'two', not an integer weights format"), ('3', 'is in weights format 3')):
        save_file(old, str(tmp_path / f'{value}.safetensors'), metadata={'deepvit.weights_format': value})
        with pytest.raises(ConfigError, match=words):
            fmt(tmp_path / f'{value}.safetensors')

    copy = tmp_path / 'copy'
    shutil.copytree(Path(reference) / 'checkpoints', copy / 'checkpoints')
    _as_weights_format_1(copy / 'checkpoints' / latest_tag(copy / 'checkpoints'))
    assert fmt(copy) == 1
    loaded = load_weights(str(copy), model, 1)   # the checkpoint's Θ is current but its marker says 1: followed
    assert all(torch.equal(loaded[k], current[k].t() if k in thetas else current[k]) for k in current)
    (copy / 'checkpoints' / 'latest').write_text('epoch9999')
    with pytest.raises(ConfigError, match="names 'epoch9999', which is not a checkpoint folder there"):
        fmt(copy)


@pytest.mark.parametrize('stage', [2])   # ZeRO-3 checked by hand (docs/training.md); left out to keep the suite under 15 min
def test_resume_on_another_world_size_through_a_universal_checkpoint(stage, env, references, tmp_path):
    """A reference's epoch-2 checkpoint (2 ranks, ZeRO-2/3, global batch 64) continued by 1 rank with accumulation 2
    (global batch 64): DeepSpeed's universal checkpoint is made once and loaded, epoch 3 trains from the saved
    weights and optimizer state to what the 2-rank run reached, and the same MLflow run ends FINISHED. Was: refused
    (before that, a DeepSpeed traceback)."""
    import shutil
    reference = references(stage)
    copy = tmp_path / 'copy'
    shutil.copytree(reference, copy)
    (copy / 'checkpoints' / 'latest').write_text('epoch0002')
    shutil.rmtree(copy / 'checkpoints' / 'epoch0003')
    (copy / 'model.safetensors').unlink()
    ds = tmp_path / f'zero{stage}_accum2.json'
    ds.write_text(json.dumps({**json.loads((ROOT / 'ds_configs' / f'zero{stage}.json').read_text()),
                              'gradient_accumulation_steps': 2}))
    run_ok(env, copy, '--resume', ds=str(ds), num_gpus=1)   # an absolute ds path replaces ds_configs/
    text = log_of(copy)
    assert 'world size 2 -> 1: resuming through DeepSpeed\'s universal checkpoint epoch0002_universal' in text
    assert '(epoch 2, batch 0, step 44)' in text
    assert (copy / 'checkpoints' / 'epoch0002_universal' / '.complete').is_file()
    assert (copy / 'checkpoints' / 'latest').read_text() == 'epoch0003' and (copy / 'model.safetensors').is_file()
    assert client(env).get_run(run_id(copy)).info.status == 'FINISHED'
    # epoch 3 ran on one rank from the saved weights and optimizer state: the same step count, loss and accuracy
    # as the 2-rank run to within the other batch composition, and weights within a few percent of it
    line = re.compile(r'epoch 3/3 step (\d+) \| train loss ([\d.]+) \| val loss [\d.]+ top1 ([\d.]+)')
    (step, loss, top1), = line.findall(text)
    (ref_step, ref_loss, ref_top1), = line.findall(log_of(reference))
    assert step == ref_step == '66'
    assert float(loss) == pytest.approx(float(ref_loss), abs=0.1) and float(top1) == pytest.approx(float(ref_top1), abs=5)
    mine, ref = weights(copy), weights(reference)
    diff = torch.cat([(mine[k] - ref[k]).flatten() for k in ref if ref[k].is_floating_point()]).norm()
    size = torch.cat([ref[k].flatten() for k in ref if ref[k].is_floating_point()]).norm()
    assert diff / size < 0.05, float(diff / size)


def test_output_dir_under_a_file_is_refused_before_rendezvous(env, tmp_path):
    (tmp_path / 'file').write_text('x')
    t0 = time.time()
    cmd = launcher_cmd() + ['--deepspeed', str(ROOT / 'ds_configs' / 'zero2.json'), '--output-dir',
                            str(tmp_path / 'file' / 'run'), *TINY]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    code, text = res.returncode, res.stdout + res.stderr
    assert code == 2 and 'cannot be created' in text and 'a parent is a regular file' in text
    # no rank waited for the other at the rendezvous (that wait lasts the process group's 60-min timeout,
    # build.py); the launcher's own start took up to 90 s on 2 cores at load ~7
    assert 'c10d' not in text and time.time() - t0 < 240


def test_resume_with_more_epochs_replans_the_schedule(env, tmp_path):
    """--epochs 1, then --resume --epochs 2: epoch 2 follows the 2-epoch cosine plan from where the run is (was:
    all of it at min_lr, the 1-epoch plan restored), and the run's epochs tag says 2."""
    out = tmp_path / 'grow'
    run_ok(env, out, '--epochs', '1', '--warmup-epochs', '0', num_gpus=1)
    run_ok(env, out, '--resume', '--epochs', '2', '--warmup-epochs', '0', num_gpus=1)
    c = client(env)
    lrs = {m.step: m.value for m in c.get_metric_history(run_id(out), 'train/lr')}
    per_epoch = 1437 // 32
    peak = float(c.get_run(run_id(out)).data.params['train.lr'])
    first_of_epoch2 = min(s for s in lrs if s > per_epoch)
    assert lrs[first_of_epoch2] > 0.3 * peak          # cosine half-way, not min_lr (1e-5)
    assert lrs[max(lrs)] < 0.05 * peak                 # and it decays to the end of the 2-epoch plan
    assert c.get_run(run_id(out)).data.tags['epochs'] == '2'
    tags = c.get_run(run_id(out)).data.tags   # the resume is recorded: its code version and the step it began at
    epoch1_end = next(m.step for m in c.get_metric_history(run_id(out), 'epoch') if m.value == 1)
    assert (tags['code.resumes'], tags['code.resume.1.step']) == ('1', str(epoch1_end))
    assert tags['code.resume.1.commit'] == tags['code.commit'] == _head() and 'code.resume.2.commit' not in tags


def test_sigterm_checkpoints_mid_epoch_and_resumes_exactly(env, reference, tmp_path):
    out = tmp_path / 'preempted'
    proc = start(env, out)
    wait_for(out / 'checkpoints' / 'epoch0001', proc)
    time.sleep(0.5)  # inside epoch 2
    import psutil
    for pid in rank_pids(proc.pid).values():  # a scheduler signals every process: ranks and their DataLoader workers
        for p in [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True):
            p.send_signal(signal.SIGTERM)
    assert finish(proc) != 0
    text = log_of(out)
    assert 'SIGTERM: checkpoint' in text and 'Traceback' not in text
    assert text.count('SIGTERM: every rank stops at the next log step') == 1       # said once, by rank 0
    tag = (out / 'checkpoints' / 'latest').read_text()
    assert tag.startswith('step')  # a mid-epoch checkpoint (an epoch tag would mean the signal was missed)
    assert client(env).get_run(run_id(out)).info.status == 'KILLED'
    run_ok(env, out, '--resume')
    assert client(env).get_run(run_id(out)).info.status == 'FINISHED'
    assert_same_weights(out, reference)


@pytest.mark.parametrize('target', ['runner', 'launcher', 'ctrl-c'])
def test_sigterm_to_one_process_of_the_job_stops_every_rank_at_one_step(target, env, reference, tmp_path):
    """SIGTERM to the `deepspeed` command only (was: the ranks trained on as orphans and FINISHED), to the
    per-node launcher only (was: rank 1 died in an all-reduce, no checkpoint), or Ctrl-C (SIGINT to the whole
    foreground process group, as a terminal sends it): every rank checkpoints at the same step, the run ends KILLED,
    no process of the job is left, and the resumed run equals the uninterrupted one."""
    import psutil
    out = tmp_path / target
    proc = start(env, out)
    wait_for(out / 'checkpoints' / 'epoch0001', proc)
    time.sleep(0.5)  # inside epoch 2
    launcher = next(c for c in psutil.Process(proc.pid).children(recursive=True)
                    if 'deepspeed.launcher.launch' in ' '.join(c.cmdline()))
    job = [launcher] + launcher.children(recursive=True)
    if target == 'ctrl-c':
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid if target == 'runner' else launcher.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    gone, alive = psutil.wait_procs(job, timeout=120)
    assert not alive, [p.cmdline() for p in alive]
    text = log_of(out)
    assert 'SIGTERM: checkpoint' in text and 'Connection closed by peer' not in text
    if target == 'ctrl-c':                  # one line from the job (DeepSpeed's own runner still prints its own)
        assert text.count('Ctrl-C: every rank stops at the next log step and writes a checkpoint') == 1, text[-3000:]
    tag = (out / 'checkpoints' / 'latest').read_text()  # mid-epoch, or at the end of epoch 2 when the signal was
    assert tag in ('epoch0002',) or tag.startswith('step')   # noticed there (a loaded machine): one step for all ranks
    assert {'rank0.pt', 'rank1.pt'} <= {p.name for p in (out / 'checkpoints' / tag).iterdir()}
    assert client(env).get_run(run_id(out)).info.status == 'KILLED'
    run_ok(env, out, '--resume')
    assert_same_weights(out, reference)


def test_two_nodes_on_one_machine_equal_one_node(env, reference, tmp_path):
    hostfile = tmp_path / 'hostfile'
    hostfile.write_text('node0 slots=1\nnode1 slots=1\n')
    port = free_port()
    out = tmp_path / 'multinode'
    procs = [start(env, out if k == 0 else Path(str(out) + f'-node{k}'), '--output-dir', str(out), num_gpus=None,
                   port=port, extra_launcher=('--hostfile', str(hostfile), '--no_ssh', '--node_rank', str(k),
                                              '--master_addr', '127.0.0.1'))
             for k in (0, 1)]
    codes = [finish(p) for p in procs]
    assert codes == [0, 0], log_of(out)[-3000:]
    assert client(env).get_run(run_id(out)).data.params['world_size'] == '2'
    assert_same_weights(out, reference)


def test_a_full_disk_while_checkpointing_is_said_in_words_and_the_previous_checkpoint_resumes(env, tmp_path):
    """A real full filesystem: the checkpoint folder on a 4 MiB tmpfs, filled up to 100 KiB after epoch 1, so the epoch-2
    checkpoint (~0.5 MiB) cannot be written. Was: `basic_ios::clear: iostream error` and no word of space."""
    import shutil
    launching.require_system([] if os.geteuid() == 0 and shutil.which('mount') else ['root (mount -t tmpfs)'],
                             'the full-disk test')
    disk = tmp_path / 'disk'
    disk.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(disk)], check=True)
    try:
        out = tmp_path / 'run'                             # the checkpoints on the small disk, the rest (log) not
        out.mkdir()
        (out / 'checkpoints').symlink_to(disk)
        run_ok(env, out, '--epochs', '1', '--warmup-epochs', '0', num_gpus=1)
        free = shutil.disk_usage(disk).free
        (disk / 'filler').write_bytes(b'\0' * (free - 100 * 1024))
        code = finish(start(env, out, '--epochs', '2', '--warmup-epochs', '0', '--resume', num_gpus=1))
        text = log_of(out)
        assert code != 0
        assert re.search(r'no space left on \S+/checkpoints \([0-9.]+ MiB free\) while writing checkpoint epoch0002; '
                         r'checkpoint epoch0001 is intact and --resume continues from it', text), text[-3000:]
        assert 'Traceback' not in text and (out / 'checkpoints' / 'latest').read_text() == 'epoch0001'
        assert client(env).get_run(run_id(out)).info.status == 'FAILED'
        (disk / 'filler').unlink()                         # space freed: the resume continues from epoch 1
        shutil.rmtree(out / 'checkpoints' / 'epoch0002')
        run_ok(env, out, '--epochs', '2', '--warmup-epochs', '0', '--resume', num_gpus=1)
        assert (out / 'checkpoints' / 'latest').read_text() == 'epoch0002'
        assert client(env).get_run(run_id(out)).info.status == 'FINISHED'
    finally:
        subprocess.run(['umount', '-l', str(disk)], check=False)
