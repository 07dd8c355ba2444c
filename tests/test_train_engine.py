"""The epoch loop and evaluation on a minimal engine: non-finite loss, stop requests, step budget, padding in eval."""
import math

import pytest
import torch
import torch.nn as nn

from deepvit.training.engine import NonFiniteLossError, StopRule, evaluate, train_one_epoch


class Engine(nn.Module):
    """The slice of DeepSpeedEngine the loop uses, over a plain module and optimizer (world size 1)."""

    def __init__(self, module, grad_accum=1):
        super().__init__()
        self.module = module
        self.optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        self.global_steps = 0
        self.micro_steps = 0
        self.grad_accum = grad_accum
        self.world_size = 1

    def forward(self, x):
        return self.module(x)

    def train_micro_batch_size_per_gpu(self):
        return 4

    def gradient_accumulation_steps(self):
        return self.grad_accum

    def is_gradient_accumulation_boundary(self):
        return (self.micro_steps + 1) % self.grad_accum == 0

    def backward(self, loss):
        loss.backward()

    def step(self):
        if self.is_gradient_accumulation_boundary():
            self.optimizer.step()
            self.optimizer.zero_grad()
            self.global_steps += 1
        self.micro_steps += 1

    def get_global_grad_norm(self):
        return 1.0


class Sched:
    def __init__(self):
        self.updates = []

    def step_update(self, num_updates):
        self.updates.append(num_updates)


def batches(n, bad_at=None):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        x = torch.randn(4, 3, generator=g)
        if i == bad_at:
            x[0, 0] = float('nan')
        out.append((x, torch.randint(0, 2, (4,), generator=g)))
    return out


def run(data, control=StopRule(), grad_accum=1, logs=None, log_every=2):
    engine = Engine(nn.Linear(3, 2), grad_accum)
    sched = Sched()
    result = train_one_epoch(engine, data, nn.CrossEntropyLoss(), device=torch.device('cpu'), dtype=torch.float32,
                             scheduler=sched, rule=control, log_every=log_every,
                             on_log=lambda m, s: (logs if logs is not None else []).append((s, m)))
    return result, engine, sched


def test_full_epoch_steps_schedule_and_logs():
    logs = []
    result, engine, sched = run(batches(5), logs=logs)
    assert (result.steps, result.batches, result.stopped) == (5, 5, False)
    assert sched.updates == [1, 2, 3, 4, 5]
    assert [s for s, _ in logs] == [2, 4, 5]  # every 2 steps, plus the epoch's tail
    assert set(logs[0][1]) == {'train/loss', 'train/lr', 'train/samples_per_sec', 'train/grad_norm'}
    assert math.isfinite(result.loss)


def test_an_epoch_is_whole_optimizer_steps():
    """7 micro-batches with accumulation 3: the trainer plans 2 steps per epoch and passes stop_batch=6, so 2 steps
    are made (was: the 7th micro-batch opened a window that the next epoch closed: one step more than planned)."""
    engine = Engine(nn.Linear(3, 2), grad_accum=3)
    for epoch in range(2):
        result = train_one_epoch(engine, batches(7), nn.CrossEntropyLoss(), device=torch.device('cpu'),
                                 dtype=torch.float32, scheduler=Sched(), stop_batch=6)
        assert (result.steps, result.batches) == (2, 6)
    assert engine.global_steps == 4 and engine.micro_steps == 12


def test_gradient_accumulation_counts_optimizer_steps():
    result, engine, sched = run(batches(6), grad_accum=3)
    assert (result.steps, result.batches, engine.global_steps) == (2, 6, 2)
    assert sched.updates == [3 // 3, 6 // 3]


def test_non_finite_loss_stops_with_clear_message():
    # the loss is read at log steps only: a NaN at step 3 is caught at step 4 (log_every 2), at 3 with log_every 1
    with pytest.raises(NonFiniteLossError, match=r'non-finite training loss \(nan\) in the 2 steps up to step 4'):
        run(batches(6, bad_at=2))
    with pytest.raises(NonFiniteLossError, match=r'non-finite training loss \(nan\) in the 1 steps up to step 3'):
        run(batches(6, bad_at=2), log_every=1)


def test_stop_request_and_step_budget():
    calls = []

    def stop():
        calls.append(1)
        return len(calls) >= 2

    # polled (and agreed on) at log steps 2 and 4 only; honoured at the second poll
    result, engine, _ = run(batches(6), control=StopRule(requested=stop))
    assert result.stopped and engine.global_steps == 4 and result.batches == 4 and len(calls) == 2
    result, engine, _ = run(batches(6), control=StopRule(max_steps=3))  # the budget is exact, off the cadence
    assert result.stopped and engine.global_steps == 3


def test_no_host_sync_between_log_steps(monkeypatch):
    """Losses stay tensors between log steps: one all-reduce (and one read-back) per log window, no per-step
    ``float(loss)``/``.item()``, and the epoch's mean loss equals the mean of every micro-batch loss."""
    import deepvit.training.engine as eng
    reductions, reads = [], []
    real_reduce = eng.all_reduce_sum
    monkeypatch.setattr(eng, 'all_reduce_sum', lambda v, d: reductions.append(1) or real_reduce(v, d))
    for name in ('item', '__float__'):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, _r=real: reads.append(1) or _r(self))
    losses = []
    criterion = nn.CrossEntropyLoss()

    def recording(logits, y):
        loss = criterion(logits, y)
        losses.append(loss.detach().clone())
        return loss
    engine = Engine(nn.Linear(3, 2))
    result = train_one_epoch(engine, batches(9), recording, device=torch.device('cpu'), dtype=torch.float32,
                             scheduler=Sched(), log_every=3)
    monkeypatch.undo()
    assert result.steps == 9 and len(reductions) == 3 and reads == []
    assert result.loss == pytest.approx(float(torch.stack(losses).mean()), rel=1e-6)


