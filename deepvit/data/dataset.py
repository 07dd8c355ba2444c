"""Worker side of the shard loader: this rank's share of the shards read, shuffled, decoded, transformed and batched
(:class:`ShardDataset`), and the per-batch seeding that makes every batch reproducible on resume (:func:`seeded`).

Built and driven by :func:`deepvit.data.loader.create_loader`; who reads which samples is :mod:`deepvit.data.plan`.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from . import plan as planning
from . import shards as shardio
from .sample import (BAD_IMAGE, CORRUPT_SHARD, IMAGE_EXTS, LOST_SAMPLES, MISSING_IMAGE, REASONS, UNREADABLE_SHARD,
                     BadSample, make_sample, parse_label)
from .sources import ShardSet

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
