"""Evaluation-only runs: score exported weights or a DeepSpeed checkpoint on a split (DeiT's ``--eval``, timm's
``validate.py``) and record top-1/top-5, the loss and the collapse probe in MLflow, as a run of kind ``eval``.

    deepspeed launch/train.py --deepspeed ds_configs/zero2.json --eval-only --eval-weights runs/a/model.safetensors \\
        [--model.name NAME --data.source SRC --data.val_split val ...]

The model is built from the config as for training (same name and fields), the weights loaded with
``load_state_dict(strict=True)`` (a mismatch is an error naming the keys); a checkpoint is consolidated to fp32 with
DeepSpeed's ``zero_to_fp32`` (any ZeRO stage, any world size). Every rank evaluates its share of the split (padded,
so each image counts once), the probe runs on the fixed first ``train.collapse_images`` images.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import schema
from ..code_version import code_tags, code_version
from . import record
from .checkpoint import latest_tag, seed_everything
from .collapse_report import CollapseProbe, log_collapse_artifacts, similarity_figure
from .config import ConfigError
from .engine import by_sample, evaluate, gather_correct
from .layout import checkpoint_folder


def load_weights(path: str, model: torch.nn.Module, weights_format: int) -> dict:
    """The fp32 state dict of a ``.safetensors`` export, a ``checkpoints/`` folder or a run's ``output_dir``, written
    in ``weights_format`` (resolved by preflight: the file's own marker, else ``--eval-weights-format``), converted
    to the current :data:`~deepvit.models.WEIGHTS_FORMAT` for ``model``."""
    from ..models import upgrade_state_dict
    p = Path(path)
    if p.is_file():
        from safetensors.torch import load_file
        state = load_file(str(p))
    else:
        ckpt = checkpoint_folder(p)
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=latest_tag(ckpt))
    return upgrade_state_dict(model, state, weights_format)


def run_eval(plan) -> int:
    """Evaluate on every rank; rank 0 records the run. Returns the exit status (0)."""
    import timm
    from ..models import count_params, gmacs_per_image
    from .build import build_eval_loaders, start_process_group

    cfg, rank, world = plan.cfg, plan.rank, plan.world_size
    device = start_process_group(plan)   # as training: quiet ranks, the device, DeepSpeed's /dev/shm unlinked
    seed_everything(cfg.train.seed)
    model = timm.create_model(cfg.model.name, **plan.model_kwargs)
    weights = load_weights(cfg.eval_weights, model, cfg.eval_weights_format)
    misfit = _misfit(model.state_dict(), weights)
    if misfit:
        raise ConfigError(f"eval_weights={cfg.eval_weights!r} do not fit {cfg.model.name} {plan.model_kwargs}: "
                          f"{misfit}")
    model.load_state_dict(weights, strict=True)
    model = model.to(device).eval()
    val_loader, probe_loader = build_eval_loaders(plan, model, device)
    family, remedy = model.family, getattr(model, 'remedy', model.family)
    note = f"evaluation of {cfg.eval_weights} on split {cfg.data.val_split!r} of {cfg.data.source}"
    name = cfg.log.run_name or f"eval-{cfg.model.name}-d{model.model_cfg['depth']}"
    params, datasets = {}, []
    if rank == 0:   # the architecture, data and probe fields (no training or DeepSpeed ones), the weights, the split
        params = {k: v for k, v in record.run_params(cfg, model, plan.ds, world, n_params=count_params(model),
                                                     gmacs=gmacs_per_image(model), family=family, remedy=remedy,
                                                     lr=0.0).items()
                  if not k.startswith(('train.', 'ds.')) or k.startswith('train.collapse')}
        params.update({schema.EVAL_WEIGHTS_PARAM: cfg.eval_weights, schema.EVAL_SPLIT_PARAM: cfg.data.val_split,
                       schema.EVAL_WEIGHTS_FORMAT_PARAM: cfg.eval_weights_format})
        if plan.val_shards is not None:
            datasets = record.dataset_records(cfg, plan.train_shards, plan.val_shards)[1:]
    tracker = record.open_run(plan, model, device, family=family, remedy=remedy, kind=schema.EVAL_KIND, note=note,
                              run_name=name, params=params, datasets=datasets)
    try:
        if rank == 0:
            tracker.set_tags(code_tags(code_version(), {}, resumed=False, step=0))
        scored = evaluate(model, val_loader, device=device, dtype=torch.float32)
        metrics, correct = scored.metrics, gather_correct(scored.correct, device)
        probe = CollapseProbe(lambda: (x.to(device) for x, _ in probe_loader), cfg.train, tracker)
        final = probe(model, 0)
        if rank == 0:
            tracker.log_metrics(metrics, 0)
            tracker.log_numpy(by_sample(correct, val_loader), schema.CORRECT_ARTIFACT)
            tracker.set_tags({schema.CORRECT_ORDER_TAG: schema.SAMPLE_ORDER})
            log_collapse_artifacts(tracker, final, similarity_figure)
            print(f"[deepvit] eval {cfg.eval_weights}: top1 {metrics[schema.TOP1]:.2f} top5 {metrics[schema.TOP5]:.2f} "
                  f"({int(metrics[schema.VAL_SAMPLES])} images of split {cfg.data.val_split!r}) | MLflow run "
                  f"{tracker.run_id}", flush=True)
    except BaseException:
        tracker.end('FAILED')
        raise
    tracker.end('FINISHED')
    return 0


def _misfit(model_sd, weights) -> str:
    """What keeps ``weights`` from loading into a model with state dict ``model_sd``, in one line (counts and the
    first example of each kind), or '' when they fit."""
    missing = [k for k in model_sd if k not in weights]
    unexpected = [k for k in weights if k not in model_sd]
    shapes = [(k, tuple(weights[k].shape), tuple(v.shape)) for k, v in model_sd.items()
              if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) the model has are not in the weights (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) in the weights the model lacks (e.g. {unexpected[0]})")
    if shapes:
        k, have, want = shapes[0]
        parts.append(f"{len(shapes)} shape mismatch(es) (e.g. {k}: weights {have}, model {want})")
    return '; '.join(parts)
