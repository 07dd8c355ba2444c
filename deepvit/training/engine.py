"""One training epoch and one evaluation pass over a DeepSpeed engine (DeiT's ``engine.py`` shape).

Both take any iterable of ``(images (B, C, H, W) float, labels (B,) int64)`` batches and any classifier; they know
nothing of MLflow, checkpoints or the data format. Progress bar and logging callbacks are passed in.
"""
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .. import schema
from .distributed import all_reduce_sum, any_rank


PERCENT_DIGITS = 4  # accuracies in percent, rounded to 1e-4 points (what MLflow's table shows; far below 1 image)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run stops, keeping its last good checkpoint."""


SIGNAL, BUDGET, SCHEDULE = 'signal', 'budget', 'schedule'   # why training stopped (StopRule)


@dataclass
class StopRule:
    """The run's one stop rule: when training ends and why, the same decision on every rank.

    * ``'signal'``: a stop requested on any rank (``requested``: SIGTERM, SIGINT, the launcher gone;
      :class:`~deepvit.training.preemption.Preemption`). Agreed inside an epoch at every log step (the flags ride the
      loss all-reduce, :func:`train_one_epoch`) and once more after each epoch's validation, checkpoint and probe
      (:meth:`after_epoch`, one collective). The run checkpoints where it is and exits 143; ``--resume`` continues.
    * ``'budget'``: the global optimizer-step budget ``max_steps`` is reached, exactly (every rank knows the step: no
      collective). The run validates, checkpoints and finishes.
    * ``'schedule'``: the last of ``epochs`` epochs ended.
    * a non-finite mean loss over a log window raises :class:`NonFiniteLossError` (:meth:`check_loss`): the run
      ends FAILED with its last good checkpoint.

    A signal takes precedence: seen together with the budget at a log step, the run checkpoints without the final
    validation (a preempted job has seconds, not minutes).
    """
    requested: Callable[[], bool] = lambda: False   # this rank's stop request, polled at log steps
    max_steps: Optional[int] = None                 # global optimizer-step budget
    epochs: Optional[int] = None                    # the schedule's length

    def budget_spent(self, step: int) -> bool:
        return self.max_steps is not None and step >= self.max_steps

    def check_loss(self, mean_loss: float, steps: int, step: int) -> None:
        """Raises :class:`NonFiniteLossError` when the all-rank mean loss of the ``steps`` steps up to ``step`` is
        NaN or infinite."""
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(f"non-finite training loss ({mean_loss}) in the {steps} steps up to step "
                                     f"{step}; stopping with the last good checkpoint kept")

    def at_log_step(self, requested_on_any_rank: bool, step: int) -> Optional[str]:
        """Inside an epoch, after the log step's all-reduce: ``'signal'``, ``'budget'`` or None (go on)."""
        if requested_on_any_rank:
            return SIGNAL
        return BUDGET if self.budget_spent(step) else None

    def after_epoch(self, epochs_done: int, step: int, device: torch.device) -> Optional[str]:
        """After an epoch (or the part of it the budget allowed) was validated and checkpointed (collective):
        ``'signal'``, ``'budget'``, ``'schedule'`` or None (next epoch)."""
        if any_rank(self.requested(), device):
            return SIGNAL
        return self.finished(epochs_done, step)

    def finished(self, epochs_done: int, step: int) -> Optional[str]:
        """``'budget'`` or ``'schedule'`` when nothing is left to train (also before the first epoch of a resumed
        run whose export is missing: it goes straight to the end), else None. No collective."""
        if self.budget_spent(step):
            return BUDGET
        return SCHEDULE if self.epochs is not None and epochs_done >= self.epochs else None


@dataclass
class EpochResult:
    steps: int            # optimizer steps done in this call
    batches: int          # micro-batches consumed (the position in the epoch's stream)
    stop: Optional[str]   # StopRule's reason when the epoch ended early ('signal', 'budget'), else None
    loss: float           # mean training loss over the micro-batches of this call (all ranks)

    @property
    def stopped(self) -> bool:
        return self.stop is not None


