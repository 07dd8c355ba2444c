"""Everything that can be wrong with a job's input, checked before any process group waits or any model is built.

:func:`preflight` resolves a config and a DeepSpeed config into a :class:`Plan` on every rank; ``launch/train.py``
prints its :class:`ConfigError` as one line and exits with status 2.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from .config import Config, ConfigError, model_overrides
from ..data.plan import default_num_workers
from ..ranks import cores_per_rank, env_local_rank, env_rank, env_world_size
from .ds_config import ResolvedDeepSpeedConfig, resolve_ds_config
from .checkpoint import written_weights_format
from .joblock import acquire as acquire_job_lock
from .layout import LATEST, RunDir, checkpoint_folder
from .resume import check_resume
from .universal import WorldChange

@dataclass
class Plan:
    """What preflight resolved: everything needed to build the run, nothing built yet."""
    cfg: Config
    ds: ResolvedDeepSpeedConfig
    rank: int
    local_rank: int
    world_size: int
    model_kwargs: Dict[str, Any]
    num_classes: int
    train_shards: Any = None   # deepvit.data.ShardSet of each split (for the run's dataset inputs)
    val_shards: Any = None
    holdout_shards: Any = None   # the held-out view of the train split (data.holdout > 0); train_shards is the rest
    world_change: Optional[WorldChange] = None   # resume on another world size, through a universal checkpoint
    job_lock: Any = None   # rank 0 of a training job: the output folder's lock (deepvit.training.joblock), held


def _is_gray_source(source: str) -> bool:
    return source == 'digits'


def preflight(cfg: Config, ds_path: str) -> Plan:
    """Check the DeepSpeed config, the model name and fields, and the data source. Raises ConfigError & co.

    Cheap: the model is built on the ``meta`` device (no memory, no init) only to run its own field checks; the
    data source is resolved to shard lists (``_info.json``), nothing is decoded.
    """
    import timm
    from ..data import resolve_shards

    rank, world = env_rank(), env_world_size()
    ds = resolve_ds_config(ds_path, world)
    if cfg.eval_only:
        _check_eval_weights(cfg.eval_weights)
    _check_model_name(cfg.model.name)
    try:   # eval-only reads the scored split alone (a val-only dataset has no train split): classes come from it
        train_shards = resolve_shards(cfg.data.source, cfg.data.val_split if cfg.eval_only else cfg.data.train_split)
        val_shards = resolve_shards(cfg.data.source, cfg.data.val_split)
    except (ValueError, OSError) as err:   # the source's own words (they name the argument and its value)
        raise ConfigError(str(err)) from None
    for what, shards in (('train', train_shards), ('val', val_shards)):
        if shards.num_samples == 0:
            raise ConfigError(f"data.{what}_split: split {shards.split!r} of {cfg.data.source!r} has no samples")
    if cfg.data.num_workers is None:   # resolved here, so the run's record and config.json hold the number
        cfg.data.num_workers = default_num_workers(
            cores_per_rank(), world, len(train_shards.urls) if train_shards.lengths is None else None)
    holdout_shards = None
    if cfg.data.holdout and not cfg.eval_only:
        try:
            train_shards, holdout_shards = train_shards.split_holdout(cfg.data.holdout)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if cfg.data.train_eval and train_shards.lengths is None and not cfg.eval_only:
        raise ConfigError(f"data.train_eval={cfg.data.train_eval}: the train-accuracy subset needs shard lengths (an "
                          f"_info.json next to the shards of split {train_shards.split!r}); pass --data.train_eval 0")
    if val_shards.num_samples is not None and val_shards.num_samples < cfg.train.collapse_images:
        raise ConfigError(f"train.collapse_images={cfg.train.collapse_images}: the collapse probe needs that many "
                          f"validation images, but split {val_shards.split!r} of {cfg.data.source!r} has "
                          f"{val_shards.num_samples}; lower train.collapse_images")
    kwargs = model_overrides(cfg.model)
    classes = train_shards.classes
    if cfg.model.num_classes is None:
        if not classes:
            raise ConfigError(f"model.num_classes: the data {cfg.data.source!r} lists no classes; set it")
        kwargs['num_classes'] = len(classes)
    elif classes and cfg.model.num_classes < len(classes):
        raise ConfigError(f"model.num_classes={cfg.model.num_classes} is smaller than the {len(classes)} classes "
                          f"of {cfg.data.source!r}")
    recorded = train_shards.channels  # image channels recorded at conversion (None for older or foreign shards)
    if cfg.model.in_chans is None:
        kwargs['in_chans'] = recorded or (1 if _is_gray_source(cfg.data.source) else 3)
    elif recorded is not None and recorded != cfg.model.in_chans and rank == 0:
        print(f"[deepvit] note: model.in_chans={cfg.model.in_chans}, but the images of {cfg.data.source!r} were "
              f"recorded as {'grayscale' if recorded == 1 else 'colour'} ({recorded} channel(s)) at conversion: "
              f"they are converted to {cfg.model.in_chans} channel(s)", flush=True)
    try:
        meta = timm.create_model(cfg.model.name, device='meta', **kwargs)
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None
    except TypeError as err:
        raise ConfigError(f"model: {cfg.model.name}: {err}") from None
    if cfg.eval_only:   # recorded in config.json and the eval run's params
        cfg.eval_weights_format = _eval_weights_format(cfg, meta)
    depth = int(meta.model_cfg['depth'])
    if cfg.train.cosine_reg and cfg.train.cosine_reg_blocks + 1 > depth:
        raise ConfigError(f"train.cosine_reg_blocks={cfg.train.cosine_reg_blocks} needs "
                          f"{cfg.train.cosine_reg_blocks + 1} attention blocks, the model has {depth}")
    if cfg.train.grad_checkpointing and not hasattr(meta, 'set_grad_checkpointing'):
        raise ConfigError(f"train.grad_checkpointing: model {cfg.model.name!r} has no set_grad_checkpointing")
    if cfg.train.compile and ds.zero_stage == 3:
        raise ConfigError(f"train.compile=true needs ZeRO stage 0-2: ZeRO-3's parameter-gathering hooks break "
                          f"torch.compile's graphs ({ds_path} has stage 3)")
    if cfg.train.compile and cfg.train.cosine_reg > 0:
        raise ConfigError("train.compile=true with train.cosine_reg > 0: the regulariser reads attention maps kept "
                          "by the eager forward; turn one off")
    if cfg.train.mixup > 0 or cfg.train.cutmix > 0:
        if ds.micro_batch_size % 2:
            raise ConfigError(f"train.mixup/cutmix need an even train_micro_batch_size_per_gpu, got "
                              f"{ds.micro_batch_size} in {ds_path}")
    tokens = meta.patch_embed.num_patches + meta.num_prefix_tokens
    cka = cfg.train.collapse_cka_examples
    if cka is not None and cka > cfg.train.collapse_images * tokens:
        raise ConfigError(f"train.collapse_cka_examples={cka}: the probe holds only {cfg.train.collapse_images} "
                          f"images × {tokens} tokens = {cfg.train.collapse_images * tokens} examples; lower it or "
                          f"raise train.collapse_images")
    kwargs.setdefault('img_size', meta.model_cfg['img_size'])
    # last: the output directory (created or refused on every rank, before any process group waits), so a bad
    # value anywhere above is reported first and leaves no empty folder behind
    out_dir = Path(cfg.output_dir)
    run_dir = RunDir(out_dir)
    if not cfg.eval_only and not cfg.resume and run_dir.holds_run():
        raise ConfigError(f"output_dir {str(out_dir)!r} already holds a run; pass --resume to continue it, or choose "
                          f"another --output-dir")
    try:  # created (or refused) here, on every rank, before any process group waits
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"output_dir {str(out_dir)!r} cannot be created: {err.strerror}"
                          f"{' (a parent is a regular file)' if isinstance(err, (FileExistsError, NotADirectoryError)) else ''}") from None
    if not os.access(out_dir, os.W_OK):
        raise ConfigError(f"output_dir {str(out_dir)!r} is not writable")
    lock = None
    if rank == 0 and not cfg.eval_only:   # one job per folder, for the job's life; then the check again, under it
        lock = acquire_job_lock(out_dir)
        if not cfg.resume and run_dir.holds_run():
            lock.release()
            raise ConfigError(f"output_dir {str(out_dir)!r} already holds a run; pass --resume to continue it, or "
                              f"choose another --output-dir")
    world_change = None
    if cfg.resume:
        world_change = check_resume(cfg, run_dir, rank, world, ds, ds_path, meta)
    return Plan(cfg=cfg, ds=ds, rank=rank, local_rank=env_local_rank(), world_size=world, model_kwargs=kwargs,
                num_classes=kwargs['num_classes'] if 'num_classes' in kwargs else meta.num_classes,
                train_shards=train_shards, val_shards=val_shards, holdout_shards=holdout_shards,
                world_change=world_change, job_lock=lock)


def _check_eval_weights(path: Optional[str]) -> None:
    if not path:
        raise ConfigError("eval_only: give the weights to score with --eval-weights (a .safetensors export, a "
                          "checkpoints/ folder or a run's output_dir)")
    p = Path(path)
    if p.is_file() and p.suffix == '.safetensors':
        return
    if p.is_dir() and (checkpoint_folder(p) / LATEST).is_file():
        return
    raise ConfigError(f"eval_weights={path!r}: not a .safetensors file, nor a folder with a DeepSpeed checkpoint "
                      f"('latest' in it or in its checkpoints/)")


def _eval_weights_format(cfg: Config, model) -> int:
    """The weights format ``--eval-weights`` was written in (:data:`~deepvit.models.WEIGHTS_FORMAT`): what the file
    or checkpoint says, else ``--eval-weights-format``. A ``.safetensors`` file without the marker is ambiguous for
    a model with a learned Re-attention Θ: our exports before format 2 hold Θ, a file written since by other means
    (DeepSpeed's ``zero_to_fp32.py --safe_serialization``, ``save_file(model.state_dict())``) holds Θᵀ, same shape;
    it is refused until the user says which. Raises ConfigError naming the field and the value."""
    from ..models import WEIGHTS_FORMAT, ReAttentionMix
    path, given = cfg.eval_weights, cfg.eval_weights_format
    if given is not None and given not in (1, WEIGHTS_FORMAT):
        raise ConfigError(f"eval_weights_format={given!r}: must be 1 or {WEIGHTS_FORMAT}")
    try:
        written = written_weights_format(Path(path))
    except ValueError as err:
        raise ConfigError(f"eval_weights={path!r}: {err}") from None
    if written is not None and written not in (1, WEIGHTS_FORMAT):
        raise ConfigError(f"eval_weights={path!r} is in weights format {written}; this code reads formats 1 and "
                          f"{WEIGHTS_FORMAT} (the weights were written by a newer deepvit)")
    if written is not None and given is not None and given != written:
        raise ConfigError(f"eval_weights_format={given}, but eval_weights={path!r} says it is in format {written}; "
                          f"leave --eval-weights-format out")
    if written is not None:
        return written
    if given is not None:
        return given
    if any(isinstance(m, ReAttentionMix) and m.theta_type == 'learned' for m in model.modules()):
        raise ConfigError(f"eval_weights={path!r} has no deepvit.weights_format metadata, and its Re-attention Θ may "
                          f"be stored either way: say --eval-weights-format 1 for an export written before format 2 "
                          f"(Θ as is), or --eval-weights-format {WEIGHTS_FORMAT} for weights saved since by other means "
                          f"(Θᵀ, e.g. DeepSpeed's zero_to_fp32.py); see docs/models.md")
    return WEIGHTS_FORMAT   # no learned Θ: both formats read the same


def _check_model_name(name: str) -> None:
    """Any model in timm's registry whose builder returns a :class:`deepvit.models.DeepVisionTransformer` (our
    ViT / DeepViT / remedy variants, or one a user registers with ``timm.register_model``) can be trained: the loop
    needs its ``model_cfg``, ``family`` and attention maps (the collapse probe). Checked on the meta device."""
    import timm
    import torch
    from .. import models as deepvit_models
    if name not in timm.list_models():
        raise ConfigError(f"model.name: unknown model {name!r}; choose one of: "
                          f"{', '.join(deepvit_models.list_variants())}")
    try:
        with torch.device('meta'):
            meta = timm.create_model(name)
    except Exception as err:   # a model that cannot be built with its defaults is not ours to drive
        raise ConfigError(f"model.name: {name!r} cannot be built on the meta device ({err})") from None
    if not isinstance(meta, deepvit_models.DeepVisionTransformer):
        raise ConfigError(f"model.name: {name!r} is a timm {type(meta).__name__}, which this trainer cannot drive: "
                          f"it trains deepvit.models.DeepVisionTransformer variants (their model_cfg, family and "
                          f"attention maps feed the record and the collapse probe); choose one of: "
                          f"{', '.join(deepvit_models.list_variants())}, or register your own with "
                          f"timm.register_model")
