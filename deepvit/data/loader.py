"""Multi-rank streaming loader over WebDataset shards: shards → plan → read → shuffle → make_sample → batch.

The worker side (read, shuffle, decode, batch) is :mod:`deepvit.data.dataset`; the worker processes' start method and
signal handling :mod:`deepvit.data.workers`.

``create_loader(...)`` returns a :class:`ShardLoader`; iterating it yields ``(images, labels)``:
images float32 (B, C, H_img, W_img), normalised with ``mean``/``std``; labels int64 (B,) (float (B, num_classes)
after Mixup/CutMix; -1 marks a padding sample in ``pad=True`` evaluation).

Work split: DataLoader workers read shards (webdataset's tar iterators, :mod:`deepvit.data.shards`), decode and
transform samples with timm's transforms in their ``use_prefetcher=True`` form, less its final to-tensor step, and
copy the transformed PIL images straight into uint8 batches (B, C, H_img, W_img); the main process
converts to float and normalises the whole batch at once (on ``device`` when given), then applies timm's
RandomErasing and Mixup/CutMix on the batch, as timm's own PrefetchLoader does. Who reads which samples is
:mod:`deepvit.data.plan`. Bad samples are skipped (or padded) and counted per reason in the worker; the counts ride
with each batch to the main process and add up in ``loader.skipped``.
"""
from __future__ import annotations

import functools
import os
from typing import Iterator

import torch
from torch.utils.data import DataLoader

from ..ranks import resolve_rank
from . import plan as planning
from .dataset import ShardDataset, seeded
from .sample import REASONS, SAMPLE_REASONS, draft_size_for
from .sources import resolve_shards
from .transforms import create_transform, default_mean_std
from .workers import init_worker, worker_context


