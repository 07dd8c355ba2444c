"""Read access to the MLflow store a training run writes (layout: ``docs/mlflow_schema.md``).

The only module of :mod:`analysis` that imports mlflow. It opens the store, finds an experiment and a sweep's runs,
and fetches metric histories and artifacts. Nothing here writes to the store.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from mlflow import MlflowClient
from mlflow.entities import Experiment, Run

__all__ = ['AnalysisError', 'default_tracking_uri', 'store_exists', 'open_store', 'get_experiment', 'iter_runs', 'sweep_runs',
           'metric_history', 'download_artifact', 'load_array', 'SWEEP_KIND', 'KIND_TAG']

from deepvit.schema import EVAL_KIND, KIND_TAG, SWEEP_ID_TAG, SWEEP_KIND  # the record's names: one place (deepvit/schema.py)
from deepvit.tracking_uri import default_tracking_uri, sqlite_path  # the one default store (training's too)


class AnalysisError(RuntimeError):
    """A user-facing error: the store, experiment or sweep asked for is not there. The message says what exists."""


def _sqlite_path(uri: str) -> Optional[Path]:
    path = sqlite_path(uri)
    return None if path is None else Path(path)


def store_exists(uri: str) -> bool:
    """False only for a SQLite URI whose file is missing (opening it would create an empty store)."""
    path = _sqlite_path(uri)
    return path is None or path.exists()


def open_store(uri: Optional[str] = None) -> Tuple[MlflowClient, str]:
    """An ``MlflowClient`` on ``uri`` (default :func:`default_tracking_uri`) and the URI used.

    Raises:
        AnalysisError: ``uri`` is a SQLite file that does not exist (opening it would silently create an empty store).
    """
    uri = uri or default_tracking_uri()
    if not store_exists(uri):
        raise AnalysisError(f"no MLflow store at {_sqlite_path(uri)} (tracking URI {uri!r}); set "
                            f"MLFLOW_TRACKING_URI or run from the directory holding the training runs' mlflow.db")
    return MlflowClient(tracking_uri=uri), uri


def get_experiment(client: MlflowClient, name: str) -> Experiment:
    """The experiment called ``name``.

    Raises:
        AnalysisError: no such experiment; the message lists the experiments in the store.
    """
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage != 'active':
        names = sorted(e.name for e in client.search_experiments())
        raise AnalysisError(f"experiment {name!r} not found at tracking URI {client.tracking_uri!r}; "
                            f"experiments there: {', '.join(names) or '(none)'}")
    return exp


def iter_runs(client: MlflowClient, experiment_ids: Sequence[str], filter_string: str = '') -> Iterator[Run]:
    """Every active run matching ``filter_string``, following MLflow's pages (1000 runs each)."""
    token = None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string=filter_string, max_results=1000,
                                  order_by=['attributes.start_time ASC'], page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _quote(value: str) -> str:
    if "'" in value:
        raise AnalysisError(f"sweep id {value!r} contains a quote")
    return f"'{value}'"


def sweep_runs(client: MlflowClient, experiment: Experiment,
               sweep_id: Optional[str] = None) -> Tuple[List[Run], List[Run]]:
    """Training runs and sweep parents of ``experiment``, restricted to ``sweep_id`` when given.

    Returns:
        ``(training_runs, parents)``, each oldest first. Training runs are every run not tagged
        ``deepvit.kind=sweep``.
    Raises:
        AnalysisError: ``sweep_id`` given but no run carries it (the message lists the sweeps there), or the
        experiment holds no training run.
    """
    flt = f'tags.{SWEEP_ID_TAG} = {_quote(sweep_id)}' if sweep_id else ''
    runs = list(iter_runs(client, [experiment.experiment_id], flt))
    parents = [r for r in runs if r.data.tags.get(KIND_TAG) == SWEEP_KIND]
    train = [r for r in runs if r.data.tags.get(KIND_TAG) not in (SWEEP_KIND, EVAL_KIND)]  # evaluations apart
    where = f"experiment {experiment.name!r} (tracking URI {client.tracking_uri!r})"
    if sweep_id and not runs:
        known = sorted({r.data.tags[SWEEP_ID_TAG] for r in iter_runs(client, [experiment.experiment_id])
                        if SWEEP_ID_TAG in r.data.tags})
        raise AnalysisError(f"sweep {sweep_id!r} not found in {where}; sweeps there: {', '.join(known) or '(none)'}")
    if not train:
        what = f"sweep {sweep_id!r} of {where}" if sweep_id else where
        raise AnalysisError(f"no training runs in {what} yet")
    return train, parents


def metric_history(client: MlflowClient, run_id: str, key: str) -> List[Tuple[int, float]]:
    """``[(step, value), ...]`` of metric ``key`` in step order (``search_runs`` gives only the latest value)."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _local_artifact_root(client: MlflowClient, run_id: str) -> Optional[Path]:
    """The run's artifact folder on disk when the store is a SQLite folder that was moved or copied (a committed
    study, a clone on another machine): the recorded location (``<store>/artifacts/<experiment>/<run id>/artifacts``,
    absolute as MLflow writes it; relative in stores made before that) does not exist here, so the same last four
    parts are read beside the database file instead (relative ones also against the working directory and the
    folders above the database, as they were written). ``None`` when the recorded location exists (MLflow reads it
    itself) or the store is not a SQLite file."""
    uri = client.get_run(run_id).info.artifact_uri or ''
    db = _sqlite_path(client.tracking_uri)
    if db is None or not uri:
        return None
    recorded = Path(uri[len('file://'):] if uri.startswith('file://') else uri)
    if ':' in recorded.parts[0] or (recorded.is_absolute() and recorded.exists()):
        return None
    bases = [db.resolve().parent]
    if not recorded.is_absolute():   # a store written with relative locations (before MLflow's absolute ones)
        bases = [Path.cwd(), *bases, *db.resolve().parent.parents]
    tail = recorded.parts[-4:]
    candidates = [base / recorded for base in bases if not recorded.is_absolute()]
    if len(tail) == 4 and tail[0] == 'artifacts' and tail[2] == run_id:
        candidates.append(db.resolve().parent / Path(*tail))
    return next((c for c in candidates if c.exists()), None)


def download_artifact(client: MlflowClient, run_id: str, path: str, dst_dir: Path) -> Optional[Path]:
    """Download artifact ``path`` of ``run_id`` into ``dst_dir``; ``None`` when the run has no such artifact."""
    local = _local_artifact_root(client, run_id)
    if local is not None:
        src = local / path
        if not src.is_file():
            return None
        dst_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(src, dst_dir / src.name))
    parent = str(Path(path).parent) if Path(path).parent != Path('.') else None
    if Path(path).name not in {Path(f.path).name for f in client.list_artifacts(run_id, parent)}:
        return None
    dst_dir.mkdir(parents=True, exist_ok=True)
    key, old = 'MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR', os.environ.get('MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR')
    os.environ[key] = 'false'          # one bar per file otherwise; the caller shows its own
    try:
        return Path(client.download_artifacts(run_id, path, str(dst_dir)))
    finally:
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old


def load_array(client: MlflowClient, run_id: str, path: str):
    """A run's ``.npy`` artifact as a numpy array, or ``None`` when the run has none at ``path``."""
    import tempfile

    import numpy as np
    with tempfile.TemporaryDirectory(prefix='deepvit-analysis-') as tmp:
        local = download_artifact(client, run_id, path, Path(tmp))
        return None if local is None else np.load(local, allow_pickle=False)
