"""Training configuration and DeepSpeed-config checks: precedence, spellings, and clear errors for bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepvit.training.config import INTERNAL, Config, ConfigError, build_parser, flatten, model_overrides, resolve
from deepvit.training.ds_config import DeepSpeedConfigError, resolve_ds_config

ROOT = Path(__file__).resolve().parents[1]
ZERO2 = str(ROOT / 'ds_configs' / 'zero2.json')


def parse(*argv):
    return resolve(build_parser().parse_args(['--deepspeed', ZERO2, *argv]))


def test_defaults_are_the_builtin_digits_job():
    cfg = parse()
    assert cfg.model.name == 'deepvit_tiny_patch4_32' and cfg.data.source == 'digits'
    assert cfg.resume is False and cfg.output_dir == 'outputs/run'


@pytest.mark.parametrize('argv, field, value', [
    (['--model.name', 'vit_tiny_patch4_32'], 'model.name', 'vit_tiny_patch4_32'),
    (['--data.source', '/shards'], 'data.source', '/shards'),
    (['--epochs', '3'], 'train.epochs', 3),
    (['--seed', '7'], 'train.seed', 7),
    (['--output-dir', 'o'], 'output_dir', 'o'),
    (['--output_dir=o'], 'output_dir', 'o'),
    (['--experiment', 'e'], 'log.experiment', 'e'),
    (['--run-name', 'r'], 'log.run_name', 'r'),
    (['--depth', '12'], 'model.depth', 12),
    (['--model.depth=12'], 'model.depth', 12),
    (['--embed-dim', '96'], 'model.embed_dim', 96),
    (['--num-heads', '6'], 'model.num_heads', 6),
    (['--reattn-norm', 'ln'], 'model.reattn_norm', 'ln'),
    (['--lr', '1e-3'], 'train.lr', 1e-3),
    (['--train.lr', '1e-3'], 'train.lr', 1e-3),
    (['--warmup-epochs', '1'], 'train.warmup_epochs', 1.0),
    (['--smoothing', '0.2'], 'train.label_smoothing', 0.2),
    (['--drop-path', '0.1'], 'model.drop_path_rate', 0.1),
    (['--workers', '3'], 'data.num_workers', 3),
    (['--data.scale', '[0.2,1]'], 'data.scale', (0.2, 1.0)),
    (['--resume'], 'resume', True),
    (['--eval-only', '--eval-weights', 'w.safetensors'], 'eval_weights', 'w.safetensors'),
])
def test_each_documented_spelling_sets_its_field_and_nothing_else(argv, field, value):
    default, cfg = flatten(parse()), flatten(parse(*argv))
    assert cfg[field] == value
    changed = {k for k in cfg if cfg[k] != default[k]}
    assert changed == {field} | ({'eval_only'} if '--eval-only' in argv else set())


def test_a_bool_flag_alone_means_true():
    cfg = parse('--resume', '--depth', '3', '--train.compile')   # the next flag is not taken as the value
    assert (cfg.resume, cfg.model.depth, cfg.train.compile) == (True, 3, True)
    assert parse('--resume', 'false').resume is False and parse('--resume=true').resume is True


@pytest.mark.parametrize('argv, words', [
    (['--model', 'vit_tiny_patch4_32'], 'unrecognized arguments: --model vit_tiny_patch4_32'),   # now --model.name
    (['--data', '/shards'], 'unrecognized arguments: --data /shards'),                        # now --data.source
    (['--depht', '4'], 'unrecognized arguments: --depht 4'),
    (['--dept', '4'], 'unrecognized arguments: --dept 4'),              # no abbreviations of --depth
])
def test_an_unknown_flag_is_a_one_line_error_naming_it(argv, words):
    with pytest.raises(ConfigError) as err:
        parse(*argv)
    assert words in str(err.value) and '\n' not in str(err.value)


def test_config_file_and_flags_apply_in_the_order_given(tmp_path):
    """Documented precedence: defaults < the arguments in the order given. Flags after --config override the file;
    the file overrides the flags before it, and only the fields it names."""
    cfg_file = tmp_path / 'c.yaml'
    cfg_file.write_text('model:\n  depth: 4\n  reattn_blocks: 2\ntrain:\n  epochs: 9\n  lr: 0.01\n')
    cfg = parse('--config', str(cfg_file), '--epochs', '5')
    assert (cfg.model.depth, cfg.train.lr, cfg.train.epochs) == (4, 0.01, 5)
    assert model_overrides(cfg.model)['reattn_blocks'] == 2
    cfg = parse('--epochs', '5', '--seed', '3', f'--config={cfg_file}', '--lr', '0.02')
    assert (cfg.train.epochs, cfg.train.seed, cfg.train.lr) == (9, 3, 0.02)


@pytest.mark.parametrize('text, words', [
    ('model:\n  depht: 4\n', ["Group 'model' does not accept option 'depht'"]),
    ('optim:\n  lr: 1\n', ["'optim.lr' is not accepted"]),
    ('train:\n  epochs: many\n', ['train.epochs', 'many']),
    ('train: [1, 2]\n', ['train must be a mapping of its fields, got [1, 2]']),
    ('model: {depth: 4\n', ['Problems parsing config', "expected ',' or '}'"]),
])
def test_a_bad_config_file_is_a_one_line_error_naming_the_field(tmp_path, text, words):
    cfg_file = tmp_path / 'bad.yaml'
    cfg_file.write_text(text)
    with pytest.raises(ConfigError) as err:
        parse('--config', str(cfg_file))
    assert all(w in str(err.value) for w in words) and '\n' not in str(err.value), str(err.value)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match='config.*File does not exist.*nope.yaml'):
        parse('--config', str(tmp_path / 'nope.yaml'))


@pytest.mark.parametrize('argv, needle', [
    (['--epochs', '0'], 'train.epochs=0 is out of range: must be >= 1'),
    (['--epochs', '2', '--warmup-epochs', '2'], 'train.warmup_epochs=2 is not shorter than train.epochs=2'),
    (['--lr', 'fast'], 'Parser key "train.lr": Expected a <class \'float\'>. Got value: fast'),
    (['--epochs', '2.5'], 'Parser key "train.epochs": Expected a <class \'int\'>. Got value: 2.5'),
    (['--depth', 'none'], 'Parser key "model.depth": Does not validate against any of the Union subtypes'),
    (['--smoothing', '1.5'], 'train.label_smoothing=1.5 is out of range: must be in [0, 1)'),
    (['--data.scale', '0.08,1'], 'Parser key "data.scale": Expected a <class \'tuple\'>. Got value: 0.08,1'),
    (['--collapse-every', '-1'], 'train.collapse_every=-1 is out of range: must be >= 0'),
    (['--collapse-threshold', '0'], 'train.collapse_threshold=0.0 is out of range: must be in (0, 1]'),
    (['--collapse-threshold', '1.2'], 'train.collapse_threshold=1.2 is out of range: must be in (0, 1]'),
    (['--collapse-permutations', '0'], 'train.collapse_permutations=0 is out of range: must be >= 1'),
    (['--cosine-reg', '-0.1'], 'train.cosine_reg=-0.1 is out of range: must be >= 0'),
])
def test_bad_values_name_the_field(argv, needle):
    with pytest.raises(ConfigError) as err:
        parse(*argv)
    assert needle in str(err.value) and argv[-1] in str(err.value) and '\n' not in str(err.value)


def test_default_warmup_fits_a_short_run():
    """Issue 22.7: `--epochs 1`, the first smoke test anyone types, was refused by the default 2-epoch warm-up.
    The default is 2 epochs, or a quarter of a run of 2 epochs or fewer; an explicit warm-up is checked as before
    (the refusal above now needs --warmup-epochs 2 to happen)."""
    assert parse().train.warmup_epochs == 2.0
    assert parse('--epochs', '3').train.warmup_epochs == 2.0
    assert parse('--epochs', '1').train.warmup_epochs == 0.25 and parse('--epochs', '2').train.warmup_epochs == 0.5
    assert parse('--epochs', '1', '--warmup-epochs', '0').train.warmup_epochs == 0


def test_none_is_a_value_where_a_field_takes_it():
    """``--reattn-norm none`` is the no-norm DeepViT (the sweep's reattn_nonorm remedy), not "unset": the old
    parser read every 'none' as null and built the variant's BatchNorm instead. ``null`` unsets an optional field
    (``--depth none`` is refused above)."""
    cfg = parse('--reattn-norm', 'none', '--reattn-blocks', 'none', '--depth', 'null', '--max-steps', 'null')
    assert model_overrides(cfg.model) == dict(drop_path_rate=0.0, reattn_norm='none', reattn_blocks='none')
    assert cfg.train.max_steps is None


def field_docs():
    """Each config field's docstring, read from the source independently of the parser."""
    import ast
    import inspect
    from deepvit.training import config
    docs = {}
    for cls, prefix in ((config.ModelConfig, 'model.'), (config.DataConfig, 'data.'), (config.TrainConfig, 'train.'),
                        (config.LogConfig, 'log.'), (config.Config, '')):
        body = ast.parse(inspect.getsource(cls)).body[0].body
        for stmt, nxt in zip(body, body[1:]):
            if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[prefix + stmt.target.id] = ' '.join(nxt.value.value.split())
    return docs


def test_help_documents_every_user_field_with_its_explanation_and_default(capsys):
    """Every field a user types is in --help with its docstring and default; what the launcher (--local_rank) and
    the sweep (log.sweep_id, ...) set is accepted but not listed."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    defaults, docs = flatten(Config()), field_docs()
    assert set(docs) == set(defaults) and set(INTERNAL) < set(docs)   # every field has an explanation
    for key in set(docs) - set(INTERNAL):
        assert f'--{key}' in text
        assert docs[key] in text, key
        shown = 'null' if defaults[key] is None else defaults[key]
        assert f'default: {shown})' in text, key
    for hidden in ('--local_rank', '--local-rank', '--log.sweep_id', '--sweep-id', '--log.sweep_point',
                   '--sweep-point', '--log.parent_run_id', '--parent-run-id', *(docs[k] for k in INTERNAL)):
        assert hidden not in text, hidden
    args = build_parser().parse_args(['--deepspeed', ZERO2, '--local_rank', '1', '--sweep-id', 's', '--sweep-point',
                                      'p', '--parent-run-id', 'r'])
    assert (args.local_rank, args.log.sweep_id, args.log.sweep_point, args.log.parent_run_id) == (1, 's', 'p', 'r')


def test_print_config_prints_the_resolved_yaml(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(['--deepspeed', ZERO2, '--depth', '8', '--lr', '0.5', '--print_config'])
    printed = __import__('yaml').safe_load(capsys.readouterr().out)
    assert exit_.value.code == 0 and printed['model']['depth'] == 8 and printed['train']['lr'] == 0.5


def test_flatten_uses_dotted_keys():
    flat = flatten(parse('--depth', '8'))
    assert flat['model.depth'] == 8 and flat['train.seed'] == 0 and flat['log.experiment'] == 'deepvit'


# ---------------------------------------------------------------- DeepSpeed config

def write(tmp_path, obj, name='ds.json'):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


@pytest.mark.parametrize('name', ['zero1.json', 'zero2.json', 'zero3.json', 'zero3_offload.json'])
@pytest.mark.parametrize('world', [1, 2, 8])
def test_shipped_configs_valid_for_any_world_size(name, world):
    ds = resolve_ds_config(str(ROOT / 'ds_configs' / name), world, bf16_native=False)
    assert ds.global_batch_size == ds.micro_batch_size * ds.grad_accum_steps * world
    assert ds.precision == 'fp32' and ds.config['bf16']['enabled'] is False
    assert ds.config['gradient_clipping'] == 1.0 and 'steps_per_print' in ds.config
    assert ds.zero_stage == int(name[4])
    raw = json.loads((ROOT / 'ds_configs' / name).read_text())
    assert 'auto' not in json.dumps(raw) and 'train_batch_size' not in raw


def test_bf16_where_native():
    ds = resolve_ds_config(ZERO2, 2, bf16_native=True)
    assert ds.precision == 'bf16' and ds.config['bf16']['enabled'] is True


@pytest.mark.parametrize('content, needle', [
    ('{"train_micro_batch_size_per_gpu": 8,', 'not valid JSON at line 1'),
    ('[1, 2]', 'expected a JSON object'),
    ({'train_micro_batch_size_per_gpu': 'auto'}, 'train_micro_batch_size_per_gpu is "auto"'),
    ({'train_batch_size': 32, 'zero_optimization': {'stage': 2, 'reduce_bucket_size': 'auto'}},
     'zero_optimization.reduce_bucket_size is "auto"'),
    ({'train_batch_size': 30, 'train_micro_batch_size_per_gpu': 4, 'gradient_accumulation_steps': 2},
     'train_batch_size=30 != train_micro_batch_size_per_gpu=4 × gradient_accumulation_steps=2 × world_size=2'),
    ({'train_batch_size': 10, 'train_micro_batch_size_per_gpu': 4}, 'not divisible'),
    ({'train_micro_batch_size_per_gpu': 0}, 'train_micro_batch_size_per_gpu must be a positive integer, got 0'),
    ({'train_micro_batch_size_per_gpu': 8, 'optimizer': {'type': 'AdamW'}}, 'remove the "optimizer" section'),
    ({'train_micro_batch_size_per_gpu': 8, 'zero_optimization': {'stage': 4}}, 'stage must be 0, 1, 2 or 3, got 4'),
    ({'zero_optimization': {'stage': 2}}, 'give train_micro_batch_size_per_gpu'),
    ({'train_micro_batch_size_per_gpu': 8, 'fp16': {'enabled': True}},     # was: trained as fp32, exit 0
     'fp16.enabled is true but there is no CUDA device'),
])
def test_bad_deepspeed_configs(tmp_path, content, needle):
    path = write(tmp_path, content)
    with pytest.raises(DeepSpeedConfigError) as err:
        resolve_ds_config(path, 2, bf16_native=False)
    assert needle in str(err.value) and path in str(err.value)


def test_missing_deepspeed_config(tmp_path):
    with pytest.raises(DeepSpeedConfigError, match='config file not found'):
        resolve_ds_config(str(tmp_path / 'nope.json'), 1)
    with pytest.raises(DeepSpeedConfigError, match='is a directory, not a JSON file'):  # was: "not found"
        resolve_ds_config(str(tmp_path), 1)


# ---------------------------------------------------------------- the launch script refuses bad input early

def load_launch_main():
    import importlib.util
    spec = importlib.util.spec_from_file_location('launch_train', ROOT / 'launch' / 'train.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope='module')
def data_cache(tmp_path_factory):
    return tmp_path_factory.mktemp('cache')


@pytest.fixture
def launch_env(tmp_path, monkeypatch, data_cache):
    monkeypatch.setenv('DEEPVIT_DATA_CACHE', str(data_cache))
    monkeypatch.setenv('MLFLOW_TRACKING_URI', f"sqlite:///{tmp_path}/m.db")
    monkeypatch.delenv('RANK', raising=False)
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize('argv, needle', [
    (['--deepspeed', 'missing.json'], 'config file not found: missing.json'),
    (['--deepspeed', ZERO2, '--model.name', 'no_such_net'], "model.name: unknown model 'no_such_net'"),
    (['--deepspeed', ZERO2, '--model.name', 'resnet50'], "model.name: 'resnet50' is a timm ResNet, which this trainer "
                                                    "cannot drive"),
    (['--deepspeed', ZERO2, '--embed-dim', '30'], 'embed_dim must be divisible by num_heads=4, got embed_dim=30'),
    (['--deepspeed', ZERO2, '--reattn-norm', 'group'], "reattn_norm must be one of ('bn', 'ln', 'none'), got 'group'"),
    (['--deepspeed', ZERO2, '--depth', '2', '--reattn-blocks', '3'], 'reattn_blocks must be between 0 and depth=2'),
    (['--deepspeed', ZERO2, '--data.source', '/nonexistent/shards'], '/nonexistent/shards'),
    (['--deepspeed', ZERO2, '--data.source', 'digits', '--train-split', 'test'], "'test'"),
    (['--deepspeed', ZERO2, '--collapse-images', '400'],
     "train.collapse_images=400: the collapse probe needs that many validation images, but split 'val' of 'digits' "
     "has 360"),
    (['--deepspeed', ZERO2, '--collapse-images', '4'],
     "train.collapse_images=4: the collapse probe's bootstrap intervals need at least 8 images"),
    (['--deepspeed', ZERO2, '--train.collapse_bootstrap', '10'], 'train.collapse_bootstrap=10 is out of range: must be >= 100'),
    (['--deepspeed', ZERO2, '--data.holdout', '1437'],
     "data.holdout=1437: must be in [1, 1436], fewer than the 1437 samples of split 'train'"),
    (['--deepspeed', ZERO2, '--data.val_split', 'train', '--data.holdout', '10'],
     "data.holdout=10: the validation split 'train' is the split the holdout is taken from, so they would overlap"),
    (['--deepspeed', ZERO2, '--collapse-images', '8', '--train.collapse_cka_examples', '600'],
     "train.collapse_cka_examples=600: the probe holds only 8 images × 65 tokens = 520 examples"),
    (['--deepspeed', ZERO2, '--model.name', 'vit_tiny_patch4_32', '--reattn-norm', 'ln'], 'reattn_norm'),
    (['--deepspeed', ZERO2, '--reattn-theta', 'fixed'], 'reattn_theta'),
    (['--deepspeed', ZERO2, '--depth', '2', '--cosine-reg', '0.1', '--train.cosine_reg_blocks', '2'],
     'train.cosine_reg_blocks=2 needs 3 attention blocks, the model has 2'),   # was: found after the model was built
])
def test_launch_script_user_errors(launch_env, capsys, argv, needle):
    assert load_launch_main()(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.startswith('launch/train.py: error: ')
    assert len(err.strip().splitlines()) == 1
    assert not (launch_env / 'm.db').exists()  # nothing started: no MLflow run, no process group


def test_a_bug_keeps_its_traceback(launch_env, monkeypatch):
    """Only the project's own error types become one-line messages: any other exception (here a ValueError from a
    broken data layer) propagates with its traceback instead of posing as a usage error."""
    from deepvit.training import preflight as trainer_preflight

    def broken(*args, **kwargs):
        raise ValueError('an internal bug, not the user\'s input')
    monkeypatch.setattr(trainer_preflight, 'preflight', broken)
    with pytest.raises(ValueError, match='an internal bug'):
        load_launch_main()(['--deepspeed', ZERO2])


@pytest.mark.slow  # starts and kills holder processes (4.5 s)
def test_one_job_per_output_folder_and_a_dead_holder_blocks_nothing(launch_env, capsys):
    """Issue 22.2: a second job on a folder a live job holds is refused in one line naming the holder (host, pid,
    run id); once the holder is killed (-9, no clean-up) the lock is free again: a crash never blocks its resume."""
    import signal
    import subprocess
    import sys
    from deepvit.training.joblock import acquire
    out = launch_env / 'run'
    out.mkdir()
    holder = subprocess.Popen([sys.executable, '-c', (
        'import sys, time, pathlib; from deepvit.training.joblock import acquire; '
        f'lock = acquire(pathlib.Path({str(out)!r})); lock.note(run_id="abc123"); print("held", flush=True); '
        'time.sleep(120)')], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        assert load_launch_main()(['--deepspeed', ZERO2, '--output-dir', str(out)]) == 2
        err = capsys.readouterr().err
        assert f'is in use by another job (host ' in err and f'pid {holder.pid}' in err and 'MLflow run abc123' in err
        assert len(err.strip().splitlines()) == 1
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    acquire(out).release()          # the kernel dropped the dead holder's lock


def test_eval_only_reads_a_dataset_without_a_train_split(launch_env):
    """Issue 22.7: eval-only on a val-only dataset (the README's ImageNet example) failed with "split='train' not
    in _info.json" unless --data.train_split val was added; it reads the scored split alone."""
    import json
    import shutil
    from deepvit.data.builtin import digits_dir
    from deepvit.training.config import Config
    from deepvit.training.preflight import preflight
    src, val_only = digits_dir(), launch_env / 'val_only'
    val_only.mkdir()
    info = json.loads((src / '_info.json').read_text())
    info['splits'] = {'val': info['splits']['val']}
    (val_only / '_info.json').write_text(json.dumps(info))
    for name in info['splits']['val']['filenames']:
        shutil.copy(src / name, val_only / name)
    import torch
    from safetensors.torch import save_file   # preflight reads the weights' format marker (issue 18)
    save_file({'w': torch.zeros(1)}, str(launch_env / 'w.safetensors'), metadata={'deepvit.weights_format': '2'})
    cfg = Config()
    cfg.data.source, cfg.eval_only, cfg.eval_weights = str(val_only), True, str(launch_env / 'w.safetensors')
    cfg.output_dir = str(launch_env / 'eval')
    plan = preflight(cfg, ZERO2)
    assert plan.val_shards.num_samples == 360 and plan.num_classes == 10
    cfg.eval_only = False
    with pytest.raises(ConfigError, match="'train'"):     # training still needs its split
        preflight(cfg, ZERO2)


def test_a_resume_must_match_the_run_it_continues(launch_env, capsys):
    """Issue 22.1: a 4-head run resumed with --num-heads 8 trained silently (the weights have the same shapes) and a
    changed --lr was accepted while the param kept the old value. A resume is compared with the run's config.json:
    architecture, data, optimisation and probe fields must match (one paragraph naming each old and new value);
    the run's length, cadences and workers may change."""
    import json
    from deepvit.training.config import flatten
    out = launch_env / 'run'
    first = parse('--num-heads', '4', '--lr', '1e-3', '--output-dir', str(out))
    out.mkdir()
    (out / 'config.json').write_text(json.dumps(flatten(first)))
    argv = ['--deepspeed', ZERO2, '--output-dir', str(out), '--resume']
    assert load_launch_main()(argv + ['--num-heads', '8', '--lr', '2e-3']) == 2
    err = capsys.readouterr().err
    assert "with a different config: model.num_heads: 4 -> 8; train.lr: 0.001 -> 0.002." in err
    assert len(err.strip().splitlines()) == 1
    from deepvit.training.preflight import preflight
    cfg = parse('--num-heads', '4', '--lr', '1e-3', '--output-dir', str(out), '--resume', '--epochs', '30',
                '--data.num_workers', '2')
    assert preflight(cfg, ZERO2).cfg.train.epochs == 30    # the length and the workers may change


def test_existing_run_is_never_overwritten(launch_env, capsys):
    out = launch_env / 'run'
    (out / 'checkpoints').mkdir(parents=True)
    (out / 'checkpoints' / 'latest').write_text('epoch0001')
    assert load_launch_main()(['--deepspeed', ZERO2, '--output-dir', str(out)]) == 2
    assert 'already holds a run; pass --resume' in capsys.readouterr().err
    assert (out / 'checkpoints' / 'latest').read_text() == 'epoch0001'


def test_inconsistent_batch_for_world_size(launch_env, capsys, monkeypatch):
    path = write(launch_env, {'train_batch_size': 64, 'train_micro_batch_size_per_gpu': 64,
                              'gradient_accumulation_steps': 1})
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '0')
    assert load_launch_main()(['--deepspeed', path]) == 2
    assert 'world_size=2' in capsys.readouterr().err


