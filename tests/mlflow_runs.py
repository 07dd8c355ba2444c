"""Write runs that follow ``docs/mlflow_schema.md`` without training: fixtures for the tests, and a way to try the
analysis and the sweep driver's bookkeeping on a laptop. Values are whatever the caller says; nothing is measured.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

__all__ = ['create_store', 'log_training_run', 'point_key']


def create_store(path: Path) -> str:
    """Create (and migrate) a SQLite MLflow store at ``path``; returns its ``sqlite:///`` URI. Takes seconds: copy
    the file for further stores."""
    uri = f'sqlite:///{Path(path).resolve()}'
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


def point_key(family: str, depth: int, embed_dim: int, num_heads: int, seed: int) -> str:
    """The sweep point key of the schema, e.g. ``deepvit-d8-w64-h4-s0``."""
    return f'{family}-d{depth}-w{embed_dim}-h{num_heads}-s{seed}'


def log_training_run(client: MlflowClient, experiment_id: str, *, family: str, depth: int, embed_dim: int = 64,
                     num_heads: int = 4, seed: int = 0, top1: Sequence[float] = (), steps_per_epoch: int = 10,
                     status: str = 'FINISHED', sweep_id: Optional[str] = None, sweep_point: Optional[str] = None,
                     parent_run_id: Optional[str] = None, n_params: Optional[int] = None,
                     gmacs: Optional[float] = None, similar_blocks: Optional[Dict[str, float]] = None,
                     similarity: Optional[Dict[str, np.ndarray]] = None,
                     row: Optional[Dict[str, np.ndarray]] = None,
                     extra_params: Optional[Dict[str, object]] = None,
                     correct: Optional[np.ndarray] = None,
                     metrics: Optional[Dict[str, Sequence[float]]] = None) -> str:
    """Log one training run as ``launch/train.py`` would and return its run id.

    Args:
        top1: val/top1 per epoch (percent), logged at steps ``steps_per_epoch * (epoch + 1)``.
        status: the run's final status (``FINISHED``, ``RUNNING`` for a SIGKILLed job, ``KILLED``, ``FAILED``).
        sweep_id / sweep_point / parent_run_id: the sweep tags (``sweep_point`` defaults to :func:`point_key`
            when ``sweep_id`` is given).
        n_params / gmacs: ``model.params`` / ``model.gmacs`` (default: a made-up function of depth and width).
        similar_blocks: ``{'softmax': n, 'mixed': n}`` -> ``collapse/similar_blocks_<stage>`` metrics.
        similarity: ``{'softmax': (L, L) array, ...}`` -> ``collapse/similarity_<stage>.npy`` artifacts.
        row: the same for the row-wise measure -> ``collapse/row_<stage>.npy``.
        extra_params: more params (dotted keys), e.g. ``{'train.lr': 1e-3}``.
        metrics: more per-epoch histories logged at the same steps as ``top1``, e.g. ``{'holdout/top1': [...]}``.
        correct: per-image correctness of the final evaluation -> ``eval/correct.npy`` (int8).
    """
    model = f'{family}_tiny_patch4_32'
    tags = {'family': family, 'deepvit.kind': 'train'}
    if sweep_id:
        tags.update(sweep_id=sweep_id, sweep_point=sweep_point or point_key(family, depth, embed_dim, num_heads, seed))
    if parent_run_id:
        tags['mlflow.parentRunId'] = parent_run_id
    run = client.create_run(experiment_id, run_name=f'{model}-d{depth}-w{embed_dim}-s{seed}', tags=tags)
    rid = run.info.run_id
    params = {'model.name': model, 'model.family': family, 'model.depth': depth, 'model.embed_dim': embed_dim,
              'model.num_heads': num_heads, 'train.seed': seed, 'train.epochs': len(top1), 'world_size': 1,
              'model.params': n_params if n_params is not None else 12 * depth * embed_dim ** 2,
              'model.gmacs': gmacs if gmacs is not None else round(0.001 * depth * embed_dim / 64, 6),
              **(extra_params or {})}
    extra_metrics = metrics or {}
    metrics = [Metric('val/top1', float(v), 0, steps_per_epoch * (i + 1)) for i, v in enumerate(top1)]
    metrics += [Metric(key, float(v), 0, steps_per_epoch * (i + 1)) for key, values in extra_metrics.items()
                for i, v in enumerate(values)]
    metrics += [Metric('epoch', float(i + 1), 0, steps_per_epoch * (i + 1)) for i in range(len(top1))]
    for stage, n in (similar_blocks or {}).items():
        metrics.append(Metric(f'collapse/similar_blocks_{stage}', float(n), 0, steps_per_epoch * len(top1)))
    client.log_batch(rid, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    with tempfile.TemporaryDirectory() as tmp:
        for stem, matrices in (('similarity', similarity), ('row', row)):
            for stage, m in (matrices or {}).items():
                path = Path(tmp) / f'{stem}_{stage}.npy'
                np.save(path, np.asarray(m, dtype=np.float64))
                client.log_artifact(rid, str(path), artifact_path='collapse')
        if correct is not None:
            path = Path(tmp) / 'correct.npy'
            np.save(path, np.asarray(correct, dtype=np.int8))
            client.log_artifact(rid, str(path), artifact_path='eval')
    if status != 'RUNNING':
        client.set_terminated(rid, status=status)
    return rid