class ShardLoader:
    """Main-process side: iterate to get ``(images, labels)`` batches of this rank for the current epoch.

    Attributes the trainer reads:
      * ``num_samples``: samples in the split (all ranks), the denominator of top-1 in evaluation;
      * ``rank_num_samples``: samples this rank evaluates (evaluation, lengths known);
      * ``num_batches`` / ``len(loader)``: batches this rank yields per epoch (training: the same on every rank;
        ``pad=True`` evaluation: the maximum over ranks, the same on every rank);
      * ``skipped``: ``{reason: count}`` for the current or last pass, this rank (see ``sample.REASONS``);
        ``skipped_samples``: the sum over sample-level reasons;
      * ``classes``: class names from ``_info.json`` (may be empty).
    ``set_epoch(epoch, start_batch=0)`` before each epoch; ``start_batch`` resumes inside an epoch.
    """

    def __init__(self, dataset: ShardDataset, *, mean, std, num_batches: int, rank_num_samples: int | None,
                 random_erasing=None, mixup=None, device=None, pin_memory: bool = False, prefetch_factor: int = 2):
        self.dataset = dataset
        self.num_batches = num_batches
        self.rank_num_samples = rank_num_samples
        self.random_erasing = random_erasing
        self.mixup = mixup
        self.device = torch.device(device) if device is not None else None
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self._scale = 1.0 / (255.0 * torch.tensor(std).view(1, -1, 1, 1))
        self._shift = -torch.tensor(mean).view(1, -1, 1, 1) / torch.tensor(std).view(1, -1, 1, 1)
        self._constants: dict = {}   # device -> (scale, shift) on it
        self.skipped: dict[str, int] = dict.fromkeys(REASONS, 0)

    @property
    def num_samples(self) -> int | None:
        return self.dataset.shards.num_samples or self.dataset.num_samples

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.shards.classes

    @property
    def epoch(self) -> int:
        return self.dataset.epoch

    @property
    def skipped_samples(self) -> int:
        return sum(self.skipped[r] for r in SAMPLE_REASONS)

    def sample_positions(self, rank: int | None = None) -> list[int]:
        """The split position of every row ``rank`` (default: this loader's) yields, in order; -1 for padding
        (:func:`deepvit.data.plan.eval_positions`). Evaluation with ``pad=True`` only.

        Raises:
            ValueError: a training loader, or one without ``pad`` or shard lengths.
        """
        ds = self.dataset
        if ds.train or not ds.pad or ds.shards.lengths is None:
            raise ValueError('sample_positions: only for pad=True evaluation over shards of known lengths')
        return planning.eval_positions(ds.shards.num_samples, ds.batch_size, ds.world_size, max(1, ds.num_workers),
                                       ds.rank if rank is None else rank, self.num_batches)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (shard order, shuffle, augmentation seeds) and the first batch to yield (resume)."""
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f'start_batch={start_batch} must be in [0, num_batches={self.num_batches}]')
        self.dataset.epoch, self.dataset.start_batch = epoch, start_batch

    def __len__(self) -> int:
        if self.num_batches < 0:
            raise TypeError('batch count unknown: evaluation over shards without known lengths')
        return self.num_batches - self.dataset.start_batch

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        if self.device is not None:
            images = images.to(self.device, non_blocking=True)
        constants = self._constants.get(images.device)
        if constants is None:   # copied to a device once, not per batch (a blocking host-to-device copy each time)
            constants = self._constants[images.device] = (self._scale.to(images.device), self._shift.to(images.device))
        scale, shift = constants
        return images.float().mul_(scale).add_(shift)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds = self.dataset
        self.skipped = dict.fromkeys(REASONS, 0)
        workers = ds.num_workers
        loader = DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=self.pin_memory,
                            prefetch_factor=self.prefetch_factor if workers else None,
                            worker_init_fn=functools.partial(init_worker, os.getpid()) if workers else None,
                            multiprocessing_context=worker_context() if workers else None)
        n = ds.start_batch
        for images, labels, counts in loader:
            for reason, c in zip(REASONS, counts):
                self.skipped[reason] += int(c)
            if images is None:
                continue
            x = self._normalize(images)
            labels = labels.to(x.device, non_blocking=True)
            if ds.train and (self.random_erasing is not None or self.mixup is not None):
                with seeded(ds.seed, ds.epoch, ds.rank, -1, n):
                    if self.random_erasing is not None:
                        x = self.random_erasing(x)
                    if self.mixup is not None:
                        x, labels = self.mixup(x, labels)
            n += 1
            yield x, labels
        if ds.pad:
            shape = (ds.batch_size,) + ds.image_shape
            while n < self.num_batches:   # padding batches: every rank runs the same number of forward passes
                n += 1
                yield self._normalize(torch.zeros(shape, dtype=torch.uint8)), torch.full((ds.batch_size,), -1)


def create_loader(source, split: str = 'train', *, batch_size: int, train: bool, img_size: int = 224,
                  in_chans: int = 3, num_classes: int | None = None, seed: int = 0, epoch: int = 0,
                  rank: int | None = None, world_size: int | None = None, num_workers: int = 0,
                  shuffle_buffer: int = 1000, pad: bool = False, num_samples: int | None = None,
                  mean=None, std=None, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5,
                  vflip: float = 0.0, color_jitter: float | None = 0.4, auto_augment: str | None = None,
                  interpolation: str = 'bilinear', crop_pct: float = 0.875, re_prob: float = 0.0,
                  re_mode: str = 'pixel', re_count: int = 1, mixup=None, draft: bool = True, device=None,
                  pin_memory: bool | None = None, prefetch_factor: int = 2, holdout_samples: int = 0,
                  holdout: bool = False, head_samples: int = 0) -> ShardLoader:
    """Build this rank's loader over the shards of ``source`` / ``split``.

    Args:
        source: ``'digits'``, a directory with ``_info.json``, shard path / brace pattern / glob / list, or URL
            (:func:`deepvit.data.sources.resolve_shards`).
        split: split name in ``_info.json`` (ignored for explicit shard lists).
        batch_size: micro-batch size per rank. train: True for random augmentation and the training plan.
        img_size: output side in pixels. in_chans: 3 (RGB) or 1 (grayscale 'L').
        num_classes: labels outside [0, num_classes) are skipped as ``bad_label``; default: len(classes) of
            ``_info.json`` when it lists them, else unchecked.
        seed, epoch: the stream is a function of (seed, epoch, rank, world_size, num_workers) only.
        rank, world_size: default from torch.distributed, else $RANK/$WORLD_SIZE, else 0/1.
        num_workers: DataLoader worker processes (0: read in the main process).
        shuffle_buffer: samples held by each worker's shuffle buffer (training).
        pad: evaluation only: every rank yields the same number of full batches; padding samples (label -1) fill
            partial batches, take the place of bad samples, and make up extra batches (needed by ZeRO-3).
        num_samples: training epoch length when shard lengths are unknown (remote shards without ``_info.json``).
        mean, std: per-channel normalisation (default ImageNet's; channel average for in_chans=1).
        scale, ratio, hflip, vflip, color_jitter, auto_augment, interpolation, crop_pct: timm ``create_transform``.
        re_prob, re_mode, re_count: timm RandomErasing on the normalised training batch (re_prob=0: off).
        mixup: a ``timm.data.Mixup`` (:func:`deepvit.data.create_mixup`) applied to training batches.
        draft: let libjpeg decode large JPEGs at reduced scale when the crop never needs the full resolution.
        device: normalise (and return batches) on this device; pin_memory defaults to True for CUDA devices.
        holdout_samples: samples of ``split`` held out (:meth:`deepvit.data.sources.ShardSet.split_holdout`); the
            loader reads the rest, or only the holdout when ``holdout`` is set (0: the whole split).
        head_samples: then read only the first ``head_samples`` of those (:meth:`~deepvit.data.sources.ShardSet.head`,
            all of them when fewer): the fixed train-accuracy subset (0: all).
    Raises:
        FileNotFoundError / ValueError (from the source), ValueError for inconsistent arguments, all before any
        image is decoded.
    """
    if batch_size < 1:
        raise ValueError(f'batch_size={batch_size} must be >= 1')
    if num_workers < 0:
        raise ValueError(f'num_workers={num_workers} must be >= 0')
    if pad and train:
        raise ValueError('pad=True is for evaluation (train=False); training batches are always full and equal')
    if mixup is not None and (not train or batch_size % 2):
        raise ValueError(f'mixup needs train=True and an even batch_size (got train={train}, batch_size={batch_size})')
    rank, world_size = resolve_rank(rank, world_size)
    mean, std = default_mean_std(in_chans, mean, std)
    shards = resolve_shards(source, split)
    if holdout_samples:
        shards = shards.split_holdout(holdout_samples)[1 if holdout else 0]
    elif holdout:
        raise ValueError('holdout=True needs holdout_samples >= 1')
    if head_samples:
        shards = shards.head(head_samples)
    if num_classes is None and shards.classes:
        num_classes = len(shards.classes)
    workers = max(1, num_workers)
    rank_num_samples = None
    if train:
        total = shards.num_samples if shards.lengths is not None else num_samples
        if total is None:
            raise ValueError(f'source={source!r}: shard lengths unknown (no _info.json): pass num_samples')
        num_batches, _ = planning.train_batches(total, batch_size, world_size, workers)
        if shards.lengths is None:
            planning.check_enough_shards(len(shards.urls), world_size * workers)
    elif shards.lengths is not None:
        per_rank = planning.eval_batches(shards.num_samples, batch_size, world_size, workers)
        num_batches = max(per_rank) if pad else per_rank[rank]
        rank_num_samples = planning.split_evenly(shards.num_samples, world_size)[rank]
    elif pad:
        raise ValueError(f'source={source!r}: pad=True needs shard lengths (an _info.json next to the shards)')
    else:
        num_batches = -1     # unknown until read: len() is not available
    transform = create_transform(img_size, train, in_chans, mean=mean, std=std, scale=scale, ratio=ratio,
                                 hflip=hflip, vflip=vflip, color_jitter=color_jitter, auto_augment=auto_augment,
                                 interpolation=interpolation, crop_pct=crop_pct, to_tensor=False)
    dataset = ShardDataset(
        shards=shards, transform=transform, batch_size=batch_size, train=train, rank=rank, world_size=world_size,
        num_workers=num_workers, image_shape=(in_chans, img_size, img_size), seed=seed, epoch=epoch,
        mode='RGB' if in_chans == 3 else 'L', num_classes=num_classes,
        draft_size=draft_size_for(img_size, train, scale=scale, ratio=ratio, crop_pct=crop_pct) if draft else None,
        shuffle_buffer=shuffle_buffer, pad=pad, num_samples=num_samples)
    random_erasing = None
    if train and re_prob > 0:
        from timm.data.random_erasing import RandomErasing
        random_erasing = RandomErasing(re_prob, mode=re_mode, max_count=re_count, device=device or 'cpu')
    if pin_memory is None:
        pin_memory = device is not None and torch.device(device).type == 'cuda'
    return ShardLoader(dataset, mean=mean, std=std, num_batches=num_batches, rank_num_samples=rank_num_samples,
                       random_erasing=random_erasing, mixup=mixup, device=device, pin_memory=pin_memory,
                       prefetch_factor=prefetch_factor)
