"""What a run (training or eval-only) writes about itself into MLflow: tags, params, description and dataset
inputs, and :func:`open_run`, which opens the record with them.

The rest are pure functions of the resolved config, the built model and the DeepSpeed config; :mod:`.tracking`
writes them. Names come from :mod:`deepvit.schema` and are documented in ``docs/mlflow_schema.md``.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from .. import schema
from .config import Config, flatten, to_yaml

LR_RULE = 'linear: train.lr = train.base_lr x ds.global_batch_size / 512 (DeiT)'


def hardware(device: torch.device) -> str:
    """``'cpu'`` or the CUDA device's name (e.g. ``'NVIDIA H200'``)."""
    return torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'


def run_tags(cfg: Config, model, family: str, remedy: str, device: torch.device) -> Dict[str, str]:
    """Tags of a new training run: kind, family, remedy, the architecture and seed (for the UI's group-by and
    filters), hardware, the sweep's id/point/parent when run by a sweep."""
    mc = model.model_cfg
    tags = {schema.KIND_TAG: schema.TRAIN_KIND, schema.FAMILY_TAG: family, schema.REMEDY_TAG: remedy,
            'model': cfg.model.name, 'depth': str(mc['depth']), 'embed_dim': str(mc['embed_dim']),
            'num_heads': str(mc['num_heads']), 'seed': str(cfg.train.seed), schema.HARDWARE_TAG: hardware(device)}
    for key, value in ((schema.SWEEP_ID_TAG, cfg.log.sweep_id), (schema.SWEEP_POINT_TAG, cfg.log.sweep_point),
                       (schema.PARENT_TAG, cfg.log.parent_run_id)):
        if value:
            tags[key] = value
    return tags


def run_description(cfg: Config, model, n_params: int, world: int, precision: str, data_samples) -> str:
    """One line for the run's description (``mlflow.note.content``): model, size, data, world size, precision."""
    mc = model.model_cfg
    data = f"{cfg.data.source} ({data_samples} train images)" if data_samples is not None else str(cfg.data.source)
    return (f"{cfg.model.name}: depth {mc['depth']}, embed_dim {mc['embed_dim']}, {mc['num_heads']} heads, "
            f"{n_params / 1e6:.2f}M params; data {data}; {cfg.train.epochs} epochs, seed {cfg.train.seed}; "
            f"{world} rank(s), {precision}")


def run_params(cfg: Config, model, ds, world: int, *, n_params: int, gmacs: float, family: str, remedy: str,
               lr: float) -> Dict[str, Any]:
    """Params of a run. ``model.<field>`` is the architecture actually built (``model.model_cfg``); a field given on
    the command line or in YAML is also kept as ``model.override.<field>`` (unset fields are not logged);
    ``train.lr`` is the learning rate used, ``train.base_lr`` the configured rate it was scaled from."""
    params = flatten(cfg)
    asked = {k[len('model.'):]: params.pop(k) for k in list(params) if k.startswith('model.') and k != 'model.name'}
    params.update({f'model.override.{k}': v for k, v in asked.items() if v is not None})
    params.update({f'model.{k}': v for k, v in model.model_cfg.items()})
    params.update({'train.lr': lr, 'train.base_lr': cfg.train.lr, 'train.lr_scaling': LR_RULE})
    params.update({f'ds.{k}': v for k, v in flatten(ds.config).items()})
    params.update({'ds.zero_stage': ds.zero_stage, 'ds.global_batch_size': ds.global_batch_size,
                   'world_size': world, 'precision': ds.precision, 'model.params': n_params,
                   'model.gmacs': round(gmacs, 6), 'model.family': family, 'model.remedy': remedy,
                   'collapse.threshold': cfg.train.collapse_threshold,
                   'collapse.num_images': cfg.train.collapse_images,
                   'collapse.permutations': cfg.train.collapse_permutations,
                   'collapse.every_epochs': cfg.train.collapse_every,
                   'collapse.bootstrap': cfg.train.collapse_bootstrap,
                   'collapse.cka_examples': cfg.train.collapse_cka_examples})
    return params


def dataset_records(cfg: Config, train_shards, val_shards, holdout_shards=None) -> List:
    """The run's dataset inputs (train and validation splits, and the holdout when there is one) as
    :class:`.tracking.DatasetRecord`; the holdout's digest names its samples (shard names, first sample, counts)."""
    import os
    from .tracking import DatasetRecord
    from ..data import read_info
    source = str(cfg.data.source)
    name = os.path.basename(source.rstrip('/')) or source
    directory = train_shards.urls[0].rsplit('/', 1)[0]
    if '://' not in directory:  # local shards: the name in _info.json when there is one (never a network read)
        try:
            name = read_info(directory).name or name
        except (FileNotFoundError, ValueError, OSError):
            pass
    records = [DatasetRecord(name, s.split, ctx, source, s.urls, s.lengths, s.classes, s.offsets)
               for s, ctx in ((train_shards, schema.TRAIN_CONTEXT), (val_shards, schema.VAL_CONTEXT))]
    if holdout_shards is not None:
        records.append(DatasetRecord(name, holdout_shards.split, schema.HOLDOUT_CONTEXT, source, holdout_shards.urls,
                                     holdout_shards.lengths, holdout_shards.classes, holdout_shards.offsets))
    return records


def open_run(plan, model, device: torch.device, *, family: str, remedy: str, kind: str, note: str, run_name: str,
             params: Dict[str, Any], datasets: List, run_id=None, backlog_dir=None):
    """Start (or, with ``run_id``, continue) this rank's MLflow run: tags (:func:`run_tags`, ``kind``, ``note`` as
    the description), then on rank 0 ``params``, ``config.yaml`` and the dataset inputs. Returns the tracker
    (:func:`.tracking.create_tracker`: ranks other than 0 get one that records nothing). The training run
    (:func:`.trainer.open_record`) and the eval-only run (:func:`.evaluation.run_eval`) both open theirs here."""
    from .tracking import create_tracker
    cfg = plan.cfg
    tags = run_tags(cfg, model, family, remedy, device)
    tags.update({schema.KIND_TAG: kind, schema.NOTE_TAG: note})
    tracker = create_tracker(plan.rank, experiment=cfg.log.experiment, run_name=run_name,
                             tracking_uri=cfg.log.tracking_uri, run_id=run_id, tags=tags, backlog_dir=backlog_dir)
    if plan.rank == 0:
        tracker.log_params(params)
        tracker.log_text(to_yaml(cfg), 'config.yaml')
        if datasets:
            tracker.log_datasets(datasets)
    return tracker