def test_evaluate_excludes_padding_and_counts_samples():
    model = nn.Linear(3, 5)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0., 1., 4., 3., 2.]))  # ranking: 2, 3, 4, 1, 0
    x = torch.zeros(4, 3)
    data = [(x, torch.tensor([2, 3, 0, -1])), (x, torch.tensor([-1, -1, -1, -1]))]
    m = evaluate(model, data, device=torch.device('cpu'), dtype=torch.float32).metrics
    assert m['val/num_samples'] == 3
    assert m['val/top1'] == pytest.approx(100 / 3, abs=5e-5)  # only label 2 is the argmax (to 1e-4 points)
    assert m['val/top5'] == pytest.approx(100.0)            # 5 classes: all in the top 5
    expected = nn.functional.cross_entropy(model(x[:3]), torch.tensor([2, 3, 0]))
    assert m['val/loss'] == pytest.approx(float(expected.detach()), rel=1e-6)


def test_evaluate_per_sample_correctness_marks_padding():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x = torch.randn(6, 3)
    labels = torch.tensor([0, 1, 1, 0, -1, -1])            # the last two are padding
    scored = evaluate(model, [(x[:3], labels[:3]), (x[3:], labels[3:])], device=torch.device('cpu'),
                      dtype=torch.float32)
    metrics, correct = scored.metrics, scored.correct
    expected = (model(x).argmax(1) == labels).to(torch.int8)
    expected[4:] = -1
    assert correct.dtype == torch.int8 and torch.equal(correct, expected)
    assert metrics['val/top1'] == pytest.approx(100 * float(expected[:4].float().mean()))


def test_cosine_regularizer_is_the_official_penalty_and_trains_through_the_maps():
    import timm
    import deepvit  # noqa: F401
    import torch.nn.functional as F
    from deepvit.training.regularizers import CosineRegularizer
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch4_32', depth=4, in_chans=1)
    reg = CosineRegularizer(model, weight=0.1, num_pairs=2)
    model(torch.randn(2, 1, 32, 32))
    maps = [blk.attn.attn_for_loss for blk in model.blocks[:3]]
    expected = 0.1 * (F.cosine_similarity(maps[0], maps[1], dim=1).mean()
                      + F.cosine_similarity(maps[1], maps[2], dim=1).mean()) / 2
    penalty = reg()
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-6)
    penalty.backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0      # the maps carry their graph
    assert model.blocks[3].attn.attn_for_loss is None                 # only the first num_pairs + 1 blocks keep maps
    with pytest.raises(ValueError, match='cosine_reg_blocks=4 needs 5 attention blocks'):
        CosineRegularizer(model, weight=0.1, num_pairs=4)


def test_checkpoint_history_keeps_the_newest_and_latest(tmp_path):
    """``train.checkpoint_hist`` (timm's --checkpoint-hist): the oldest checkpoints go, the newest N stay, the one
    ``latest`` names stays even when older, universal conversions are left alone (was: every epoch kept, ~0.8 GB
    each for a 48M-parameter model over a 300-epoch recipe)."""
    import os
    from deepvit.training.checkpoint import prune
    tags = ['epoch0001', 'epoch0002', 'step00000050', 'epoch0003', 'epoch0004']
    for i, tag in enumerate(tags + ['epoch0002_universal']):
        (tmp_path / tag).mkdir()
        (tmp_path / tag / 'rank0.pt').write_bytes(b'x')
        os.utime(tmp_path / tag, (1000 + i, 1000 + i))
    (tmp_path / 'latest').write_text('epoch0002')          # e.g. a run resumed from there
    assert prune(tmp_path, 2) == ['epoch0001', 'step00000050']
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == \
        ['epoch0002', 'epoch0002_universal', 'epoch0003', 'epoch0004']
    assert prune(tmp_path, 10) == []


