"""The training configuration: the typed schema, its checks and its command line, which is jsonargparse's.

`jsonargparse <https://jsonargparse.readthedocs.io>`_ (the library behind Lightning's CLI) parses one argument per
field of the dataclasses below, whose docstring is its ``--help`` text (hence the length of this module). Its flags
are the dotted name, a config file's key (``--model.depth 8``), the field's own name where no other field has it
(``--depth 8``, ``--output-dir DIR``) and :data:`ALIASES`. ``--config FILE.yaml`` takes the sections ``model``,
``data``, ``train``, ``log``; unknown fields are refused; ``--print_config`` prints the resolved configuration. Values
are YAML (``null``, ``--data.scale [0.08,1]``); a bool flag alone means true (``--resume``). Precedence is the
library's: defaults, then the arguments in the order given, so flags after ``--config`` override the file and flags
before it do not. Range checks live in the dataclasses (``__post_init__``); every error is one :class:`ConfigError`
line naming the field and the value.
"""
import dataclasses
import functools
import json
from argparse import ArgumentError
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union, get_type_hints

import docstring_parser   # jsonargparse[signatures]'s docstring reader: a field's docstring is its --help text
import yaml
from jsonargparse import SUPPRESS, ActionConfigFile, ArgumentParser, Namespace

from ..collapse.paper import DEFAULT_SIMILARITY_THRESHOLD
from ..collapse.probe import MIN_PROBE_IMAGES


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
    """checkpoints/, the exported model.safetensors, model.json, run.json and config.json of this run"""
    resume: bool = False
    """continue the run in output_dir from its latest checkpoint"""
    eval_only: bool = False
    """score eval_weights on data.val_split without training (DeiT's --eval, timm's validate.py)"""
    eval_weights: Optional[str] = None
    """with eval_only: a .safetensors export, a checkpoints/ folder or a run's output_dir"""
    eval_weights_format: Optional[int] = None
    """with eval_only, for a .safetensors file without deepvit.weights_format metadata: 1 (our exports before format 2)
    or 2 (Re-attention weights stored transposed, as now); files that carry it need none"""


SECTIONS = {'model': ModelConfig, 'data': DataConfig, 'train': TrainConfig, 'log': LogConfig}
# Names users know from timm / DeiT scripts, beside each field's own (``--model.drop_path_rate``, ``--drop-path-rate``).
ALIASES = {'model.drop_path_rate': '--drop-path', 'train.label_smoothing': '--smoothing',
           'data.num_workers': '--workers'}
# Set by the sweep or the launcher, never typed: accepted, left out of --help (and of --print_config).
INTERNAL = ('log.sweep_id', 'log.sweep_point', 'log.parent_run_id')


@functools.lru_cache(maxsize=None)
def cli_fields() -> Dict[str, Tuple[List[str], Any, Any, str]]:
    """Every leaf field → ``(flags, type, default, docstring)``: ``{'model.depth': (['--model.depth', '--depth'],
    Optional[int], None, 'number of transformer blocks'), ...}``. The flags: the dotted name, the field's own name
    with dashes where no other field has it (``--embed-dim``, ``--output-dir``) and :data:`ALIASES`."""
    out = {}
    for prefix, cls in [(f'{name}.', cls) for name, cls in SECTIONS.items()] + [('', Config)]:
        docs = {p.arg_name: ' '.join(p.description.split()) for p in docstring_parser.parse_from_object(cls).params}
        hints = get_type_hints(cls)
        out.update({prefix + f.name: ([f'--{prefix}{f.name}'], hints[f.name], f.default, docs.get(f.name, ''))
                    for f in dataclasses.fields(cls) if f.name not in SECTIONS})
    short = [dest.rpartition('.')[2].replace('_', '-') for dest in out]
    for (dest, (flags, *_)), name in zip(out.items(), short):
        if short.count(name) == 1 and name != dest:
            flags.append(f'--{name}')
        flags.extend([ALIASES[dest]] if dest in ALIASES else [])
    return out


def flag_fields() -> Dict[str, str]:
    """Every flag of :func:`build_parser` → the field (namespace key) it sets: ``{'--depth': 'model.depth', ...}``."""
    out = {'--deepspeed': 'deepspeed', '--local_rank': 'local_rank', '--local-rank': 'local_rank', '--config': 'config'}
    return {**out, **{flag: dest for dest, (flags, *_) in cli_fields().items() for flag in flags}}


