"""Load, check and resolve a DeepSpeed JSON config before anything expensive starts.

Checks (each raises :class:`DeepSpeedConfigError` naming the file, the field and the value):
- the file exists and is valid JSON (with line and column of a syntax error);
- no ``"auto"`` values (a Hugging Face Trainer convention that raw DeepSpeed drops or crashes on);
- no ``optimizer`` / ``scheduler`` sections: the optimizer (timm's AdamW) and the per-step schedule (timm's cosine)
  are driven by the trainer (``DeepSpeedEngine._take_model_step`` in ``deepspeed/runtime/engine.py`` calls
  ``lr_scheduler.step()`` and, on ``TypeError``, retries ``step(self.train_batch_size())``, which a timm scheduler
  would take for an epoch number);
- the batch triple is consistent with the world size:
  ``train_batch_size = train_micro_batch_size_per_gpu × gradient_accumulation_steps × world_size``
  (any two given; the third derived, as DeepSpeed's ``_configure_train_batch_size`` does).

Precision: bf16 runs where the accelerator supports it natively (CUDA GPUs with bf16); elsewhere (CPU: native bf16
matmul needs AVX512-BF16 or AMX, which many CPUs lack; on the project's AVX2/FMA machine without them a bf16 matmul
measured ~40× slower than fp32) the run is fp32 and the config's ``bf16``/``fp16`` sections are turned off. The
resolved precision is returned and recorded with the run.
"""
import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import torch


class DeepSpeedConfigError(ValueError):
    """A user error in the DeepSpeed config file."""


@dataclass
class ResolvedDeepSpeedConfig:
    """The config dict to pass to ``deepspeed.initialize(config=...)`` and what it resolved to."""
    config: Dict[str, Any]
    path: str
    precision: str                 # 'fp32' | 'bf16' | 'fp16'
    zero_stage: int
    micro_batch_size: int
    grad_accum_steps: int
    global_batch_size: int
    world_size: int


def _walk(node: Any, prefix: str = '') -> Iterator[Tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f'{prefix}.{key}' if prefix else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f'{prefix}[{i}]')
    else:
        yield prefix, node


def _per_rank_share(where: str, total: int, field: str, value: int, world_size: int) -> int:
    """The batch field DeepSpeed derives: ``train_batch_size / (field × world_size)``, which must be exact."""
    if total % (value * world_size):
        raise DeepSpeedConfigError(f"{where}: train_batch_size={total} is not divisible by {field}={value} × "
                                   f"world_size={world_size}")
    return total // (value * world_size)


