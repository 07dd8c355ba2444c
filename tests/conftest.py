"""Test-session safety net: whatever a test forgets, the data cache and the MLflow store live in a temporary folder
(never ~/.cache, ./mlflow.db or a tracking server from the user's environment)."""
import os
import shutil
import tempfile
from pathlib import Path

_BASE = Path(tempfile.mkdtemp(prefix='deepvit-tests-'))


def pytest_configure(config):
    os.environ['DEEPVIT_DATA_CACHE'] = str(_BASE / 'cache')
    os.environ['MLFLOW_TRACKING_URI'] = f"sqlite:///{_BASE / 'mlflow.db'}"


def pytest_unconfigure(config):
    shutil.rmtree(_BASE, ignore_errors=True)
