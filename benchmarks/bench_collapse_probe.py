#!/usr/bin/env python
"""Cost of the collapse probe (deepvit.collapse.collapse_probe): wall time (forward vs metric accumulation) and peak
extra memory, for any registered model.

    python benchmarks/bench_collapse_probe.py                                  # 32-block DeepViT, 197 tokens, 256 images
    python benchmarks/bench_collapse_probe.py --model deepvit_tiny_patch4_32 --in-chans 1 --images 256
    python benchmarks/bench_collapse_probe.py --device cuda

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during the probe minus before it; on CPU the peak resident
set size sampled every 5 ms by a thread, minus the RSS before the probe, measured in a second run of this script
with ``MALLOC_MMAP_THRESHOLD_=65536``: glibc then returns every freed block over 64 KiB at once, so the RSS follows
the live tensors (with glibc's default the same probe read anywhere from 300 to 760 MiB on the digits model; with the
setting, 177 MiB three times). That run is slower (every large allocation maps fresh pages), so the times come from
the first run, which measures no memory. Prints one JSON line.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

import psutil
import timm
import torch

import deepvit  # noqa: F401  (registers the models)
from deepvit.collapse import collapse_probe, probe_chunk_size


class PeakRSS:
    """Peak resident set size of this process while the context runs (sampled)."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='deepvit_32b_patch16_224')
    p.add_argument('--images', type=int, default=256)
    p.add_argument('--in-chans', type=int, default=3)
    p.add_argument('--budget-mib', type=float, default=256)
    p.add_argument('--device', default='cpu')
    p.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch\'s)')
    p.add_argument('--memory-run', action='store_true', help=argparse.SUPPRESS)   # the second run (see above)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, in_chans=args.in_chans).to(device).eval()
    cfg = model.model_cfg
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    chunk = min(args.images, probe_chunk_size(cfg['depth'], cfg['num_heads'], tokens, args.budget_mib))
    size = cfg['img_size'] if isinstance(cfg['img_size'], int) else cfg['img_size'][0]
    images = torch.randn(args.images, args.in_chans, size, size)

    def chunks():
        for start in range(0, args.images, chunk):
            yield images[start:start + chunk].to(device)

    with torch.no_grad():  # forward alone, the same chunks, for the split of the time
        t0 = time.perf_counter()
        for x in chunks():
            model(x)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        forward_s = time.perf_counter() - t0
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        result = collapse_probe(model, chunks(), args.images)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        probe_s = time.perf_counter() - t0
    if device.type == 'cuda':
        peak_mib = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    elif args.memory_run:
        print(json.dumps({'peak_extra_mib': round((rss.peak - rss.base) / 2 ** 20, 1)}))
        return
    else:
        out = subprocess.run([sys.executable, *sys.argv, '--memory-run'], check=True, capture_output=True, text=True,
                             env={**os.environ, 'MALLOC_MMAP_THRESHOLD_': '65536'})
        peak_mib = json.loads(out.stdout.strip().splitlines()[-1])['peak_extra_mib']
    s = result.summary()
    print(json.dumps({
        'model': args.model, 'depth': cfg['depth'], 'num_heads': cfg['num_heads'], 'tokens': tokens,
        'images': args.images, 'chunk': chunk, 'device': str(device), 'threads': torch.get_num_threads(),
        'probe_s': round(probe_s, 2), 'forward_only_s': round(forward_s, 2),
        'metrics_s': round(probe_s - forward_s, 2), 'peak_extra_mib': round(peak_mib, 1),
        'maps_all_images_fp32_mib': round(2 * cfg['depth'] * cfg['num_heads'] * tokens ** 2 * 4 * args.images
                                          / 2 ** 20, 1),
        'calibrated_mean_adjacent_softmax': round(s['calibrated_mean_adjacent_softmax'], 4),
        'similar_blocks_softmax': s['similar_blocks_softmax'],
        **{k: round(s[k], 4) for k in ('row_mean_adjacent_softmax', 'cka_mean_adjacent') if k in s}}))


if __name__ == '__main__':
    main()
