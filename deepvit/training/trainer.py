"""Wire a resolved config into a DeepSpeed training run: validate → data → model → engine → loop → record.

Everything that can be wrong with the user's input is checked in :func:`preflight` before the process group is
created or a model is built. :func:`run` is called on every rank by ``launch/train.py``.
"""
import json
import logging
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .checkpoint import export_fp32, latest_tag, load as load_checkpoint, save as save_checkpoint, seed_everything
from .config import Config, ConfigError, flatten, model_overrides, to_yaml
from .distributed import all_reduce_sum, average_buffers, env_local_rank, env_rank, env_world_size, is_dist
from .ds_config import ResolvedDeepSpeedConfig, resolve_ds_config
from .engine import NonFiniteLossError, StepControl, evaluate, train_one_epoch
from .. import schema
from . import record

RUN_FILE = 'run.json'        # {"run_id": ...}: lets --resume continue the MLflow run even before a checkpoint
EXPORT_FILE = 'model.safetensors'
MODEL_FILE = 'model.json'    # {"name": ..., "kwargs": {...}}: the create_model call that rebuilds the model


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


def _is_gray_source(source: str) -> bool:
    return source == 'digits'


def preflight(cfg: Config, ds_path: str) -> Plan:
    """Check the DeepSpeed config, the model name and fields, and the data source. Raises ConfigError & co.

    Cheap: the model is built on the ``meta`` device (no memory, no init) only to run its own field checks; the
    data source is resolved to shard lists (``_info.json``), nothing is decoded.
    """
    import timm
    from .. import models as deepvit_models
    from ..data import resolve_shards

    rank, world = env_rank(), env_world_size()
    ds = resolve_ds_config(ds_path, world)
    out_dir = Path(cfg.output_dir)
    if cfg.eval_only:
        _check_eval_weights(cfg.eval_weights)
    elif not cfg.resume and ((out_dir / 'checkpoints' / 'latest').is_file() or (out_dir / RUN_FILE).is_file()):
        raise ConfigError(f"output_dir {str(out_dir)!r} already holds a run; pass --resume to continue it, or choose "
                          f"another --output-dir")
    try:  # created (or refused) here, on every rank, before any process group waits
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"output_dir {str(out_dir)!r} cannot be created: {err.strerror}"
                          f"{' (a parent is a regular file)' if isinstance(err, (FileExistsError, NotADirectoryError)) else ''}") from None
    if not os.access(out_dir, os.W_OK):
        raise ConfigError(f"output_dir {str(out_dir)!r} is not writable")
    if cfg.resume and latest_tag(out_dir / 'checkpoints') is not None:
        saved = _checkpoint_world_size(out_dir / 'checkpoints' / latest_tag(out_dir / 'checkpoints'))
        if saved is not None and saved != world:
            raise ConfigError(
                f"--resume: the checkpoint in {str(out_dir / 'checkpoints')!r} was written by {saved} rank(s), this "
                f"job has {world}. DeepSpeed's ZeRO checkpoints are partitioned by rank count, so it cannot be "
                f"loaded as is. Resume with {saved} rank(s) (deepspeed --num_gpus/--num_nodes), or convert it once "
                f"with DeepSpeed's ds_to_universal.py and resume from the universal checkpoint in a new output_dir; "
                f"the MLflow run is left as it was")
    variants = deepvit_models.list_variants()
    if cfg.model.name not in variants:
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}; choose one of: {', '.join(variants)}")
    train_shards = resolve_shards(cfg.data.source, cfg.data.train_split)
    val_shards = resolve_shards(cfg.data.source, cfg.data.val_split)
    for what, shards in (('train', train_shards), ('val', val_shards)):
        if shards.num_samples == 0:
            raise ConfigError(f"data.{what}_split: split {shards.split!r} of {cfg.data.source!r} has no samples")
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
    kwargs.setdefault('img_size', meta.model_cfg['img_size'])
    return Plan(cfg=cfg, ds=ds, rank=rank, local_rank=env_local_rank(), world_size=world, model_kwargs=kwargs,
                num_classes=kwargs['num_classes'] if 'num_classes' in kwargs else meta.num_classes,
                train_shards=train_shards, val_shards=val_shards)


