"""MLflow tracking — with run_writer.py, the only training modules that import mlflow. Rank 0 only; other ranks get
a no-op tracker. Also the writer of a sweep's parent run (``deepvit/sweep/`` writes to MLflow only through the
functions here).

The record a run leaves (names of params, metrics, tags and artifacts) is specified in ``docs/mlflow_schema.md``;
the analysis package reads exactly that.
"""
import atexit
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from .. import schema
from ..tracking_uri import default_tracking_uri, sqlite_path
from .outage import Backlog, shorten_http_retries
from .run_writer import RunWriter

EXPERIMENT_DESCRIPTION = ('Training runs of the DeepViT depth study (ViT, DeepViT and remedies): group by `family` '
                          'or `remedy`, compare by `depth`; `val/top1` is the final-epoch top-1 in percent, '
                          '`val/top1_best` the best epoch (optimistic). Names: docs/mlflow_schema.md.')
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value (longer values are cut, with a marker)


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
    def log_datasets(self, datasets: Sequence['DatasetRecord']) -> None: ...
    def log_model(self, files: Sequence[Path], name: str, params: Dict[str, Any], step: int) -> None: ...
    def start_system_metrics(self, interval_s: float) -> None: ...
    def history(self, key: str) -> list: return []
    def tags(self) -> Dict[str, str]: return {}
    def end(self, status: str = 'FINISHED') -> None: ...


