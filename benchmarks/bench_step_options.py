"""Activation checkpointing and torch.compile, measured: step time, activation memory, peak memory.

Each configuration runs in its own process (peak RSS is per process): build the model, run ``--warmup`` training
steps (forward, backward, AdamW step) on fixed random batches, then time ``--steps`` more. Reported per configuration:
median step time, images/s, the bytes autograd saved for backward in one step (``saved_tensors_hooks``: the
activation memory the checkpointing trades; exact and machine-independent), peak RSS on CPU or peak allocated GPU
memory, and for compile its first-step (compilation) time.

    python benchmarks/bench_step_options.py checkpointing     # 32-block DeepViT-S width at 224 px, batch 4
    python benchmarks/bench_step_options.py compile           # tiny and ViT-S width at 32 px, both families

Writes ``--out`` (JSON) and prints a markdown table. From the checkpointing run it also estimates the deepest model
that trains at batch 32 in 80 GB: (80 GB − 16 bytes/parameter of fp32 weights, gradients and AdamW states) ÷
(saved bytes per block per image × 32), halved bytes for bf16 activations.
"""
import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch


def _one(cfg: dict) -> dict:
    import timm
    import deepvit  # noqa: F401
    torch.manual_seed(0)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    model = timm.create_model(cfg['model'], **cfg['kwargs']).to(device).train()
    if cfg.get('checkpointing'):
        model.set_grad_checkpointing(True)
    if cfg.get('compile'):
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    img = model.model_cfg['img_size']
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg['batch'], 3, img, img, generator=g).to(device)
    y = torch.randint(0, model.num_classes, (cfg['batch'],), generator=g).to(device)
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    def step(count_saved=False):
        if count_saved:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = torch.nn.functional.cross_entropy(model(x), y)
        else:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == 'cuda':
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(cfg['warmup'] - 1):
        step()
    times = []
    for _ in range(cfg['steps']):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if not cfg.get('compile'):  # the hooks would change what a compiled graph saves
        step(count_saved=True)
    peak = (torch.cuda.max_memory_allocated() if device.type == 'cuda'
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 20
    med = statistics.median(times)
    return {**cfg, 'device': str(device), 'threads': torch.get_num_threads(), 'step_s': med,
            'images_per_s': cfg['batch'] / med, 'first_step_s': first,
            'saved_mib': saved[0] / 2 ** 20 if saved[0] else None, 'peak_mib': peak,
            'params': sum(p.numel() for p in model.parameters())}


def _run(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, '--one', json.dumps(cfg)], capture_output=True, text=True,
                         timeout=3600)
    if out.returncode:
        raise RuntimeError(f'{cfg}: {out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def checkpointing(args) -> list:
    base = {'model': 'deepvit_16b_patch16_224', 'kwargs': {'depth': args.depth}, 'batch': args.batch,
            'warmup': 1, 'steps': args.steps}
    rows = [_run({**base, 'checkpointing': False}), _run({**base, 'checkpointing': True})]
    plain = rows[0]
    per_block_image = plain['saved_mib'] * 2 ** 20 / args.depth / args.batch  # bytes saved per block per image
    budget = 80e9
    for dtype_bytes, label in ((1.0, 'fp32 activations'), (0.5, 'bf16 activations')):
        per_block = per_block_image * 32 * dtype_bytes
        params_per_block = plain['params'] / args.depth
        depth = int(budget / (per_block + 16 * params_per_block))
        plain[f'deepest_at_batch32_in_80GB ({label})'] = depth
    return rows


def compile_rows(args) -> list:
    rows = []
    for family, (width, heads) in itertools.product(('vit', 'deepvit'), ((64, 4), (384, 6))):
        base = {'model': f'{family}_tiny_patch4_32', 'kwargs': {'embed_dim': width, 'num_heads': heads, 'depth': 6},
                'batch': 64, 'warmup': 3, 'steps': args.steps}
        rows += [_run({**base, 'compile': False}), _run({**base, 'compile': True})]
    return rows


def table(rows) -> str:
    lines = ['| model | kwargs | batch | option | step (s) | images/s | saved for backward (MiB) | peak (MiB) | '
             'first step (s) |', '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        option = 'checkpointing' if r.get('checkpointing') else 'compile' if r.get('compile') else 'plain'
        saved = f"{r['saved_mib']:.0f}" if r['saved_mib'] else '–'
        lines.append(f"| {r['model']} | {r['kwargs']} | {r['batch']} | {option} | {r['step_s']:.3f} | "
                     f"{r['images_per_s']:.1f} | {saved} | {r['peak_mib']:.0f} | {r['first_step_s']:.1f} |")
    return '\n'.join(lines)


def main():
    if len(sys.argv) > 2 and sys.argv[1] == '--one':
        print(json.dumps(_one(json.loads(sys.argv[2]))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('what', choices=['checkpointing', 'compile'])
    ap.add_argument('--depth', type=int, default=32)
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--out', default=None)
    args = ap.parse_args()
    rows = checkpointing(args) if args.what == 'checkpointing' else compile_rows(args)
    print(table(rows))
    for r in rows:
        for k, v in r.items():
            if k.startswith('deepest'):
                print(f'{k}: {v} blocks')
    out = args.out or f'benchmarks/results/step_options_{args.what}.json'
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, 'w') as f:
        json.dump({'load': os.environ.get('BENCH_LOAD', 'not stated'), 'rows': rows}, f, indent=1)


if __name__ == '__main__':
    main()
