"""The training configuration: a typed schema, YAML files, command-line overrides, validation and flattening.

Precedence: built-in defaults < ``--config FILE.yaml`` (nested sections) < command-line flags. Every field has a
dotted flag (``--model.depth 8``) and, where the name is unique across sections, a short one (``--depth 8``,
``--embed-dim 96``, ``--lr 1e-3``); plus the spellings users know: ``--model NAME``, ``--data SRC``,
``--output-dir DIR``, ``--experiment NAME``, ``--resume``. Unknown fields are errors, in files and on the command line.
"""
import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union, get_args, get_origin, get_type_hints

from ..collapse.paper import DEFAULT_SIMILARITY_THRESHOLD

import yaml


class ConfigError(ValueError):
    """A user error in the configuration: the message names the field (or file) and the value."""


@dataclass
class ModelConfig:
    """Which registered model to build and the fields to override (``None``: the variant's own value)."""
    name: str = 'deepvit_tiny_patch4_32'
    depth: Optional[int] = None
    embed_dim: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    patch_size: Optional[int] = None
    img_size: Optional[int] = None
    in_chans: Optional[int] = None       # None: from the data (1 for gray data such as digits, else 3)
    num_classes: Optional[int] = None    # None: from the data's class list
    drop_path_rate: float = 0.0          # top of timm's linear stochastic-depth ramp; ImageNet recipe: 0.2
    reattn_blocks: Optional[str] = None  # 'all', 'none', k (last k blocks) or 'i,j,...' (block indices)
    reattn_norm: Optional[str] = None    # 'bn' | 'ln' | 'none'
    reattn_init: Optional[str] = None    # 'random' | 'identity'
    reattn_theta: Optional[str] = None   # 'learned' | 'fixed' (Θ held at the identity: the BatchNorm-only control)
    init_values: Optional[float] = None  # CaiT LayerScale init (layerscale_* default: CaiT's depth rule; 0: off)
    talkinghead_blocks: Optional[str] = None  # talking-heads blocks: 'all', 'none', k or 'i,j,...'
    talkinghead_init: Optional[str] = None    # 'identity' | 'trunc_normal' (timm's CaiT init)
    stem: Optional[str] = None           # 'patch' | 'conv'


@dataclass
class DataConfig:
    """Where the shards are and how images become tensors (timm's ``create_transform`` options)."""
    source: str = 'digits'               # 'digits' (built-in), a directory with _info.json, a brace pattern or URL
    train_split: str = 'train'
    val_split: str = 'val'
    num_workers: int = 1
    aa: Optional[str] = None             # RandAugment policy, e.g. 'rand-m9-mstd0.5-inc1' (official recipe)
    reprob: float = 0.0                  # random-erasing probability (official: 0.25)
    hflip: float = 0.0                   # 0 for the digits default (a mirrored digit is another glyph); ImageNet: 0.5
    scale: Tuple[float, float] = (0.5, 1.0)   # RandomResizedCrop area range (ImageNet recipe: 0.08, 1.0)
    ratio: Tuple[float, float] = (0.75, 1.3333333333333333)
    interpolation: str = 'bicubic'
    crop_pct: Optional[float] = None     # None: the model's pretrained_cfg value