def train_one_epoch(engine, loader: Iterable, criterion, *, device: torch.device, dtype: torch.dtype,
                    scheduler, start_batch: int = 0, stop_batch: Optional[int] = None,
                    rule: StopRule = StopRule(),
                    log_every: int = 10, on_log: Callable[[Dict[str, float], int], None] = lambda m, s: None,
                    progress=None, regularizer: Optional[Callable[[], torch.Tensor]] = None) -> EpochResult:
    """Train over ``loader`` from micro-batch ``start_batch`` until it ends, a stop is requested or the budget is spent.

    Per micro-batch (Mixup/CutMix, if any, were applied by the loader, on the device): forward in ``dtype``, loss in fp32, ``engine.backward``/``engine.step``
    (DeepSpeed handles accumulation, clipping and ZeRO). After each optimizer step the per-step schedule is applied
    (``scheduler.step_update(global_step)``). Losses stay on the device: nothing is read back to the host between
    log points. Every ``log_every`` optimizer steps (and at the epoch's end) one all-reduce sums the losses and the
    stop flags of all ranks — so every rank sees the same NaN and the same stop decision at the same step, as
    nanoGPT and timm read their losses only when they log. A stop request is therefore honoured at the next log
    step (at most ``log_every`` steps late); the step budget is exact.

    ``stop_batch``: the epoch ends after this micro-batch index (the trainer passes steps per epoch × gradient
    accumulation, so an epoch is whole optimizer steps and the remainder micro-batches are not trained on: the
    planned steps are the steps made, and no accumulation window spans two epochs).

    ``regularizer``: a callable giving a penalty added to the loss after each forward (e.g.
    :class:`deepvit.training.regularizers.CosineRegularizer`).

    Raises:
        NonFiniteLossError: the all-rank mean loss of a log window is NaN or infinite.
    """
    engine.train()
    world = engine.world_size if hasattr(engine, 'world_size') else 1
    micro = engine.train_micro_batch_size_per_gpu()
    steps = batches = 0
    zero = torch.zeros((), dtype=torch.float32, device=device)
    window_loss, window_micro, window_steps, window_t0 = zero.clone(), 0, 0, time.perf_counter()
    epoch_loss, epoch_micro = 0.0, 0
    stop = None
    for images, labels in loader:
        if stop_batch is not None and start_batch + batches >= stop_batch:
            break
        images = images.to(device, non_blocking=True)
        targets = labels.to(device, non_blocking=True)  # class indices, or soft targets mixed by the loader
        logits = engine(images.to(dtype))
        loss = criterion(logits.float(), targets)
        if regularizer is not None:
            loss = loss + regularizer()
        engine.backward(loss)
        boundary = engine.is_gradient_accumulation_boundary()
        engine.step()
        batches += 1
        window_loss += loss.detach().float()
        window_micro += 1
        if not boundary:
            continue
        steps += 1
        window_steps += 1
        global_step = engine.global_steps
        scheduler.step_update(num_updates=global_step)
        if progress is not None:
            progress.update(1)
        if global_step % log_every and not rule.budget_spent(global_step):
            continue
        mean, requested = _sync_window(engine, window_loss, window_micro, window_steps, window_t0, micro * world,
                                       rule, world, device, on_log, progress)
        epoch_loss, epoch_micro = epoch_loss + mean * window_micro, epoch_micro + window_micro
        window_loss, window_micro, window_steps, window_t0 = zero.clone(), 0, 0, time.perf_counter()
        stop = rule.at_log_step(requested, global_step)
        if stop is not None:
            break
    if window_steps:  # the epoch's last steps (every rank ends the loop at the same micro-batch)
        mean, _ = _sync_window(engine, window_loss, window_micro, window_steps, window_t0, micro * world, rule,
                               world, device, on_log, progress)
        epoch_loss, epoch_micro = epoch_loss + mean * window_micro, epoch_micro + window_micro
    return EpochResult(steps=steps, batches=batches, stop=stop,
                       loss=epoch_loss / epoch_micro if epoch_micro else float('nan'))


def _sync_window(engine, window_loss: torch.Tensor, window_micro: int, window_steps: int, window_t0: float,
                 samples_per_micro_step: int, rule: StopRule, world: int, device, on_log, progress):
    """The loop's one host synchronisation: all-reduce (loss sum, stop flags), check the loss, log the window.
    Returns ``(mean loss over the window's micro-batches and ranks, stop requested on any rank)``."""
    local = torch.stack([window_loss.double(), torch.tensor(float(rule.requested()), dtype=torch.float64,
                                                            device=device)])
    summed = all_reduce_sum(local, device).tolist()
    mean_loss = summed[0] / (window_micro * world)
    step = engine.global_steps
    rule.check_loss(mean_loss, window_steps, step)
    _log_window(engine, mean_loss, window_steps, time.perf_counter() - window_t0, samples_per_micro_step, step,
                on_log, progress)
    return mean_loss, summed[1] > 0


def _log_window(engine, mean_loss: float, steps: int, seconds: float, samples_per_micro_step: int, step: int,
                on_log, progress) -> None:
    metrics = {
        schema.TRAIN_LOSS: mean_loss,
        schema.TRAIN_LR: engine.optimizer.param_groups[0]['lr'],
        schema.TRAIN_THROUGHPUT: steps * engine.gradient_accumulation_steps() * samples_per_micro_step / seconds,
    }
    grad_norm = engine.get_global_grad_norm()
    if grad_norm is not None:
        metrics[schema.TRAIN_GRAD_NORM] = float(grad_norm)
    on_log(metrics, step)
    if progress is not None:
        progress.set_postfix(loss=f"{metrics[schema.TRAIN_LOSS]:.3f}", lr=f"{metrics[schema.TRAIN_LR]:.2e}",
                             img_s=f"{metrics[schema.TRAIN_THROUGHPUT]:.0f}", refresh=False)


