"""One rank's training run, read top to bottom in :func:`run`: build the job, resume, open the record, train the
epochs, probe and export. Inputs were checked by :mod:`.preflight`; the parts are built by :mod:`.build`.
"""
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from .. import schema
from ..code_version import code_tags, code_version
from ..models import WEIGHTS_FORMAT
from . import record, resume
from .build import Job, build_job, start_process_group
from .checkpoint import CheckpointSpaceError, export_fp32, latest_tag, save as save_checkpoint, seed_everything
from .config import Config, flatten, to_yaml
from ..ranks import env_rank
from .distributed import all_reduce_sum, average_buffers, is_dist
from .engine import SIGNAL, NonFiniteLossError, StopRule, evaluate, train_one_epoch
from .preemption import Preemption
from .layout import RunDir
from .preflight import Plan
from .resume import Resumed

EXIT_CODES = {'FINISHED': 0, 'FAILED': 1, 'KILLED': 143}   # 143 = 128 + SIGTERM, what a scheduler expects


def run(plan: Plan) -> int:
    """Train on this rank (``launch/train.py`` calls it on every rank), or with ``eval_only`` score the given weights
    (:func:`.evaluation.run_eval`, DeiT's ``--eval`` branch). Returns the exit code: 0 done, 1 a non-finite loss,
    143 stopped by a signal after every rank checkpointed at the same optimizer step."""
    if plan.cfg.eval_only:
        from .evaluation import run_eval
        return run_eval(plan)
    preempt = Preemption()
    out = RunDir.of(plan.cfg.output_dir)
    if plan.rank == 0:
        out.checkpoints.mkdir(parents=True, exist_ok=True)
    job = build_job(plan, start_process_group(plan))
    resumed = resume.load(plan, job, out)
    tracker, best = open_record(plan, job, resumed, out)
    if resumed.finished:
        return _already_finished(plan, tracker, out)
    probe = _collapse_probe(plan, job, tracker)
    try:
        if resumed.new_run:  # the initialised model (a continued run logged it when it started)
            probe(job.engine.module, job.engine.global_steps)
        status, last_val = train_epochs(plan, job, resumed, tracker, best, probe, preempt, out)
        if status == 'FINISHED':
            finish(plan, job, tracker, probe, last_val, out)
    except NonFiniteLossError as err:
        status = 'FAILED'
        if plan.rank == 0:
            print(f"[deepvit] error: {err} ({latest_tag(out.checkpoints) or 'no checkpoint yet'})", flush=True)
    except CheckpointSpaceError as err:   # every rank writing to the full disk meets it: one line from each
        status = 'FAILED'
        print(f"[deepvit] error (rank {plan.rank}): {err}", file=sys.stderr, flush=True)
    except BaseException:
        tracker.end('FAILED')
        raise
    tracker.end(status)
    return EXIT_CODES[status]