@dataclass
class TrainConfig:
    """Optimisation recipe (timm's optimizer / scheduler / mixup), run length and logging cadence.

    The defaults train the built-in ``digits`` job (a few minutes on 2 CPU cores); the official DeepViT ImageNet
    recipe is ``launch/configs/imagenet.yaml``.
    """
    epochs: int = 24                     # ImageNet recipe: 300
    lr: float = 3.2e-2                   # base lr at a global batch of 512 (DeiT rule: × batch/512 → 2e-3 at the
    #                                      digits job's batch 32); ImageNet recipe: 5e-4
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: float = 2.0           # ImageNet recipe: 5
    weight_decay: float = 0.05
    opt: str = 'adamw'
    opt_eps: float = 1e-8
    sched: str = 'cosine'
    label_smoothing: float = 0.1
    mixup: float = 0.0                   # Mixup alpha; ImageNet recipe: 0.8
    cutmix: float = 0.0                  # CutMix alpha; ImageNet recipe: 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    seed: int = 0
    max_steps: Optional[int] = None      # stop after this many optimizer steps (smoke tests, benchmarks)
    log_every: int = 10                  # optimizer steps between train/* metrics
    collapse_images: int = 256           # fixed validation images of the collapse probe (the first of the split)
    collapse_every: int = 12             # epochs between collapse probes (also at step 0 and at the end; 0: only
    #                                      those two); 12 = 3 probes in the 24-epoch digits job (README: its cost)
    collapse_threshold: float = DEFAULT_SIMILARITY_THRESHOLD  # similar-block threshold, paper and calibrated (0.9, Fig. 3)
    collapse_permutations: int = 2       # token permutations averaged in the calibrated metric's chance null
    cosine_reg: float = 0.0              # weight of the official DeepViT cosine regulariser (official: 0.1; 0: off)
    cosine_reg_blocks: int = 2           # n: consecutive-map cosines of the first n+1 blocks (official n_comn=2)
    grad_checkpointing: bool = False     # recompute each block's activations in backward (timm's
    #                                      set_grad_checkpointing; BatchNorm statistics kept exact): less memory, more time
    compile: bool = False                # torch.compile the model's forward (in place; probes run eager); ZeRO 0-2


@dataclass
class LogConfig:
    """MLflow tracking (see docs/mlflow_schema.md)."""
    experiment: str = 'deepvit'
    run_name: Optional[str] = None
    tracking_uri: Optional[str] = None   # None: $MLFLOW_TRACKING_URI, else sqlite:///<abs path of ./mlflow.db>
    sweep_id: Optional[str] = None
    sweep_point: Optional[str] = None
    parent_run_id: Optional[str] = None
    system_metrics_interval: float = 10.0  # s between MLflow system-metric samples (CPU, memory, GPU), rank 0; 0: off
    log_model: bool = True               # log the exported weights as an MLflow model (false: very large models)


@dataclass
class Config:
    """The whole job. ``output_dir`` holds checkpoints and the exported weights; ``resume`` continues from there."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    output_dir: str = 'outputs/run'
    resume: bool = False
    eval_only: bool = False              # score weights on data.val_split, no training (DeiT's --eval, timm's validate.py)
    eval_weights: Optional[str] = None   # with eval_only: a .safetensors export, a checkpoints/ folder or a run's output_dir


SECTIONS = ('model', 'data', 'train', 'log')
# Spellings users know from timm / DeiT / HF scripts → dotted field.
ALIASES = {
    'model': 'model.name',
    'data': 'data.source',
    'epochs': 'train.epochs',
    'seed': 'train.seed',
    'output-dir': 'output_dir',
    'experiment': 'log.experiment',
    'run-name': 'log.run_name',
    'resume': 'resume',
    'smoothing': 'train.label_smoothing',
    'drop-path': 'model.drop_path_rate',
    'workers': 'data.num_workers',
}


def _fields(obj_type) -> Dict[str, Any]:
    hints = get_type_hints(obj_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(obj_type)}


def field_types() -> Dict[str, Any]:
    """Every leaf field as ``{'model.depth': Optional[int], ..., 'output_dir': str}``."""
    out = {}
    top = _fields(Config)
    for name, tp in top.items():
        if name in SECTIONS:
            for sub, sub_tp in _fields(tp).items():
                out[f'{name}.{sub}'] = sub_tp
        else:
            out[name] = tp
    return out


def _base_type(tp):
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def parse_value(key: str, tp, raw: Any) -> Any:
    """Convert a YAML or command-line value to the field's type. Raises ConfigError naming the field."""
    base, optional = _base_type(tp)
    if raw is None or (optional and isinstance(raw, str) and raw.lower() in ('none', 'null')):
        if optional:
            return None
        raise ConfigError(f"{key} may not be empty")
    try:
        if base is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ('1', 'true', 'yes', 'on'):
                return True
            if str(raw).lower() in ('0', 'false', 'no', 'off'):
                return False
            raise ValueError
        if base is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(raw)
        if base is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if get_origin(base) is tuple:
            items = raw.split(',') if isinstance(raw, str) else list(raw)
            elem = get_args(base)
            if len(items) != len(elem):
                raise ValueError
            return tuple(t(v) for t, v in zip(elem, items))
        if base is str:
            if isinstance(raw, (list, tuple)):
                return ','.join(str(v) for v in raw)
            return str(raw)
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{key} must be {_type_name(tp)}, got {raw!r}")


