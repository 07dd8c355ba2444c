"""Checkpoints that never lose a run: DeepSpeed checkpoints on every rank, per-rank RNG states, fp32 export.

Layout of ``<output_dir>/checkpoints/``: one folder per tag written by ``engine.save_checkpoint`` (``epoch0003`` at the
end of each epoch, ``step00001234`` on preemption), DeepSpeed's ``latest`` file naming the newest complete one, and in
each tag folder ``rank<R>.pt`` with that rank's RNG states and module buffers (DeepSpeed's ``client_state`` and
module state are written by rank 0 only, but each rank's BatchNorm running statistics differ inside an epoch). A tag becomes ``latest`` only after every rank has written its files, so a crash mid-save leaves the previous
checkpoint as the latest.
"""
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist

from .. import atomic
from .layout import LATEST


def rng_state() -> Dict[str, Any]:
    """This process's RNG states: Python, NumPy, torch CPU and (when present) CUDA."""
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


def seed_everything(*parts: int) -> None:
    """Seed Python, NumPy and torch from a tuple of ints (e.g. (seed, epoch, rank)): reproducible per epoch."""
    seed = int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def latest_tag(ckpt_dir: Path) -> Optional[str]:
    """The newest complete checkpoint tag under ``ckpt_dir``, or ``None``."""
    path = Path(ckpt_dir) / LATEST
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    return tag if (Path(ckpt_dir) / tag).is_dir() else None


def damage(tag_dir: Path) -> Optional[str]:
    """Why checkpoint folder ``tag_dir`` cannot be loaded, or None when every ``.pt`` file in it is a complete
    archive: each is opened as the zip file ``torch.save`` writes and every member's CRC is checked
    (``zipfile.ZipFile.testzip``; this reads the whole checkpoint once). Names the first bad file."""
    import zipfile
    files = sorted(Path(tag_dir).rglob('*.pt'))
    if not files:
        return f'{tag_dir} holds no .pt file'
    for f in files:
        try:
            with zipfile.ZipFile(f) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            return f'{f} is not a complete checkpoint file ({type(err).__name__}: {err})'
        if bad is not None:
            return f'{f} is damaged (member {bad} fails its CRC check)'
    return None


def intact_tag(ckpt_dir: Path) -> tuple[Optional[str], list[str]]:
    """The checkpoint a resume should load: the one ``latest`` names when it is intact (:func:`damage`), else the
    newest intact ``epoch*`` / ``step*`` folder (by write time). Returns ``(tag or None, [why each newer tag was
    passed over])``."""
    ckpt_dir = Path(ckpt_dir)
    latest = latest_tag(ckpt_dir)
    if latest is None:
        return None, []
    why = damage(ckpt_dir / latest)
    if why is None:
        return latest, []
    passed = [f'{latest}: {why}']
    older = sorted((d for d in ckpt_dir.iterdir() if d.is_dir() and d.name != latest
                    and d.name.startswith(('epoch', 'step')) and not d.name.endswith('_universal')),
                   key=lambda d: d.stat().st_mtime, reverse=True)
    for d in older:
        why = damage(d)
        if why is None:
            return d.name, passed
        passed.append(f'{d.name}: {why}')
    return None, passed


def _rank_file(ckpt_dir: Path, tag: str, rank: int) -> Path:
    return Path(ckpt_dir) / tag / f'rank{rank}.pt'


class CheckpointSpaceError(RuntimeError):
    """The disk filled up while a checkpoint was written; the message names the folder, the tag and the intact
    checkpoint ``latest`` still names."""


def _out_of_space(exc: BaseException, folder: Path) -> bool:
    """ENOSPC anywhere in the exception chain, or a write error (torch's C++ writer says only ``iostream error`` or
    ``file write failed``) with under 64 MiB left on the folder's filesystem."""
    import errno
    import shutil
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC or 'No space left' in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(folder).free < 64 * 2 ** 20
    except OSError:
        return False


def save(engine, ckpt_dir: Path, tag: str, client_state: Dict[str, Any], rank: int, keep: int = 0) -> None:
    """Collective: every rank must call it. Writes the DeepSpeed checkpoint, this rank's RNG state and buffers, then
    ``latest``; with ``keep`` > 0 rank 0 then removes all but the newest ``keep`` checkpoints (:func:`prune`).

    Raises:
        CheckpointSpaceError: the disk filled up during the write (``latest`` is untouched: it still names the
            previous checkpoint, which a resume loads; the partial folder is left for the user to remove).
    """
    ckpt_dir = Path(ckpt_dir)
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
        buffers = {name: buf.detach().cpu().clone() for name, buf in engine.module.named_buffers()}
        torch.save({'rng': rng_state(), 'buffers': buffers}, _rank_file(ckpt_dir, tag, rank))
    except Exception as exc:   # noqa: BLE001 - only a full disk is turned into words
        if not _out_of_space(exc, ckpt_dir):
            raise
        import shutil
        free = shutil.disk_usage(ckpt_dir).free / 2 ** 20
        intact = latest_tag(ckpt_dir)
        raise CheckpointSpaceError(
            f"no space left on {ckpt_dir} ({free:.1f} MiB free) while writing checkpoint {tag}; "
            + (f"checkpoint {intact} is intact and --resume continues from it" if intact else
               "no earlier checkpoint exists") + f" once space is freed (remove the partial {ckpt_dir / tag})") \
            from None
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        atomic.write_text(ckpt_dir / LATEST, tag)
        if keep > 0:
            prune(ckpt_dir, keep)
    if dist.is_initialized():
        dist.barrier()