def open_record(plan: Plan, job: Job, resumed: Resumed, out: RunDir):
    """Start (or continue) the MLflow run on rank 0 — tags, params, config, datasets, system metrics — and the
    running best top-1. Returns ``(tracker, best)``; other ranks get a tracker that records nothing."""
    cfg, ds, world, model = plan.cfg, plan.ds, plan.world_size, job.model
    note, params, datasets = '', {}, []   # written by rank 0 only (the other ranks' trackers record nothing)
    if plan.rank == 0:
        note = record.run_description(cfg, model, job.n_params, world, ds.precision,
                                      plan.train_shards.num_samples if plan.train_shards else None)
        params = {**record.run_params(cfg, model, ds, world, n_params=job.n_params, gmacs=job.gmacs,
                                      family=job.family, remedy=job.remedy, lr=job.lr),
                  schema.PLANNED_STEPS_PARAM: job.planned_steps,
                  schema.PLANNED_PFLOP_PARAM: round(job.planned_pflop, 9)}
        if plan.train_shards is not None:
            datasets = record.dataset_records(cfg, plan.train_shards, plan.val_shards, plan.holdout_shards)
    tracker = record.open_run(plan, model, job.device, family=job.family, remedy=job.remedy, kind=schema.TRAIN_KIND,
                              note=note, run_name=_run_name(cfg, model), params=params, datasets=datasets,
                              run_id=resumed.run_id, backlog_dir=out.backlog)
    best = _Best()
    if plan.rank != 0:
        return tracker, best
    out.run_file.write_text(json.dumps({'run_id': tracker.run_id}))
    if plan.job_lock is not None:
        plan.job_lock.note(run_id=tracker.run_id)
    out.model_file.write_text(json.dumps({'name': cfg.model.name, 'kwargs': plan.model_kwargs}))
    out.config_file.write_text(json.dumps(flatten(cfg), indent=1))   # what a later --resume must match
    tracker.log_dict(ds.config, 'ds_config.json')
    if cfg.log.system_metrics_interval > 0:
        tracker.start_system_metrics(cfg.log.system_metrics_interval)
    best.restore(tracker.history(schema.TOP1))
    tracker.set_tags({schema.EPOCHS_TAG: str(cfg.train.epochs)})  # the planned length now (params are frozen)
    if not resumed.finished:  # the code version of this start or resume (git runs here, on rank 0 only)
        tracker.set_tags(code_tags(code_version(), tracker.tags(), resumed=resumed.run_id is not None,
                                   step=job.engine.global_steps))
    print(f"[deepvit] {cfg.model.name} ({job.family}, {job.n_params / 1e6:.2f}M params, {job.gmacs:.3f} GMACs/img) | "
          f"world {world} | ZeRO-{ds.zero_stage} | {ds.precision} | global batch {ds.global_batch_size} | "
          f"lr {job.lr:.2e} | {job.steps_per_epoch} steps/epoch, {job.planned_steps} planned "
          f"({job.planned_pflop:.3g} PFLOP{', the budget' if cfg.train.budget_pflop else ''}) | "
          f"MLflow run {tracker.run_id} "
          f"({tracker.uri})", flush=True)
    if resumed.state is not None:
        print(f"[deepvit] resumed from {out.checkpoints / resumed.state['tag']} (epoch {resumed.epoch}, "
              f"batch {resumed.batch}, step {job.engine.global_steps})", flush=True)
    return tracker, best


def _already_finished(plan: Plan, tracker, out: RunDir) -> int:
    if plan.rank == 0:
        print(f"[deepvit] the run in {out.root} already finished its {plan.cfg.train.epochs} epochs; nothing to do "
              f"(raise --epochs to train further)", flush=True)
    tracker.end('FINISHED')
    return EXIT_CODES['FINISHED']


def _collapse_probe(plan: Plan, job: Job, tracker):
    from .collapse_report import CollapseProbe
    cfg = plan.cfg
    return CollapseProbe(lambda: (x.to(job.device).to(job.dtype) for x, _ in job.probe_loader), cfg.train, tracker)


