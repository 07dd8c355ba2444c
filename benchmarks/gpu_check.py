"""The GPU check: one command on a bare GPU node (issue 21.5). ``benchmarks/gpu_check.sh`` runs this file.

    benchmarks/gpu_check.sh                       # on the GPU node: <= 8 minutes; reports in $OUT (default ./gpu-check)
    benchmarks/gpu_check.sh --cpu-smoke           # every step on CPU with tiny sizes, GPU-only steps skipped (said so)
    benchmarks/gpu_check.sh --summary RESULTS.jsonl   # the summary table again, from a recorded run

Steps, each said as it starts:
  1. **Install check.** The modules the project needs (``REQUIRED``) are imported in a fresh interpreter; whatever
     fails is installed offline from ``wheelhouse/`` (``benchmarks/make_wheelhouse.sh`` prepares it on a machine with
     internet access) into ``WORK/site`` (``pip install --no-index --no-deps --target``, so nothing of the node's
     Python is touched), then checked again. Still missing: every module is named with its import error, and the run
     stops (exit 3) before any work.
  2. **Device** (skipped under ``--cpu-smoke``): ``torch.cuda`` must see a device; its name and memory are recorded.
  3. **Matmul peak**: the fastest of several timed batches of (8192, 8192) bf16 products (CPU smoke: 1024², fp32), the
     denominator of the MFU (``bench_train_loop.matmul_peak``).
  4. **Data**: shards made here from generated JPEGs (:func:`prepare_data`: nothing read from outside the repository).
  5. **Training loop** (``benchmarks/bench_train_loop.py``, synthetic in-memory batches, 224 px, ZeRO-2, bf16): ViT
     (timm's fused SDPA attention) and DeepViT at 16 blocks, micro-batch 32, 128 and 256, each against a bare PyTorch
     loop on the same model; both at 32 blocks (batch 128); DeepViT with activation checkpointing at 32 and 64 blocks
     (our loop only), whose peak memory gives the largest depth that fits (a linear fit, stated as an estimate); and
     DeepViT at 16 blocks fed by the real loader from the generated shards (its default workers), synchronised only
     at log windows: the input path against the in-memory batches.
  6. **A real job**: ``launch/train.py`` under DeepSpeed's launcher on the generated shards, for the data path, the
     probe and the MLflow record.
  7. **Summary**: one table (``summarize``) printed and written to ``OUT/gpu_check.md``; the raw rows in
     ``OUT/gpu_check.jsonl``. Shards, checkpoints and the MLflow store stay in ``WORK`` (default
     ``/tmp/deepvit-gpu-check``): ``OUT`` only receives small files.

A step that fails is reported in the summary and the check goes on with the next one; the exit status is 1 if any
step failed. Steps are skipped, and said so, once ``--budget-s`` (default 450 s) is spent.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution that provides it (what the wheelhouse must hold when the node lacks it)
REQUIRED = {'torch': 'torch', 'timm': 'timm', 'numpy': 'numpy', 'PIL': 'pillow', 'yaml': 'pyyaml', 'tqdm': 'tqdm',
            'deepspeed': 'deepspeed', 'mlflow': 'mlflow-skinny', 'sqlalchemy': 'sqlalchemy', 'alembic': 'alembic',
            'webdataset': 'webdataset', 'jsonargparse': 'jsonargparse', 'docstring_parser': 'docstring-parser',
            'filelock': 'filelock', 'psutil': 'psutil', 'safetensors': 'safetensors'}
H200_DENSE_BF16 = 989e12      # FLOP/s, NVIDIA's H200 datasheet (dense, no sparsity)
CLASSES = 10


class CheckError(Exception):
    """A precondition of the check is not met: one line, printed as ``gpu_check: error: ...``."""


# --- 1. install --------------------------------------------------------------------------------------------------
def missing_modules(modules, env=None) -> dict[str, str]:
    """``{module: its import error, one line}`` for each of ``modules`` that a fresh interpreter (this one, with
    ``env``) cannot import, tried in order in one process; empty when all import."""
    code = ('import importlib, json, sys\nout = {}\nfor m in sys.argv[1:]:\n    try:\n        importlib.import_module(m)\n'
            '    except Exception as e:\n        out[m] = f"{type(e).__name__}: {e}"\nprint(json.dumps(out))')
    r = subprocess.run([sys.executable, '-c', code, *modules], env=env, capture_output=True, text=True)
    if r.returncode:
        raise CheckError(f'{sys.executable} cannot run: {(r.stderr.strip().splitlines() or ["?"])[-1]}')
    return json.loads(r.stdout.strip().splitlines()[-1])


def ensure_installed(wheelhouse: Path, site: Path, env: dict, modules=tuple(REQUIRED)) -> list[str]:
    """Make ``modules`` importable: those missing are installed from the wheels in ``wheelhouse`` into ``site``
    (offline, ``--no-deps``: the wheelhouse holds the closure), and ``env`` gets ``site`` on ``PYTHONPATH`` and
    ``site/bin`` on ``PATH``. Returns the modules that were missing before. Raises :class:`CheckError` naming each
    module still missing, with its import error and the distribution the wheelhouse lacks."""
    before = missing_modules(modules, env)
    if not before:
        return []
    wheels = sorted(Path(wheelhouse).glob('*.whl')) if Path(wheelhouse).is_dir() else []
    if wheels:
        site.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-index', '--no-deps', '--quiet',
                            '--disable-pip-version-check', '--upgrade', '--target', str(site), *map(str, wheels)],
                           env=env, capture_output=True, text=True)
        if r.returncode:
            raise CheckError(f'pip could not install {wheelhouse}: {r.stderr.strip().splitlines()[-1:]}')
        env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(site), env.get('PYTHONPATH')]))
        env['PATH'] = os.pathsep.join(filter(None, [str(site / 'bin'), env.get('PATH')]))
    after = missing_modules(modules, env)
    if after:
        where = f'after installing the {len(wheels)} wheels of {wheelhouse}' if wheels else \
            f'and {wheelhouse} holds no wheels'
        named = '; '.join(f'{m} ({REQUIRED.get(m, m)}): {err}' for m, err in after.items())
        raise CheckError(f'missing {where}: {named}. Prepare the wheelhouse on a machine with internet access: '
                         f'benchmarks/make_wheelhouse.sh --python-version '
                         f'{sys.version_info.major}.{sys.version_info.minor}, and carry wheelhouse/ with the checkout')
    return sorted(before)


# --- 5. data -----------------------------------------------------------------------------------------------------
def prepare_data(root: Path, *, per_class: int = 40, size: int = 256, seed: int = 0, env=None) -> Path:
    """Shards of generated photographs for the real job, made from nothing outside the repository:
    ``root/images/{train,val}/CLASS/NNN.jpg`` (``CLASSES`` classes, ``per_class`` train and ``per_class // 4`` val
    images each; ``size`` × ``3 * size // 4`` RGB JPEGs at quality 90: a class-coloured disc and stripes of a
    class-specific angle on noise) converted by ``deepvit.data.convert`` into ``root/shards``. Deterministic in
    ``seed``; reused when ``root/shards/_info.json`` exists. Returns the shard folder."""
    import numpy as np
    from PIL import Image, ImageDraw
    shards = root / 'shards'
    if (shards / '_info.json').is_file():
        return shards
    rng = np.random.default_rng(seed)
    w, h = size, 3 * size // 4
    yy, xx = np.mgrid[0:h, 0:w]
    for split, n in (('train', per_class), ('val', max(1, per_class // 4))):
        for c in range(CLASSES):
            folder = root / 'images' / split / f'class{c}'
            folder.mkdir(parents=True, exist_ok=True)
            angle = np.pi * c / CLASSES
            stripes = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / (4 + c)) > 0) * 60
            colour = np.array([(37 * c) % 256, (91 * c + 50) % 256, (173 * c + 100) % 256])
            for i in range(n):
                noise = rng.normal(0, 25, (h, w, 3))
                img = Image.fromarray(np.clip(noise + 100 + stripes[..., None], 0, 255).astype(np.uint8))
                r, cx, cy = rng.integers(h // 8, h // 3), rng.integers(0, w), rng.integers(0, h)
                ImageDraw.Draw(img).ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in colour))
                img.save(folder / f'{i:03d}.jpg', quality=90)
    subprocess.run([sys.executable, '-m', 'deepvit.data.convert', '--src', str(root / 'images'), '--out', str(shards),
                    '--name', 'generated', '--shard-size', '100', '--no-progress'], env=env, check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return shards


def job_throughput(db: Path, env) -> str:
    """The real job's last logged training throughput (``train/samples_per_sec``, images/s) from its MLflow store,
    read in a fresh interpreter (the one with the installed wheels); '?' when the store holds none."""
    code = ('import sys, mlflow; c = mlflow.MlflowClient(sys.argv[1]); e = c.get_experiment_by_name("gpu-check"); '
            'r = c.search_runs([e.experiment_id], order_by=["attributes.start_time DESC"], max_results=1); '
            'h = c.get_metric_history(r[0].info.run_id, "train/samples_per_sec") if r else []; '
            'print(f"{h[-1].value:.0f}" if h else "?")')
    out = subprocess.run([sys.executable, '-c', code, f'sqlite:///{db}'], env=env, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else '?'


# --- 6. summary --------------------------------------------------------------------------------------------------
def launch_bound(rows: list[dict], model: str, depth: int, loop: str) -> str | None:
    """The smallest micro-batch whose images/s is within 10 % of the best over the batches measured for (model,
    depth, loop), in words; None with fewer than two batches."""
    pts = sorted((r['batch'], r['loops'][loop]['images_per_s']) for r in rows
                 if r['model'] == model and r['depth'] == depth and not r['grad_checkpointing'] and not r.get('data')
                 and loop in r['loops'])
    if len(pts) < 2:
        return None
    best = max(ips for _, ips in pts)
    enough, reached = min((b, ips) for b, ips in pts if ips >= 0.9 * best)
    below = [f'{b}: {ips / best:.2f}' for b, ips in pts if b < enough]
    return (f'{model} at {depth} blocks ({loop}): micro-batch {enough} reaches {reached:.0f} img/s, within 10 % of '
            f'the best ({best:.0f})' + (f'; smaller batches are launch-bound (fraction of the best: {", ".join(below)})'
                                        if below else '; no batch measured is launch-bound'))


def max_depth_estimate(rows: list[dict], total_gib: float | None) -> str | None:
    """Largest depth that fits with activation checkpointing, from a line through the peak memory of the checkpointed
    runs at two or more depths (same model and batch), at 90 % of ``total_gib``; None without two depths or a total."""
    ckpt = [r for r in rows if r['grad_checkpointing']]
    ck = sorted((r['depth'], r['loops'][next(iter(r['loops']))]['peak_mib']) for r in ckpt)
    ck = [(d, m) for d, m in ck if m]
    if len(ck) < 2 or not total_gib:
        return None
    (d0, m0), (d1, m1) = ck[0], ck[-1]
    per_block = (m1 - m0) / (d1 - d0)
    if per_block <= 0:
        return None
    fits = int(d0 + (0.9 * total_gib * 1024 - m0) / per_block)
    return (f'activation checkpointing: {per_block:.0f} MiB per block at batch {ckpt[0]["batch"]} '
            f'(depth {d0}: {m0 / 1024:.1f} GiB, {d1}: {m1 / 1024:.1f} GiB); largest depth that fits in 90 % of '
            f'{total_gib:.0f} GiB ≈ {fits} blocks (linear extrapolation, not run)')


def summarize(rows: list[dict], *, header: dict, failures: list[str], job: dict | None = None) -> str:
    """The check's one table, as markdown: a row per (model, depth, batch, checkpointing, loop) with images/s, our
    loop against bare PyTorch, peak memory and MFU (against the measured matmul peak and, on an H200, the datasheet),
    then the launch-bound point, the Re-attention overhead, the depth estimate, the real job and any failures."""
    smoke = header.get('cpu_smoke')
    lines = [f"# GPU check — {header.get('device_name', '?')}, {header.get('precision', '?')}, "
             f"{header.get('when', '')}", '']
    if smoke:
        lines += ['**CPU smoke run**: the GPU steps (device check, datasheet MFU, bf16) were skipped and the sizes are '
                  'tiny; these numbers are not GPU measurements.', '']
    peak = header.get('matmul_peak_flops')
    if peak:
        lines.append(f"Matmul peak measured: {peak / 1e12:.1f} TFLOP/s ({header.get('matmul', '')})")
        lines.append('')
    datasheet = H200_DENSE_BF16 if 'H200' in str(header.get('device_name')) else None
    lines += ['| model | depth | batch | ckpt | loop | images/s | vs bare | peak GiB | MFU (measured peak) | '
              'MFU (datasheet) |', '|---|---|---|---|---|---|---|---|---|---|']
    step = {}
    for r in rows:
        bare = r['loops'].get('bare PyTorch', {}).get('images_per_s')
        for name, m in r['loops'].items():
            ds = f"{100 * m['images_per_s'] * 6 * m['gmacs_per_image'] * 1e9 / datasheet:.1f} %" if datasheet else '—'
            vs = f"{m['images_per_s'] / bare:.3f}" if bare and name != 'bare PyTorch' else '—'
            gib = f"{m['peak_mib'] / 1024:.1f}" if m.get('peak_mib') else '—'
            loop = f"{name} + loader ({r.get('workers')} workers)" if r.get('data') else name
            lines.append(f"| {r['model']} | {r['depth']} | {r['batch']} | {'yes' if r['grad_checkpointing'] else 'no'} "
                         f"| {loop} | {m['images_per_s']:.0f} | {vs} | {gib} | "
                         f"{100 * m['mfu_vs_measured_peak']:.1f} % | {ds} |")
            if name != 'bare PyTorch' and not r['grad_checkpointing'] and not r.get('data'):
                step[(r['model'].split('_')[0], r['depth'], r['batch'])] = 1 / m['images_per_s']
    lines.append('')
    ours = next((n for r in rows for n in r['loops'] if n != 'bare PyTorch'), None)
    for model in dict.fromkeys(r['model'] for r in rows):
        depth = min((r['depth'] for r in rows if r['model'] == model), default=None)
        text = launch_bound(rows, model, depth, ours) if ours else None
        if text:
            lines.append(f'- Launch-bound point: {text}.')
    for (family, depth, batch), t in sorted(step.items()):
        vit = step.get(('vit', depth, batch))
        if family == 'deepvit' and vit:
            lines.append(f'- Re-attention overhead at {depth} blocks, batch {batch}: DeepViT step = {t / vit:.2f}× the '
                         f'SDPA ViT step.')
    depth_text = max_depth_estimate(rows, header.get('total_gib'))
    if depth_text:
        lines.append(f'- {depth_text}.')
    if job:
        lines.append(f"- Real job ({job.get('what', '')}): {job.get('status', '?')}; "
                     f"{job.get('images_per_s', '?')} img/s over its last logged window; log tail in train.txt.")
    for f in failures:
        lines.append(f'- **Failed or skipped**: {f}')
    return '\n'.join(lines) + '\n'


# --- orchestration -----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def plan_loop_runs(smoke: bool, batches: list[int], data: Path) -> list[list[str]]:
    """Arguments of each ``bench_train_loop.py`` run (see the module docstring, step 4)."""
    if smoke:
        tiny = ['--depth', '2', '--steps', '4', '--warmup', '1', '--log-every', '2']
        runs = [['--model', m, *tiny, '--batch', str(b)] for b in batches
                for m in ('vit_tiny_patch4_32', 'deepvit_tiny_patch4_32')]
        runs += [['--model', 'deepvit_tiny_patch4_32', '--depth', str(d), '--steps', '3', '--warmup', '1',
                  '--batch', str(batches[0]), '--grad-checkpointing', '--only-ours'] for d in (2, 4)]
        return runs + [['--model', 'deepvit_tiny_patch4_32', *tiny, '--batch', str(batches[0]), '--data', str(data),
                        '--only-ours']]
    runs = [['--model', m, '--depth', '16', '--batch', str(b), '--steps', '25', '--warmup', '5'] for b in batches
            for m in ('vit_16b_patch16_224', 'deepvit_16b_patch16_224')]
    runs += [['--model', m, '--depth', '32', '--batch', '128', '--steps', '20', '--warmup', '5']
             for m in ('vit_16b_patch16_224', 'deepvit_16b_patch16_224')]
    runs += [['--model', 'deepvit_16b_patch16_224', '--depth', str(d), '--batch', '128', '--steps', '12', '--warmup',
              '3', '--grad-checkpointing', '--only-ours'] for d in (32, 64)]
    return runs + [['--model', 'deepvit_16b_patch16_224', '--depth', '16', '--batch', '128', '--steps', '25',
                    '--warmup', '5', '--data', str(data), '--only-ours']]


def job_command(data: Path, work: Path, smoke: bool) -> list[str]:
    """DeepSpeed's launcher, one rank, on the generated shards: a short real run (40 steps; smoke: 4 at 32 px)."""
    model = ['--model.name', 'deepvit_tiny_patch4_32', '--depth', '2', '--img-size', '32', '--train.max_steps', '4',
             '--train.log_every', '2', '--collapse-images', '16'] if smoke else \
        ['--model.name', 'deepvit_16b_patch16_224', '--img-size', '224', '--train.max_steps', '40',
         '--train.log_every', '10', '--collapse-images', '64']
    return [sys.executable, '-m', 'deepspeed.launcher.runner', '--num_gpus', '1', '--master_port', str(_free_port()),
            str(ROOT / 'launch' / 'train.py'), '--deepspeed', str(ROOT / 'ds_configs' / 'zero2.json'),
            '--data.source', str(data), '--epochs', '1', '--warmup-epochs', '0', '--data.train_eval', '0',
            '--log.log_model', 'false', '--log.tracking_uri', f'sqlite:///{work / "mlflow.db"}',
            '--log.experiment', 'gpu-check', '--output-dir', str(work / f'train-{int(time.time())}'), *model]


