"""The training configuration: the typed schema and its checks; parsing is jsonargparse's.

Over 400 lines because each field carries its docstring: that text is the field's ``--help``.

`jsonargparse <https://jsonargparse.readthedocs.io>`_ (the library behind Lightning's CLI) turns the dataclasses
below into the command line: one dotted flag per field (``--model.depth 8``), ``--config FILE.yaml`` with nested
sections, unknown fields refused (in files and on the command line), each field's docstring as its ``--help`` text,
and ``--print_config`` for the resolved configuration. Chosen over simple-parsing for its YAML config files with
per-key errors, its ``--print_config`` and its dataclass support without a base class.

Precedence: built-in defaults < ``--config FILE.yaml`` < command-line flags, in the order given.

What the library does not do, kept here: the short spellings users know from timm / DeiT scripts (``--depth 8``,
``--embed-dim 96``, ``--model NAME``, ``--data SRC``, ``--output-dir DIR``, ``--resume`` without a value,
``--data.scale 0.08,1``) are rewritten to the dotted flags before parsing (:func:`normalise_argv`); range checks live
in the dataclasses (``__post_init__``); every error is one line naming the field and the value (:class:`ConfigError`).
"""
import dataclasses
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union, get_args, get_origin, get_type_hints

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

from ..collapse.paper import DEFAULT_SIMILARITY_THRESHOLD
from ..collapse.probe import MIN_PROBE_IMAGES

set_parsing_settings(docstring_parse_attribute_docstrings=True)  # a field's docstring is its --help text


class ConfigError(ValueError):
    """A user error in the configuration: the message names the field (or file) and the value."""


def _check(section: str, obj, rules: Dict[str, Tuple[bool, str]]) -> None:
    """Raise ConfigError for the first field whose rule ``(ok, allowed)`` is false:
    ``'train.epochs=0 is out of range: must be >= 1'``."""
    for name, (ok, allowed) in rules.items():
        if not ok:
            raise ConfigError(f"{section}.{name}={getattr(obj, name)!r} is out of range: must be {allowed}")


@dataclass
class ModelConfig:
    """Which registered timm model to build and the fields to override (``None``: the variant's own value)."""
    name: str = 'deepvit_tiny_patch4_32'
    """registered timm model: a ViT / DeepViT / remedy variant of deepvit.models, or any timm VisionTransformer"""
    depth: Optional[int] = None
    """number of transformer blocks"""
    embed_dim: Optional[int] = None
    """token width"""
    num_heads: Optional[int] = None
    """attention heads (embed_dim must be divisible by it)"""
    mlp_ratio: Optional[float] = None
    """MLP hidden width / embed_dim"""
    patch_size: Optional[int] = None
    """patch side in pixels"""
    img_size: Optional[int] = None
    """input side in pixels"""
    in_chans: Optional[int] = None
    """input channels; null: from the data (1 for gray data such as digits, else 3)"""
    num_classes: Optional[int] = None
    """classifier outputs; null: from the data's class list"""
    drop_path_rate: float = 0.0
    """top of timm's linear stochastic-depth ramp; ImageNet recipe: 0.2"""
    reattn_blocks: Optional[Union[int, str]] = None
    """Re-attention blocks: 'all', 'none', k (the last k blocks) or 'i,j,...' (block indices)"""
    reattn_norm: Optional[str] = None
    """norm after the head mixing: 'bn' (the paper's), 'ln' or 'none'"""
    reattn_init: Optional[str] = None
    """initial Θ: 'random' (the official 1×1 conv's) or 'identity'"""
    reattn_theta: Optional[str] = None
    """'learned' or 'fixed' (Θ held at the identity: the BatchNorm-only control)"""
    init_values: Optional[float] = None
    """CaiT LayerScale init (layerscale_* default: CaiT's depth rule; 0: off)"""
    talkinghead_blocks: Optional[Union[int, str]] = None
    """talking-heads blocks: 'all', 'none', k or 'i,j,...'"""
    talkinghead_init: Optional[str] = None
    """'identity' or 'trunc_normal' (timm's CaiT init)"""
    residual_scale: Optional[Union[float, str]] = None
    """fixed multiplier of every residual branch: 'none', 'depth' (residual_alpha/sqrt(depth)) or a number > 0"""
    residual_alpha: Optional[float] = None
    """alpha of residual_scale 'depth' (null: 1)"""
    stem: Optional[str] = None
    """'patch' (one strided conv) or 'conv' (a convolutional stem)"""

    def __post_init__(self):
        _check('model', self, {'drop_path_rate': (0 <= self.drop_path_rate < 1, 'in [0, 1)')})