def test_weights_that_do_not_fit_are_described_in_one_line():
    """Issue 22.5: eval-only with weights of another architecture named no mismatch (the message was cut off after
    PyTorch's first line); now the counts and one example of each kind."""
    import timm
    import deepvit  # noqa: F401
    from deepvit.training.evaluation import _misfit
    kw = dict(embed_dim=32, in_chans=1)
    model = timm.create_model('deepvit_tiny_patch4_32', depth=2, num_heads=2, **kw).state_dict()
    other = timm.create_model('deepvit_tiny_patch4_32', depth=3, num_heads=4, **kw).state_dict()
    text = _misfit(model, other)
    assert '18 tensor(s) in the weights the model lacks (e.g. blocks.2.norm1.weight)' in text
    assert 'shape mismatch(es) (e.g. blocks.0.attn.reattn.weight: weights (4, 4), model (2, 2))' in text
    assert _misfit(model, model) == '' and '\n' not in text


def test_deepspeed_throughput_timer_is_off_in_every_config(tmp_path):
    """Issue 21.4: DeepSpeed's throughput timer (on by default) synchronises the device in every forward and step.
    The shipped configs turn it off, and a config that says nothing gets it off; one that asks keeps it."""
    import json
    from pathlib import Path
    from deepspeed.utils.config import get_timers_config
    from deepvit.training.ds_config import resolve_ds_config
    shipped = sorted((Path(__file__).resolve().parents[1] / 'ds_configs').glob('*.json'))
    assert shipped
    for path in shipped:
        assert json.loads(path.read_text())['timers'] == {'throughput': {'enabled': False}}, path.name
        assert not get_timers_config(resolve_ds_config(str(path), 1).config).enabled
    bare = {'train_micro_batch_size_per_gpu': 4, 'zero_optimization': {'stage': 2}}
    for given, enabled in ((bare, False), ({**bare, 'timers': {'throughput': {'enabled': True}}}, True)):
        path = tmp_path / f'ds_{enabled}.json'
        path.write_text(json.dumps(given))
        assert get_timers_config(resolve_ds_config(str(path), 1).config).enabled is enabled


def test_a_damaged_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, capsys):
    """Issue 22.5: a truncated checkpoint file (a full disk) gave "PytorchStreamReader failed reading zip archive",
    naming no file, with the intact previous checkpoint on disk. The resume now checks the files first, says which
    is damaged and points `latest` at the newest intact checkpoint; with none intact it refuses in words."""
    import os
    import time
    from deepvit.training.checkpoint import damage
    from deepvit.training.config import ConfigError
    from deepvit.training.resume import _fall_back_from_damage
    ckpt = tmp_path / 'checkpoints'
    for i, tag in enumerate(('epoch0001', 'epoch0002', 'epoch0003')):
        (ckpt / tag).mkdir(parents=True)
        torch.save({'w': torch.randn(64, 64)}, ckpt / tag / 'mp_rank_00_model_states.pt')
        os.utime(ckpt / tag, (time.time() + i, time.time() + i))
    (ckpt / 'latest').write_text('epoch0003')
    assert _fall_back_from_damage(ckpt, rank=0) == 'epoch0003' and capsys.readouterr().out == ''   # all intact
    for tag, keep in (('epoch0003', 100), ('epoch0002', 0)):   # truncated; emptied
        f = ckpt / tag / 'mp_rank_00_model_states.pt'
        f.write_bytes(f.read_bytes()[:keep])
    assert 'epoch0003/mp_rank_00_model_states.pt is not a complete checkpoint file' in damage(ckpt / 'epoch0003')
    assert _fall_back_from_damage(ckpt, rank=0) == 'epoch0001'
    assert (ckpt / 'latest').read_text() == 'epoch0001' and (ckpt / 'epoch0003').is_dir()   # damaged one kept
    out = capsys.readouterr().out
    assert 'epoch0003: ' in out and 'epoch0002: ' in out and 'Resuming from the newest intact checkpoint, epoch0001' in out
    f = ckpt / 'epoch0001' / 'mp_rank_00_model_states.pt'
    f.write_bytes(f.read_bytes()[:-10])
    (ckpt / 'latest').write_text('epoch0003')
    with pytest.raises(ConfigError, match='no intact checkpoint in'):
        _fall_back_from_damage(ckpt, rank=0)


