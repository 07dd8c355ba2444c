"""Step options: activation checkpointing (the same step with and without, BatchNorm included) and torch.compile."""
import pytest
import torch

import timm
import deepvit  # noqa: F401
from deepvit.models.checkpointing import recomputing


def _step(model, x, y):
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _buffers(model):
    return {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize('name, kwargs', [
    ('deepvit_tiny_patch4_32', {}),                          # Re-attention with BatchNorm (folded path)
    ('deepvit_tiny_patch4_32', {'reattn_norm': 'ln'}),
    ('vit_tiny_patch4_32', {'drop_path_rate': 0.2}),          # drop path: the RNG replayed by the recomputation
    ('talkinghead_tiny_patch4_32', {}),
    ('layerscale_tiny_patch4_32', {}),
])
def test_checkpointed_step_equals_the_plain_step(name, kwargs):
    torch.manual_seed(0)
    plain = timm.create_model(name, depth=3, **kwargs)
    ckpt = timm.create_model(name, depth=3, **kwargs)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.set_grad_checkpointing(True)
    plain.train(), ckpt.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    calls = []
    for block in ckpt.blocks:  # record each run of a block's forward (module hooks do not fire in a recomputation)
        block.forward = lambda x, _f=block.forward, **kw: calls.append(recomputing()) or _f(x, **kw)
    torch.manual_seed(1)
    loss_a, grads_a = _step(plain, x, y)
    torch.manual_seed(1)
    loss_b, grads_b = _step(ckpt, x, y)
    assert calls == [False] * 3 + [True] * 3   # each block ran twice: forward, then the recomputation in backward
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == len(list(plain.parameters()))
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-5, atol=1e-6, msg=k)
    ba, bb = _buffers(plain), _buffers(ckpt)
    for k in ba:  # BatchNorm running statistics and num_batches_tracked: updated once, as without checkpointing
        torch.testing.assert_close(ba[k], bb[k], msg=k)


def test_unfolded_batchnorm_path_is_also_updated_once():
    torch.manual_seed(0)
    plain = timm.create_model('deepvit_tiny_patch4_32', depth=2)
    ckpt = timm.create_model('deepvit_tiny_patch4_32', depth=2)
    ckpt.load_state_dict(plain.state_dict())
    for m in (plain, ckpt):
        for mod in m.modules():
            if hasattr(mod, 'fold_norm'):
                mod.fold_norm = False
    ckpt.set_grad_checkpointing(True)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    _step(plain, x, y), _step(ckpt, x, y)
    for k, v in _buffers(plain).items():
        torch.testing.assert_close(v, _buffers(ckpt)[k], msg=k)


def test_checkpointing_is_off_in_eval_and_under_no_grad():
    model = timm.create_model('deepvit_tiny_patch4_32', depth=2)
    model.set_grad_checkpointing(True)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_the_probe_runs_a_compiled_model_eagerly_and_restores_it():
    from types import SimpleNamespace

    from deepvit.training.collapse_report import CollapseProbe, eager_forward
    from deepvit.training.config import TrainConfig
    torch.manual_seed(0)
    model = timm.create_model('deepvit_tiny_patch4_32', depth=2).eval()
    images = torch.randn(8, 3, 32, 32)
    logged, eager_during_probe = [], []

    def chunks():   # called by the probe inside its forward context: record which forward the model has then
        eager_during_probe.append(model.__dict__.get('_compiled_call_impl') is None)
        return iter([images])

    tracker = SimpleNamespace(log_metrics=lambda m, s: logged.append((s, m)), log_dict=lambda d, f: logged.append(f))
    probe = CollapseProbe(chunks, TrainConfig(collapse_images=8, collapse_bootstrap=100), tracker)
    reference = probe(model, 0).summary()
    model.compile(backend='eager')  # dynamo tracing without inductor's code generation (fast on CPU)
    compiled = model.__dict__['_compiled_call_impl']
    assert compiled is not None
    assert probe(model, 1).summary() == reference
    assert eager_during_probe == [True, True]                       # the compiled model was probed eagerly
    assert model.__dict__['_compiled_call_impl'] is compiled       # compiled again after the probe
    assert 'collapse/profiles/step_00000001.json' in logged and logged[0][0] == 0
    with eager_forward(torch.nn.Linear(2, 2)):                       # an uncompiled module: nothing to do
        pass


@pytest.mark.slow  # the launch script in a subprocess (~3.5 s each)
@pytest.mark.parametrize('flags, message', [
    (['--train.compile', 'true', '--deepspeed', 'ds_configs/zero3.json'], 'train.compile=true needs ZeRO stage 0-2'),
    (['--train.compile', 'true', '--cosine-reg', '0.1'], 'train.compile=true with train.cosine_reg'),
])
def test_step_options_a_setup_cannot_use_are_refused_before_training(flags, message, tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    if '--deepspeed' not in flags:
        flags = flags + ['--deepspeed', 'ds_configs/zero2.json']
    res = subprocess.run([sys.executable, 'launch/train.py', *flags, '--output-dir', str(tmp_path / 'o')], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and message in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / 'o' / 'checkpoints').exists()


@pytest.mark.slow  # inductor generates and compiles C++ for the CPU (~1 min)
def test_compiled_deepvit_training_step_is_one_graph_with_the_eager_loss_gradients_and_statistics():
    """Issue 21: ``torch.compile`` with the real inductor backend traces a DeepViT training step (Re-attention with
    the folded BatchNorm, a ``torch.library`` custom op) as one graph with no break, and gives eager's loss, every
    parameter's gradient and the BatchNorm running statistics. Was: 11 graphs, a break in every Re-attention block
    (the autograd Function's backward called ``torch.autograd.grad``)."""
    import copy
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = timm.create_model('deepvit_tiny_patch4_32', depth=2, embed_dim=32, num_heads=2).train()
    compiled, probe = copy.deepcopy(eager), copy.deepcopy(eager)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    explained = torch._dynamo.explain(lambda x: torch.nn.functional.cross_entropy(probe(x), y))(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    compiled.compile(backend='inductor')
    for _ in range(2):   # the second step runs the compiled graph with the updated statistics
        loss_e, grads_e = _step(eager, x, y)
        loss_c, grads_c = _step(compiled, x, y)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        assert grads_c.keys() == grads_e.keys() and any('reattn.weight' in n for n in grads_e)
        # fp32 rounding of inductor's fused kernels: up to ~3e-6 absolute measured, with the largest gradient entry
        # ~2 (a sum over positions such as patch_embed.proj.bias keeps that absolute noise at a small value)
        top = max(g.abs().max().item() for g in grads_e.values())
        for n in grads_e:
            torch.testing.assert_close(grads_c[n], grads_e[n], rtol=1e-4, atol=1e-5 * top, msg=n)
    buffers_c = _buffers(compiled)
    for n, b in _buffers(eager).items():
        torch.testing.assert_close(buffers_c[n], b, rtol=1e-5, atol=1e-7, msg=n)
