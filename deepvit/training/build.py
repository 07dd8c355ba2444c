"""Build one rank's side of a training job from a :class:`~.preflight.Plan`: process group, model, DeepSpeed engine,
loaders, loss and learning-rate schedule. Nothing here trains; :mod:`.trainer` runs the loop on what this returns.
"""
import datetime
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .checkpoint import seed_everything
from .budget import pflop_per_step, plan_budget
from .config import ConfigError
from ..ranks import env_local_rank
from .distributed import is_dist
from .preflight import Plan


class LaunchError(RuntimeError):
    """The job cannot start for a reason outside the config (e.g. the rendezvous port is taken)."""


def quiet_other_ranks(rank: int) -> None:
    """DeepSpeed's logger at WARNING on rank 0, every other rank's logs and warnings at ERROR."""
    from deepspeed.utils import logger as ds_logger
    ds_logger.setLevel(logging.WARNING if rank == 0 else logging.ERROR)
    warnings.filterwarnings('ignore', category=FutureWarning, module=r'(deepspeed|torch\.distributed)')
    if rank != 0:
        warnings.filterwarnings('ignore')
        logging.getLogger().setLevel(logging.ERROR)


# how long a rank waits in a collective: DeepSpeed's default is 10 minutes, but the other ranks wait on rank 0 while it
# converts a checkpoint to DeepSpeed's universal format or exports the fp32 weights, which takes longer on big models
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=60)


def device_for(local_rank: int) -> torch.device:
    """This rank's CUDA device (made current), or the CPU. A scheduler that shows each task only its own GPU
    (``CUDA_VISIBLE_DEVICES`` with one device) gets device 0 whatever the local rank."""
    if torch.cuda.is_available():
        index = 0 if torch.cuda.device_count() == 1 else local_rank
        torch.cuda.set_device(index)
        return torch.device('cuda', index)
    return torch.device('cpu')


def start_process_group(plan: Plan) -> torch.device:
    """Quiet the other ranks, pick this rank's device and join the process group. Raises LaunchError when the
    rendezvous port is taken."""
    import deepspeed
    quiet_other_ranks(plan.rank)
    device = device_for(plan.local_rank)
    try:
        deepspeed.init_distributed(verbose=False, timeout=PROCESS_GROUP_TIMEOUT)
    except torch.distributed.DistNetworkError as err:
        raise LaunchError(f"cannot start the process group on MASTER_PORT={os.environ.get('MASTER_PORT')} "
                          f"({str(err).splitlines()[0][:160]}); another job on this machine may hold the port: "
                          f"pass --master_port to deepspeed") from None
    unlink_shm_buffers()
    return device


SHM_DIR = Path('/dev/shm')


def shm_buffer_prefix() -> str:
    """Name prefix of DeepSpeed's CPU all-reduce buffers of this job on this node:
    ``deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>`` (``deepspeed/ops/csrc/cpu/comm/shm.cpp``,
    ``shm_initialize``), one ``…_<rank>`` file of ~66 MiB per rank."""
    return f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR')}_{os.environ.get('MASTER_PORT')}"


def unlink_shm_buffers() -> int:
    """Unlink this job's DeepSpeed CPU all-reduce buffers from ``/dev/shm`` once every local rank has mapped them.

    DeepSpeed's CPU communicator creates one POSIX shared-memory segment per rank at ``init_distributed`` and maps
    every other local rank's, but never unlinks them (``shared_close`` in ``shm.cpp`` is never called): each
    multi-rank CPU job, killed or not, leaves ~66 MiB per rank in ``/dev/shm`` — RAM — until the machine reboots (247
    of them, 16 GB, had piled up on the development machine and made jobs stall). Unlinked after a barrier, the
    mappings stay valid for the job's lifetime and the memory is freed when its last rank exits, however it exits.
    Returns the number of files this rank removed (local rank 0 removes them; 0 without shared-memory buffers)."""
    if not is_dist() or not SHM_DIR.is_dir():
        return 0
    torch.distributed.barrier()  # every rank has returned from init_distributed: all buffers are mapped
    if env_local_rank() != 0:
        return 0
    removed = 0
    for path in SHM_DIR.glob(shm_buffer_prefix() + '_*'):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _loader_args(plan: Plan, device: torch.device) -> dict:
    """The :func:`deepvit.data.create_loader` arguments every loader of the run shares."""
    cfg, kwargs = plan.cfg, plan.model_kwargs
    img_size = int(kwargs['img_size'] if isinstance(kwargs['img_size'], int) else kwargs['img_size'][0])
    common = dict(img_size=img_size, in_chans=kwargs['in_chans'], num_classes=plan.num_classes,
                  seed=cfg.train.seed, rank=plan.rank, world_size=plan.world_size, num_workers=cfg.data.num_workers,
                  interpolation=cfg.data.interpolation, device=device)
    if cfg.data.crop_pct is not None:
        common['crop_pct'] = cfg.data.crop_pct
    return common