@dataclass
class DataConfig:
    """Where the shards are and how images become tensors (timm's ``create_transform`` options)."""
    source: str = 'digits'
    """'digits' (built in), a directory with _info.json, a brace pattern or a URL of tar shards"""
    train_split: str = 'train'
    """split trained on"""
    val_split: str = 'val'
    """split scored and probed (the test split: read for the final figure, never for a selection)"""
    holdout: int = 0
    """training samples held out for selection (learning rate, epochs, depth), scored every epoch as holdout/*:
    the last samples of every train shard in proportion to its length, the same for every seed (0: none)"""
    train_eval: int = 512
    """training samples scored every epoch in eval mode (no augmentation) as train_eval/*, to tell optimisation from
    overfitting: the first samples of every train shard in proportion to its length (samples trained on, the same
    for every seed); the whole train split when it is smaller; 0: off"""
    num_workers: Optional[int] = None
    """loader worker processes per rank; null: the rank's CPU cores less one, from 1 to 16 (the resolved number is
    recorded with the run)"""
    aa: Optional[str] = None
    """RandAugment policy, e.g. 'rand-m9-mstd0.5-inc1' (official recipe)"""
    reprob: float = 0.0
    """random-erasing probability (official: 0.25)"""
    hflip: float = 0.0
    """horizontal-flip probability: 0 for the digits default (a mirrored digit is another glyph); ImageNet: 0.5"""
    scale: Tuple[float, float] = (0.5, 1.0)
    """RandomResizedCrop area range (ImageNet recipe: 0.08, 1.0)"""
    ratio: Tuple[float, float] = (0.75, 1.3333333333333333)
    """RandomResizedCrop aspect-ratio range"""
    interpolation: str = 'bicubic'
    """resize interpolation"""
    crop_pct: Optional[float] = None
    """centre-crop fraction at evaluation; null: the model's pretrained_cfg value"""

    def __post_init__(self):
        _check('data', self, {'num_workers': (self.num_workers is None or self.num_workers >= 0, '>= 0 or null'),
                              'reprob': (0 <= self.reprob <= 1, 'in [0, 1]'), 'hflip': (0 <= self.hflip <= 1, 'in [0, 1]'),
                              'holdout': (self.holdout >= 0, '>= 0'), 'train_eval': (self.train_eval >= 0, '>= 0')})
        if self.holdout and self.val_split == self.train_split:
            raise ConfigError(f"data.holdout={self.holdout}: the validation split {self.val_split!r} is the split the "
                              f"holdout is taken from, so they would overlap; score another split")


