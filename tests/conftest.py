"""Test-session safety net: whatever a test forgets, the data cache and the MLflow store live in a temporary folder
(never ~/.cache, ./mlflow.db or a tracking server from the user's environment)."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

import launching

_BASE = Path(tempfile.mkdtemp(prefix='deepvit-tests-'))


def pytest_configure(config):
    os.environ['DEEPVIT_DATA_CACHE'] = str(_BASE / 'cache')
    os.environ['MLFLOW_TRACKING_URI'] = f"sqlite:///{_BASE / 'mlflow.db'}"


def pytest_unconfigure(config):
    shutil.rmtree(_BASE, ignore_errors=True)


@pytest.fixture(scope='session')
def store_template(tmp_path_factory):
    """One migrated SQLite store per session (migrations take seconds); tests copy the file."""
    from mlflow_runs import create_store
    path = tmp_path_factory.getbasetemp() / 'mlflow_template.db'
    if not path.exists():
        create_store(path)
    return path


# ---- the launched job (tests/launching.py): shared by test_train_launch.py and test_two_hosts.py
@pytest.fixture(scope='session')
def env(tmp_path_factory):
    """Environment of launched jobs: their own data cache and MLflow store, one thread per rank."""
    base = tmp_path_factory.mktemp('launch')
    e = dict(os.environ)
    e.update(DEEPVIT_DATA_CACHE=str(base / 'cache'), MLFLOW_TRACKING_URI=f"sqlite:///{base / 'mlflow.db'}",
             OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    e.pop('RANK', None), e.pop('WORLD_SIZE', None)
    return e


@pytest.fixture(scope='session')
def references(env, tmp_path_factory):
    """Uninterrupted 2-rank runs, one per ZeRO stage, made on first use: the yardsticks for resume equivalence."""
    made = {}

    def get(stage: int):
        if stage not in made:
            made[stage] = launching.run_ok(env, tmp_path_factory.mktemp('ref') / f'zero{stage}', ds=f'zero{stage}.json')
        return made[stage]
    return get


@pytest.fixture(scope='session')
def reference(references):
    """The uninterrupted ZeRO-2 run (also the multi-node yardstick)."""
    return references(2)
