"""Resume, in one place: what a ``--resume`` continues from, checked before any process group waits
(:func:`check_resume`, called by preflight on every rank), and the checkpoint loaded into the built engine
(:func:`load`, called by the trainer on every rank), on the same or another world size.

A resume continues the same run: the config may change only in :data:`RESUME_MAY_CHANGE`; a damaged latest
checkpoint falls back to the newest intact one; a checkpoint written by another number of ranks continues through
DeepSpeed's universal checkpoint when the global batch can stay the same (:mod:`.universal`), else it is refused
before anything loads. The MLflow run continues from the checkpoint's client state, or from ``run.json`` when the
run stopped before its first checkpoint. Layout of the folder: :class:`~.layout.RunDir`.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .. import atomic, schema
from . import universal
from .checkpoint import intact_tag, latest_tag, load as load_checkpoint, saved_weights_format
from .config import Config, ConfigError, flatten
from .distributed import is_dist
from .layout import LATEST, RunDir
from .universal import WorldChange, refuse_reason, saved_batch

# fields a resume may change: the run's length (re-planned and recorded, docs/training.md), logging and
# checkpoint cadence, data workers, memory and speed switches that leave the numbers alone, where it is written
RESUME_MAY_CHANGE = ('train.epochs', 'train.max_steps', 'train.log_every', 'train.checkpoint_hist',
                     'train.collapse_every', 'train.grad_checkpointing', 'train.compile', 'data.num_workers',
                     'output_dir', 'resume', 'eval_only', 'eval_weights', 'eval_weights_format')


def check_resume(cfg: Config, run_dir: RunDir, rank: int, world: int, ds, ds_path: str,
                 model: torch.nn.Module) -> Optional[WorldChange]:
    """Before any process group waits: refuse a changed config, fall back from a damaged latest checkpoint, refuse
    a checkpoint of an older weights format, and say whether the checkpoint resumed from was written by another world
    size (a :class:`~.universal.WorldChange`, or None). ``model``: the run's model (on the meta device will do).
    Raises ConfigError (one paragraph) for what cannot resume."""
    _check_resumed_config(cfg, run_dir)
    tag = _fall_back_from_damage(run_dir.checkpoints, rank)
    _check_weights_format(run_dir.checkpoints, tag, model)
    return _world_change(cfg, run_dir.checkpoints, tag, world, ds, ds_path)


def _check_weights_format(ckpt_dir: Path, tag: Optional[str], model: torch.nn.Module) -> None:
    """Refuse to resume a checkpoint written before :data:`~deepvit.models.WEIGHTS_FORMAT` 2 into a model with a
    learned Re-attention Θ: its layout changed (Θ → Θᵀ, same shape), and ZeRO restores the fp32 master weights and
    Adam moments from flat partitions that no key names, so they cannot be transposed on load. A ViT, or a fixed
    (identity) Θ, reads the same in both formats and resumes."""
    from ..models import WEIGHTS_FORMAT, ReAttentionMix
    if tag is None or not any(isinstance(m, ReAttentionMix) and m.theta_type == 'learned' for m in model.modules()):
        return
    written = saved_weights_format(ckpt_dir / tag)
    if written != WEIGHTS_FORMAT:
        raise ConfigError(f"--resume: checkpoint {tag} in {str(ckpt_dir)!r} is in weights format {written}, this code "
                          f"writes format {WEIGHTS_FORMAT} (Re-attention's Θ is stored transposed since format 2, and "
                          f"a ZeRO checkpoint's flat partitions cannot be converted on load). Resume it with the code "
                          f"that started it (its commit is the run's {schema.CODE_COMMIT_TAG!r} tag in MLflow), or "
                          f"start a new run; its weights still load for evaluation (--eval-only converts them)")


def _check_resumed_config(cfg: Config, run_dir: RunDir) -> None:
    """Refuse a resume whose config differs from the run's (``config.json``, :class:`~.layout.RunDir`) in a field outside
    :data:`RESUME_MAY_CHANGE` (architecture, data, optimisation, schedule shape, seed, probe settings): in one
    paragraph naming each field with its old and new value. Runs started before the file existed are not checked."""
    path = run_dir.config_file
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    now = json.loads(json.dumps(flatten(cfg)))
    changed = [k for k in sorted(set(saved) | set(now)) if not k.startswith('log.') and k not in RESUME_MAY_CHANGE
               and saved.get(k) != now.get(k)]
    if changed:
        fields = '; '.join(f'{k}: {saved.get(k)!r} -> {now.get(k)!r}' for k in changed)
        raise ConfigError(f"--resume of {str(run_dir.root)!r} with a different config: {fields}. A resume continues the "
                          f"same run: give the run's own values (they are in {path}), or start a new run in another "
                          f"--output-dir. A resume may change only {', '.join(RESUME_MAY_CHANGE[:8])} and log.*")


def _fall_back_from_damage(ckpt_dir: Path, rank: int) -> Optional[str]:
    """Before a resume loads anything: when the checkpoint ``latest`` names is damaged (a truncated or corrupt file,
    e.g. from a full disk), point ``latest`` at the newest intact one (rank 0 writes it; every rank makes the same
    check on the same files) and say so; the damaged folder stays on disk. Returns the tag to resume from (None: no
    checkpoint). Raises ConfigError when none is intact."""
    tag, passed = intact_tag(ckpt_dir)   # (None, []) without a checkpoint
    if not passed:
        return tag
    if tag is None:
        raise ConfigError(f"--resume: no intact checkpoint in {str(ckpt_dir)!r}: {'; '.join(passed)}")
    if rank == 0:
        atomic.write_text(ckpt_dir / LATEST, tag)
        print(f"[deepvit] warning: {'; '.join(passed)}. Resuming from the newest intact checkpoint, {tag} (the "
              f"damaged one is left on disk)", flush=True)
    return tag


def _world_change(cfg: Config, ckpt_dir: Path, tag: Optional[str], world: int, ds,
                  ds_path: str) -> Optional[WorldChange]:
    """None when checkpoint ``tag`` (the one the resume loads) was written by this job's world size (or there is
    none); a WorldChange when it can continue through a universal checkpoint (the global batch unchanged); else
    ConfigError, before loading."""
    if tag is None:
        return None
    saved = _checkpoint_world_size(ckpt_dir / tag)
    if saved is None or saved == world:
        return None
    saved_global, saved_accum = saved_batch(ckpt_dir / tag)
    reason = refuse_reason(saved, saved_global, world, ds)
    if reason:
        raise ConfigError(f"--resume: the checkpoint in {str(ckpt_dir)!r} was written by {saved} rank(s), this job "
                          f"has {world}. A ZeRO checkpoint is partitioned by rank count; the trainer converts it "
                          f"with DeepSpeed's universal checkpoint (ds_to_universal) when the run can stay one run, "
                          f"but {reason} ({ds_path}); the MLflow run is left as it was")
    return WorldChange(tag=tag, saved_world=saved, saved_grad_accum=saved_accum)


def _checkpoint_world_size(tag_dir: Path) -> Optional[int]:
    """Ranks that wrote a DeepSpeed checkpoint: its ZeRO optimizer partitions, one per data-parallel rank
    (``zero_pp_rank_<R>_mp_rank_00_optim_states.pt``, ``bf16_zero_pp_rank_<R>_…`` with bf16 on, at every stage;
    ZeRO-3 also ``…_model_states.pt``). None for stage 0."""
    ranks = {re.search(r'zero_pp_rank_(\d+)_', p.name)[1]
             for pattern in ('zero_pp_rank_*_mp_rank_*_optim_states.pt', 'bf16_zero_pp_rank_*_mp_rank_*_optim_states.pt')
             for p in tag_dir.glob(pattern)}
    return len(ranks) or None


@dataclass
class Resumed:
    """Where the run continues: the restored checkpoint's client state (None for a new run) and MLflow run id."""
    state: Optional[Dict[str, Any]]
    run_id: Optional[str]
    epoch: int = 0
    batch: int = 0               # micro-batches of ``epoch`` already trained
    finished: bool = False       # every planned epoch trained and the weights exported: nothing to do

    @property
    def new_run(self) -> bool:
        return self.state is None and self.run_id is None


