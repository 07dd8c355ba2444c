"""The GPU check's non-GPU parts (issue 21.5), on CPU: argument handling, the offline install check against a real
wheelhouse, the generated data, the summary from a recorded run, and the whole check end to end in --cpu-smoke mode."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'gpu_check.sh'


@pytest.fixture(scope='module')
def gpu_check():
    spec = importlib.util.spec_from_file_location('gpu_check', ROOT / 'benchmarks' / 'gpu_check.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env():
    return dict(os.environ, PYTHON=sys.executable,
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    for args, words in ((['--batches', '0'], '--batches must be positive'), (['--budget-s', '-1'], '--budget-s'),
                        (['--frobnicate'], 'unrecognized arguments')):
        r = subprocess.run(['bash', str(SCRIPT), *args, '--out', str(tmp_path / 'o')], env=_env(),
                           capture_output=True, text=True)
        assert r.returncode == 2 and words in r.stderr, (args, r.stderr)
    assert not (tmp_path / 'o').exists()


def test_install_check_installs_what_is_missing_from_the_wheelhouse_offline(gpu_check, tmp_path):
    """A module the environment lacks is installed from a wheel in the wheelhouse (no index), into the work folder
    only; without that wheel the error names the module, its import error and how to make the wheelhouse."""
    pkg = tmp_path / 'src'
    (pkg / 'gpucheck_probe_mod').mkdir(parents=True)
    (pkg / 'gpucheck_probe_mod' / '__init__.py').write_text('VALUE = 42\n')
    (pkg / 'setup.py').write_text("from setuptools import setup\nsetup(name='gpucheck-probe-mod', version='1.0', "
                                  "packages=['gpucheck_probe_mod'])\n")
    house = tmp_path / 'wheelhouse'
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-index', '--no-deps', '--no-build-isolation', '-q',
                    '-w', str(house), str(pkg)], check=True, capture_output=True)
    env = dict(os.environ)
    with pytest.raises(gpu_check.CheckError) as err:
        gpu_check.ensure_installed(tmp_path / 'empty', tmp_path / 'site0', dict(env), ['json', 'gpucheck_probe_mod'])
    text = str(err.value)
    assert "gpucheck_probe_mod (gpucheck_probe_mod): ModuleNotFoundError: No module named 'gpucheck_probe_mod'" in text
    assert 'make_wheelhouse.sh --python-version' in text and 'json' not in text.split('missing')[1].split(':')[0]
    installed = gpu_check.ensure_installed(house, tmp_path / 'site', env, ['json', 'gpucheck_probe_mod'])
    assert installed == ['gpucheck_probe_mod']
    assert (tmp_path / 'site' / 'gpucheck_probe_mod' / '__init__.py').is_file()
    out = subprocess.run([sys.executable, '-c', 'import gpucheck_probe_mod as m; print(m.VALUE, m.__file__)'],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith('42 ' + str(tmp_path / 'site'))
    assert gpu_check.ensure_installed(house, tmp_path / 'site', env, ['json', 'gpucheck_probe_mod']) == []


@pytest.mark.slow   # the converter runs in a subprocess, as on the GPU machine: 6-7 s
def test_generated_data_converts_into_shards_the_loader_reads(gpu_check, tmp_path):
    from deepvit.data import create_loader, read_info
    shards = gpu_check.prepare_data(tmp_path, per_class=4, size=40, env=_env())
    info = read_info(shards)
    assert len(info.classes) == 10 and info.splits['train'].num_samples == 40 and info.splits['val'].num_samples == 10
    images, labels = next(iter(create_loader(shards, 'val', batch_size=10, train=False, img_size=32)))
    assert images.shape == (10, 3, 32, 32) and float(images.std()) > 0.1
    assert gpu_check.prepare_data(tmp_path, per_class=99, env=_env()) == shards     # made once, then reused


def _loop(model, depth, batch, ours, bare=None, ckpt=False, mib=None):
    loops = {}
    if bare:
        loops['bare PyTorch'] = dict(images_per_s=bare, gmacs_per_image=4.0, peak_mib=mib, mfu_vs_measured_peak=0.3)
    loops['deepvit (DeepSpeed ZeRO-2)'] = dict(images_per_s=ours, gmacs_per_image=4.0, peak_mib=mib,
                                               mfu_vs_measured_peak=0.25)
    return dict(model=model, depth=depth, batch=batch, grad_checkpointing=ckpt, loops=loops)


def test_summary_from_a_recorded_run(gpu_check, tmp_path):
    """Known numbers in, known sentences out: the launch-bound point, the Re-attention overhead, the datasheet MFU on
    an H200, the depth estimate from two checkpointed depths, failures; and the --summary command prints it."""
    rows = [_loop('vit_16b_patch16_224', 16, 32, 1000, 1050, mib=4096),
            _loop('vit_16b_patch16_224', 16, 128, 2000, 2040, mib=8192),
            _loop('vit_16b_patch16_224', 16, 256, 2100, 2150, mib=16384),
            _loop('deepvit_16b_patch16_224', 16, 128, 1600, 1700, mib=9000),
            _loop('deepvit_16b_patch16_224', 32, 128, 700, ckpt=True, mib=10 * 1024),
            _loop('deepvit_16b_patch16_224', 64, 128, 350, ckpt=True, mib=18 * 1024),
            dict(_loop('deepvit_16b_patch16_224', 16, 128, 800), data='/tmp/shards', workers=15)]
    header = dict(kind='header', cpu_smoke=False, device_name='NVIDIA H200', total_gib=140.0, precision='bf16',
                  matmul_peak_flops=7.5e14, matmul='8192² bf16, fastest of 10', when='2026-12-03')
    recorded = tmp_path / 'gpu_check.jsonl'
    recorded.write_text(''.join(json.dumps(r) + '\n' for r in [header, *rows, dict(kind='failure', what='x: exit 1'),
                                                               dict(kind='job', what='--model m', status='finished',
                                                                    images_per_s='812')]))
    read_header, read_rows, failures, job = gpu_check.read_results(recorded)
    assert read_rows == rows and failures == ['x: exit 1'] and job['images_per_s'] == '812'
    table = gpu_check.summarize(read_rows, header=read_header, failures=failures, job=job)
    assert 'micro-batch 128 reaches 2000 img/s, within 10 % of the best (2100)' in table
    assert 'smaller batches are launch-bound (fraction of the best: 32: 0.48)' in table
    assert 'Re-attention overhead at 16 blocks, batch 128: DeepViT step = 1.25× the SDPA ViT step' in table
    assert '| deepvit_16b_patch16_224 | 16 | 128 | no | deepvit (DeepSpeed ZeRO-2) + loader (15 workers) | 800 |' in table
    assert table.count('Re-attention overhead') == 1          # the real-loader row is not an in-memory step
    # 1000 img/s x 6 x 4 GMACs = 24 TFLOP/s of 989: 2.4 %
    assert '| vit_16b_patch16_224 | 16 | 32 | no | deepvit (DeepSpeed ZeRO-2) | 1000 | 0.952 | 4.0 | 25.0 % | 2.4 % |' \
        in table
    # (18 - 10) GiB over 32 blocks = 256 MiB per block; (0.9 x 140 GiB - 10 GiB) / 256 MiB + 32 = 496
    assert '256 MiB per block at batch 128' in table and '≈ 496 blocks' in table
    assert '**Failed or skipped**: x: exit 1' in table and 'Real job (--model m): finished; 812 img/s' in table
    assert 'CPU smoke' not in table
    printed = subprocess.run(['bash', str(SCRIPT), '--summary', str(recorded)], env=_env(), capture_output=True,
                             text=True, check=True).stdout
    assert printed == table


@pytest.mark.slow  # six DeepSpeed processes and a launched job: ~2-4 min on 2 cores
def test_cpu_smoke_runs_every_step_end_to_end(tmp_path):
    # --budget-s: the GPU run's 450-s guard would skip the last steps on 2 loaded CPU cores (seen: 506 s beside a study)
    r = subprocess.run(['bash', str(SCRIPT), '--cpu-smoke', '--batches', '4', '--out', str(tmp_path / 'out'),
                        '--work', str(tmp_path / 'work'), '--budget-s', '1500'], env=_env(), capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = (tmp_path / 'out' / 'gpu_check.md').read_text()
    assert '**CPU smoke run**: the GPU steps' in table and 'Failed' not in table
    assert table.count('| deepvit_tiny_patch4_32 |') == 5 and table.count('| vit_tiny_patch4_32 |') == 2
    assert '+ loader (1 workers)' in table
    assert 'Re-attention overhead at 2 blocks, batch 4' in table
    assert 'Real job (' in table and ': finished; ' in table and '; ? img/s' not in table
    assert {p.name for p in (tmp_path / 'out').iterdir()} == {'gpu_check.jsonl', 'gpu_check.md', 'train.txt'}
    assert (tmp_path / 'work' / 'mlflow.db').is_file() and (tmp_path / 'work' / 'data' / 'shards').is_dir()
