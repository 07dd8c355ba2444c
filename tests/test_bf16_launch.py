"""The bf16 lane on CPU (issue 21): every shipped DeepSpeed config asks for bf16, which a GPU run gets and a CPU run
does not (fp32 fallback, ``deepvit/training/ds_config.py``). ``DEEPVIT_CPU_BF16=1`` runs DeepSpeed's bf16 mode on
CPU ranks, so the code paths a first GPU run meets are exercised here: DeepSpeed's bf16 optimizer and its checkpoint
files (``bf16_zero_pp_rank_*``), a world-size change through the universal checkpoint, the fixed-Θ LayerNorm and
conv-stem variants in bf16, the probe, the fp32 export and an evaluation of it. Tiny models only: bf16 matmuls are
slow on CPUs without AVX512-BF16."""
import json
import re
import shutil

import pytest
import torch

from launching import client, final_metric, log_of, run_id, run_ok, weights

pytestmark = pytest.mark.slow  # real multi-process launches: not in the fast lane


@pytest.fixture(scope='module')
def bf16_env(env):
    return {**env, 'DEEPVIT_CPU_BF16': '1'}


def _assert_bf16_record(env, out, n_ranks):
    run = client(env).get_run(run_id(out))
    assert run.info.status == 'FINISHED' and run.data.params['precision'] == 'bf16'
    assert '| bf16 |' in log_of(out)
    parts = sorted(p.name for p in (out / 'checkpoints' / 'epoch0001').glob('bf16_zero_pp_rank_*'))
    assert len(parts) == n_ranks, parts          # DeepSpeed's bf16 optimizer state, one partition per rank
    exported = weights(out)
    floats = [t.dtype for t in exported.values() if t.is_floating_point() or t.dtype == torch.bfloat16]
    assert floats and set(floats) == {torch.float32}   # the export is fp32 (BatchNorm's counters stay int64)
    probe = run.data.metrics
    assert -1 <= probe['collapse/row_mean_adjacent_softmax'] <= 1 and 0 < probe['collapse/entropy_softmax'] <= 1
    return run


def test_bf16_zero2_fixed_theta_ln_trains_and_resumes_on_another_world_size(bf16_env, tmp_path):
    """2 ranks, ZeRO-2, bf16, Re-attention with LayerNorm and a fixed Θ (an fp32 buffer DeepSpeed's cast leaves;
    was: a dtype error), 2 epochs; then the epoch-1 checkpoint continued by 1 rank with accumulation 2 through
    DeepSpeed's universal checkpoint (was: the bf16 partition files went unseen and DeepSpeed refused the load)."""
    from launching import ROOT
    out = tmp_path / 'z2'
    fixed = ['--model.reattn_norm', 'ln', '--model.reattn_init', 'identity', '--model.reattn_theta', 'fixed']
    run_ok(bf16_env, out, *fixed, '--epochs', '2')
    _assert_bf16_record(bf16_env, out, 2)
    assert torch.equal(weights(out)['blocks.1.attn.reattn.weight'], torch.eye(2))   # Θ held at the identity
    (out / 'checkpoints' / 'latest').write_text('epoch0001')
    shutil.rmtree(out / 'checkpoints' / 'epoch0002')
    (out / 'model.safetensors').unlink()
    ds = tmp_path / 'zero2_accum2.json'
    ds.write_text(json.dumps({**json.loads((ROOT / 'ds_configs' / 'zero2.json').read_text()),
                              'gradient_accumulation_steps': 2}))
    line = re.compile(r'epoch 2/2 step (\d+) \| train loss ([\d.]+) \| val loss [\d.]+ top1 ([\d.]+)')
    (ref_step, ref_loss, ref_top1), = line.findall(log_of(out))   # the 2-rank run's epoch 2
    run_ok(bf16_env, out, *fixed, '--epochs', '2', '--resume', ds=str(ds), num_gpus=1)
    text = log_of(out)
    assert "world size 2 -> 1: resuming through DeepSpeed's universal checkpoint epoch0001_universal" in text
    (step, loss, top1), = line.findall(text)   # epoch 2 again, on 1 rank from the converted state
    assert step == ref_step == '44' and float(loss) == pytest.approx(float(ref_loss), abs=0.1)
    assert float(top1) == pytest.approx(float(ref_top1), abs=5) and (out / 'model.safetensors').is_file()
    assert client(bf16_env).get_run(run_id(out)).info.status == 'FINISHED'


def test_bf16_zero3_conv_stem_trains_and_its_export_evaluates(bf16_env, tmp_path):
    """1 rank, ZeRO-3, bf16, DeepViT with the convolutional stem (its BatchNorm got bf16 input with fp32 running
    statistics: was a dtype error), 1 epoch; then --eval-only on the fp32 export scores what training's final
    evaluation scored (both in bf16, one rank: the same numbers up to bf16 rounding)."""
    out = tmp_path / 'z3'
    run_ok(bf16_env, out, '--model.stem', 'conv', '--epochs', '1', ds='zero3.json', num_gpus=1)
    _assert_bf16_record(bf16_env, out, 1)
    assert any(k.startswith('patch_embed.stem.') for k in weights(out))
    ev = tmp_path / 'eval'
    run_ok(bf16_env, ev, '--model.stem', 'conv', '--eval-only', '--eval-weights', str(out / 'model.safetensors'),
           ds='zero3.json', num_gpus=1)
    c = client(bf16_env)
    exp = c.get_experiment_by_name('launch-tests')
    (run,) = [r for r in c.search_runs([exp.experiment_id], "tags.`deepvit.kind` = 'eval'")
              if r.data.params.get('eval.weights') == str(out / 'model.safetensors')]
    assert run.data.params['precision'] == 'bf16'
    assert run.data.metrics['val/top1'] == pytest.approx(final_metric(c, run_id(out), 'val/top1'), abs=1.0)