def build_eval_loaders(plan: Plan, model, device: torch.device):
    """``(validation, probe)`` loaders: the validation split for this rank (padded to equal batches), and the whole
    split on every rank in chunks the collapse probe can hold (:func:`deepvit.collapse.probe_chunk_size` within
    :func:`deepvit.collapse.probe_budget_mib`: the default on CPU, a share of the free memory on a GPU)."""
    from ..collapse import probe_budget_mib, probe_chunk_size
    from ..data import create_loader
    cfg, common = plan.cfg, _loader_args(plan, device)
    val = create_loader(cfg.data.source, cfg.data.val_split, batch_size=plan.ds.micro_batch_size, train=False,
                        pad=True, **common)
    chunk = min(cfg.train.collapse_images, probe_chunk_size(model.model_cfg['depth'], model.model_cfg['num_heads'],
                                                            model.patch_embed.num_patches + model.num_prefix_tokens,
                                                            probe_budget_mib(device)))
    probe = create_loader(cfg.data.source, cfg.data.val_split, batch_size=chunk, train=False,
                          **dict(common, rank=0, world_size=1, num_workers=0))
    return val, probe


def build_loaders(plan: Plan, model, mixup_fn, device: torch.device):
    """``(train, validation, probe, holdout, train_eval)`` loaders (holdout None without ``data.holdout``, train_eval
    None when ``data.train_eval`` is 0). Batches leave the workers as uint8 and are normalised (and randomly
    erased and mixed up, for training) on ``device``; on CUDA they are copied from pinned memory, non-blocking.
    The holdout and train-accuracy loaders score without augmentation, like the validation split."""
    from ..data import create_loader
    cfg, common = plan.cfg, _loader_args(plan, device)
    batch, split = plan.ds.micro_batch_size, cfg.data.train_split
    train = create_loader(cfg.data.source, split, batch_size=batch, train=True,
                          scale=cfg.data.scale, ratio=cfg.data.ratio, hflip=cfg.data.hflip,
                          auto_augment=cfg.data.aa, re_prob=cfg.data.reprob, mixup=mixup_fn,
                          holdout_samples=cfg.data.holdout, **common)
    holdout = create_loader(cfg.data.source, split, batch_size=batch, train=False, pad=True,
                            holdout_samples=cfg.data.holdout, holdout=True, **common) if cfg.data.holdout else None
    train_eval = create_loader(cfg.data.source, split, batch_size=batch, train=False, pad=True,
                               holdout_samples=cfg.data.holdout, head_samples=cfg.data.train_eval,
                               **common) if cfg.data.train_eval else None
    val, probe = build_eval_loaders(plan, model, device)
    return train, val, probe, holdout, train_eval


@dataclass
class Job:
    """What one rank trains with: the built model and engine, the data, the loss and the schedule."""
    device: torch.device
    dtype: torch.dtype
    model: Any                 # the timm model (also ``engine.module``)
    engine: Any                # deepspeed.DeepSpeedEngine
    scheduler: Any             # timm scheduler, stepped per optimizer step by the loop
    lr: float                  # the learning rate used: train.lr scaled with the global batch
    n_params: int
    gmacs: float
    family: str
    remedy: str                # the model's remedy, '+cosreg' when trained with the cosine regulariser
    train_loader: Any
    val_loader: Any
    probe_loader: Any
    holdout_loader: Any        # None without data.holdout
    train_eval_loader: Any     # None when data.train_eval is 0
    criterion: torch.nn.Module
    steps_per_epoch: int       # optimizer steps per epoch
    epoch_batches: int         # micro-batches trained per epoch: whole optimizer steps, the remainder is not used
    planned_steps: int = 0     # optimizer steps the run is planned for (epochs × steps/epoch, or the budget's)
    planned_pflop: float = 0.0  # their training compute (deepvit.training.budget)
    regularizer: Optional[Any] = None