class MlflowTracker(NullTracker):
    """One MLflow run: created, or resumed when ``run_id`` is given (continuing its metrics and params).

    Args:
        experiment: experiment name (created if missing).
        run_name: display name of a new run.
        tracking_uri: store URI; ``None`` → :func:`default_tracking_uri`.
        run_id: continue this run (``--resume``).
        tags: tags of a new run (``family``, ``sweep_id``, ``mlflow.parentRunId``, ...); MLflow's own context tags
            (``mlflow.user``, ``mlflow.source.name``, ``mlflow.source.type``, ``mlflow.source.git.commit``) are added
            as ``mlflow.start_run`` would add them.
        backlog_dir: where writes that never reached the store are kept at the end (:mod:`.outage`).

    Opening the run needs the store; after that every write survives an outage of it (:mod:`.outage`): it waits, in
    order, and training goes on.
    """

    def __init__(self, experiment: str, run_name: Optional[str] = None, tracking_uri: Optional[str] = None,
                 run_id: Optional[str] = None, tags: Optional[Dict[str, str]] = None,
                 backlog_dir: Optional[Path] = None) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri or default_tracking_uri()
        self._mlflow = mlflow
        shorten_http_retries(self.uri)
        with store_lock(self.uri):  # jobs starting together on a store that does not exist yet create it once
            self.client = MlflowClient(self.uri)
            if run_id is not None:
                self.client.update_run(run_id, status='RUNNING')
                self.run_id = run_id
            else:
                from mlflow.tracking.context.registry import resolve_tags
                exp_id = self._experiment_id(experiment)
                run = self.client.create_run(exp_id, run_name=run_name, tags=resolve_tags(dict(tags or {})))
                self.run_id = run.info.run_id
        self.resumed = run_id is not None
        self._monitor = None
        self._backlog = Backlog(self.uri, RunWriter(self.client, self.run_id).apply, backlog_dir)
        run = self.client.get_run(self.run_id)
        self._tags_at_open = dict(run.data.tags)
        self._logged_params = set(run.data.params)
        # a continued run replays the steps between its last checkpoint and the kill: each key's last logged step,
        # so that those (key, step) pairs are not logged a second time
        self._logged_until = {key: max(m.step for m in self.client.get_metric_history(self.run_id, key))
                              for key in run.data.metrics} if self.resumed else {}   # (public API: one query a key)

    def _experiment_id(self, name: str) -> str:
        return get_or_create_experiment(self.client, name, self.uri)

    def log_params(self, params: Dict[str, Any]) -> None:
        """Log params not yet on the run (MLflow params are immutable: a resumed run keeps its first values)."""
        fresh = {}
        for key, value in params.items():
            if key in self._logged_params:
                continue
            text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            if len(text) > MAX_PARAM_LENGTH:
                text = text[:MAX_PARAM_LENGTH - 3] + '...'
            fresh[key] = text
            self._logged_params.add(key)
        if fresh:
            self._backlog.send({'kind': 'params', 'params': fresh})

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        fresh = {key: float(value) for key, value in metrics.items() if int(step) > self._logged_until.get(key, -1)}
        if fresh:
            self._backlog.send({'kind': 'metrics', 'metrics': fresh, 'step': int(step),
                                'timestamp': int(time.time() * 1000)})

    def tags(self) -> Dict[str, str]:
        """The run's tags as they were when this tracker opened it (a continued run's earlier ones)."""
        return dict(self._tags_at_open)

    def history(self, key: str) -> list:
        """``[(step, value), ...]`` of metric ``key`` on this run (a continued run's earlier values)."""
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._backlog.send({'kind': 'dict', 'data': data, 'artifact_file': artifact_file})

    def log_text(self, text: str, artifact_file: str) -> None:
        self._backlog.send({'kind': 'text', 'text': text, 'artifact_file': artifact_file})

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        self._backlog.send({'kind': 'artifact', 'path': str(path), 'artifact_path': artifact_path})

    def log_figure(self, figure, artifact_file: str) -> None:
        self._backlog.send({'kind': 'figure', 'figure': figure, 'artifact_file': artifact_file})

    def log_numpy(self, array, artifact_file: str) -> None:
        self._backlog.send({'kind': 'numpy', 'array': array, 'artifact_file': artifact_file})

    def set_tags(self, tags: Dict[str, str]) -> None:
        if tags:
            self._backlog.send({'kind': 'tags', 'tags': {k: str(v) for k, v in tags.items()}})

    def log_datasets(self, datasets: Sequence['DatasetRecord']) -> None:
        """Record the run's datasets as MLflow dataset inputs (the runs table's Dataset column), once per run."""
        self._backlog.send({'kind': 'datasets', 'datasets': [
            {'name': d.name, 'digest': d.digest, 'source': d.source, 'context': d.context, 'num_samples': d.num_samples,
             'num_classes': d.num_classes, 'split': d.split} for d in datasets]})

    def log_model(self, files: Sequence[Path], name: str, params: Dict[str, Any], step: int) -> None:
        """Log ``files`` (the exported weights and their ``timm.create_model`` fields) as an MLflow logged model of
        this run (the runs table's Models column), with ``params`` on the model, linked as the run's output at
        ``step``."""
        self._backlog.send({'kind': 'model', 'files': [str(f) for f in files], 'name': name, 'step': int(step),
                            'params': {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}})

    def start_system_metrics(self, interval_s: float) -> None:
        """MLflow's own system metrics (``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes``,
        ``system/gpu_*`` where a GPU and ``nvidia-ml-py`` are present, ...) sampled every ``interval_s`` seconds on
        a background thread until :meth:`end`; a continued run continues their step count. Through MLflow's public
        API: the run becomes this process's active run (``mlflow.start_run(run_id, log_system_metrics=True)``)."""
        mlflow = self._mlflow
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_system_metrics_sampling_interval(interval_s)
        mlflow.set_system_metrics_samples_before_logging(1)
        mlflow.start_run(run_id=self.run_id, log_system_metrics=True)
        self._monitor = True
        # MLflow ends a process's active run as FINISHED at exit; a process leaving before end() did not finish
        atexit.register(lambda: self._monitor and self.end('FAILED'))   # (runs first: registered after MLflow's)

    def end(self, status: str = 'FINISHED') -> None:
        if self._monitor:   # stops the system-metrics thread; the status also goes through the backlog below
            self._monitor = None
            try:
                self._mlflow.end_run(status)
            except Exception:   # the store is unreachable: the backlog keeps the status for later
                pass
        self._backlog.send({'kind': 'status', 'status': status})
        self._backlog.flush(self.run_id)