def _check_eval_weights(path: Optional[str]) -> None:
    if not path:
        raise ConfigError("eval_only: give the weights to score with --eval-weights (a .safetensors export, a "
                          "checkpoints/ folder or a run's output_dir)")
    p = Path(path)
    if p.is_file() and p.suffix == '.safetensors':
        return
    if p.is_dir() and ((p / 'latest').is_file() or (p / 'checkpoints' / 'latest').is_file()):
        return
    raise ConfigError(f"eval_weights={path!r}: not a .safetensors file, nor a folder with a DeepSpeed checkpoint "
                      f"('latest' in it or in its checkpoints/)")


def _checkpoint_world_size(tag_dir: Path) -> Optional[int]:
    """Ranks that wrote a DeepSpeed checkpoint: its ZeRO optimizer partitions, one per data-parallel rank
    (``zero_pp_rank_<R>_mp_rank_00_optim_states.pt``; ZeRO-3 also ``…_model_states.pt``). None for stage 0."""
    ranks = {p.name.split('_')[3] for p in tag_dir.glob('zero_pp_rank_*_mp_rank_*_optim_states.pt')}
    return len(ranks) or None


class LaunchError(RuntimeError):
    """The job cannot start for a reason outside the config (e.g. the rendezvous port is taken)."""


class _Preemption:
    """The stop request of this rank: SIGTERM or SIGINT (cluster preemption, Ctrl-C), or the loss of the command
    that started the job. The loop polls it at log steps, where all ranks agree through one all-reduce, so every
    rank checkpoints at the same optimizer step and exits with 143.

    DeepSpeed's launcher does not pass a signal sent to the ``deepspeed`` command on (its ranks would keep training as
    orphans): under DeepSpeed's per-node launcher a watchdog thread checks once a second that the launcher's parent
    (the ``deepspeed`` command, or the SSH session of a remote node) is still there, and requests the stop when it
    is not. A signal to the per-node launcher reaches one rank's process tree first; the next log step's all-reduce
    carries that rank's request to all of them.
    """

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)
        threading.Thread(target=self._watch_launcher, name='deepvit-launcher-watchdog', daemon=True).start()

    def _handler(self, signum, frame) -> None:
        self.requested = True

    def _watch_launcher(self) -> None:
        import psutil
        try:
            launcher = psutil.Process(os.getppid())
            if 'deepspeed.launcher.launch' not in ' '.join(launcher.cmdline()):
                return  # started some other way: nothing to watch
            starter = launcher.ppid()
        except psutil.Error:
            return
        while not self.requested:
            time.sleep(1.0)
            try:
                gone = not launcher.is_running() or launcher.ppid() != starter  # re-parented: its starter died
            except psutil.Error:
                gone = True
            if gone:
                self.requested = True

    def __call__(self) -> bool:
        return self.requested


def _quiet_other_ranks(rank: int) -> None:
    from deepspeed.utils import logger as ds_logger
    ds_logger.setLevel(logging.WARNING if rank == 0 else logging.ERROR)
    warnings.filterwarnings('ignore', category=FutureWarning, module=r'(deepspeed|torch\.distributed)')
    if rank != 0:
        warnings.filterwarnings('ignore')
        logging.getLogger().setLevel(logging.ERROR)


def _device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device('cuda', local_rank)
    return torch.device('cpu')


