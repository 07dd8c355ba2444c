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


def build(variant, scale, device, compile_model):
    name, overrides, _ = SCALES[scale]
    torch.manual_seed(0)
    family = 'vit' if variant.startswith('vit') else 'deepvit'
    model = timm.create_model(name.format(family=family), **overrides).to(device)
    model.set_fused_attn(variant == 'vit-sdpa')
    if variant == 'deepvit-plain':
        for attn in model.attention_layers():
            attn.reattn.fold_norm = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step_model = torch.compile(model) if compile_model else model
    return model, step_model, opt


def train_step(model, opt, x, y):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def saved_bytes(model, x, y):
    storages = {}

    def pack(t):
        try:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def run(scale, device, repeats, warmup, compile_model):
    _, _, batch = SCALES[scale]
    built = {v: build(v, scale, device, compile_model) for v in VARIANTS}
    img = built['vit-sdpa'][0].model_cfg['img_size']
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, img, img, generator=g).to(device)
    y = torch.randint(0, built['vit-sdpa'][0].num_classes, (batch,), generator=g).to(device)
    times = {v: [] for v in VARIANTS}
    for i in range(warmup + repeats):
        for v in VARIANTS:
            _, step_model, opt = built[v]
            sync(device)
            t0 = time.perf_counter()
            train_step(step_model, opt, x, y)
            sync(device)
            if i >= warmup:
                times[v].append(time.perf_counter() - t0)
    rows = []
    for v in VARIANTS:
        model = built[v][0]
        mem = saved_bytes(model, x, y)
        peak = None
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
            train_step(built[v][1], built[v][2], x, y)
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} compile={args.compile}")
    for scale in args.scales.split(','):
        rows, batch = run(scale, device, args.repeats, args.warmup, args.compile)
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
