"""Test-session safety net: whatever a test forgets, the data cache and the MLflow store live in a temporary folder
(never ~/.cache, ./mlflow.db or a tracking server from the user's environment)."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

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
