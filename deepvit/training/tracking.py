"""MLflow tracking — the only training module that imports mlflow. Rank 0 only; other ranks get a no-op tracker.

The record a run leaves (names of params, metrics, tags and artifacts) is specified in ``docs/mlflow_schema.md``;
the analysis package reads exactly that.
"""
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional

DEFAULT_DB = 'mlflow.db'
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value (longer values are cut, with a marker)


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<absolute path of ./mlflow.db>``.

    The path is made absolute here: a relative SQLite URI resolves against each process's working directory.
    """
    uri = os.environ.get('MLFLOW_TRACKING_URI')
    if uri:
        return uri
    return f"sqlite:///{Path(DEFAULT_DB).resolve()}"


class NullTracker:
    """What non-zero ranks get: every call does nothing."""
    run_id: Optional[str] = None

    def log_params(self, params: Dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: Dict[str, float], step: int) -> None: ...
    def log_dict(self, data: Any, artifact_file: str) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None: ...
    def log_figure(self, figure, artifact_file: str) -> None: ...
    def log_numpy(self, array, artifact_file: str) -> None: ...
    def set_tags(self, tags: Dict[str, str]) -> None: ...
    def end(self, status: str = 'FINISHED') -> None: ...


class MlflowTracker(NullTracker):
    """One MLflow run: created, or resumed when ``run_id`` is given (continuing its metrics and params).

    Args:
        experiment: experiment name (created if missing).
        run_name: display name of a new run.
        tracking_uri: store URI; ``None`` → :func:`default_tracking_uri`.
        run_id: continue this run (``--resume``).
        tags: tags of a new run (``family``, ``sweep_id``, ``mlflow.parentRunId``, ...).
    """

    def __init__(self, experiment: str, run_name: Optional[str] = None, tracking_uri: Optional[str] = None,
                 run_id: Optional[str] = None, tags: Optional[Dict[str, str]] = None) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri or default_tracking_uri()
        self.client = MlflowClient(self.uri)
        self._mlflow = mlflow
        if run_id is not None:
            self.client.update_run(run_id, status='RUNNING')
            self.run_id = run_id
        else:
            exp_id = self._experiment_id(experiment)
            run = self.client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
            self.run_id = run.info.run_id
        self._logged_params = set(self.client.get_run(self.run_id).data.params)

    def _experiment_id(self, name: str) -> str:
        return get_or_create_experiment(self.client, name, self.uri)

    def log_params(self, params: Dict[str, Any]) -> None:
        """Log params not yet on the run (MLflow params are immutable: a resumed run keeps its first values)."""
        from mlflow.entities import Param
        fresh = []
        for key, value in params.items():
            if key in self._logged_params:
                continue
            text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            if len(text) > MAX_PARAM_LENGTH:
                text = text[:MAX_PARAM_LENGTH - 3] + '...'
            fresh.append(Param(key, text))
            self._logged_params.add(key)
        for start in range(0, len(fresh), 100):
            self.client.log_batch(self.run_id, params=fresh[start:start + 100])

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, int(step)) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def log_figure(self, figure, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_numpy(self, array, artifact_file: str) -> None:
        import numpy as np
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            np.save(path, array)
            self.client.log_artifact(self.run_id, str(path), str(Path(artifact_file).parent) or None)

    def set_tags(self, tags: Dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def end(self, status: str = 'FINISHED') -> None:
        self.client.set_terminated(self.run_id, status=status)


def sqlite_path(uri: str) -> Optional[str]:
    """The database path of a ``sqlite:///PATH`` URI as written (relative or absolute), else ``None``."""
    if not uri.startswith('sqlite:///'):
        return None
    return uri[len('sqlite:///'):].split('?', 1)[0]


def artifact_root(uri: str) -> Optional[str]:
    """Where a new experiment of a SQLite store keeps its artifacts: ``artifacts/`` beside the database file, as a
    path relative to the working directory when the URI's path is relative (so a store folder holding the database
    and its artifacts can be moved or committed whole), else absolute. ``None`` for other stores (their default)."""
    path = sqlite_path(uri)
    if path is None:
        return None
    return os.path.join(os.path.dirname(path) or '.', 'artifacts')


def get_or_create_experiment(client, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if missing with :func:`artifact_root` as its artifact location.

    Jobs starting together (a sweep, a job array) may race to create it: the loser uses the winner's. MLflow makes a
    relative artifact location absolute; for a relative SQLite URI it is set back to the relative path (one SQL
    update of the experiment's row), so nothing in the store names this machine's directories.
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(uri)
    folder = root and os.path.join(root, ''.join(c if c.isalnum() or c in '._-' else '_' for c in name))
    try:
        exp_id = client.create_experiment(name, artifact_location=folder)
    except Exception:  # another job created it first (unique-name violation); use theirs
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
    if root is not None and not os.path.isabs(sqlite_path(uri)):
        # MLflow stored the folder made absolute: set it back (a run created by another job between the two
        # statements would keep an absolute path: create experiments before launching jobs in parallel, as the sweep
        # does). MLflow's own 'Default' experiment (id 0) got an absolute ./mlruns/0 when the store was made.
        _set_artifact_location(uri, exp_id, folder)
        default = client.get_experiment('0')
        if default is not None and os.path.isabs(default.artifact_location.replace('file://', '')):
            _set_artifact_location(uri, '0', os.path.join(root, 'Default'))
    return exp_id


def _set_artifact_location(uri: str, experiment_id: str, location: str) -> None:
    import sqlalchemy
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text('UPDATE experiments SET artifact_location = :loc WHERE experiment_id = :id'),
                         {'loc': location, 'id': int(experiment_id)})
    finally:
        engine.dispose()


def create_tracker(rank: int, **kwargs) -> NullTracker:
    """:class:`MlflowTracker` on rank 0, :class:`NullTracker` elsewhere."""
    return MlflowTracker(**kwargs) if rank == 0 else NullTracker()