@dataclass
class TrainConfig:
    """Optimisation recipe (timm's optimizer / scheduler / mixup), run length and logging cadence.

    The defaults train the built-in ``digits`` job (a few minutes on 2 CPU cores); the official DeepViT ImageNet
    recipe is ``launch/configs/imagenet.yaml``.
    """
    epochs: int = 24
    """epochs to train (ImageNet recipe: 300)"""
    lr: float = 3.2e-2
    """base learning rate at a global batch of 512, scaled linearly with the real global batch (DeiT's rule: 2e-3
    at the digits job's batch 32); ImageNet recipe: 5e-4"""
    min_lr: float = 1e-5
    """learning rate at the end of the cosine schedule"""
    warmup_lr: float = 1e-6
    """learning rate at the start of the warm-up"""
    warmup_epochs: Optional[float] = None
    """linear warm-up length (ImageNet recipe: 5); must be shorter than epochs; null: 2, or a quarter of the run
    for runs of 2 epochs or fewer (so a 1-epoch smoke test runs)"""
    weight_decay: float = 0.05
    """AdamW weight decay"""
    opt: str = 'adamw'
    """timm optimizer name"""
    opt_eps: float = 1e-8
    """optimizer epsilon"""
    sched: str = 'cosine'
    """timm scheduler name"""
    label_smoothing: float = 0.1
    """label smoothing of the cross-entropy"""
    mixup: float = 0.0
    """Mixup alpha; ImageNet recipe: 0.8"""
    cutmix: float = 0.0
    """CutMix alpha; ImageNet recipe: 1.0"""
    mixup_prob: float = 1.0
    """probability of mixing a batch"""
    mixup_switch_prob: float = 0.5
    """probability of CutMix instead of Mixup when both are on"""
    seed: int = 0
    """seed of the model init, data order and augmentation (paired across families)"""
    budget_pflop: Optional[float] = None
    """fixed-compute run: total training PFLOP (6 × MACs per image × images seen); the run trains the steps it buys
    (every depth the same compute, to within one step) and the cosine spans them; train.epochs is then derived"""
    max_steps: Optional[int] = None
    """stop after this many optimizer steps (smoke tests, benchmarks)"""
    log_every: int = 10
    """optimizer steps between train/* metrics"""
    checkpoint_hist: int = 10
    """checkpoints kept in output_dir/checkpoints, the newest (timm's --checkpoint-hist); 0: every one"""
    collapse_images: int = 256
    """fixed validation images of the collapse probe (the first of the split)"""
    collapse_every: int = 12
    """epochs between collapse probes (also at step 0 and at the end; 0: only those two); 12 = 3 probes in the
    24-epoch digits job"""
    collapse_threshold: float = DEFAULT_SIMILARITY_THRESHOLD
    """similar-block threshold of the paper's and the calibrated metric (0.9, paper Fig. 3)"""
    collapse_permutations: int = 2
    """token permutations averaged in the calibrated metrics' chance null"""
    collapse_bootstrap: int = 200
    """bootstrap replicates over probe images for every collapse summary's 95 % interval (>= 100)"""
    collapse_cka_examples: Optional[int] = None
    """(image, token) examples of the probe's debiased CKA between blocks (null: 1024 or all the probe holds)"""
    cosine_reg: float = 0.0
    """weight of the official DeepViT cosine regulariser (official: 0.1; 0: off)"""
    cosine_reg_blocks: int = 2
    """n: consecutive-map cosines of the first n+1 blocks (official n_comn=2)"""
    grad_checkpointing: bool = False
    """recompute each block's activations in backward (timm's set_grad_checkpointing; BatchNorm statistics kept
    exact): less memory, more time"""
    compile: bool = False
    """torch.compile the model's forward (in place; probes run eager); ZeRO stages 0-2"""

    def __post_init__(self):
        if self.collapse_images < MIN_PROBE_IMAGES:
            raise ConfigError(f"train.collapse_images={self.collapse_images}: the collapse probe's bootstrap "
                              f"intervals need at least {MIN_PROBE_IMAGES} images")
        _check('train', self, {
            'epochs': (self.epochs >= 1, '>= 1'), 'lr': (self.lr > 0, '> 0'), 'min_lr': (self.min_lr >= 0, '>= 0'),
            'warmup_epochs': (self.warmup_epochs is None or self.warmup_epochs >= 0, 'null or >= 0'), 'weight_decay': (self.weight_decay >= 0, '>= 0'),
            'label_smoothing': (0 <= self.label_smoothing < 1, 'in [0, 1)'), 'mixup': (self.mixup >= 0, '>= 0'),
            'cutmix': (self.cutmix >= 0, '>= 0'), 'mixup_prob': (0 <= self.mixup_prob <= 1, 'in [0, 1]'),
            'max_steps': (self.max_steps is None or self.max_steps >= 1, 'null or >= 1'),
            'budget_pflop': (self.budget_pflop is None or self.budget_pflop > 0, 'null or > 0'),
            'log_every': (self.log_every >= 1, '>= 1'), 'checkpoint_hist': (self.checkpoint_hist >= 0, '>= 0'),
            'collapse_bootstrap': (self.collapse_bootstrap >= 100, '>= 100 (percentile intervals need them)'),
            'collapse_cka_examples': (self.collapse_cka_examples is None or self.collapse_cka_examples >= 4,
                                      'null or >= 4 (the unbiased HSIC needs 4)'),
            'collapse_every': (self.collapse_every >= 0, '>= 0'),
            'collapse_threshold': (0 < self.collapse_threshold <= 1, 'in (0, 1]'),
            'collapse_permutations': (self.collapse_permutations >= 1, '>= 1'),
            'cosine_reg': (self.cosine_reg >= 0, '>= 0'), 'cosine_reg_blocks': (self.cosine_reg_blocks >= 1, '>= 1')})
        if self.warmup_epochs is not None and self.warmup_epochs >= self.epochs:
            raise ConfigError(f"train.warmup_epochs={self.warmup_epochs:g} is not shorter than train.epochs="
                              f"{self.epochs}: the learning rate would rise for the whole run and never decay; "
                              f"lower --warmup-epochs (e.g. 0) or train longer")


    @property
    def warmup(self) -> float:
        """The warm-up in force (epochs): ``warmup_epochs``, or by default 2, or a quarter of a run of ≤ 2 epochs."""
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return 2.0 if self.epochs > 2 else self.epochs / 4


