"""Re-attention overhead: one training step of DeepViT against ViT at the same depth and width.

Variants, all built with ``timm.create_model`` (same init, same batch):
  vit-sdpa        plain ViT, fused scaled-dot-product attention
  vit-explicit    plain ViT, explicit attention (materialised (B, H, N, N) maps) — the paper's baseline
  deepvit         DeepViT, Re-attention with the folded BatchNorm fast path (the default)
  deepvit-plain   DeepViT, Re-attention as matmul + nn.BatchNorm2d (``fold_norm=False``), for reference

Step = forward + cross-entropy + backward + AdamW step. Time: median over interleaved repeats (variants run round-robin
so drifts in machine load hit all of them alike). Memory: bytes of tensors saved for backward (unique storages,
measured with ``torch.autograd.graph.saved_tensors_hooks``) — the activation memory of the step; on CUDA also the peak
allocated memory.

    python benchmarks/bench_reattention.py                 # tiny (embed 64, 65 tokens) and ViT-S (embed 384, 197 tokens)
    python benchmarks/bench_reattention.py --scales tiny --repeats 30 --compile
    python benchmarks/bench_reattention.py --dtype bf16            # GPU: bf16 folded path vs the plain one

Dtypes (``--dtype``): ``fp32``; ``bf16``: parameters, inputs and so the attention maps in bf16, as DeepSpeed's bf16
mode trains (the folded path then keeps its BatchNorm statistics in fp32); ``bf16-autocast``: fp32 parameters,
``torch.autocast(dtype=bfloat16)`` around the forward. On a CPU without bf16 instructions bf16 matmuls are ~40x
slower than fp32: use the bf16 rows on a GPU.
"""
import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F

import deepvit  # noqa: F401  (registers the models)

SCALES = {
    # name: (model, overrides, batch size)
    'tiny': ('{family}_tiny_patch4_32', dict(depth=6), 64),
    'vit-s': ('{family}_16b_patch16_224', dict(depth=4), 8),
}
VARIANTS = ('vit-sdpa', 'vit-explicit', 'deepvit', 'deepvit-plain')


DTYPES = ('fp32', 'bf16', 'bf16-autocast')


def build(variant, scale, device, compile_model, dtype='fp32'):
    name, overrides, _ = SCALES[scale]
    torch.manual_seed(0)
    family = 'vit' if variant.startswith('vit') else 'deepvit'
    model = timm.create_model(name.format(family=family), **overrides).to(device)
    if dtype == 'bf16':
        model = model.to(torch.bfloat16)
    model.set_fused_attn(variant == 'vit-sdpa')
    if variant == 'deepvit-plain':
        for attn in model.attention_layers():
            attn.reattn.fold_norm = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step_model = torch.compile(model) if compile_model else model
    return model, step_model, opt


def autocast(x, dtype):
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=dtype == 'bf16-autocast')


def train_step(model, opt, x, y, dtype='fp32'):
    with autocast(x, dtype):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def saved_bytes(model, x, y, dtype='fp32'):
    storages = {}

    def pack(t):
        try:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(x, dtype):
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def run(scale, device, repeats, warmup, compile_model, dtype='fp32', batch=None):
    batch = batch or SCALES[scale][2]
    built = {v: build(v, scale, device, compile_model, dtype) for v in VARIANTS}
    img = built['vit-sdpa'][0].model_cfg['img_size']
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, img, img, generator=g).to(device)
    if dtype == 'bf16':
        x = x.to(torch.bfloat16)
    y = torch.randint(0, built['vit-sdpa'][0].num_classes, (batch,), generator=g).to(device)
    times = {v: [] for v in VARIANTS}
    for i in range(warmup + repeats):
        for v in VARIANTS:
            _, step_model, opt = built[v]
            sync(device)
            t0 = time.perf_counter()
            train_step(step_model, opt, x, y, dtype)
            sync(device)
            if i >= warmup:
                times[v].append(time.perf_counter() - t0)
    rows = []
    for v in VARIANTS:
        model = built[v][0]
        mem = saved_bytes(model, x, y, dtype)
        peak = None
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
            train_step(built[v][1], built[v][2], x, y, dtype)
            peak = torch.cuda.max_memory_allocated()
        rows.append((v, statistics.median(times[v]), mem, peak))
    return rows, batch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--scales', default='tiny,vit-s', help='comma list of: ' + ', '.join(SCALES))
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: leave as is)')
    parser.add_argument('--compile', action='store_true', help='torch.compile every variant')
    parser.add_argument('--dtype', default='fp32', choices=DTYPES, help='see the module docstring')
    parser.add_argument('--batch', type=int, default=0, help='batch size (0: the scale\'s default)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} compile={args.compile} "
          f"dtype={args.dtype}")
    for scale in args.scales.split(','):
        rows, batch = run(scale, device, args.repeats, args.warmup, args.compile, args.dtype, args.batch)
        base_t = dict((r[0], r[1]) for r in rows)['vit-explicit']
        base_m = dict((r[0], r[2]) for r in rows)['vit-explicit']
        print(f"\n{scale}: {SCALES[scale][0].format(family='*')} {SCALES[scale][1]}, batch {batch}")
        print(f"| variant | step ms | vs vit-explicit | saved activations MiB | vs vit-explicit |"
              + (" peak MiB |" if device.type == 'cuda' else ""))
        print("|---|---|---|---|---|" + ("---|" if device.type == 'cuda' else ""))
        for v, t, mem, peak in rows:
            line = (f"| {v} | {t * 1e3:.1f} | {100 * (t / base_t - 1):+.1f}% | {mem / 2**20:.1f} | "
                    f"{100 * (mem / base_m - 1):+.1f}% |")
            if peak is not None:
                line += f" {peak / 2**20:.0f} |"
            print(line)


if __name__ == '__main__':
    main()
