"""Where the MLflow store is: the one default tracking URI of training, the sweep and the analysis.

Imports only the standard library, so :mod:`analysis` (which must not import the trainer) takes it from here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

DEFAULT_DB = 'mlflow.db'

__all__ = ['DEFAULT_DB', 'default_tracking_uri', 'sqlite_path']


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<absolute path of ./mlflow.db>``.

    The path is made absolute here: a relative SQLite URI resolves against each process's working directory.
    """
    return os.environ.get('MLFLOW_TRACKING_URI') or f"sqlite:///{Path(DEFAULT_DB).resolve()}"


def sqlite_path(uri: str) -> Optional[str]:
    """The database path of a ``sqlite:///PATH`` URI as written (relative or absolute), else ``None``."""
    if not uri.startswith('sqlite:///'):
        return None
    return uri[len('sqlite:///'):].split('?', 1)[0]