class DatasetRecord:
    """One dataset input of a run: ``name`` (the ``_info.json`` name, else the source's folder name), ``split``,
    ``context`` (``training`` | ``validation``), ``source`` (as given), ``num_samples`` (None when unknown),
    ``num_classes`` and ``digest`` (16 hex digits of SHA-256 over the shard names, their sample counts and the class
    names: two runs with the same digest read the same listing; the shards' bytes are not hashed)."""

    def __init__(self, name: str, split: str, context: str, source: str, urls: Sequence[str],
                 lengths: Optional[Sequence[int]], classes: Sequence[str],
                 offsets: Optional[Sequence[int]] = None) -> None:
        import hashlib
        self.name, self.split, self.context, self.source = name, split, context, str(source)
        self.num_samples = None if lengths is None else int(sum(lengths))
        self.num_classes = len(classes)
        listing = [[os.path.basename(u) for u in urls], list(lengths or []), list(classes)]
        if offsets is not None:   # a view of part of each shard (the holdout split): where it starts, too
            listing.append(list(offsets))
        listing = json.dumps(listing)
        self.digest = hashlib.sha256(listing.encode()).hexdigest()[:16]


STORE_LOCK_TIMEOUT_S = 600


@contextlib.contextmanager
def store_lock(uri: str):
    """Hold ``<database>.lock`` (``filelock``, an OS file lock released even if the holder dies) while a SQLite
    store is opened and its experiment created: MLflow's table creation and migrations are not safe when several
    processes create the same new database at once (they fail with alembic/SQLite errors). Other stores (servers
    serialise requests themselves): no lock. Waits at most :data:`STORE_LOCK_TIMEOUT_S` seconds.

    Raises:
        filelock.Timeout: the lock was held longer than that (a hung job holding it).
    """
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    import filelock
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with filelock.FileLock(os.path.join(folder, os.path.basename(path) + '.lock'), timeout=STORE_LOCK_TIMEOUT_S):
        yield


def artifact_root(uri: str) -> Optional[str]:
    """Where a new experiment of a SQLite store keeps its artifacts: ``artifacts/`` beside the database file (absolute:
    MLflow records every local artifact location as an absolute path). ``None`` for other stores (their default)."""
    path = sqlite_path(uri)
    if path is None:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(path)), 'artifacts')


def get_or_create_experiment(client, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if missing with its artifacts in ``<artifact_root>/<name>`` (a SQLite
    store: database and artifacts in one folder, which moves or is committed whole; MLflow records the folder's
    absolute path, and a reader of a moved store finds the artifacts beside the database:
    ``analysis.store.download_artifact``, ``docs/mlflow_schema.md``). Public MLflow API only.

    Jobs starting together (a sweep, a job array) may race to create it: the loser uses the winner's.
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if schema.EXPERIMENT_KIND_TAG not in exp.tags:  # made before the tag existed: let the UI open on runs
            client.set_experiment_tag(exp.experiment_id, schema.EXPERIMENT_KIND_TAG, schema.EXPERIMENT_KIND)
        return exp.experiment_id
    root = artifact_root(uri)
    folder = root and os.path.join(root, ''.join(c if c.isalnum() or c in '._-' else '_' for c in name))
    tags = {schema.EXPERIMENT_KIND_TAG: schema.EXPERIMENT_KIND, schema.NOTE_TAG: EXPERIMENT_DESCRIPTION}
    try:
        return client.create_experiment(name, artifact_location=folder, tags=tags)
    except Exception:  # another job created it first (unique-name violation); use theirs
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def create_tracker(rank: int, **kwargs) -> NullTracker:
    """:class:`MlflowTracker` on rank 0, :class:`NullTracker` elsewhere."""
    return MlflowTracker(**kwargs) if rank == 0 else NullTracker()


# ------------------------------------------------------------------------------------------ sweep parent runs
RUN_STATUSES = ('RUNNING', 'FINISHED', 'FAILED', 'KILLED')  # what set_run_status accepts (MLflow's run statuses)


def tracking_client(uri: str):
    """An ``MlflowClient`` on ``uri`` (a SQLite file is created on first use: hold :func:`store_lock` around it)."""
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def create_sweep_parent(client, experiment_id: str, sweep_id: str, grid: Dict[str, str]) -> str:
    """Create a sweep's parent run and return its id: run name ``sweep-<sweep_id>`` (``schema.SWEEP_RUN_NAME``),
    tags ``sweep_id`` and ``deepvit.kind=sweep`` plus MLflow's own context tags (user, source, git commit, as
    ``mlflow.start_run`` adds them), and ``grid`` as params ``sweep.<field>`` (``schema.SWEEP_PARAM``; values are
    strings, cut at :data:`MAX_PARAM_LENGTH`). The run is left RUNNING. Finding an existing parent is the caller's
    read (two drivers may race: see :func:`discard_run`).

    Raises:
        ValueError: ``sweep_id`` is empty, or a grid value is not a string (names the field).
    """
    from mlflow.entities import Param
    from mlflow.tracking.context.registry import resolve_tags
    if not sweep_id:
        raise ValueError(f'sweep_id must be a non-empty string, got {sweep_id!r}')
    for field, value in grid.items():
        if not isinstance(value, str):
            raise ValueError(f'sweep grid param {field!r} must be a string, got {value!r}')
    run = client.create_run(experiment_id, run_name=schema.SWEEP_RUN_NAME.format(sweep_id=sweep_id),
                            tags=resolve_tags({schema.SWEEP_ID_TAG: sweep_id, schema.KIND_TAG: schema.SWEEP_KIND}))
    params = [Param(schema.SWEEP_PARAM.format(field=k), v if len(v) <= MAX_PARAM_LENGTH else
                    v[:MAX_PARAM_LENGTH - 3] + '...') for k, v in grid.items()]
    for start in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[start:start + 100])
    return run.info.run_id


