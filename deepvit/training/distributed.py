"""The few collectives the loop needs (they work with or without a process group; ranks: :mod:`deepvit.ranks`)."""

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(values, device: torch.device) -> torch.Tensor:
    """Sum a short vector over all ranks: a sequence of floats, or a float64 tensor already on ``device`` (no host
    round trip). float64, so sample counts stay exact."""
    t = values if isinstance(values, torch.Tensor) else torch.tensor(list(values), dtype=torch.float64, device=device)
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (collective): stop decisions are never taken by one rank."""
    return bool(all_reduce_sum([float(flag)], device)[0] > 0)


def average_buffers(module: torch.nn.Module, device: torch.device) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks, in place.

    Each rank's BatchNorm sees only its own micro-batches, so running statistics drift apart between ranks.
    Averaging at every epoch end makes evaluation and checkpoints rank-independent, and a run resumed from a
    checkpoint continues exactly as the uninterrupted run would.
    """
    if not is_dist():
        return
    world = dist.get_world_size()
    for buf in module.buffers():
        if buf.is_floating_point():
            t = buf.data.to(device=device, dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            buf.data.copy_((t / world).to(buf.dtype))