@dataclass
class LogConfig:
    """MLflow tracking (see docs/mlflow_schema.md)."""
    experiment: str = 'deepvit'
    """MLflow experiment"""
    run_name: Optional[str] = None
    """MLflow run name; null: <model>-d<depth>-s<seed>"""
    tracking_uri: Optional[str] = None
    """MLflow store; null: $MLFLOW_TRACKING_URI, else sqlite:///<absolute path of ./mlflow.db>"""
    sweep_id: Optional[str] = None
    """set by the sweep: the sweep this run belongs to"""
    sweep_point: Optional[str] = None
    """set by the sweep: this run's grid point"""
    parent_run_id: Optional[str] = None
    """set by the sweep: the MLflow run id of the sweep's parent run"""
    system_metrics_interval: float = 10.0
    """seconds between MLflow system-metric samples (CPU, memory, GPU) on rank 0; 0: off"""
    log_model: bool = True
    """log the exported weights as an MLflow model (false for very large models)"""

    def __post_init__(self):
        _check('log', self, {'system_metrics_interval': (self.system_metrics_interval >= 0, '>= 0')})


@dataclass
class Config:
    """The whole job. ``output_dir`` holds checkpoints and the exported weights; ``resume`` continues from there."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    output_dir: str = 'outputs/run'
    """checkpoints/, the exported model.safetensors and config.yaml of this run"""
    resume: bool = False
    """continue the run in output_dir from its latest checkpoint"""
    eval_only: bool = False
    """score eval_weights on data.val_split without training (DeiT's --eval, timm's validate.py)"""
    eval_weights: Optional[str] = None
    """with eval_only: a .safetensors export, a checkpoints/ folder or a run's output_dir"""


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


def field_types() -> Dict[str, Any]:
    """Every leaf field as ``{'model.depth': Optional[int], ..., 'output_dir': str}``."""
    out = {}
    for name, tp in get_type_hints(Config).items():
        if name in SECTIONS:
            out.update({f'{name}.{sub}': sub_tp for sub, sub_tp in get_type_hints(tp).items()})
        else:
            out[name] = tp
    return out