@pytest.mark.slow  # the launch script in a subprocess
def test_user_error_from_the_command_line_has_no_traceback(tmp_path):
    env = dict(os.environ, DEEPVIT_DATA_CACHE=str(tmp_path / 'cache'))
    proc = subprocess.run([sys.executable, str(ROOT / 'launch' / 'train.py'), '--deepspeed', str(tmp_path / 'x.json')],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"launch/train.py: error: --deepspeed: config file not found: {tmp_path / 'x.json'}"


@pytest.mark.parametrize('path', sorted((ROOT / 'launch' / 'configs').glob('*.yaml')), ids=lambda p: p.name)
def test_shipped_yaml_configs_load(path):
    cfg = parse('--config', str(path))
    assert cfg.train.epochs >= 1


def test_any_registered_deepvit_model_is_accepted(launch_env):
    """A variant the user registers in timm's registry (here a 3-block DeepViT under a new name) trains like ours;
    the old trainer accepted only the names of deepvit.models.list_variants()."""
    import timm
    from timm.models import build_model_with_cfg, register_model
    from deepvit.models import DeepVisionTransformer
    from deepvit.training.preflight import preflight

    name = 'user_deepvit_3b_patch4_32'
    if name not in timm.list_models():
        @register_model
        def user_deepvit_3b_patch4_32(pretrained=False, **kwargs):
            defaults = dict(img_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=2, reattn_blocks='all')
            return build_model_with_cfg(DeepVisionTransformer, name, pretrained, **{**defaults, **kwargs})
    plan = preflight(parse('--model.name', name, '--output-dir', str(launch_env / 'u')), ZERO2)
    assert plan.model_kwargs['num_classes'] == 10 and plan.model_kwargs['img_size'] == 32
    model = timm.create_model(name, **plan.model_kwargs)
    assert model.model_cfg['depth'] == 3 and model.family == 'deepvit'


def test_a_bad_value_is_named_before_the_output_dir_is_touched(launch_env, capsys):
    """A bad model value is the error even when the output dir holds a run, and a refused job leaves no empty output
    dir (was: 'already holds a run' hid the bad value, and the folder was created before the model was checked)."""
    held = launch_env / 'held'
    (held / 'checkpoints').mkdir(parents=True)
    (held / 'checkpoints' / 'latest').write_text('epoch0001')
    assert load_launch_main()(['--deepspeed', ZERO2, '--output-dir', str(held), '--reattn-norm', 'foo']) == 2
    assert "reattn_norm must be one of ('bn', 'ln', 'none'), got 'foo'" in capsys.readouterr().err
    fresh = launch_env / 'fresh' / 'run'
    assert load_launch_main()(['--deepspeed', ZERO2, '--output-dir', str(fresh), '--depth', '0']) == 2
    assert 'depth' in capsys.readouterr().err and not (launch_env / 'fresh').exists()


def test_fixed_compute_budget_gives_every_depth_the_same_pflop_within_one_step():
    """The planner: equal PFLOP (±1 step) across depths from the models' own MAC counts, the schedule's length and
    epochs derived from it; a budget that buys no more than the warm-up is refused in words."""
    import timm
    from deepvit.models import gmacs_per_image
    from deepvit.training.budget import pflop_per_step, plan_budget
    budget, batch, per_epoch = 0.05, 64, 22
    spent = {}
    for depth in (2, 4, 8, 16):
        model = timm.create_model('vit_tiny_patch4_32', depth=depth, in_chans=1)
        gmacs = gmacs_per_image(model)
        plan = plan_budget(budget, gmacs, batch, per_epoch, warmup_epochs=1)
        step = pflop_per_step(gmacs, batch)
        assert budget - step < plan.pflop <= budget and plan.pflop == pytest.approx(plan.steps * step)
        assert plan.epochs == -(-plan.steps // per_epoch) and plan.warmup_steps == per_epoch
        spent[depth] = plan
    assert spent[2].steps > 6 * spent[16].steps            # the shallow model gets ~8x the steps of the deep one
    assert pflop_per_step(1.0, 1000) == pytest.approx(6e-3)  # 6 FLOPs per MAC: 6 × 1e9 × 1000 = 6e12 FLOP
    with pytest.raises(ConfigError, match=r'train.budget_pflop=3e-05: buys \d+ optimizer steps .*not more than '
                                          r'the 22-step warm-up'):
        plan_budget(3e-5, 0.0065, batch, per_epoch, warmup_epochs=1)
    with pytest.raises(ConfigError, match='must be > 0'):
        plan_budget(0, 0.01, batch, per_epoch, warmup_epochs=0)


def test_loader_workers_default_from_the_cores_per_rank(launch_env, monkeypatch):
    """Issue 21.4: ``data.num_workers`` unset becomes the rank's cores less one (1..16; one shard per global worker
    when shard lengths are unknown), resolved before the run is recorded; a given number is kept."""
    from deepvit.data.plan import default_num_workers
    from deepvit.ranks import cores_per_rank
    from deepvit.training.preflight import preflight
    assert [default_num_workers(c) for c in (1, 2, 3, 9, 64)] == [1, 1, 2, 8, 16]
    assert default_num_workers(32, world_size=2, num_shards=6) == 3 and default_num_workers(32, 4, 2) == 1
    monkeypatch.setattr('os.sched_getaffinity', lambda pid: set(range(24)))
    monkeypatch.setenv('LOCAL_SIZE', '4')                 # DeepSpeed's launcher: 4 ranks share the 24 cores
    assert cores_per_rank() == 6
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')           # torchrun's name wins
    assert cores_per_rank() == 12
    assert parse('--output-dir', str(launch_env / 'a')).data.num_workers is None
    assert preflight(parse('--output-dir', str(launch_env / 'a')), ZERO2).cfg.data.num_workers == 11
    assert preflight(parse('--output-dir', str(launch_env / 'b'), '--data.num_workers', '0'), ZERO2).cfg.data.num_workers == 0
