"""Activation (gradient) checkpointing of transformer blocks that keeps BatchNorm statistics exact.

timm's ``checkpoint_seq`` recomputes each block's forward during backward. A block holding a BatchNorm in training
mode (Re-attention's ``norm='bn'``) would then update its running statistics twice per step (and count
``num_batches_tracked`` twice). :func:`checkpoint_blocks` runs the recomputation inside :func:`recompute_scope`, in
which :class:`~deepvit.models.reattention.ReAttentionMix` uses batch statistics as in the first forward but leaves
the running ones untouched: with checkpointing a step gives the same outputs, gradients and BatchNorm buffers as
without (``tests/test_step_options.py``).

Uses ``torch.utils.checkpoint.checkpoint(use_reentrant=False, context_fn=...)`` (PyTorch's non-reentrant
checkpoint; its ``context_fn`` gives the recomputation its own context).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterable

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ['checkpoint_blocks', 'recompute_scope', 'recomputing']

_STATE = threading.local()


def recomputing() -> bool:
    """True inside the backward-time recomputation of a checkpointed block (this thread)."""
    return getattr(_STATE, 'depth', 0) > 0


@contextlib.contextmanager
def recompute_scope():
    """Mark the enclosed forward as a checkpoint recomputation (see :func:`recomputing`)."""
    _STATE.depth = getattr(_STATE, 'depth', 0) + 1
    try:
        yield
    finally:
        _STATE.depth -= 1


def _contexts():
    return contextlib.nullcontext(), recompute_scope()


def checkpoint_blocks(blocks: Iterable[torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``x`` through every block, each checkpointed: only block inputs (B, N, C) are kept for backward, each block's
    activations are recomputed when its gradient is needed. RNG state (dropout, drop path) is replayed by PyTorch."""
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False, context_fn=_contexts)
    return x