@dataclass
class Evaluation:
    """One pass over a rank-sharded split: ``metrics`` (``val/loss``, ``val/top1``, ``val/top5`` in percent,
    ``val/num_samples``; all ranks) and ``correct``, this rank's (rows,) int8 tensor in loader order: 1/0 for a
    right/wrong top-1, -1 for a padding row (:func:`gather_correct`, :func:`by_sample`)."""
    metrics: Dict[str, float]
    correct: torch.Tensor


@torch.no_grad()
def evaluate(model, loader: Iterable, *, device: torch.device, dtype: torch.dtype) -> Evaluation:
    """Top-1/top-5 accuracy (percent) and mean cross-entropy over every sample of a rank-sharded split, and each
    row's correctness (:class:`Evaluation`).

    Labels < 0 mark padding samples (added so that every rank runs the same number of forward passes, which
    ZeRO-3 needs); they are excluded. Sums are all-reduced, so the result is over exactly the split's samples
    whatever the world size; ``val/num_samples`` reports how many were counted.

    """
    model.eval()
    loss_sum = top1 = top5 = count = 0.0
    flags = []
    for images, labels in loader:
        images = images.to(device, non_blocking=True).to(dtype)
        labels = labels.to(device, non_blocking=True)
        logits = model(images).float()
        keep = labels >= 0
        topk = logits.topk(min(5, logits.shape[1]), dim=1).indices  # one ranking for top-1, top-5 and per-image
        right = topk[:, 0].eq(labels).to(torch.int8)
        flags.append(torch.where(keep, right, torch.full_like(right, -1)).cpu())
        if not bool(keep.any()):
            continue
        logits, labels, topk = logits[keep], labels[keep], topk[keep]
        loss_sum += float(F.cross_entropy(logits, labels, reduction='sum'))
        hit = topk.eq(labels[:, None])
        top1 += float(hit[:, 0].sum())
        top5 += float(hit.any(dim=1).sum())
        count += labels.numel()
    total = all_reduce_sum([loss_sum, top1, top5, count], device)
    n = float(total[3])
    model.train()
    if n == 0:
        metrics = {schema.VAL_LOSS: float('nan'), schema.TOP1: float('nan'), schema.TOP5: float('nan'),
                   schema.VAL_SAMPLES: 0.0}
    else:
        metrics = {schema.VAL_LOSS: float(total[0]) / n, schema.TOP1: round(100.0 * float(total[1]) / n, PERCENT_DIGITS),
                   schema.TOP5: round(100.0 * float(total[2]) / n, PERCENT_DIGITS), schema.VAL_SAMPLES: n}
    return Evaluation(metrics, torch.cat(flags) if flags else torch.zeros(0, dtype=torch.int8))


def by_sample(gathered: torch.Tensor, loader) -> np.ndarray:
    """Rank-major per-row correctness (:func:`gather_correct`) put in sample order: ``(num_samples,)`` int8, entry i
    for position i of the split (shard order; 1 right, 0 wrong, -1 a sample skipped as bad), the same for any world
    size and worker count. ``loader``: the validation loader (its :meth:`~deepvit.data.loader.ShardLoader.sample_positions`).

    Raises:
        ValueError: ``gathered`` does not have one entry per row of every rank.
    """
    world = len(gathered) // max(1, len(loader.sample_positions(0)))
    positions = np.concatenate([np.asarray(loader.sample_positions(r), dtype=np.int64) for r in range(world)])
    if len(positions) != len(gathered):
        raise ValueError(f'{len(gathered)} per-row results for {len(positions)} rows of {world} rank(s)')
    out = np.full(loader.num_samples, -1, dtype=np.int8)
    real = positions >= 0
    out[positions[real]] = gathered.numpy()[real]
    return out


def gather_correct(correct: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Every rank's per-position correctness (:func:`evaluate`), concatenated rank-major (collective).

    With ``pad=True`` loaders every rank holds the same number of positions, so this is one ``all_gather``. For
    one rank the order is the split's reading order, the same for every run on the same shards, world size and
    ``data.num_workers`` — which is what lets the analysis resample test images across paired runs.
    """
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return correct
    world = torch.distributed.get_world_size()
    local = correct.to(device=device, dtype=torch.int32)
    parts = [torch.empty_like(local) for _ in range(world)]
    torch.distributed.all_gather(parts, local)
    return torch.cat([p.cpu() for p in parts]).to(torch.int8)
