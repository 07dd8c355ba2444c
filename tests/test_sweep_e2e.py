"""One real tiny sweep end to end: 2 families × 2 depths through the real `deepspeed` launcher (1 CPU rank) and the
real launch/train.py on the built-in digits, then a rerun (all skipped) and the analysis. About 2-3 minutes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from launching import free_port

pytestmark = pytest.mark.slow  # real multi-process launches: not in the fast lane

REPO = Path(__file__).resolve().parent.parent


def test_tiny_sweep_end_to_end(tmp_path):
    env = {**os.environ, 'MLFLOW_TRACKING_URI': f"sqlite:///{tmp_path / 'mlflow.db'}",
           'DEEPVIT_DATA_CACHE': str(tmp_path / 'cache'), 'PYTHON': sys.executable,
           'DEEPVIT_LAUNCHER': f'{sys.executable} -m deepspeed.launcher.runner'}
    cmd = ['bash', str(REPO / 'launch' / 'sweep_depth.sh'), '--experiment', 'e2e', '--families', 'vit,deepvit',
           '--depths', '1,2', '--widths', '32', '--seeds', '0', '--num-gpus', '1',
           '--launcher-args', f'--master_port {free_port()}',
           '--', '--output-dir', str(tmp_path / 'sweep'), '--epochs', '1', '--warmup-epochs', '0.2']
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert '4/4 points finished' in first.stdout
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and '4 finished, 0 to run' in again.stdout, again.stdout + again.stderr

    out = tmp_path / 'report'
    res = subprocess.run([sys.executable, '-m', 'analysis', '--experiment', 'e2e', '--out', str(out),
                          '--no-progress'], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    runs = pd.read_csv(out / 'runs.csv')
    assert len(runs) == 4 and set(runs['status']) == {'FINISHED'}
    assert sorted(zip(runs['family'], runs['depth'])) == [('deepvit', 1), ('deepvit', 2), ('vit', 1), ('vit', 2)]
    assert runs['top1_best'].between(0, 100).all() and runs['params'].gt(0).all()
    assert runs['similar_blocks_softmax'].notna().all() and len(set(runs['sweep_id'])) == 1
    assert (out / 'figures' / 'similarity_softmax.png').exists()
    assert len(json.loads((out / 'saturation.json').read_text())['series']) == 2
    for key in runs['sweep_point']:
        assert (tmp_path / 'sweep' / key).is_dir()
