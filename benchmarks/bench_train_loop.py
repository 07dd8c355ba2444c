"""Our training loop (DeepSpeed engine + ``deepvit.training.engine.train_one_epoch``) against a bare PyTorch loop.

Same model, micro-batch, precision, optimizer (timm AdamW), schedule and gradient clipping; the batches are the same
pre-made in-memory tensors for both, so the number measures the loop and DeepSpeed's overhead, not data loading —
unless ``--data SHARDS`` feeds our loop real loader batches (decoded and augmented by ``--workers`` processes,
normalised on the device), which measures the trainer's whole input path. Our loop is timed over windows of
``--log-every`` steps with the device synchronised only at the window ends (the bare loop reads its loss every step,
as a naive loop does). World size 1 (a single process with its own gloo group). Also reports model FLOP utilisation (MFU): training FLOPs
per image = 3 × 2 × MACs (forward + backward ≈ 3 forwards; ``deepvit.models.gmacs_per_image``) against this
machine's measured dense-matmul peak (fp32 ``torch.mm`` of 2048² on CPU, bf16 on CUDA).

    python benchmarks/bench_train_loop.py                       # tiny DeepViT on 32 px, ZeRO-2, fp32 on CPU
    python benchmarks/bench_train_loop.py --model deepvit_16b_patch16_224 --batch 64 --steps 50   # on a GPU
    python benchmarks/bench_train_loop.py --model vit_tiny_patch4_32 --depth 16 --embed-dim 96 --num-heads 6 \
        --patch-size 8 --threads 1 --only-ours --json out.jsonl                                 # a study candidate
    python benchmarks/bench_train_loop.py --model deepvit_16b_patch16_224 --batch 128 --data SHARDS --only-ours
"""
import argparse
import os
import socket
import statistics
import time

import torch
import torch.nn.functional as F


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def matmul_peak(device, dtype, n=2048, repeats=10, number=1) -> float:
    """Matmul peak (FLOP/s): the fastest of ``repeats`` timings of ``number`` back-to-back (n, n) @ (n, n) products,
    each after ``torch.utils.benchmark.Timer``'s own warm-up (it synchronises the device around each timing), on all
    of this process's threads (Timer's default is one). On a GPU use n >= 8192 and number >= 10: a single 2048² product
    is mostly launch overhead there, which would inflate every MFU computed against it."""
    from torch.utils.benchmark import Timer
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timer = Timer('a @ b', globals={'a': a, 'b': b}, num_threads=torch.get_num_threads())
    return 2 * n ** 3 / min(timer.timeit(number).times[0] for _ in range(repeats))


def make_model(args, device):
    import timm
    import deepvit  # noqa: F401
    torch.manual_seed(0)
    sizes = {k: v for k, v in (('depth', args.depth), ('embed_dim', args.embed_dim), ('num_heads', args.num_heads),
                               ('patch_size', args.patch_size)) if v}
    model = timm.create_model(args.model, **sizes).to(device)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def batches(args, model, device, dtype):
    g = torch.Generator().manual_seed(0)
    img = model.model_cfg['img_size']
    return [(torch.randn(args.batch, 3, img, img, generator=g).to(device, dtype),
             torch.randint(0, model.num_classes, (args.batch,), generator=g).to(device)) for _ in range(args.steps)]