def _parse_args(argv):
    p = argparse.ArgumentParser(prog='benchmarks/gpu_check.sh', description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=Path, default=Path(os.environ.get('OUT') or 'gpu-check'),
                   help='small reports (default $OUT, else ./gpu-check)')
    p.add_argument('--work', type=Path, default=Path('/tmp/deepvit-gpu-check'),
                   help='shards, checkpoints, the MLflow store and installed wheels (default /tmp/deepvit-gpu-check)')
    p.add_argument('--wheelhouse', type=Path, default=ROOT / 'wheelhouse',
                   help='wheels for an offline install (default ./wheelhouse; benchmarks/make_wheelhouse.sh)')
    p.add_argument('--batches', type=int, nargs='+', default=None,
                   help='micro-batches at 16 blocks (default 32 128 256; CPU smoke: 4 8)')
    p.add_argument('--budget-s', type=float, default=450.0, help='skip the remaining steps after this (default 450)')
    p.add_argument('--cpu-smoke', action='store_true', help='run every step on CPU at tiny sizes; GPU steps skipped')
    p.add_argument('--summary', type=Path, default=None, metavar='RESULTS.jsonl',
                   help='only print the summary table of a recorded gpu_check.jsonl')
    args = p.parse_args(argv)
    if args.batches is not None and any(b < 1 for b in args.batches):
        p.error(f'--batches must be positive integers, got {args.batches}')
    if args.budget_s <= 0:
        p.error(f'--budget-s must be positive, got {args.budget_s}')
    args.batches = args.batches or ([4, 8] if args.cpu_smoke else [32, 128, 256])
    return args