def _build_loaders(plan: Plan, model, mixup_fn, device: torch.device):
    """Train, validation and probe loaders. Batches leave the workers as uint8 and are normalised (and randomly
    erased and mixed up, for training) on ``device``; on CUDA they are copied from pinned memory, non-blocking."""
    from ..collapse import probe_chunk_size
    from ..data import create_loader
    cfg, kwargs = plan.cfg, plan.model_kwargs
    img_size = int(kwargs['img_size'] if isinstance(kwargs['img_size'], int) else kwargs['img_size'][0])
    common = dict(img_size=img_size, in_chans=kwargs['in_chans'], num_classes=plan.num_classes,
                  seed=cfg.train.seed, rank=plan.rank, world_size=plan.world_size, num_workers=cfg.data.num_workers,
                  interpolation=cfg.data.interpolation, device=device)
    if cfg.data.crop_pct is not None:
        common['crop_pct'] = cfg.data.crop_pct
    train = create_loader(cfg.data.source, cfg.data.train_split, batch_size=plan.ds.micro_batch_size, train=True,
                          scale=cfg.data.scale, ratio=cfg.data.ratio, hflip=cfg.data.hflip,
                          auto_augment=cfg.data.aa, re_prob=cfg.data.reprob, mixup=mixup_fn, **common)
    val = create_loader(cfg.data.source, cfg.data.val_split, batch_size=plan.ds.micro_batch_size, train=False,
                        pad=True, **common)
    chunk = min(cfg.train.collapse_images, probe_chunk_size(model.model_cfg['depth'], model.model_cfg['num_heads'],
                                                            model.patch_embed.num_patches + model.num_prefix_tokens))
    probe = create_loader(cfg.data.source, cfg.data.val_split, batch_size=chunk, train=False,
                          **dict(common, rank=0, world_size=1, num_workers=0))
    return train, val, probe


def _run_name(cfg: Config, model) -> str:
    if cfg.log.run_name:
        return cfg.log.run_name
    mc = model.model_cfg
    return f"{cfg.model.name}-d{mc['depth']}-w{mc['embed_dim']}-s{cfg.train.seed}"