class TrainParser(ArgumentParser):
    """jsonargparse's parser whose every error is a one-line :class:`ConfigError` instead of an exit, so the launch
    script prints it and exits with status 2."""

    def parse_args(self, args: Optional[Sequence[str]] = None, **kwargs) -> Namespace:
        """jsonargparse's ``parse_args``. Raises ConfigError: an unknown flag or config-file field, a bad value or
        file (the library's message on one line: it names the field or file and the value)."""
        try:
            return super().parse_args(args, **kwargs)
        except ArgumentError as err:   # the library's errors carry their text only
            raise ConfigError(' '.join(str(err).split())) from None


def build_parser() -> TrainParser:
    """The launch script's parser: ``--deepspeed``, ``--config``, ``--print_config`` and one argument per config field
    (:func:`cli_fields`). ``parse_args(argv)`` returns a jsonargparse Namespace (``ns.model.depth``; ``ns.deepspeed``)
    and raises ConfigError (one line) for an unknown flag or field, a bad value or a bad file."""
    parser = TrainParser(
        prog='launch/train.py', exit_on_error=False, allow_abbrev=False,
        usage='deepspeed [launcher flags] %(prog)s --deepspeed PATH [--config FILE.yaml] [FLAG VALUE ...]',
        description='Train a ViT / DeepViT with DeepSpeed ZeRO; every run is recorded in MLflow.\n'
                    'Run through DeepSpeed\'s launcher: deepspeed launch/train.py --deepspeed ds_configs/zero2.json',
        epilog='Arguments apply in the order given: put --config first, so that the flags after it override it. '
               'A bool flag alone means true; null unsets an optional field; a pair is a list: --data.scale [0.08,1].')
    parser.add_argument('--deepspeed', metavar='PATH', required=True,
                        help='DeepSpeed JSON config (ZeRO stage, micro-batch, accumulation, precision, clipping)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=-1, help=SUPPRESS)  # the launcher's
    parser.add_argument('--config', action=ActionConfigFile, help='YAML file with model/data/train/log sections')
    groups = {name: parser.add_argument_group(name, cls.__doc__.split('\n')[0].replace('``', ''), name=name)
              for name, cls in SECTIONS.items()}
    for dest, (flags, tp, default, doc) in cli_fields().items():
        bool_alone = dict(nargs='?', const=True) if tp is bool else {}   # --resume = --resume true
        groups.get(dest.partition('.')[0], parser).add_argument(
            *flags, type=tp, default=default, help=SUPPRESS if dest in INTERNAL else doc, **bool_alone)
    return parser


def resolve(args: Namespace) -> Config:
    """The parsed namespace as a checked :class:`Config` (each dataclass checks its ranges). Raises ConfigError: a
    section that is not a mapping (a config file's ``train: [1, 2]``), a value out of range."""
    sections = {}
    for name, cls in SECTIONS.items():
        if not isinstance(args.get(name), Namespace):
            raise ConfigError(f"{name} must be a mapping of its fields, got {args.get(name)!r}")
        sections[name] = cls(**vars(args[name]))
    sections['train'].warmup_epochs = sections['train'].warmup   # the default made explicit: the record shows it
    top = {f.name: args[f.name] for f in dataclasses.fields(Config) if f.name not in SECTIONS}
    return Config(**sections, **top)


def model_overrides(cfg: ModelConfig) -> Dict[str, Any]:
    """``timm.create_model`` keyword arguments: the non-``None`` model fields except ``name``."""
    out = {k: v for k, v in dataclasses.asdict(cfg).items() if k != 'name' and v is not None}
    for key in {'reattn_blocks', 'talkinghead_blocks'} & set(out):
        out[key] = _parse_blocks(f'model.{key}', out[key])
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
    out = {}
    for key, value in (dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj).items():
        out.update(flatten(value, f'{prefix}{key}.') if isinstance(value, dict) else {f'{prefix}{key}': value})
    return out


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, loadable with ``--config``."""
    return yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(cfg))), sort_keys=False)