def spellings() -> Dict[str, str]:
    """Every accepted flag (without ``--``) → its dotted field: the dotted names, their dashed forms
    (``model.drop-path-rate``), the aliases and each field's own name where unique (``depth``, ``embed-dim``)."""
    keys = list(field_types())
    short = [k.split('.')[-1].replace('_', '-') for k in keys]
    out = {}
    for key, name in zip(keys, short):
        out[key] = out[key.replace('_', '-')] = key
        if short.count(name) == 1 and name not in ALIASES:
            out[name] = key
    out.update(ALIASES)
    return out


def _optional(tp) -> bool:
    return get_origin(tp) is Union and type(None) in get_args(tp)


def normalise_argv(argv: Sequence[str]) -> List[str]:
    """Rewrite the user spellings to jsonargparse's dotted flags: ``--depth 8`` → ``--model.depth 8``; a bool flag
    without a value means true (``--resume``); ``none`` means null for optional non-string fields; a tuple may be
    given comma-separated (``--data.scale 0.08,1``). Other arguments pass through unchanged."""
    names, types = spellings(), field_types()
    out: List[str] = []
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition('=')
        key = names.get(flag[2:]) if flag.startswith('--') else None
        if key is None:
            out.append(arg)
            i += 1
            continue
        tp = types[key]
        if not eq:
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith('--')
            if tp is bool and not has_value:
                value = 'true'
            elif has_value:
                value, i = argv[i + 1], i + 1
            else:
                out.append(f'--{key}')     # the library reports the missing value
                i += 1
                continue
        if tp is bool and value.lower() in ('1', 'yes', 'on', '0', 'no', 'off'):
            value = 'true' if value.lower() in ('1', 'yes', 'on') else 'false'
        elif _optional(tp) and str not in get_args(tp) and value.lower() == 'none':
            value = 'null'
        elif get_origin(tp) is tuple and ',' in value and not value.lstrip().startswith(('[', '(')):
            value = f'[{value}]'
        out += [f'--{key}', value]
        i += 1
    return out


_TYPE_ERROR = re.compile(r'Parser key "(?P<key>[^"]+)":\s*Expected a <class \'(?P<type>\w+)\'>\. Got value: '
                         r'(?P<value>.*?)\s*$', re.S)
_TYPE_NAMES = {'int': 'an integer', 'float': 'a number', 'bool': 'true or false', 'str': 'a string',
               'tuple': '2 comma-separated numbers'}


def _one_line(err: Exception) -> str:
    """jsonargparse's (multi-line) message as one line; a type error as ``'<key> must be <type>, got <value>'``."""
    text = str(err).strip()
    match = _TYPE_ERROR.search(text)
    if match and match['type'] in _TYPE_NAMES:
        return f"{match['key']} must be {_TYPE_NAMES[match['type']]}, got {match['value']!r}"
    return ' '.join(text.split())


