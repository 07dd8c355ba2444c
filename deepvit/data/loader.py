"""Multi-rank streaming loader over WebDataset shards: shards → plan → read → shuffle → make_sample → batch.

Over 400 lines: the iterable dataset (plan, read, shuffle, decode) and the loader around it (batching on the
device, erasing/mixup, padding, skip counts) are one stream whose resume position both must agree on.

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

import contextlib
import functools
import io
import itertools
import logging
import os
import random
import select
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..ranks import resolve_rank
from . import plan as planning
from . import shards as shardio
from .sample import (BAD_IMAGE, CORRUPT_SHARD, IMAGE_EXTS, LOST_SAMPLES, MISSING_IMAGE, REASONS, SAMPLE_REASONS,
                     UNREADABLE_SHARD, BadSample, draft_size_for, make_sample, parse_label)
from .sources import ShardSet, resolve_shards
from .transforms import create_transform, default_mean_std

_logger = logging.getLogger(__name__)

_WANTED = frozenset(IMAGE_EXTS + ('cls',))


@contextlib.contextmanager
def seeded(*parts: int):
    """Seed Python's, NumPy's and torch's global RNGs from ``parts`` for the block, then restore them.

    timm's and torchvision's augmentations draw from the global RNGs; seeding them per batch from
    (seed, epoch, rank, worker, batch) makes every batch reproducible on resume without disturbing the caller's
    (the trainer's) RNG streams when the loader runs in the main process.

    Generators seeded, and every one of them restored on exit (also when the block raises): Python's ``random``,
    NumPy's global ``RandomState``, torch's CPU default generator and — only where CUDA is available *and* already
    initialised in this process — the default generator of every visible CUDA device (``torch.random.fork_rng``
    over all of them; on-device RandomErasing/Mixup draw from it). Where CUDA is not initialised (CPU runs, and
    DataLoader workers forked from a CUDA process, which must not initialise it) CUDA is neither seeded nor
    touched: ``torch.manual_seed`` would queue a lazy seed for every CUDA device there that no state restore can
    undo. CPU behaviour is unchanged: the same seeds reach the same generators.
    """
    s = np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(2)
    seed = int(s[0]) << 32 | int(s[1])
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices, device_type='cuda'):  # restores CPU + ``devices`` on exit
        random.seed(int(s[0]))
        np.random.seed(int(s[1]))
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed_all(seed)
        try:
            yield
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])


def shuffle(samples, bufsize: int, rng: random.Random):
    """Buffer shuffle: hold ``bufsize`` samples, emit a random one per new one, then drain in a shuffled order.

    Not ``webdataset.filters.shuffle``: seeded (``rng=``/``seed=``) it is as deterministic and a resume that replays
    the epoch would see the same order, but its algorithm (yields once 100 samples are held, reads two per step,
    picks by swap-with-last) gives another permutation for the same seed: every training batch would change, and the
    recorded study's runs (docs/study) could no longer be reproduced from their configs."""
    buf = []
    for sample in samples:
        if len(buf) < bufsize:
            buf.append(sample)
            continue
        i = rng.randrange(bufsize)
        yield buf[i]
        buf[i] = sample
    rng.shuffle(buf)
    yield from buf


@dataclass
class ShardDataset(IterableDataset):
    """Worker side: reads this rank's share of the shards and yields ``(uint8 images (B, C, H, W) | None,
    int64 labels (B,) | None, counts list[int] aligned with sample.REASONS)``. Built by :func:`create_loader`."""
    shards: ShardSet
    transform: object
    batch_size: int
    train: bool
    rank: int
    world_size: int
    num_workers: int
    image_shape: tuple[int, int, int]
    seed: int = 0
    epoch: int = 0
    start_batch: int = 0
    mode: str = 'RGB'
    num_classes: int | None = None
    draft_size: int | None = None
    shuffle_buffer: int = 1000
    pad: bool = False
    num_samples: int | None = None       # training epoch length when shard lengths are unknown
    _counts: Counter = field(default_factory=Counter, repr=False)

    # --- reading -------------------------------------------------------------------------------------------------
    def _read(self, segment: planning.Segment) -> Iterator[tuple[str, str, dict]]:
        """Samples of one segment as (url, key, members); damage and short shards are counted, never raised."""
        url, count = self.shards.urls[segment.shard], segment.count
        start = segment.start + self.shards.offset(segment.shard)   # a view (holdout split) starts mid-shard
        stop = None if count is None else start + count
        taken = 0
        try:
            for _, key, members in shardio.iter_samples(url, _WANTED, start, stop):
                taken += 1
                yield url, key, members
        except shardio.CorruptShardError as e:
            self._count(CORRUPT_SHARD, f'shard {url} is damaged after {start + taken} samples: {e}')
        except OSError as e:
            self._count(UNREADABLE_SHARD, f'cannot read shard {url}: {e}')
        else:
            if count is not None and taken < count:   # tarfile takes a damaged header for the end of the archive
                self._count(CORRUPT_SHARD, f'shard {url} ends after {start + taken} samples; its listed length '
                                           f'is at least {start + count}')
        if count is not None and taken < count:
            self._counts[LOST_SAMPLES] += count - taken

    def _count(self, reason: str, message: str) -> None:
        self._counts[reason] += 1
        _logger.warning('skipping: %s', message)

    def _stream(self, segments) -> Iterator[tuple[str, str, dict]]:
        for segment in segments:
            yield from self._read(segment)

    # --- sample → batch ------------------------------------------------------------------------------------------
    def _decode(self, item):
        url, key, members = item
        try:
            return make_sample(members, self.transform, mode=self.mode, num_classes=self.num_classes,
                               draft_size=self.draft_size)
        except BadSample as e:
            self._count(e.reason, f'sample {key!r} of {url}: {e}')
            return None

    def _check(self, item) -> bool:
        """Cheap validity check for batches skipped on resume: label, image member, image header (no decode)."""
        url, key, members = item
        try:
            parse_label(members.get('cls'), self.num_classes)
            ext = next((e for e in IMAGE_EXTS if e in members), None)
            if ext is None:
                raise BadSample(MISSING_IMAGE)
            try:
                Image.open(io.BytesIO(members[ext]))
            except Exception as e:  # noqa: BLE001 - a header PIL cannot parse means the full decode fails too
                raise BadSample(BAD_IMAGE, str(e)) from None
            return True
        except BadSample as e:
            self._count(e.reason, f'sample {key!r} of {url}: {e}')
            return False

    def _flush(self, batch):
        """(uint8 images (B, C, H, W), int64 labels (B,), counts); ``batch`` holds (PIL image or None (padding), label),
        the images copied straight into one HWC array (no tensor per sample), which is then made CHW."""
        counts = [self._counts.pop(r, 0) for r in REASONS]
        if not batch:
            return None, None, counts
        c, h, w = self.image_shape
        images = np.zeros((len(batch), h, w, c), dtype=np.uint8)
        for i, (img, _) in enumerate(batch):
            if img is not None:
                images[i] = np.asarray(img).reshape(h, w, c)
        labels = torch.tensor([label for _, label in batch], dtype=torch.int64)
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, counts

    def __iter__(self):
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        # The DataLoader takes batches from its workers round-robin, starting at worker 0, and global batch i
        # comes from (virtual) worker i % workers; after skipping start_batch batches, DataLoader worker 0 must
        # therefore play worker start_batch % workers.
        worker = ((info.id if info is not None else 0) + self.start_batch) % workers
        self._counts = Counter()
        yield from (self._train_batches if self.train else self._eval_batches)(worker, workers)
        if any(self._counts.values()):
            yield self._flush([])    # counts found after the last batch

    def _train_batches(self, worker: int, workers: int):
        lengths, B = self.shards.lengths, self.batch_size
        total = self.shards.num_samples if lengths is not None else self.num_samples
        _, worker_batches = planning.train_batches(total, B, self.world_size, workers)
        rng = random.Random(f'{self.seed}-{self.epoch}-{self.rank}-{worker}')
        if lengths is not None:
            own, more = planning.train_segments(lengths, self.seed, self.epoch, self.rank, worker, worker_batches, B)
            items = itertools.chain(shuffle(self._stream(own), self.shuffle_buffer, rng), self._stream(more))
        else:
            segments = planning.train_shards_unknown(len(self.shards.urls), self.seed, self.epoch,
                                                     self.rank * workers + worker, self.world_size * workers)
            items = shuffle(self._stream(segments), self.shuffle_buffer, rng)
        first = max(0, -(-(self.start_batch - worker) // workers))   # this worker's batches before start_batch
        misses = 0
        for j in range(worker_batches[worker]):
            resuming = j < first
            with seeded(self.seed, self.epoch, self.rank, worker, j) if not resuming else contextlib.nullcontext():
                batch = []
                while len(batch) < B:
                    item = next(items)
                    out = self._check(item) if resuming else self._decode(item)
                    if not out:
                        misses += 1
                        if misses > total:
                            raise RuntimeError(f'no usable sample among {total} in a row, e.g. {item[0]}')
                        continue
                    misses = 0
                    batch.append(out)
            if not resuming:
                yield self._flush(batch)

    def _eval_batches(self, worker: int, workers: int):
        B, lengths = self.batch_size, self.shards.lengths
        if lengths is not None:
            start, stop = planning.eval_ranges(sum(lengths), self.world_size, workers)[self.rank][worker]
            segments = planning.positions_to_segments(lengths, range(len(lengths)), start, stop)
            planned = -(-(stop - start) // B) * B
        else:
            segments = [planning.Segment(s) for s in
                        range(len(self.shards.urls))[self.rank * workers + worker::self.world_size * workers]]
            planned = 0
        pad = (None, -1)         # a zero image
        batch, produced = [], 0
        for item in self._stream(segments):
            out = self._decode(item)
            if out is None and self.pad:
                out = pad        # a bad sample keeps its place as padding: batch counts stay as planned
            if out is not None:
                batch.append(out)
                produced += 1
            if len(batch) == B:
                yield self._flush(batch)
                batch = []
        while self.pad and produced < planned:   # pad the last batch, and the places of samples never read
            batch.append(pad)
            produced += 1
            if len(batch) == B:
                yield self._flush(batch)
                batch = []
        if batch:
            yield self._flush(batch)


_CONTEXT = None


def worker_context():
    """The multiprocessing context of the loader's workers: ``forkserver``, its server started once per process with
    SIGTERM and SIGINT ignored (an ignored disposition survives the server's exec, and its forked workers inherit it).

    Why not ``fork`` (DataLoader's default on Linux): forking a process that runs other threads can deadlock the
    child for good. Seen here: a rank's validation worker stuck in CPython 3.11's after-fork cleanup
    (``PyOS_AfterFork_Child`` → ``_PyThreadState_DeleteExcept``, waiting on a lock another thread held at the
    fork — the training loader's ending queue-feeder thread, MLflow's system-metrics monitor, the launcher
    watchdog), its rank waiting on it and the other rank in an all-reduce: the job hung without a message. The
    forkserver is a fresh single-threaded interpreter (``deepvit.data.loader`` preloaded), so its forks are safe; it
    exits with the process that started it. PyTorch's docs on DataLoader worker start methods name the same hazard."""
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing
        ctx = multiprocessing.get_context('forkserver')
        ctx.set_forkserver_preload([__name__])
        handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            from multiprocessing import forkserver
            forkserver.ensure_running()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        _CONTEXT = ctx
    return _CONTEXT


def _init_worker(main_pid: int, worker_id: int) -> None:
    """Workers ignore SIGTERM and SIGINT: a cluster preemption (or Ctrl-C) signals every process of a job, and the
    main process (which checkpoints, then shuts its workers down) must not see them die first. Each worker exits
    when the loader's process ``main_pid`` is gone (:func:`_exit_with`)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(main_pid,), name='deepvit-exit-with-loader', daemon=True).start()


def _exit_with(pid: int) -> None:
    """Exit this worker once process ``pid`` has exited, however it died (SIGKILL included).

    A worker forked from the forkserver has the server as its parent, so DataLoader's own check (the parent pid
    changing) never fires, and the worker keeps the server alive: a rank killed with SIGKILL left its worker, the
    server and its resource tracker running for good. Waits on a pidfd (Linux >= 5.3), else polls once a second."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
    select.select([fd], [], [])   # readable once the process has exited
    os._exit(0)


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
                            worker_init_fn=functools.partial(_init_worker, os.getpid()) if workers else None,
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
