"""Loader throughput: decoded, transformed, normalised training images per second (and per worker).

    python benchmarks/bench_loader.py [--img-size 32 224] [--workers 0 2] [--images 2000] [--batch-size 32]
                                      [--repeat 3] [--max-side 512] [--datasets cifar photos]

Pipelines, all with the same timm training transform (RandomResizedCrop, flip, colour jitter, normalise):
  * ``torchvision``: ``torchvision.datasets.ImageFolder`` + ``DataLoader(shuffle=True)``, ``timm.data.create_transform``;
  * ``wds-plain``: webdataset ``WebDataset(urls).shuffle(1000).decode('pil').to_tuple('jpg', 'cls')
    .map_tuple(transform).batched(B)`` in a ``WebLoader``;
  * ``deepvit``: :func:`deepvit.data.create_loader` on the same shards;
  * ``deepvit max-side N``: the same loader on shards converted with ``--max-side N`` (images stored with a longer side
    of at most N px: the pre-resized-shard option), for the datasets whose images are larger than N.
Datasets: the CIFAR-10 subset (32×32 JPEGs, ``../shared/data/cifar10_subset/train``) and large photographs
(scikit-learn's sample JPEGs, ``china.jpg`` and ``flower.jpg``, 640×427, resized to 3000×2000 and cropped/flipped into
``--photos`` distinct images). Everything is written under a temporary directory. A benchmark, not a test.
Each configuration is timed ``--repeat`` times, the three pipelines taking turns (so that a load change on a shared
machine hits all of them), and the median is reported; the spread (min–max) is printed too.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get('DEEPVIT_SHARED_DATA') or ROOT.parent / 'shared' / 'data')


def make_photos(root: Path, count: int) -> None:
    """``root/train/{china,flower}/NNN.jpg``: 3000×2000 JPEGs (quality 90) made from scikit-learn's sample images."""
    from PIL import Image, ImageOps
    from sklearn.datasets import load_sample_image
    for name in ('china.jpg', 'flower.jpg'):
        base = Image.fromarray(load_sample_image(name)).resize((3200, 2134), Image.BICUBIC)
        folder = root / 'train' / name.split('.')[0]
        folder.mkdir(parents=True)
        for i in range(count // 2):
            img = base.crop((i * 7 % 200, i * 3 % 134, i * 7 % 200 + 3000, i * 3 % 134 + 2000))
            (ImageOps.mirror(img) if i % 2 else img).save(folder / f'{i:03d}.jpg', quality=90)


def measure(batches, images: int) -> float:
    n, start = 0, None
    for x, _ in batches:
        if start is None:                       # the first batch pays worker start-up: not counted
            start = time.perf_counter()
            continue
        n += len(x)
        if n >= images:
            break
    return n / (time.perf_counter() - start)


def torchvision_loader(folder, transform, batch_size, workers):
    import torchvision
    ds = torchvision.datasets.ImageFolder(str(folder), transform=transform)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)


def wds_loader(urls, transform, batch_size, workers):
    import webdataset as wds
    ds = (wds.WebDataset(urls, shardshuffle=False, empty_check=False).shuffle(1000).decode('pil')
          .to_tuple('jpg', 'cls').map_tuple(transform, lambda y: y).batched(batch_size, partial=False))
    return wds.WebLoader(ds, batch_size=None, num_workers=workers)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--img-size', type=int, nargs='+', default=[32, 224])
    p.add_argument('--workers', type=int, nargs='+', default=[0, 2])
    p.add_argument('--images', type=int, default=2000, help='images timed per CIFAR run')
    p.add_argument('--photos', type=int, default=96, help='large photographs made (and timed per run)')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--repeat', type=int, default=3, help='timings per pipeline and configuration (median reported)')
    p.add_argument('--max-side', type=int, nargs='*', default=[512],
                   help='also time shards converted with these --max-side values (datasets with larger images)')
    p.add_argument('--datasets', nargs='+', default=['cifar', 'photos'], choices=['cifar', 'photos'])
    args = p.parse_args(argv)
    from timm.data import create_transform

    from deepvit.data import convert_image_folder, create_loader
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        datasets = {}
        if 'cifar' in args.datasets:
            datasets['cifar10 (32 px JPEG)'] = (SHARED / 'cifar10_subset', args.images, (32, 224), 32)
        if 'photos' in args.datasets:
            make_photos(tmp / 'photos', args.photos)
            datasets['photos (3000×2000 JPEG)'] = (tmp / 'photos', args.photos - args.batch_size, (224,), 3000)
        for label, (src, images, sizes, longest) in datasets.items():
            out = tmp / f'shards-{len(rows)}'
            info = convert_image_folder(src, out, 'bench', shard_size=250, splits=['train'], progress=False).info
            urls = [str(out / f) for f in info.splits['train'].filenames]
            resized = {n: tmp / f'shards-{len(rows)}-max{n}' for n in args.max_side if n < longest}
            for n, folder in resized.items():
                convert_image_folder(src, folder, 'bench', shard_size=250, splits=['train'], progress=False, max_side=n)
            for size in [s for s in args.img_size if s in sizes]:
                tf = create_transform(size, is_training=True)
                for workers in args.workers:
                    per = max(1, workers)
                    pipelines = {
                        'torchvision': lambda: torchvision_loader(src / 'train', tf, args.batch_size, workers),
                        'wds-plain': lambda: wds_loader(urls, tf, args.batch_size, workers),
                        'deepvit': lambda: create_loader(out, 'train', batch_size=args.batch_size, train=True,
                                                         img_size=size, num_workers=workers),
                        **{f'deepvit max-side {n}': lambda folder=folder: create_loader(
                            folder, 'train', batch_size=args.batch_size, train=True, img_size=size,
                            num_workers=workers) for n, folder in resized.items()},
                    }
                    timings = {name: [] for name in pipelines}
                    for _ in range(args.repeat):
                        for name, make in pipelines.items():
                            timings[name].append(measure(make(), images))
                    results = {name: statistics.median(t) for name, t in timings.items()}
                    for name, ips in results.items():
                        rows.append((label, size, name, workers, ips, ips / per, ips / results['torchvision']))
                        print(f'{label:24} {size:4d} {name:12} {workers:2d} {ips:8.0f} {ips / per:8.0f} '
                              f'{ips / results["torchvision"]:5.2f}x   (min {min(timings[name]):.0f}, '
                              f'max {max(timings[name]):.0f})', flush=True)
    print('\n| data | img_size | pipeline | workers | img/s | img/s per worker | vs torchvision |')
    print('|---|---|---|---|---|---|---|')
    for label, size, name, workers, ips, per, rel in rows:
        print(f'| {label} | {size} | {name} | {workers} | {ips:.0f} | {per:.0f} | {rel:.2f}× |')


if __name__ == '__main__':
    main()