def _config_first(argv: List[str]) -> List[str]:
    """Move every ``--config FILE`` to the front, in order: flags win over a config file wherever it is given
    (jsonargparse applies arguments left to right, so ``--model X --config F`` would let F's model win; the sweep
    appends a user's ``--config`` after each point's flags)."""
    configs: List[str] = []
    rest: List[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == '--config' and i + 1 < len(argv):
            configs += argv[i:i + 2]
            i += 2
            continue
        if argv[i].startswith('--config='):
            configs += ['--config', argv[i].partition('=')[2]]
        else:
            rest.append(argv[i])
        i += 1
    return configs + rest


def check_config_file(path: str) -> None:
    """Refuse a ``--config`` file that is missing, not YAML, not a mapping, has a section that is not a mapping
    (jsonargparse would take ``train: [1, 2]`` as the section's value) or an unknown field (named with the file,
    which jsonargparse's message leaves out). Bad values are left to the parser. Raises ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: {'is a directory, not a YAML file' if p.is_dir() else 'file not found'}: {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of sections, got {type(data).__name__}")
    known = field_types()
    for key, value in data.items():
        if key in SECTIONS and not isinstance(value, dict):
            raise ConfigError(f"--config {path}: section {key!r} must be a mapping, got {value!r}")
        for name in ([f'{key}.{sub}' for sub in value] if key in SECTIONS else [key]):
            if name not in known:
                raise ConfigError(f"--config {path}: unknown field {name!r} (known: {', '.join(sorted(known))})")


class TrainParser(ArgumentParser):
    """jsonargparse's parser with the user spellings (:func:`normalise_argv`); every error is a one-line
    :class:`ConfigError` instead of an exit, so the launch script prints it and exits with status 2."""

    def parse_args(self, args: Optional[Sequence[str]] = None, **kwargs):  # noqa: D102 (argparse's)
        argv = _config_first(normalise_argv(sys.argv[1:] if args is None else args))
        for i, arg in enumerate(argv):
            if arg == '--config' and i + 1 < len(argv):
                check_config_file(argv[i + 1])
        try:
            return super().parse_args(argv, **kwargs)
        except ConfigError:
            raise
        except Exception as err:   # jsonargparse's ArgumentError, or a dataclass check it wrapped
            cause = err.__cause__ or err.__context__
            raise ConfigError(str(cause) if isinstance(cause, ConfigError) else _one_line(err)) from None


    def known_flags(self) -> set:
        """Every flag this parser accepts: its own options and the user spellings (``--depth``, ``--output-dir``)."""
        own = {opt for action in self._actions for opt in action.option_strings}
        return own | {f'--{name}' for name in spellings()}


def build_parser() -> TrainParser:
    """The launch script's parser: ``--deepspeed``, ``--local_rank``, ``--config`` and one flag per config field.

    ``parse_args(argv)`` returns a jsonargparse Namespace (``ns.model.depth``; ``ns.deepspeed``) and raises
    ConfigError (one line, naming the field and the value) for an unknown flag or field, a bad value or a bad file.
    """
    spelled = ', '.join(f'--{a} = --{k}' for a, k in ALIASES.items() if a != k)
    parser = TrainParser(
        prog='launch/train.py', exit_on_error=False,
        description='Train a ViT / DeepViT with DeepSpeed ZeRO; every run is recorded in MLflow.\n'
                    'Run through DeepSpeed\'s launcher: deepspeed launch/train.py --deepspeed ds_configs/zero2.json',
        epilog=f'Each field also takes its own name where unique across sections (--depth = --model.depth, '
               f'--embed-dim = --model.embed_dim, --lr = --train.lr) and: {spelled}. A bool flag alone means true.')
    parser.add_argument('--deepspeed', metavar='PATH', required=True,
                        help='DeepSpeed JSON config (ZeRO stage, micro-batch, accumulation, precision, clipping)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=-1,
                        help='set by the DeepSpeed launcher; LOCAL_RANK from the environment wins')
    parser.add_argument('--config', action=ActionConfigFile, help='YAML file with model/data/train/log sections')
    parser.add_class_arguments(Config, nested_key=None, fail_untyped=True)
    return parser


def resolve(args) -> Config:
    """The parsed namespace as a checked :class:`Config` (each dataclass checks its ranges). Raises ConfigError."""
    values = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(Config)}}
    sections = {name: cls(**vars(values.pop(name))) for name, cls in
                (('model', ModelConfig), ('data', DataConfig), ('train', TrainConfig), ('log', LogConfig))}
    sections['train'].warmup_epochs = sections['train'].warmup   # the default made explicit: the record shows it
    return Config(**sections, **values)


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


def _parse_blocks(key: str, value: Union[int, str]) -> Union[str, int, List[int]]:
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