def read_results(path: Path) -> tuple[dict, list[dict], list[str], dict | None]:
    """(header, loop rows, failures, job) from a ``gpu_check.jsonl`` written by :func:`main`."""
    header, rows, failures, job = {}, [], [], None
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        kind = rec.pop('kind', 'loop')
        if kind == 'header':
            header = rec
        elif kind == 'failure':
            failures.append(rec['what'])
        elif kind == 'job':
            job = rec
        else:
            rows.append(rec)
    return header, rows, failures, job


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.summary:
        header, rows, failures, job = read_results(args.summary)
        print(summarize(rows, header=header, failures=failures, job=job), end='')
        return 0
    start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    results = args.out / 'gpu_check.jsonl'
    results.write_text('')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])))

    def record(**rec):
        with results.open('a') as f:
            f.write(json.dumps(rec) + '\n')

    def say(text):
        print(f'gpu_check [{time.monotonic() - start:5.0f} s]: {text}', flush=True)

    say('1/7 install check')
    installed = ensure_installed(args.wheelhouse, args.work / 'site', env)
    say(f'installed from {args.wheelhouse}: {", ".join(installed)}' if installed else 'everything needed is installed')
    say('2/7 device' + (' — skipped (--cpu-smoke)' if args.cpu_smoke else ''))
    probe = ('import json, torch; c = torch.cuda.is_available(); print(json.dumps({"cuda": c, "device_name": '
             'torch.cuda.get_device_name() if c else "cpu", "total_gib": torch.cuda.get_device_properties(0).'
             'total_memory / 2**30 if c else None, "torch": torch.__version__}))')
    device = json.loads(subprocess.run([sys.executable, '-c', probe], env=env, capture_output=True, text=True,
                                       check=True).stdout)
    if not args.cpu_smoke and not device['cuda']:
        raise CheckError('torch sees no CUDA device (run with --cpu-smoke to exercise the rest on CPU)')
    say('3/7 matmul peak')
    n, repeats = (1024, 3) if args.cpu_smoke else (8192, 10)
    peak_code = (f'import sys, json, torch; sys.path.insert(0, {str(ROOT / "benchmarks")!r}); '
                 f'from bench_train_loop import matmul_peak; c = torch.cuda.is_available() and not {args.cpu_smoke}; '
                 f'print(matmul_peak(torch.device("cuda" if c else "cpu"), torch.bfloat16 if c else torch.float32, '
                 f'n={n}, repeats={repeats}, number={1 if args.cpu_smoke else 20}))')
    peak = float(subprocess.run([sys.executable, '-c', peak_code], env=env, capture_output=True, text=True,
                                check=True).stdout.split()[-1])
    precision = 'fp32 (CPU)' if args.cpu_smoke else 'bf16'
    record(kind='header', cpu_smoke=args.cpu_smoke, device_name=device['device_name'], total_gib=device['total_gib'],
           torch=device['torch'], precision=precision, matmul_peak_flops=peak,
           matmul=f'{n}² {"fp32" if args.cpu_smoke else "bf16"}, fastest of {repeats}',
           when=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))
    say(f'matmul peak {peak / 1e12:.2f} TFLOP/s')
    failed = False
    say('4/7 data: generated JPEGs converted to shards')
    data = prepare_data(args.work / 'data', per_class=8 if args.cpu_smoke else 400, size=48 if args.cpu_smoke else 256,
                        env=env)
    runs = plan_loop_runs(args.cpu_smoke, args.batches, data)
    loop_json = args.work / 'loops.jsonl'
    loop_json.write_text('')
    for i, run in enumerate(runs, 1):
        what = ' '.join(run)
        if time.monotonic() - start > args.budget_s:
            record(kind='failure', what=f'skipped (budget of {args.budget_s:.0f} s spent): bench_train_loop {what}')
            continue
        say(f'5/7 training loop {i}/{len(runs)}: {what}')
        cmd = [sys.executable, str(ROOT / 'benchmarks' / 'bench_train_loop.py'), *run, '--json', str(loop_json)]
        if args.cpu_smoke:
            cmd += ['--cpu']
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode:
            failed = True
            tail = (r.stderr.strip().splitlines() or ['?'])[-1]
            record(kind='failure', what=f'bench_train_loop {what}: exit {r.returncode}: {tail}')
    with results.open('a') as f:
        f.write(loop_json.read_text())
    job = None
    if time.monotonic() - start > args.budget_s:
        record(kind='failure', what=f'skipped (budget of {args.budget_s:.0f} s spent): the real job')
    else:
        say('6/7 real job: launch/train.py under DeepSpeed\'s launcher on the generated shards')
        cmd = job_command(data, args.work, args.cpu_smoke)
        job_env = dict(env, CUDA_VISIBLE_DEVICES='') if args.cpu_smoke else env
        r = subprocess.run(cmd, env=job_env, capture_output=True, text=True, timeout=600, cwd=args.work)
        log = (r.stdout + r.stderr).replace('\r', '\n').splitlines()
        (args.out / 'train.txt').write_text('\n'.join(log[-60:]) + '\n')
        job = dict(what=' '.join(shlex.quote(c) for c in cmd[cmd.index('--model.name'):]),
                   status='finished' if r.returncode == 0 else f'exit {r.returncode}',
                   images_per_s=job_throughput(args.work / 'mlflow.db', env))
        record(kind='job', **job)
        failed |= r.returncode != 0
    say('7/7 summary')
    header, rows, failures, job = read_results(results)
    table = summarize(rows, header=header, failures=failures, job=job)
    (args.out / 'gpu_check.md').write_text(table)
    print(table, end='')
    return 1 if failed or failures else 0


def console_main(argv=None) -> int:
    try:
        return main(argv)
    except CheckError as err:
        print(f'gpu_check: error: {err}', file=sys.stderr)
        return 3


if __name__ == '__main__':
    sys.exit(console_main())