def run(plan: Plan) -> int:
    """Train on this rank. Returns the process exit code (0 done, 143 preempted after checkpointing)."""
    import deepspeed
    import timm
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from tqdm import tqdm

    from ..data import create_mixup
    from ..models import count_params, gmacs_per_image
    from .collapse_report import CollapseProbe, log_collapse_artifacts, similarity_figure
    from .engine import gather_correct
    from .regularizers import CosineRegularizer
    from .tracking import create_tracker

    cfg, ds, rank, world = plan.cfg, plan.ds, plan.rank, plan.world_size
    _quiet_other_ranks(rank)
    preempt = _Preemption()
    out_dir = Path(cfg.output_dir).resolve()
    ckpt_dir = out_dir / 'checkpoints'
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    device = _device(plan.local_rank)
    try:
        deepspeed.init_distributed(verbose=False)
    except torch.distributed.DistNetworkError as err:
        raise LaunchError(f"cannot start the process group on MASTER_PORT={os.environ.get('MASTER_PORT')} "
                          f"({str(err).splitlines()[0][:160]}); another job on this machine may hold the port: "
                          f"pass --master_port to deepspeed") from None

    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(ds.precision, torch.float32)
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
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds.config)

    mixup_fn = create_mixup(plan.num_classes, mixup_alpha=cfg.train.mixup, cutmix_alpha=cfg.train.cutmix,
                            prob=cfg.train.mixup_prob, switch_prob=cfg.train.mixup_switch_prob,
                            label_smoothing=cfg.train.label_smoothing) \
        if (cfg.train.mixup > 0 or cfg.train.cutmix > 0) else None
    train_loader, val_loader, probe_loader = _build_loaders(plan, model, mixup_fn, device)
    if mixup_fn is not None:
        criterion = SoftTargetCrossEntropy()
    elif cfg.train.label_smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=cfg.train.label_smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()
    steps_per_epoch = train_loader.num_batches // ds.grad_accum_steps
    if steps_per_epoch < 1:
        raise ConfigError(f"{train_loader.num_batches} micro-batches per epoch per rank are fewer than "
                          f"gradient_accumulation_steps={ds.grad_accum_steps}: no optimizer step would be made")
    epoch_batches = steps_per_epoch * ds.grad_accum_steps  # whole optimizer steps; the remainder is not trained on
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.train.sched, num_epochs=cfg.train.epochs,
                                       warmup_epochs=cfg.train.warmup_epochs, warmup_lr=cfg.train.warmup_lr,
                                       min_lr=cfg.train.min_lr, step_on_epochs=False,
                                       updates_per_epoch=steps_per_epoch)

    # ---- resume
    state: Optional[Dict[str, Any]] = None
    if cfg.resume and latest_tag(ckpt_dir) is not None:
        state = load_checkpoint(engine, ckpt_dir, rank)
        # the schedule is not restored: it is a function of the global step under *this* job's plan, so a resume
        # with a longer --epochs re-plans from where the run is (the same plan resumes exactly as before)
    run_id = (state or {}).get('mlflow_run_id')
    run_file = out_dir / RUN_FILE
    if run_id is None and cfg.resume and run_file.is_file():
        run_id = json.loads(run_file.read_text()).get('run_id')
    start_epoch = int((state or {}).get('epoch', 0))
    start_batch = int((state or {}).get('batch_in_epoch', 0))
    scheduler.step_update(num_updates=engine.global_steps)

    # ---- tracking (rank 0)
    family = model.family
    remedy = getattr(model, 'remedy', family) + ('+cosreg' if cfg.train.cosine_reg > 0 else '')
    tags = record.run_tags(cfg, model, family, remedy, device)
    tags[schema.NOTE_TAG] = record.run_description(cfg, model, n_params, world, ds.precision,
                                                   plan.train_shards.num_samples if plan.train_shards else None)
    tracker = create_tracker(rank, experiment=cfg.log.experiment, run_name=_run_name(cfg, model),
                             tracking_uri=cfg.log.tracking_uri, run_id=run_id, tags=tags)
    best = _Best()
    if rank == 0:
        run_file.write_text(json.dumps({'run_id': tracker.run_id}))
        (out_dir / MODEL_FILE).write_text(json.dumps({'name': cfg.model.name, 'kwargs': plan.model_kwargs}))
        tracker.log_params(record.run_params(cfg, model, ds, world, n_params=n_params, gmacs=gmacs, family=family,
                                             remedy=remedy, lr=lr))
        tracker.log_text(to_yaml(cfg), 'config.yaml')
        tracker.log_dict(ds.config, 'ds_config.json')
        if plan.train_shards is not None:
            tracker.log_datasets(record.dataset_records(cfg, plan.train_shards, plan.val_shards))
        if cfg.log.system_metrics_interval > 0:
            tracker.start_system_metrics(cfg.log.system_metrics_interval)
        best.restore(tracker.history(schema.TOP1))
        tracker.set_tags({schema.EPOCHS_TAG: str(cfg.train.epochs)})  # the planned length now (params are frozen)
        print(f"[deepvit] {cfg.model.name} ({family}, {n_params / 1e6:.2f}M params, {gmacs:.3f} GMACs/img) | "
              f"world {world} | ZeRO-{ds.zero_stage} | {ds.precision} | global batch {ds.global_batch_size} | "
              f"lr {lr:.2e} | {steps_per_epoch} steps/epoch | MLflow run {tracker.run_id} "
              f"({tracker.uri})", flush=True)
        if state is not None:
            print(f"[deepvit] resumed from {ckpt_dir / state['tag']} (epoch {start_epoch}, batch {start_batch}, "
                  f"step {engine.global_steps})", flush=True)

    if state is not None and start_epoch >= cfg.train.epochs and (out_dir / EXPORT_FILE).is_file():
        if rank == 0:
            print(f"[deepvit] the run in {out_dir} already finished its {cfg.train.epochs} epochs; nothing to do "
                  f"(raise --epochs to train further)", flush=True)
        tracker.end('FINISHED')
        return 0

    control = StepControl(stop_requested=preempt, max_steps=cfg.train.max_steps)
    status, exit_code = 'FINISHED', 0
    last_val: Dict[str, float] = {}
    probe = CollapseProbe(lambda: (x.to(device).to(dtype) for x, _ in probe_loader), cfg.train.collapse_images,
                          cfg.train.collapse_threshold, cfg.train.collapse_permutations, tracker.log_metrics)
    regularizer = CosineRegularizer(engine.module, cfg.train.cosine_reg, cfg.train.cosine_reg_blocks) \
        if cfg.train.cosine_reg > 0 else None
    try:
        if state is None and run_id is None:  # the initialised model (a continued run logged it when it started)
            probe(engine.module, engine.global_steps)
        epoch = start_epoch
        while epoch < cfg.train.epochs:
            if start_batch == 0:
                seed_everything(cfg.train.seed, epoch, rank)  # mid-epoch resume keeps the restored RNG state
            train_loader.set_epoch(epoch, start_batch)
            bar = tqdm(total=steps_per_epoch, initial=start_batch // ds.grad_accum_steps, disable=rank != 0,
                       desc=f"epoch {epoch + 1}/{cfg.train.epochs}", dynamic_ncols=True, leave=False)
            t0 = time.perf_counter()
            result = train_one_epoch(engine, train_loader, criterion, device=device, dtype=dtype,
                                     scheduler=scheduler, start_batch=start_batch, stop_batch=epoch_batches,
                                     control=control,
                                     log_every=cfg.train.log_every, regularizer=regularizer,
                                     on_log=lambda m, s: tracker.log_metrics(m, s), progress=bar)
            bar.close()
            position = start_batch + result.batches  # micro-batches of this epoch consumed so far
            start_batch = 0
            complete = position >= epoch_batches
            if _any_rank(preempt(), device) and not complete:  # each rank keeps its own BatchNorm statistics in its rank file
                tag = f'step{engine.global_steps:08d}'
                save_checkpoint(engine, ckpt_dir, tag, _client_state(epoch, position, engine, scheduler,
                                                                     tracker.run_id, cfg), rank)
                status, exit_code = 'KILLED', 143
                if rank == 0:
                    print(f"[deepvit] SIGTERM: checkpoint {ckpt_dir / tag} written; resume with --resume", flush=True)
                break
            average_buffers(engine.module, device)
            final_eval = result.stopped or (complete and epoch + 1 >= cfg.train.epochs)  # same on every rank
            metrics = evaluate(engine, val_loader, device=device, dtype=dtype, per_sample=final_eval)
            if final_eval:  # per-image results of the final evaluation only (a collective gather)
                metrics, correct = metrics
                correct = gather_correct(correct, device)
                if rank == 0:
                    tracker.log_numpy(correct.numpy(), 'eval/correct.npy')
            skipped = _all_skipped(train_loader, val_loader, device)
            metrics.update({'data/skipped_samples': skipped, 'epoch': epoch + 1})
            metrics.update(best.update(metrics[schema.TOP1], engine.global_steps))
            tracker.log_metrics(metrics, engine.global_steps)
            last_val = metrics
            if complete:
                tag, state_at = f'epoch{epoch + 1:04d}', (epoch + 1, 0)
            else:  # step budget spent inside the epoch
                tag, state_at = f'step{engine.global_steps:08d}', (epoch, position)
            save_checkpoint(engine, ckpt_dir, tag, _client_state(*state_at, engine, scheduler, tracker.run_id, cfg),
                            rank)
            if rank == 0:
                print(f"[deepvit] epoch {epoch + 1}/{cfg.train.epochs} step {engine.global_steps} | "
                      f"train loss {result.loss:.4f} | val loss {metrics['val/loss']:.4f} "
                      f"top1 {metrics['val/top1']:.2f} top5 {metrics['val/top5']:.2f} "
                      f"({int(metrics['val/num_samples'])} images) | skipped {int(skipped)} | "
                      f"{time.perf_counter() - t0:.1f}s", flush=True)
            every = cfg.train.collapse_every  # before a preemption stop: a resume starts after this epoch
            if every and (epoch + 1) % every == 0 and epoch + 1 < cfg.train.epochs and not result.stopped:
                probe(engine.module, engine.global_steps)
            if _any_rank(preempt(), device):  # agreed: no rank goes on into an epoch the others left
                status, exit_code = 'KILLED', 143
                if rank == 0:
                    print(f"[deepvit] SIGTERM: checkpoint {ckpt_dir / tag} written (at the end of epoch "
                          f"{epoch + 1}); resume with --resume", flush=True)
                break
            if result.stopped:  # step budget spent
                break
            epoch += 1

        if status == 'FINISHED':
            final = probe(engine.module, engine.global_steps)
            report = final.summary()
            peaks = _peak_memory_per_rank(device, world)
            if rank == 0:
                log_collapse_artifacts(tracker, final, similarity_figure)
                tracker.log_metrics({schema.PEAK_MEMORY.format(rank=r): m for r, m in enumerate(peaks)},
                                    engine.global_steps)
                print(f"[deepvit] peak memory per rank (MiB, {'GPU allocated' if device.type == 'cuda' else 'RSS'}): "
                      f"{', '.join(f'{m:.0f}' for m in peaks)}", flush=True)
                tag = latest_tag(ckpt_dir)
                export = export_fp32(ckpt_dir, tag, out_dir / EXPORT_FILE)
                tracker.log_params({'export.path': _display_path(Path(cfg.output_dir) / EXPORT_FILE)})
                if cfg.log.log_model:
                    tracker.log_model([export, out_dir / MODEL_FILE], cfg.model.name,
                                      {'model_name': cfg.model.name, **plan.model_kwargs}, engine.global_steps)
                print(f"[deepvit] done: val top1 {last_val.get('val/top1', float('nan')):.2f} | similar blocks "
                      f"(paper / calibrated) softmax {report['similar_blocks_softmax']} / "
                      f"{report['calibrated_similar_blocks_softmax']}, mixed {report['similar_blocks_mixed']} / "
                      f"{report['calibrated_similar_blocks_mixed']} | effective keys softmax "
                      f"{report['effective_keys_softmax']:.1f} | {probe.count} collapse probes took "
                      f"{probe.seconds:.1f} s | weights {export}", flush=True)
            if is_dist():
                torch.distributed.barrier()
    except NonFiniteLossError as err:
        status, exit_code = 'FAILED', 1
        if rank == 0:
            print(f"[deepvit] error: {err} ({latest_tag(ckpt_dir) or 'no checkpoint yet'})", flush=True)
    except BaseException:
        tracker.end('FAILED')
        raise
    tracker.end(status)
    return exit_code