def discard_run(client, run_id: str) -> None:
    """Delete run ``run_id`` (MLflow's soft delete): the loser of two drivers that created the same sweep parent."""
    client.delete_run(run_id)


def set_run_status(client, run_id: str, status: str) -> None:
    """Set run ``run_id``'s status: ``RUNNING`` (re)opens it, unless it already is; ``FINISHED``, ``FAILED`` or
    ``KILLED`` ends it (end time now).

    Raises:
        ValueError: ``status`` is not one of :data:`RUN_STATUSES`.
    """
    if status not in RUN_STATUSES:
        raise ValueError(f'status must be one of {RUN_STATUSES}, got {status!r}')
    if status == 'RUNNING':
        if client.get_run(run_id).info.status != 'RUNNING':
            client.update_run(run_id, status='RUNNING')
    else:
        client.set_terminated(run_id, status=status)


def record_sweep_summary(client, parent_id: str, statuses: Dict[str, int], best_top1: Dict[Tuple[str, int], float],
                         files: Sequence[Path], root: Optional[Path] = None) -> None:
    """Write a sweep's summary onto its parent run: child runs by status (``sweep/children_<status>``), the best
    final top-1 per remedy and depth (``sweep/best_top1/<remedy>/d<depth>``, percent) and the analysis outputs
    (``files``, under ``analysis/``, keeping their paths relative to ``root``). Metrics are logged at step = the
    number of finished children, so reruns of a growing sweep leave a history; a rerun whose every value equals the
    parent's latest logs nothing (MLflow appends, it never overwrites: each driver of a job array used to add
    duplicate (metric, step) pairs)."""
    from mlflow.entities import Metric
    now, step = int(time.time() * 1000), int(statuses.get('FINISHED', 0))
    metrics = [Metric(schema.SWEEP_CHILDREN.format(status=s.lower()), float(n), now, step)
               for s, n in sorted(statuses.items())]
    metrics += [Metric(schema.SWEEP_BEST_TOP1.format(remedy=_metric_safe(r), depth=int(d)), float(v), now, step)
                for (r, d), v in sorted(best_top1.items())]
    latest = client.get_run(parent_id).data.metrics
    if all(latest.get(m.key) == m.value for m in metrics):
        metrics = []
    for start in range(0, len(metrics), 500):
        client.log_batch(parent_id, metrics=metrics[start:start + 500])
    for f in files:
        f = Path(f)
        sub = f.parent.relative_to(root).as_posix() if root is not None and f.parent != root else ''
        client.log_artifact(parent_id, str(f), 'analysis' + (f'/{sub}' if sub else ''))


def _metric_safe(name: str) -> str:
    """A remedy label as a metric-key component (MLflow keys allow letters, digits, ``_ - . / space``)."""
    return ''.join(c if c.isalnum() or c in '_-.' else '_' for c in name)