def load(plan, job, out: RunDir) -> Resumed:
    """With ``--resume``, load the latest checkpoint into ``job.engine`` (all ranks) and find the MLflow run to continue
    (``plan``: :class:`~.preflight.Plan`; ``job``: :class:`~.build.Job`).

    The schedule is not restored: it is a function of the global step under *this* job's plan, so a resume with a
    longer ``--epochs`` re-plans from where the run is (the same plan resumes exactly as before)."""
    cfg, ckpt_dir, change = plan.cfg, out.checkpoints, plan.world_change
    if change is not None:   # another world size: through DeepSpeed's universal checkpoint (converted once, rank 0)
        if plan.rank == 0:
            universal.convert(ckpt_dir, change)
        if is_dist():
            torch.distributed.barrier()
        state = load_checkpoint(job.engine, ckpt_dir, plan.rank, tag=change.universal_tag)
        mid_epoch = bool(state.get('batch_in_epoch'))
        state['batch_in_epoch'] = universal.batch_in_epoch(int(state.get('batch_in_epoch', 0)), change,
                                                           plan.ds.grad_accum_steps)
        if plan.rank == 0:
            print(universal.describe(change, plan.world_size, mid_epoch), flush=True)
    else:
        state = load_checkpoint(job.engine, ckpt_dir, plan.rank) if cfg.resume and latest_tag(ckpt_dir) else None
    run_id = (state or {}).get('mlflow_run_id')
    if run_id is None and cfg.resume and out.run_file.is_file():
        run_id = json.loads(out.run_file.read_text()).get('run_id')
    job.scheduler.step_update(num_updates=job.engine.global_steps)
    epoch = int((state or {}).get('epoch', 0))
    return Resumed(state=state, run_id=run_id, epoch=epoch, batch=int((state or {}).get('batch_in_epoch', 0)),
                   finished=state is not None and epoch >= cfg.train.epochs and out.export.is_file())