class _Best:
    """Running maximum of ``val/top1`` and its step, continued across resumes from the run's metric history."""

    def __init__(self) -> None:
        self.value, self.step = float('-inf'), -1

    def restore(self, history) -> None:
        for step, value in history:
            self.update(value, step)

    def update(self, value: float, step: int) -> Dict[str, float]:
        if value > self.value:
            self.value, self.step = float(value), int(step)
        return {schema.TOP1_BEST: self.value, schema.TOP1_BEST_STEP: self.step}


def _peak_memory_per_rank(device: torch.device, world: int):
    """Peak memory of every rank in MiB (collective): GPU memory allocated on CUDA, resident set size on CPU."""
    import resource
    if device.type == 'cuda':
        mine = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10  # Linux reports KiB
    values = torch.zeros(world, dtype=torch.float64, device=device)
    values[env_rank() if world > 1 else 0] = mine
    if is_dist():
        torch.distributed.all_reduce(values)
    return values.tolist()


def _client_state(epoch: int, batch_in_epoch: int, engine, scheduler, run_id, cfg: Config) -> Dict[str, Any]:
    return {'epoch': epoch, 'batch_in_epoch': batch_in_epoch, 'global_step': engine.global_steps,
            'scheduler': scheduler.state_dict(), 'mlflow_run_id': run_id, 'config': flatten(cfg)}


def _any_rank(flag: bool, device) -> bool:
    """True on every rank when ``flag`` is true on any (collective): stop decisions are never taken by one rank."""
    return bool(all_reduce_sum([float(flag)], device)[0] > 0)


def _all_skipped(train_loader, val_loader, device) -> float:
    return float(all_reduce_sum([train_loader.skipped_samples + val_loader.skipped_samples], device)[0])


def _display_path(path: Path) -> str:
    """``path`` as the user gave it when relative, else relative to the working directory when inside it (records
    stay valid when a folder is moved), else absolute."""
    if not path.is_absolute():
        return path.as_posix()
    rel = os.path.relpath(path)
    return str(path) if rel.startswith('..') else rel