def bare_loop(args, device, dtype):
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    model = make_model(args, device).to(dtype)
    opt = create_optimizer_v2(model, opt='adamw', lr=1e-3, weight_decay=0.05)
    sched, _ = create_scheduler_v2(opt, sched='cosine', num_epochs=1, warmup_epochs=0, step_on_epochs=False,
                                   updates_per_epoch=args.steps)
    data = batches(args, model, device, dtype)
    model.train()
    times = []
    for step, (x, y) in enumerate(data, 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step_update(step)
        float(loss)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times, model


def our_loop(args, device, dtype, precision):
    import deepspeed
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from deepvit.training.engine import train_one_epoch
    os.environ.update(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(free_port()))
    deepspeed.init_distributed(verbose=False)
    model = make_model(args, device)
    opt = create_optimizer_v2(model, opt='adamw', lr=1e-3, weight_decay=0.05)
    config = {'train_micro_batch_size_per_gpu': args.batch, 'gradient_accumulation_steps': 1,
              'gradient_clipping': 1.0, 'steps_per_print': 10 ** 9, 'bf16': {'enabled': precision == 'bf16'},
              'zero_optimization': {'stage': args.zero_stage}}
    engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    sched, _ = create_scheduler_v2(opt, sched='cosine', num_epochs=1, warmup_epochs=0, step_on_epochs=False,
                                   updates_per_epoch=args.steps)
    if args.data:   # real loader batches (decoded, augmented, normalised on the device), as the trainer feeds them
        from deepvit.data import create_loader
        data = create_loader(args.data, 'train', batch_size=args.batch, train=True,
                             img_size=model.model_cfg['img_size'], in_chans=model.model_cfg.get('in_chans', 3),
                             num_classes=model.num_classes, num_workers=args.workers, device=device, rank=0,
                             world_size=1)
    else:
        data = batches(args, model, device, dtype)
    # Timed by windows of log_every steps, the device synchronised only at the window ends (where the loop reads its
    # losses back anyway): a per-step synchronize would hide a hidden sync inside the loop
    marks = []

    def on_log(metrics, step):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        marks.append((step, time.perf_counter()))

    if device.type == 'cuda':
        torch.cuda.synchronize()
    marks.append((0, time.perf_counter()))
    train_one_epoch(engine, data, torch.nn.CrossEntropyLoss(), device=device, dtype=dtype, scheduler=sched,
                    log_every=args.log_every, on_log=on_log, stop_batch=args.steps)
    times = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(marks, marks[1:]) for _ in range(s1 - s0)]
    return times, engine.module


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='deepvit_tiny_patch4_32')
    parser.add_argument('--depth', type=int, default=None)
    parser.add_argument('--embed-dim', type=int, default=None)
    parser.add_argument('--num-heads', type=int, default=None)
    parser.add_argument('--patch-size', type=int, default=None)
    parser.add_argument('--threads', type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--steps', type=int, default=40)
    parser.add_argument('--warmup', type=int, default=5, help='steps excluded from the timing')
    parser.add_argument('--zero-stage', type=int, default=2)
    parser.add_argument('--log-every', type=int, default=10, help="our loop's log (and only host sync) cadence")
    parser.add_argument('--grad-checkpointing', action='store_true', help='activation checkpointing in both loops')
    parser.add_argument('--only-ours', action='store_true', help='skip the bare loop (e.g. a model it cannot fit)')
    parser.add_argument('--json', default=None, help='append one JSON line with the results to this file')
    parser.add_argument('--cpu', action='store_true', help='run on the CPU even where CUDA is available')
    parser.add_argument('--data', default=None, help="feed our loop real batches from these shards' train split "
                        "(deepvit.data.create_loader, normalised on the device) instead of in-memory tensors; the bare "
                        "loop keeps the in-memory batches")
    parser.add_argument('--workers', type=int, default=None,
                        help='loader workers with --data (default: the cores less one, at most 16)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data and args.workers is None:
        from deepvit.data.plan import default_num_workers
        from deepvit.ranks import cores_per_rank
        args.workers = default_num_workers(cores_per_rank())
    device = torch.device('cuda' if torch.cuda.is_available() and not args.cpu else 'cpu')
    precision = 'bf16' if device.type == 'cuda' and torch.cuda.is_bf16_supported() else 'fp32'
    dtype = torch.bfloat16 if precision == 'bf16' else torch.float32
    from deepvit.models import gmacs_per_image

    results = {}
    ours = 'deepvit (DeepSpeed ZeRO-%d)' % args.zero_stage
    label = f'{ours} + loader ({args.workers} workers)' if args.data else ours
    loops = [(ours, lambda: our_loop(args, device, dtype, precision))]
    if not args.only_ours:
        loops.insert(0, ('bare PyTorch', lambda: bare_loop(args, device, dtype)))
    memory = {}
    for name, fn in loops:
        if device.type == 'cuda':
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        times, model = fn()
        step = statistics.median(times[args.warmup:])
        results[name] = (args.batch / step, gmacs_per_image(model))
        memory[name] = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == 'cuda' else None
        del model
    peak = matmul_peak(device, dtype, *((8192, 10, 20) if device.type == 'cuda' else ()))
    print(f"device={device} precision={precision} threads={torch.get_num_threads()} model={args.model} "
          f"batch={args.batch} steps={args.steps} (median after {args.warmup} warm-up steps)")
    print(f"measured matmul peak: {peak / 1e9:.1f} GFLOP/s")
    print("| loop | images/s | relative | MFU |\n|---|---|---|---|")
    base = None
    for name, (ips, gmacs) in results.items():
        base = base or ips
        mfu = ips * 6 * gmacs * 1e9 / peak
        print(f"| {label if name == ours else name} | {ips:.1f} | {ips / base:.3f}× | {100 * mfu:.1f}% |")
    if args.json:
        import json
        with open(args.json, 'a') as f:
            f.write(json.dumps({'model': args.model, 'depth': args.depth, 'data': args.data,
                                'workers': args.workers if args.data else None, 'embed_dim': args.embed_dim,
                                'num_heads': args.num_heads, 'patch_size': args.patch_size, 'batch': args.batch,
                                'device': str(device),
                                'device_name': torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu',
                                'precision': precision, 'threads': torch.get_num_threads(),
                                'grad_checkpointing': args.grad_checkpointing, 'matmul_peak_flops': peak,
                                'loops': {n: {'images_per_s': ips, 'gmacs_per_image': g, 'peak_mib': memory[n],
                                              'mfu_vs_measured_peak': ips * 6 * g * 1e9 / peak}
                                          for n, (ips, g) in results.items()}}) + '\n')


if __name__ == '__main__':
    main()