def load_ds_config(path: str) -> Dict[str, Any]:
    """Parse the JSON file. Raises DeepSpeedConfigError for a missing file, bad JSON or a non-object."""
    p = Path(path)
    if p.is_dir():
        raise DeepSpeedConfigError(f"--deepspeed: {path} is a directory, not a JSON file (e.g. ds_configs/zero2.json)")
    if not p.is_file():
        raise DeepSpeedConfigError(f"--deepspeed: config file not found: {path}")
    try:
        config = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise DeepSpeedConfigError(
            f"--deepspeed {path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(config, dict):
        raise DeepSpeedConfigError(f"--deepspeed {path}: expected a JSON object, got {type(config).__name__}")
    return config


CPU_BF16_ENV = 'DEEPVIT_CPU_BF16'


def bf16_supported() -> bool:
    """True on accelerators with native bf16 (CUDA devices that report it); False on CPU, unless the environment sets
    ``DEEPVIT_CPU_BF16=1``: the test lane that runs a GPU run's bf16 code paths on CPU ranks (DeepSpeed's bf16
    optimizer, bf16 checkpoints; slow matmuls on CPUs without AVX512-BF16, so tiny models only: docs/testing.md)."""
    if os.environ.get(CPU_BF16_ENV) == '1':
        return True
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_ds_config(path: str, world_size: int, bf16_native: bool = None) -> ResolvedDeepSpeedConfig:
    """Validate ``path`` for ``world_size`` ranks and resolve batch fields and precision.

    Args:
        path: the DeepSpeed JSON file.
        world_size: number of data-parallel ranks (the launcher's WORLD_SIZE).
        bf16_native: override of :func:`bf16_supported` (tests).

    Returns:
        ResolvedDeepSpeedConfig with all three batch fields filled in and the precision sections set.

    Raises:
        DeepSpeedConfigError: see the module docstring.
    """
    raw = load_ds_config(path)
    config = copy.deepcopy(raw)
    for key, value in _walk(config):
        if isinstance(value, str) and value.strip().lower() == 'auto':
            raise DeepSpeedConfigError(
                f"--deepspeed {path}: {key} is \"auto\"; raw DeepSpeed has no \"auto\" (a Hugging Face Trainer "
                f"convention): give a number")
    for section in ('optimizer', 'scheduler'):
        if section in config:
            raise DeepSpeedConfigError(
                f"--deepspeed {path}: remove the \"{section}\" section: the optimizer and learning-rate schedule come "
                f"from the training config (timm's create_optimizer_v2 / create_scheduler_v2)")

    def positive_int(key):
        value = config.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DeepSpeedConfigError(f"--deepspeed {path}: {key} must be a positive integer, got {value!r}")
        return value

    tbs = positive_int('train_batch_size')
    mbs = positive_int('train_micro_batch_size_per_gpu')
    gas = positive_int('gradient_accumulation_steps')
    where = f"--deepspeed {path}"
    if tbs and mbs and gas:
        if tbs != mbs * gas * world_size:
            raise DeepSpeedConfigError(
                f"{where}: train_batch_size={tbs} != train_micro_batch_size_per_gpu={mbs} × "
                f"gradient_accumulation_steps={gas} × world_size={world_size} (= {mbs * gas * world_size})")
    elif tbs and mbs:
        gas = _per_rank_share(where, tbs, 'train_micro_batch_size_per_gpu', mbs, world_size)
    elif tbs and gas:
        mbs = _per_rank_share(where, tbs, 'gradient_accumulation_steps', gas, world_size)
    elif mbs:
        gas = gas or 1
        tbs = mbs * gas * world_size
    elif tbs:
        gas = 1
        if tbs % world_size:
            raise DeepSpeedConfigError(f"{where}: train_batch_size={tbs} is not divisible by world_size={world_size}")
        mbs = tbs // world_size
    else:
        raise DeepSpeedConfigError(f"{where}: give train_micro_batch_size_per_gpu (and optionally "
                                   f"gradient_accumulation_steps) or train_batch_size")
    # Keep the two fields that make the file valid for any world size; DeepSpeed derives the third.
    config.pop('train_batch_size', None)
    config['train_micro_batch_size_per_gpu'] = mbs
    config['gradient_accumulation_steps'] = gas

    zero = config.get('zero_optimization', {}) or {}
    if not isinstance(zero, dict):
        raise DeepSpeedConfigError(f"{where}: zero_optimization must be an object, got {zero!r}")
    stage = zero.get('stage', 0)
    if stage not in (0, 1, 2, 3):
        raise DeepSpeedConfigError(f"{where}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")

    native = bf16_supported() if bf16_native is None else bf16_native
    wants_bf16 = bool((config.get('bf16') or {}).get('enabled')) or bool((config.get('bfloat16') or {}).get('enabled'))
    wants_fp16 = bool((config.get('fp16') or {}).get('enabled'))
    if wants_bf16 and wants_fp16:
        raise DeepSpeedConfigError(f"{where}: bf16.enabled and fp16.enabled are both true: choose one")
    if wants_fp16 and not torch.cuda.is_available():
        raise DeepSpeedConfigError(f"{where}: fp16.enabled is true but there is no CUDA device: fp16 with loss "
                                   f"scaling runs on GPUs only (a CPU run would silently be fp32); set fp16.enabled "
                                   f"false, or use bf16 (falls back to fp32 on CPUs, recorded as the run's precision)")
    if wants_fp16:
        precision = 'fp16'
    elif wants_bf16 and native:
        precision = 'bf16'
    else:
        precision = 'fp32'
    config.pop('bfloat16', None)
    config.setdefault('bf16', {})['enabled'] = precision == 'bf16'
    config.setdefault('fp16', {})['enabled'] = precision == 'fp16'
    for key, default in (('gradient_clipping', 1.0), ('steps_per_print', 10 ** 9)):
        # set explicitly: DeepSpeed's own default (GRADIENT_CLIPPING_DEFAULT, deepspeed/runtime/constants.py; 1.0 in
        # 0.19.8) has changed between releases, and the run must not depend on the installed version
        config.setdefault(key, default)
    # DeepSpeed's throughput timer is on by default and synchronises the device in every forward and step
    # (deepspeed/utils/timer.py); the loop logs its own throughput at log points: off unless the config asks for it
    config.setdefault('timers', {}).setdefault('throughput', {}).setdefault('enabled', False)
    return ResolvedDeepSpeedConfig(config=config, path=str(Path(path).resolve()), precision=precision,
                                   zero_stage=int(stage), micro_batch_size=mbs, grad_accum_steps=gas,
                                   global_batch_size=mbs * gas * world_size, world_size=world_size)