def train_epochs(plan: Plan, job: Job, resumed: Resumed, tracker, best, probe, preempt,
                 out: RunDir) -> Tuple[str, Dict[str, float]]:
    """Train from ``resumed`` until the stop rule (:class:`~deepvit.training.engine.StopRule`) ends it: each epoch
    trains, validates, checkpoints and (every ``collapse_every`` epochs) probes; a signal checkpoints where the run
    is and ends the loop. Returns the status (``'FINISHED'`` or ``'KILLED'``) and the last validation metrics."""
    from tqdm import tqdm
    cfg, ds, rank, engine = plan.cfg, plan.ds, plan.rank, job.engine
    ckpt_dir = out.checkpoints
    rule = StopRule(requested=preempt, max_steps=cfg.train.max_steps, epochs=cfg.train.epochs)
    last_val: Dict[str, float] = {}
    epoch, start_batch = resumed.epoch, resumed.batch
    while rule.finished(epoch, engine.global_steps) is None:
        if start_batch == 0:
            seed_everything(cfg.train.seed, epoch, rank)  # mid-epoch resume keeps the restored RNG state
        job.train_loader.set_epoch(epoch, start_batch)
        bar = tqdm(total=job.steps_per_epoch, initial=start_batch // ds.grad_accum_steps, disable=rank != 0,
                   desc=f"epoch {epoch + 1}/{cfg.train.epochs}", dynamic_ncols=True, leave=False)
        t0 = time.perf_counter()
        result = train_one_epoch(engine, job.train_loader, job.criterion, device=job.device, dtype=job.dtype,
                                 scheduler=job.scheduler, start_batch=start_batch, stop_batch=job.epoch_batches,
                                 rule=rule, log_every=cfg.train.log_every, regularizer=job.regularizer,
                                 on_log=lambda m, s: tracker.log_metrics(m, s), progress=bar)
        bar.close()
        position = start_batch + result.batches  # micro-batches of this epoch consumed so far
        start_batch = 0
        complete = position >= job.epoch_batches
        if result.stop == SIGNAL:  # each rank keeps its BatchNorm statistics in its rank file
            tag = f'step{engine.global_steps:08d}'
            save_checkpoint(engine, ckpt_dir, tag,
                            _client_state(epoch, position, engine, job.scheduler, tracker.run_id, cfg), rank,
                            keep=cfg.train.checkpoint_hist)
            if rank == 0:
                print(f"[deepvit] SIGTERM: checkpoint {ckpt_dir / tag} written; resume with --resume", flush=True)
            return 'KILLED', last_val
        epochs_done = epoch + 1 if complete else epoch
        final = rule.finished(epochs_done, engine.global_steps) is not None  # the same on every rank
        last_val = _validate(plan, job, tracker, best, epoch, final)
        if complete:
            tag, state_at = f'epoch{epoch + 1:04d}', (epoch + 1, 0)
        else:  # step budget spent inside the epoch
            tag, state_at = f'step{engine.global_steps:08d}', (epoch, position)
        save_checkpoint(engine, ckpt_dir, tag, _client_state(*state_at, engine, job.scheduler, tracker.run_id, cfg),
                        rank, keep=cfg.train.checkpoint_hist)
        if rank == 0:
            print(f"[deepvit] epoch {epoch + 1}/{cfg.train.epochs} step {engine.global_steps} | "
                  f"train loss {result.loss:.4f} | val loss {last_val[schema.VAL_LOSS]:.4f} "
                  f"top1 {last_val[schema.TOP1]:.2f} top5 {last_val[schema.TOP5]:.2f} "
                  f"({int(last_val[schema.VAL_SAMPLES])} images) | skipped {int(last_val[schema.SKIPPED])} | "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)
        every = cfg.train.collapse_every  # before a preemption stop: a resume starts after this epoch
        if every and (epoch + 1) % every == 0 and not final:  # the final probe is finish()'s
            probe(engine.module, engine.global_steps)
        if rule.after_epoch(epochs_done, engine.global_steps, job.device) == SIGNAL:  # agreed: none goes on alone
            if rank == 0:
                print(f"[deepvit] SIGTERM: checkpoint {ckpt_dir / tag} written (at the end of epoch "
                      f"{epoch + 1}); resume with --resume", flush=True)
            return 'KILLED', last_val
        epoch += 1   # the step budget or the schedule's last epoch end the loop
    return 'FINISHED', last_val


def _validate(plan: Plan, job: Job, tracker, best, epoch: int, final: bool) -> Dict[str, float]:
    """Average BatchNorm buffers over ranks, evaluate ``epoch`` (0-based), log ``val/*``, the best top-1 and skipped samples; the final
    evaluation also stores each image's correctness (a collective gather). ``final`` is the same on every rank."""
    from .engine import by_sample, gather_correct
    engine = job.engine
    average_buffers(engine.module, job.device)
    scored = evaluate(engine, job.val_loader, device=job.device, dtype=job.dtype)
    metrics = scored.metrics
    if final:
        correct = gather_correct(scored.correct, job.device)
        if plan.rank == 0:   # in sample order: paired image by image across world sizes and worker counts
            tracker.log_numpy(by_sample(correct, job.val_loader), schema.CORRECT_ARTIFACT)
            tracker.set_tags({schema.CORRECT_ORDER_TAG: schema.SAMPLE_ORDER})
    skipped = _all_skipped(job.train_loader, job.val_loader, job.device)
    metrics.update({schema.SKIPPED: skipped, schema.EPOCH: epoch + 1})
    metrics.update(best.update(metrics[schema.TOP1], engine.global_steps))
    logged = dict(metrics)
    for loader, prefix in ((job.holdout_loader, schema.HOLDOUT_PREFIX), (job.train_eval_loader,
                                                                         schema.TRAIN_EVAL_PREFIX)):
        if loader is not None:   # selection data, train accuracy: the same keys, another prefix (collective)
            scored = evaluate(engine, loader, device=job.device, dtype=job.dtype).metrics
            logged.update({prefix + k.split('/', 1)[1]: v for k, v in scored.items()})
    tracker.log_metrics(logged, engine.global_steps)
    return metrics