def build_job(plan: Plan, device: torch.device) -> Job:
    """Model (identical initial weights on every rank), timm optimizer, DeepSpeed engine, loaders, loss and the
    per-step warm-up + cosine schedule. Raises ConfigError when an epoch holds no whole optimizer step."""
    import deepspeed
    import timm
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    from ..data import create_mixup
    from ..models import count_params, gmacs_per_image
    from .regularizers import CosineRegularizer

    cfg, ds = plan.cfg, plan.ds
    seed_everything(cfg.train.seed)  # identical initial weights on every rank
    model = timm.create_model(cfg.model.name, **plan.model_kwargs)
    n_params, gmacs = count_params(model), gmacs_per_image(model)
    if cfg.train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.train.compile:
        model.compile()  # in place: parameter names (checkpoints, exports) unchanged
    lr = cfg.train.lr * ds.global_batch_size / 512  # DeiT's linear scaling rule
    optimizer = create_optimizer_v2(model, opt=cfg.train.opt, lr=lr, weight_decay=cfg.train.weight_decay,
                                    eps=cfg.train.opt_eps)
    config = ds.config if plan.world_change is None else {**ds.config, 'checkpoint': {'load_universal': True}}
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)

    mixup_fn = create_mixup(plan.num_classes, mixup_alpha=cfg.train.mixup, cutmix_alpha=cfg.train.cutmix,
                            prob=cfg.train.mixup_prob, switch_prob=cfg.train.mixup_switch_prob,
                            label_smoothing=cfg.train.label_smoothing) \
        if (cfg.train.mixup > 0 or cfg.train.cutmix > 0) else None
    train_loader, val_loader, probe_loader, holdout_loader, train_eval_loader = build_loaders(plan, model, mixup_fn,
                                                                                             device)
    steps_per_epoch = train_loader.num_batches // ds.grad_accum_steps
    if steps_per_epoch < 1:
        raise ConfigError(f"{train_loader.num_batches} micro-batches per epoch per rank are fewer than "
                          f"gradient_accumulation_steps={ds.grad_accum_steps}: no optimizer step would be made")
    planned_steps, sched_epochs, sched_updates = cfg.train.epochs * steps_per_epoch, cfg.train.epochs, steps_per_epoch
    warmup = cfg.train.warmup
    if cfg.train.budget_pflop is not None:   # fixed compute: the length and the schedule come from the budget
        budget = plan_budget(cfg.train.budget_pflop, gmacs, ds.global_batch_size, steps_per_epoch, warmup)
        cfg.train.epochs, cfg.train.max_steps = budget.epochs, budget.steps
        planned_steps, sched_epochs, sched_updates = budget.steps, 1, budget.steps   # one cosine over the steps
        warmup = budget.warmup_steps / budget.steps
    elif cfg.train.max_steps is not None:
        planned_steps = min(planned_steps, cfg.train.max_steps)
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.train.sched, num_epochs=sched_epochs,
                                       warmup_epochs=warmup, warmup_lr=cfg.train.warmup_lr,
                                       min_lr=cfg.train.min_lr, step_on_epochs=False,
                                       updates_per_epoch=sched_updates)
    remedy = getattr(model, 'remedy', model.family) + ('+cosreg' if cfg.train.cosine_reg > 0 else '')
    return Job(device=device, dtype={'bf16': torch.bfloat16, 'fp16': torch.float16}.get(ds.precision, torch.float32),
               model=model, engine=engine, scheduler=scheduler, lr=lr, n_params=n_params, gmacs=gmacs,
               family=model.family, remedy=remedy, train_loader=train_loader, val_loader=val_loader,
               probe_loader=probe_loader, holdout_loader=holdout_loader, train_eval_loader=train_eval_loader,
               criterion=_criterion(cfg, mixup_fn is not None),
               steps_per_epoch=steps_per_epoch, epoch_batches=steps_per_epoch * ds.grad_accum_steps,
               planned_steps=planned_steps,
               planned_pflop=planned_steps * pflop_per_step(gmacs, ds.global_batch_size),
               regularizer=CosineRegularizer(engine.module, cfg.train.cosine_reg, cfg.train.cosine_reg_blocks)
               if cfg.train.cosine_reg > 0 else None)


def _criterion(cfg, mixed: bool) -> torch.nn.Module:
    """timm's soft-target loss for mixed-up targets, else label-smoothed (or plain) cross-entropy."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    if mixed:
        return SoftTargetCrossEntropy()
    if cfg.train.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.train.label_smoothing)
    return torch.nn.CrossEntropyLoss()
