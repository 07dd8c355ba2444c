"""Resume a run on another number of ranks through DeepSpeed's universal checkpoint.

A ZeRO checkpoint is partitioned by data-parallel rank (``zero_pp_rank_<R>_mp_rank_00_optim_states.pt``), so it
loads only into the world size that wrote it. DeepSpeed's ``deepspeed.checkpoint.ds_to_universal`` rewrites it as
one file per parameter (fp32 weights and optimizer moments), which ``engine.load_checkpoint`` reads into any world
size when the DeepSpeed config says ``"checkpoint": {"load_universal": true}`` (DeepSpeed's "Universal Checkpointing"
tutorial; ``deepspeed/checkpoint/ds_to_universal.py``, ``runtime/engine.py``).

The run stays one run only when the optimizer step means the same thing before and after: the **global batch** must
be unchanged (change ``gradient_accumulation_steps`` or the micro-batch with the world size), so the learning rate
(scaled with the global batch), the steps per epoch and the schedule are those of the original plan. Each rank's RNG
state and BatchNorm statistics (``rank<R>.pt``) do not carry over: every rank starts from rank 0's buffers, and a
checkpoint taken inside an epoch continues at the same optimizer step of that epoch with the new ranks' share of the
data (the images the rest of that epoch sees are not exactly those of an uninterrupted run).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .checkpoint import model_states

SUFFIX = '_universal'


@dataclass
class WorldChange:
    """A resume on another world size: the checkpoint tag to convert and what it was written with."""
    tag: str
    saved_world: int
    saved_grad_accum: int

    @property
    def universal_tag(self) -> str:
        return self.tag + SUFFIX


def saved_batch(tag_dir: Path) -> tuple[int, int]:
    """``(global batch, gradient_accumulation_steps)`` of the job that wrote checkpoint ``tag_dir``: its DeepSpeed
    config's ``train_batch_size``, else micro-batch × accumulation × ``dp_world_size``, read from the checkpoint's
    model-states file (ZeRO-3: rank 0's; memory-mapped: the weights are not read)."""
    state = model_states(tag_dir)
    ds, world = state.get('ds_config') or {}, int(state['dp_world_size'])
    accum = int(ds.get('gradient_accumulation_steps', 1))
    if 'train_batch_size' in ds:
        return int(ds['train_batch_size']), accum
    return int(ds['train_micro_batch_size_per_gpu']) * accum * world, accum


def convert(ckpt_dir: Path, change: WorldChange) -> Path:
    """Write ``checkpoints/<tag>_universal`` from ``checkpoints/<tag>`` with DeepSpeed's ``ds_to_universal`` (one
    process; call on one rank). Reuses a complete earlier conversion. Returns the universal folder."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal
    src, dst = Path(ckpt_dir) / change.tag, Path(ckpt_dir) / change.universal_tag
    done = dst / '.complete'
    if done.is_file():
        return dst
    args = argparse.Namespace(input_folder=str(src), output_folder=str(dst), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)   # our engine does not set Megatron's universal info
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        ds_to_universal(args)
    if (src / 'rank0.pt').is_file():      # rank 0's buffers and RNG: the state every new rank starts from
        shutil.copyfile(src / 'rank0.pt', dst / 'rank0.pt')
    done.write_text(change.tag)
    return dst


def batch_in_epoch(saved_batch_in_epoch: int, change: WorldChange, grad_accum: int) -> int:
    """The micro-batch position of this job's ranks at the saved optimizer step of the epoch: whole steps done
    (``saved // saved_grad_accum``) × this job's accumulation."""
    return (saved_batch_in_epoch // change.saved_grad_accum) * grad_accum


def describe(change: WorldChange, world: int, mid_epoch: bool) -> str:
    """The line the trainer prints when it resumes through a universal checkpoint."""
    note = ('; the rest of the interrupted epoch is drawn from the new ranks\' share of the data (not the exact images '
            'of an uninterrupted run)' if mid_epoch else '')
    return (f"[deepvit] world size {change.saved_world} -> {world}: resuming through DeepSpeed's universal checkpoint "
            f"{change.universal_tag} (global batch unchanged; every rank starts from rank 0's BatchNorm statistics"
            f"{note})")


def refuse_reason(saved_world: int, saved_global: int, world: int, ds) -> Optional[str]:
    """Why a checkpoint of ``saved_world`` ranks and global batch ``saved_global`` cannot continue on this job's
    ``world`` ranks with DeepSpeed config ``ds`` (a ResolvedDeepSpeedConfig), or None when it can."""
    if ds.global_batch_size == saved_global:
        return None
    per_rank = saved_global // (ds.micro_batch_size * world) if saved_global % (ds.micro_batch_size * world) == 0 \
        else None
    fix = (f"set gradient_accumulation_steps to {per_rank} in the DeepSpeed config (micro-batch "
           f"{ds.micro_batch_size} × {per_rank} × {world} rank(s) = {saved_global})" if per_rank else
           f"choose train_micro_batch_size_per_gpu × gradient_accumulation_steps × {world} = {saved_global}")
    return (f"the global batch would change from {saved_global} to {ds.global_batch_size}, and with it the learning "
            f"rate, the steps per epoch and the schedule: {fix}, or resume with {saved_world} rank(s)")