def finish(plan: Plan, job: Job, tracker, probe, last_val: Dict[str, float], out: RunDir) -> None:
    """The final collapse probe and peak memory (collectives), then on rank 0 the collapse artifacts, the fp32 export
    (and MLflow logged model) and the closing summary line."""
    from .collapse_report import log_collapse_artifacts, similarity_figure
    cfg, engine, rank = plan.cfg, job.engine, plan.rank
    final = probe(engine.module, engine.global_steps)
    report = final.summary()
    peaks = _peak_memory_per_rank(job.device, plan.world_size)
    if rank == 0:
        ckpt_dir = out.checkpoints
        log_collapse_artifacts(tracker, final, similarity_figure)
        tracker.log_metrics({schema.PEAK_MEMORY.format(rank=r): m for r, m in enumerate(peaks)}, engine.global_steps)
        print(f"[deepvit] peak memory per rank (MiB, {'GPU allocated' if job.device.type == 'cuda' else 'RSS'}): "
              f"{', '.join(f'{m:.0f}' for m in peaks)}", flush=True)
        export = export_fp32(ckpt_dir, latest_tag(ckpt_dir), out.export)
        tracker.log_params({schema.EXPORT_PATH_PARAM: _display_path(Path(cfg.output_dir) / out.export.name)})
        if cfg.log.log_model:
            tracker.log_model([export, out.model_file], cfg.model.name,
                              {'model_name': cfg.model.name, **plan.model_kwargs}, engine.global_steps)
        print(f"[deepvit] done: val top1 {last_val.get(schema.TOP1, float('nan')):.2f} | similar blocks "
              f"(paper / row-wise) softmax {report['similar_blocks_softmax']} / "
              f"{report['row_similar_blocks_softmax']}, mixed {report['similar_blocks_mixed']} / "
              f"{report['row_similar_blocks_mixed']} | row-wise adjacent softmax "
              f"{report['row_mean_adjacent_softmax']:.3f} [{report['row_mean_adjacent_softmax_lo']:.3f}, "
              f"{report['row_mean_adjacent_softmax_hi']:.3f}] | entropy softmax {report['entropy_softmax']:.3f} | "
              f"{probe.count} collapse probes took {probe.seconds:.1f} s | weights {export}", flush=True)
    if is_dist():
        torch.distributed.barrier()


def _run_name(cfg: Config, model) -> str:
    if cfg.log.run_name:
        return cfg.log.run_name
    mc = model.model_cfg
    return f"{cfg.model.name}-d{mc['depth']}-w{mc['embed_dim']}-s{cfg.train.seed}"


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
            'scheduler': scheduler.state_dict(), 'mlflow_run_id': run_id, 'config': flatten(cfg),
            'weights_format': WEIGHTS_FORMAT}


def _all_skipped(train_loader, val_loader, device) -> float:
    return float(all_reduce_sum([train_loader.skipped_samples + val_loader.skipped_samples], device)[0])


def _display_path(path: Path) -> str:
    """``path`` as the user gave it when relative, else relative to the working directory when inside it (records
    stay valid when a folder is moved), else absolute."""
    if not path.is_absolute():
        return path.as_posix()
    rel = os.path.relpath(path)
    return str(path) if rel.startswith('..') else rel