def prune(ckpt_dir: Path, keep: int) -> list:
    """Remove all but the newest ``keep`` checkpoints (``epochNNNN`` / ``stepNNNNNNNN`` folders, by write time) of
    ``ckpt_dir``; the one ``latest`` names always stays, universal conversions (``*_universal``) are left alone.
    timm's ``--checkpoint-hist``. Returns the removed tags, oldest first."""
    import shutil
    latest = latest_tag(ckpt_dir)
    tags = sorted((p for p in Path(ckpt_dir).iterdir() if p.is_dir() and p.name.startswith(('epoch', 'step'))
                   and not p.name.endswith('_universal')), key=lambda p: p.stat().st_mtime)
    removed = []
    for path in tags[:max(0, len(tags) - keep)]:
        if path.name != latest:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def load(engine, ckpt_dir: Path, rank: int, tag: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """Collective: load checkpoint ``tag`` (default: the latest) into ``engine`` (weights, optimizer, …), this rank's
    RNG and buffers.

    Returns:
        The client state saved with it (plus ``'tag'``), or ``None`` when there is no checkpoint.
    """
    tag = tag or latest_tag(ckpt_dir)
    if tag is None:
        return None
    _, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    rank_file = _rank_file(ckpt_dir, tag, rank)
    if rank_file.is_file():  # absent when resuming with another world size: rank 0's buffers, fresh RNG
        own = torch.load(rank_file, weights_only=False)
        set_rng_state(own['rng'])
        with torch.no_grad():
            for name, buf in engine.module.named_buffers():
                if name in own['buffers']:
                    buf.copy_(own['buffers'][name].to(buf.device, buf.dtype))
    client_state = dict(client_state or {})
    client_state['tag'] = tag
    return client_state


def model_states(tag_dir: Path) -> Dict[str, Any]:
    """The model-states file of checkpoint ``tag_dir`` (ZeRO-3: rank 0's), memory-mapped (the weights are not read):
    DeepSpeed's own entries (``ds_config``, ``dp_world_size``, …) and the client state saved with it."""
    tag_dir = Path(tag_dir)
    name = next(n for n in ('mp_rank_00_model_states.pt', 'zero_pp_rank_0_mp_rank_00_model_states.pt')  # ZeRO-3
                if (tag_dir / n).is_file())
    return torch.load(tag_dir / name, map_location='cpu', mmap=True, weights_only=False)


def saved_weights_format(tag_dir: Path) -> int:
    """The :data:`~deepvit.models.WEIGHTS_FORMAT` checkpoint ``tag_dir`` was written in (its client state's
    ``weights_format``; 1 when absent: written before the marker).

    Raises:
        ValueError: the marker is not an integer.
    """
    return _format_number(model_states(tag_dir).get('weights_format', 1), f"weights_format in {tag_dir}")


def written_weights_format(path: Path) -> Optional[int]:
    """The weights format a ``.safetensors`` file's metadata (``deepvit.weights_format``; ``None`` when the file has
    none) or a checkpoint folder / run output folder (its latest checkpoint's client state, 1 when absent) says.

    Raises:
        ValueError: an unreadable ``.safetensors`` file, a marker that is not an integer, or a ``latest`` that names
            no checkpoint folder.
    """
    path = Path(path)
    if path.is_file():
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), 'pt') as f:
                value = (f.metadata() or {}).get('deepvit.weights_format')
        except SafetensorError as err:
            raise ValueError(f"not a readable .safetensors file ({err})") from None
        return None if value is None else _format_number(value, f"deepvit.weights_format metadata of {path}")
    from .layout import checkpoint_folder
    ckpt = checkpoint_folder(path)
    tag = latest_tag(ckpt)
    if tag is None:
        named = (ckpt / LATEST).read_text().strip() if (ckpt / LATEST).is_file() else None
        raise ValueError(f"'latest' in {ckpt} names {named!r}, which is not a checkpoint folder there")
    return saved_weights_format(ckpt / tag)


def _format_number(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is {value!r}, not an integer weights format") from None


def export_fp32(ckpt_dir: Path, tag: str, out_file: Path) -> Path:
    """Write the fp32 weights of checkpoint ``tag`` as a safetensors file that plain timm loads.

    Uses DeepSpeed's ``zero_to_fp32`` consolidation, so it works for every ZeRO stage and for bf16 runs (whose fp32
    master weights live in the optimizer partitions). Call on one rank, after :func:`save` returned.

    Load with ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(out_file)), **fields)``.
    The file's metadata carries ``deepvit.weights_format`` (:data:`~deepvit.models.WEIGHTS_FORMAT`), which
    :func:`deepvit.training.evaluation.load_weights` reads.
    """
    from ..models import WEIGHTS_FORMAT
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import save_file

    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    state = {k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
             for k, v in state.items()}
    out_file = Path(out_file)
    with atomic.atomic_path(out_file) as tmp:
        save_file(state, str(tmp), metadata={'deepvit.weights_format': str(WEIGHTS_FORMAT)})
    return out_file
