"""Who reads what: deterministic assignment of shard samples to (rank, DataLoader worker) for one epoch.

Pure functions of (shard lengths, seed, epoch, world size, rank, workers): no global RNG, no communication, so every
rank computes every other rank's share, a resumed run recomputes the same plan, and padding needs no all-reduce.

Training, shard lengths known (``_info.json`` or counted): shards are permuted with a generator seeded by
(seed, epoch); their samples, concatenated in that order, form the epoch's sequence of N positions. Every rank runs
``num_batches = N // (world_size * batch_size)`` full batches, split over its workers (lower worker ids take one
more); global worker g = rank * workers + worker reads the contiguous range of positions after those of workers < g,
exactly ``its batches * batch_size`` long. Each sample is seen at most once per epoch (the remainder, under
world_size * batch_size samples, changes with the permutation). A worker that loses samples to bad input continues
past its range, wrapping around, so its batch count never changes.

Training, lengths unknown (remote shards without ``_info.json``): ``num_samples`` must be given; global worker g reads
shards ``perm(seed, epoch, pass)[g::G]`` for pass = 0, 1, …, which needs at least G = world_size * workers shards.

Evaluation: positions in stored order, split into world_size contiguous ranges (sizes differ by at most one), each
split over the rank's workers: every sample is read by exactly one (rank, worker). Lengths unknown: shards[g::G].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

MAX_DEFAULT_WORKERS = 16


def default_num_workers(cores_per_rank: int, world_size: int = 1, num_shards: int | None = None) -> int:
    """Loader workers per rank when the config gives none: the rank's cores less one (the rank's own process runs the
    model and the collation), at least 1, at most :data:`MAX_DEFAULT_WORKERS` (each worker holds a shuffle buffer).
    ``num_shards``: for shards without known lengths, which need one shard per global worker, at most
    ``num_shards // world_size``. Sizing for a GPU: docs/training.md (images/s per worker)."""
    workers = min(MAX_DEFAULT_WORKERS, max(1, cores_per_rank - 1))
    if num_shards is not None:
        workers = min(workers, max(1, num_shards // max(1, world_size)))
    return workers


@dataclass(frozen=True)
class Segment:
    """Read samples ``start .. start + count`` of shard ``shard`` (``count`` None: to the end of the shard)."""
    shard: int
    start: int = 0
    count: int | None = None


def shard_order(num_shards: int, seed: int, epoch: int, pass_: int = 0) -> list[int]:
    """Permutation of shard indices for (seed, epoch, pass): the same on every rank and worker."""
    return np.random.default_rng([seed, epoch, pass_]).permutation(num_shards).tolist()


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers differing by at most one, larger first: 10, 4 → [3, 3, 2, 2]."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def train_batches(num_samples: int, batch_size: int, world_size: int, num_workers: int) -> tuple[int, list[int]]:
    """(full batches per rank per epoch, that count split over the workers). Raises ValueError if under one."""
    per_rank = num_samples // (world_size * batch_size)
    if per_rank < 1:
        raise ValueError(f'num_samples={num_samples} is fewer than world_size * batch_size = '
                         f'{world_size} * {batch_size}: no full batch per rank')
    return per_rank, split_evenly(per_rank, max(1, num_workers))


def positions_to_segments(lengths, order, start: int, stop: int) -> list[Segment]:
    """Segments covering positions [start, stop) of the sequence made by shards ``order`` (0 <= start <= stop <= N)."""
    segments, pos = [], 0
    for shard in order:
        n = lengths[shard]
        lo, hi = max(start, pos), min(stop, pos + n)
        if lo < hi:
            segments.append(Segment(shard, lo - pos, hi - lo))
        pos += n
        if pos >= stop:
            break
    return segments


def train_segments(lengths, seed: int, epoch: int, rank: int, worker: int, worker_batches: list[int], batch_size: int) -> tuple[list[Segment], Iterator[Segment]]:
    """(this worker's range, an endless continuation after it, wrapping around) for a known-length training epoch."""
    order = shard_order(len(lengths), seed, epoch)
    total = sum(lengths)
    per_rank = sum(worker_batches) * batch_size
    start = rank * per_rank + sum(worker_batches[:worker]) * batch_size
    stop = start + worker_batches[worker] * batch_size

    def continuation():
        pos = stop
        while True:
            pos %= total
            yield from positions_to_segments(lengths, order, pos, total)
            pos = total
    return positions_to_segments(lengths, order, start, stop), continuation()


def check_enough_shards(num_shards: int, global_workers: int) -> None:
    """Raise ValueError when a shard-per-worker split would leave a worker without data."""
    if num_shards < global_workers:
        raise ValueError(f'{num_shards} shards are fewer than ranks * workers = {global_workers}: '
                         'some worker would have no data (use fewer workers or more shards, or add _info.json)')


def train_shards_unknown(num_shards: int, seed: int, epoch: int, global_worker: int,
                         global_workers: int) -> Iterator[Segment]:
    """Endless shard stream for a training worker when shard lengths are unknown."""
    check_enough_shards(num_shards, global_workers)
    pass_ = 0
    while True:
        yield from (Segment(s) for s in shard_order(num_shards, seed, epoch, pass_)[global_worker::global_workers])
        pass_ += 1


def eval_ranges(num_samples: int, world_size: int, num_workers: int) -> list[list[tuple[int, int]]]:
    """``ranges[rank][worker] = (start, stop)`` positions (stored order) read in evaluation; disjoint, covering all."""
    out, pos = [], 0
    for rank_size in split_evenly(num_samples, world_size):
        workers = []
        for n in split_evenly(rank_size, max(1, num_workers)):
            workers.append((pos, pos + n))
            pos += n
        out.append(workers)
    return out


def eval_batches(num_samples: int, batch_size: int, world_size: int, num_workers: int) -> list[int]:
    """Batches each rank yields in evaluation (a worker's last batch may be partial): one count per rank."""
    return [sum(-(-(b - a) // batch_size) for a, b in workers)
            for workers in eval_ranges(num_samples, world_size, num_workers)]


def eval_positions(num_samples: int, batch_size: int, world_size: int, num_workers: int, rank: int,
                   num_batches: int) -> list[int]:
    """The split position (0 .. num_samples-1, shard order) of every row a ``pad=True`` evaluation loader of ``rank``
    yields, in the order it yields them; -1 for padding rows. ``num_batches``: the loader's (the maximum over ranks).

    Each worker reads its range of :func:`eval_ranges` in order, in full batches (its last one padded); the DataLoader
    takes batches from the workers round-robin, skipping a worker once it is done; padding batches follow. A bad
    sample keeps its place (as padding). So ``positions[i]`` names the image behind row i whatever the world size and
    worker count: per-image results can be put back in sample order (``eval/correct.npy``).
    """
    per_worker = []
    for start, stop in eval_ranges(num_samples, world_size, num_workers)[rank]:
        rows = list(range(start, stop))
        rows += [-1] * (-len(rows) % batch_size)
        per_worker.append([rows[i:i + batch_size] for i in range(0, len(rows), batch_size)])
    out, k = [], 0
    while any(k < len(b) for b in per_worker):
        for batches in per_worker:
            if k < len(batches):
                out += batches[k]
        k += 1
    out += [-1] * (num_batches * batch_size - len(out))
    return out