def test_one_visible_gpu_per_task_and_a_long_collective_timeout(monkeypatch):
    """Issue 21.8: `torch.cuda.set_device(local_rank)` failed where a scheduler shows each task one GPU; and ranks
    waited in collectives with DeepSpeed's 10-minute default while rank 0 converted or exported a checkpoint."""
    import datetime
    import deepspeed
    from deepvit.training import build
    chosen = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'set_device', chosen.append)
    for count, local_rank, index in ((1, 3, 0), (4, 3, 3)):
        monkeypatch.setattr(torch.cuda, 'device_count', lambda count=count: count)
        assert build.device_for(local_rank) == torch.device('cuda', index) and chosen[-1] == index
    calls = []
    monkeypatch.setattr(deepspeed, 'init_distributed', lambda **kw: calls.append(kw))
    monkeypatch.setattr(build, 'device_for', lambda local_rank: torch.device('cpu'))
    monkeypatch.setattr(build, 'unlink_shm_buffers', lambda: None)
    plan = type('P', (), {'rank': 0, 'local_rank': 0})()
    build.start_process_group(plan)
    assert calls[0]['timeout'] == build.PROCESS_GROUP_TIMEOUT >= datetime.timedelta(minutes=30)


SYNC_PROBE = r'''
import collections, json, os, sys, traceback
import torch, timm, deepspeed
import deepvit  # noqa: F401
from deepspeed.accelerator import get_accelerator
from deepvit.training.ds_config import resolve_ds_config
from deepvit.training.engine import train_one_epoch
os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=sys.argv[2], RANK='0', WORLD_SIZE='1', LOCAL_RANK='0')
cfg = resolve_ds_config(sys.argv[1], 1).config
cfg.update(train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=3)
deepspeed.init_distributed(verbose=False)
model = timm.create_model('deepvit_tiny_patch4_32', depth=2, embed_dim=32, num_heads=2)
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config=cfg)
g = torch.Generator().manual_seed(0)
data = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(12)]
reads = collections.Counter()    # (api, file, function) of every read-back of a tensor's value to the host
where = {'step': False}
def counting(name, real):
    def wrap(self, *args, **kwargs):
        frame = traceback.extract_stack(limit=2)[0]
        reads[f"{name}|{os.path.basename(frame.filename)}|{frame.name}|{'step' if where['step'] else 'loop'}"] += 1
        return real(self, *args, **kwargs)
    return wrap
for name in ('item', '__float__', '__bool__', 'tolist', 'cpu', 'numpy'):
    setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
syncs = []
acc = get_accelerator()
real_sync = acc.synchronize
acc.synchronize = lambda *a, **k: syncs.append(traceback.extract_stack(limit=2)[0].name) or real_sync(*a, **k)
real_step = engine.step
def step(*a, **k):
    where['step'] = True
    try:
        return real_step(*a, **k)
    finally:
        where['step'] = False
engine.step = step
class Sched:
    def step_update(self, num_updates): pass
result = train_one_epoch(engine, data, torch.nn.CrossEntropyLoss(), device=torch.device('cpu'), dtype=torch.float32,
                         scheduler=Sched(), log_every=1000)
print(json.dumps({'reads': reads, 'syncs': syncs, 'steps': result.steps}))
'''


@pytest.mark.slow  # DeepSpeed in a subprocess (~30 s)
def test_a_real_deepspeed_step_reads_nothing_back_per_micro_batch(tmp_path):
    """Issue 21.2 with the real engine (ZeRO-2 as shipped, world 1, 12 micro-batches, accumulation 3): the loop
    itself reads back one value per log window (the epoch's end here), nothing per micro-batch; no device
    synchronisation at all (DeepSpeed's throughput timer is off); DeepSpeed's own optimizer step reads the gradient
    norm back (its overflow/clipping check, ``stage_1_and_2.py``) only at the 4 accumulation boundaries, and
    torch's AdamW its CPU step counter (not a device read)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    from launching import free_port
    root = Path(__file__).resolve().parents[1]
    port = free_port()
    script = tmp_path / 'sync_probe.py'
    script.write_text(SYNC_PROBE)
    done = subprocess.run([sys.executable, str(script), str(root / 'ds_configs' / 'zero2.json'), str(port)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out['steps'] == 4 and out['syncs'] == []
    loop = {k: v for k, v in out['reads'].items() if k.endswith('|loop')}
    assert loop == {'tolist|engine.py|_sync_window|loop': 1, '__float__|engine.py|_log_window|loop': 1}, loop
    in_step = {k: v for k, v in out['reads'].items() if k.endswith('|step')}
    assert set(in_step) <= {'__bool__|utils.py|is_invalid_grad_norm|step', 'item|optimizer.py|_get_value|step'}, in_step
    assert all(v % 4 == 0 and v <= 8 for v in in_step.values()), in_step   # per optimizer step, never per micro-batch
