"""Helpers of the tests that launch the real job (DeepSpeed's launcher, CPU ranks): commands, waiting, reading
back the record and the weights. The shared fixtures (``env``, ``references``, ``reference``) are in conftest.py."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
# 64 probe images (default 256): the launches test the probe's mechanics, and its statistics cost ~3 s per probe
# at 256 images since the instrument grew row-wise, image-null, CKA and bootstrap measures (< 1 s at 64)
TINY = ['--depth', '2', '--embed-dim', '32', '--num-heads', '2', '--epochs', '3', '--train.log_every', '2',
        '--data.num_workers', '1', '--log.system_metrics_interval', '1', '--collapse-images', '64',
        '--data.train_eval', '64']
DIGITS_VAL = 360
STAGES = ('softmax', 'mixed')
COLLAPSE_METRICS = tuple(f'collapse/{name}_{stage}' for stage in STAGES for name in (
    'similar_blocks', 'calibrated_similar_blocks', 'calibrated_mean_adjacent', 'effective_keys',
    'similar_blocks_fraction', 'calibrated_similar_adjacent', 'mean_adjacent_similarity', 'row_mean_adjacent',
    'row_similar_blocks', 'row_structure_mean_adjacent', 'entropy')) + (
    'collapse/row_mean_adjacent_softmax_lo', 'collapse/row_mean_adjacent_mixed_hi', 'collapse/cka_mean_adjacent',
    'collapse/token_residual_last')
COLLAPSE_ARRAYS = tuple(f'collapse/{stem}_{stage}.npy' for stage in STAGES for stem in (
    'similarity', 'calibrated', 'centred', 'head_avg', 'null', 'effective_keys', 'row', 'row_content', 'entropy')) + (
    'collapse/cka.npy', 'collapse/token_residual.npy')


def require_system(missing: list, what: str) -> None:
    """Tests that need root or system tools: skipped with a one-line reason where ``missing`` is not empty (a fresh
    machine running the README's test command), failed instead when ``DEEPVIT_REQUIRE_SYSTEM_TESTS=1`` (``.ci/run``
    sets it, so CI always runs them)."""
    import pytest
    if missing:
        reason = f"{what} needs {', '.join(missing)} (tests/run.sh installs the tools when run as root)"
        if os.environ.get('DEEPVIT_REQUIRE_SYSTEM_TESTS') == '1':
            pytest.fail(reason + '; DEEPVIT_REQUIRE_SYSTEM_TESTS=1 demands it')
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launcher_cmd(*, num_gpus=2, port=None, extra_launcher=()):
    # DeepSpeed's launcher (the `deepspeed` console script) run with this interpreter, whatever PATH holds
    return [sys.executable, '-m', 'deepspeed.launcher.runner', *extra_launcher, *(['--num_gpus', str(num_gpus)] if num_gpus else []),
            '--master_port', str(port or free_port()), str(ROOT / 'launch' / 'train.py')]


def start(env, out, *args, ds='zero2.json', experiment='launch-tests', **kw):
    cmd = launcher_cmd(**kw) + ['--deepspeed', str(ROOT / 'ds_configs' / ds), '--output-dir', str(out),
                                '--experiment', experiment, *TINY, *args]
    log = open(Path(str(out) + '.log'), 'w')
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def finish(proc, timeout=420):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def shm_buffers_left(proc) -> list:
    """DeepSpeed CPU all-reduce buffers of the job ``proc`` launched still in /dev/shm (named by its master port)."""
    port = proc.args[proc.args.index('--master_port') + 1]
    return sorted(p.name for p in Path('/dev/shm').glob(f'deepspeed_allreduce_buffer_*_{port}_*'))


def log_of(out) -> str:
    return Path(str(out) + '.log').read_text()


def run_ok(env, out, *args, **kw):
    code = finish(start(env, out, *args, **kw))
    assert code == 0, log_of(out)[-4000:]
    return out


def run_id(out) -> str:
    return json.loads((Path(out) / 'run.json').read_text())['run_id']


def weights(out):
    return load_file(str(Path(out) / 'model.safetensors'))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


def rank_pids(launcher_pid):
    """{local rank: pid} of the rank processes (children of deepspeed.launcher.launch, not their DataLoader workers)."""
    import psutil
    out = {}
    for proc in psutil.Process(launcher_pid).children(recursive=True):
        if 'deepspeed.launcher.launch' not in ' '.join(proc.parent().cmdline()):
            continue
        for arg in proc.cmdline():
            if arg.startswith('--local_rank='):
                out[int(arg.split('=')[1])] = proc.pid
    assert len(out) == 2, out
    return out


def wait_for(path: Path, proc, timeout=300):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f'job ended before {path} appeared'
        assert time.time() - t0 < timeout, f'{path} did not appear'
        time.sleep(0.05)


def client(env):
    return MlflowClient(env['MLFLOW_TRACKING_URI'])


def final_metric(c, rid, key):
    return c.get_metric_history(rid, key)[-1].value