def _type_name(tp) -> str:
    base, optional = _base_type(tp)
    name = {int: 'an integer', float: 'a number', bool: 'true or false', str: 'a string'}.get(base)
    if name is None and get_origin(base) is tuple:
        name = f'{len(get_args(base))} comma-separated numbers'
    return name + (' or none' if optional else '')


def _set(cfg: Config, key: str, value: Any) -> None:
    if '.' in key:
        section, name = key.split('.', 1)
        setattr(getattr(cfg, section), name, value)
    else:
        setattr(cfg, key, value)


def load_yaml(path: str) -> Dict[str, Any]:
    """Read a config file into ``{dotted key: raw value}``. Raises ConfigError for a missing/bad file or unknown key."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of sections, got {type(data).__name__}")
    types = field_types()
    flat = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"--config {path}: section {key!r} must be a mapping, got {value!r}")
            for sub, sub_value in value.items():
                flat[f'{key}.{sub}'] = sub_value
        else:
            flat[key] = value
    for key in flat:
        if key not in types:
            raise ConfigError(f"--config {path}: unknown field {key!r} (known: {', '.join(sorted(types))})")
    return flat


def build_parser() -> argparse.ArgumentParser:
    """The launch script's parser: ``--deepspeed``, ``--local_rank``, ``--config`` and one flag per config field."""
    parser = argparse.ArgumentParser(
        prog='launch/train.py',
        description='Train a ViT / DeepViT with DeepSpeed ZeRO; every run is recorded in MLflow.\n'
                    'Run through DeepSpeed\'s launcher: deepspeed launch/train.py --deepspeed ds_configs/zero2.json',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument('--deepspeed', metavar='PATH', required=True,
                        help='DeepSpeed JSON config (ZeRO stage, micro-batch, accumulation, precision, clipping)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=-1,
                        help='set by the DeepSpeed launcher; LOCAL_RANK from the environment wins')
    parser.add_argument('--config', metavar='FILE.yaml', help='YAML file with model/data/train/log sections')
    defaults = flatten(Config())
    types = field_types()
    reverse = {v: k for k, v in ALIASES.items()}
    short_count: Dict[str, int] = {}
    for key in types:
        short = key.split('.')[-1].replace('_', '-')
        short_count[short] = short_count.get(short, 0) + 1
    for key, tp in types.items():
        flags = [f'--{key}']
        short = key.split('.')[-1].replace('_', '-')
        if key in reverse:
            flags.append(f'--{reverse[key]}')
        elif short_count[short] == 1 and short not in ALIASES and f'--{short}' not in flags:
            flags.append(f'--{short}')
        base, _ = _base_type(tp)
        help_text = f"{_type_name(tp)} (default: {defaults[key]!r})"
        if base is bool:
            parser.add_argument(*flags, dest=key, nargs='?', const='true', metavar='BOOL', help=help_text)
        else:
            parser.add_argument(*flags, dest=key, metavar=key.split('.')[-1].upper(), help=help_text)
    return parser


def resolve(args: argparse.Namespace) -> Config:
    """Defaults < ``--config`` file < command-line flags, converted and validated. Raises ConfigError."""
    cfg = Config()
    types = field_types()
    layered: Dict[str, Any] = {}
    if getattr(args, 'config', None):
        layered.update(load_yaml(args.config))
    for key in types:
        if hasattr(args, key):
            layered[key] = getattr(args, key)
    for key, raw in layered.items():
        _set(cfg, key, parse_value(key, types[key], raw))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Range checks that need no model or data. Raises ConfigError naming the field and value."""
    checks = [
        ('train.epochs', cfg.train.epochs, cfg.train.epochs >= 1),
        ('train.lr', cfg.train.lr, cfg.train.lr > 0),
        ('train.min_lr', cfg.train.min_lr, cfg.train.min_lr >= 0),
        ('train.warmup_epochs', cfg.train.warmup_epochs, cfg.train.warmup_epochs >= 0),
        ('train.weight_decay', cfg.train.weight_decay, cfg.train.weight_decay >= 0),
        ('train.label_smoothing', cfg.train.label_smoothing, 0 <= cfg.train.label_smoothing < 1),
        ('train.mixup', cfg.train.mixup, cfg.train.mixup >= 0),
        ('train.cutmix', cfg.train.cutmix, cfg.train.cutmix >= 0),
        ('train.mixup_prob', cfg.train.mixup_prob, 0 <= cfg.train.mixup_prob <= 1),
        ('train.max_steps', cfg.train.max_steps, cfg.train.max_steps is None or cfg.train.max_steps >= 1),
        ('train.log_every', cfg.train.log_every, cfg.train.log_every >= 1),
        ('train.collapse_images', cfg.train.collapse_images, cfg.train.collapse_images >= 1),
        ('train.collapse_every', cfg.train.collapse_every, cfg.train.collapse_every >= 0),
        ('train.collapse_threshold', cfg.train.collapse_threshold, 0 < cfg.train.collapse_threshold <= 1),
        ('train.collapse_permutations', cfg.train.collapse_permutations, cfg.train.collapse_permutations >= 1),
        ('train.cosine_reg', cfg.train.cosine_reg, cfg.train.cosine_reg >= 0),
        ('train.cosine_reg_blocks', cfg.train.cosine_reg_blocks, cfg.train.cosine_reg_blocks >= 1),
        ('data.num_workers', cfg.data.num_workers, cfg.data.num_workers >= 0),
        ('data.reprob', cfg.data.reprob, 0 <= cfg.data.reprob <= 1),
        ('data.hflip', cfg.data.hflip, 0 <= cfg.data.hflip <= 1),
        ('model.drop_path_rate', cfg.model.drop_path_rate, 0 <= cfg.model.drop_path_rate < 1),
        ('log.system_metrics_interval', cfg.log.system_metrics_interval, cfg.log.system_metrics_interval >= 0),
    ]
    for key, value, ok in checks:
        if not ok:
            raise ConfigError(f"{key} is out of range: {value!r}")
    if cfg.train.warmup_epochs >= cfg.train.epochs:
        raise ConfigError(f"train.warmup_epochs={cfg.train.warmup_epochs:g} is not shorter than train.epochs="
                          f"{cfg.train.epochs}: the learning rate would rise for the whole run and never decay; "
                          f"lower --warmup-epochs (e.g. 0) or train longer")


def model_overrides(cfg: ModelConfig) -> Dict[str, Any]:
    """``timm.create_model`` keyword arguments: the non-``None`` model fields except ``name``."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == 'name' or value is None:
            continue
        if f.name in ('reattn_blocks', 'talkinghead_blocks'):
            value = _parse_blocks(f'model.{f.name}', value)
        out[f.name] = value
    return out


def _parse_blocks(key: str, value: str) -> Union[str, int, List[int]]:
    text = str(value).strip()
    if text in ('all', 'none'):
        return text
    try:
        if ',' in text:
            return [int(v) for v in text.split(',') if v.strip()]
        return int(text)
    except ValueError:
        raise ConfigError(f"{key} must be 'all', 'none', an int or a comma list, got {value!r}") from None


def flatten(obj: Any, prefix: str = '') -> Dict[str, Any]:
    """Nested dataclasses / dicts → ``{'model.depth': 8, ...}`` (lists and tuples kept as values)."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    out = {}
    for key, value in obj.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            out.update(flatten(value, prefix=f'{name}.'))
        else:
            out[name] = value
    return out


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, loadable with ``--config``."""
    return yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(cfg))), sort_keys=False)
