"""Training compute: the run length a fixed-compute budget allows, and what a run of given length costs.

Compute per optimizer step = 3 × 2 × MACs per image × images per step: a forward pass is 2 FLOPs per
multiply-accumulate, and forward + backward ≈ 3 forwards (the usual accounting, e.g. Kaplan et al. 2020, arXiv
2001.08361, Sec. 2.1; Alabdulmohsin et al. 2023, arXiv 2305.13035 compare depths at equal compute this way). MACs are
the model's own count (:func:`deepvit.models.gmacs_per_image`: every matmul and convolution, the attention matmuls
and the Re-attention mix included). Units: GMACs (1e9), PFLOP (1e15).

With ``train.budget_pflop`` every depth trains for the same compute: the step count is the budget over the cost of a
step (rounded down, so every run spends the budget to within one step), and the cosine schedule spans exactly those
steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .config import ConfigError

__all__ = ['FLOPS_PER_MAC_TRAINING', 'BudgetPlan', 'pflop_per_step', 'plan_budget']

FLOPS_PER_MAC_TRAINING = 6      # 2 FLOPs per MAC × (1 forward + 2 for the backward)


def pflop_per_step(gmacs_per_image: float, global_batch: int) -> float:
    """Training PFLOP of one optimizer step of ``global_batch`` images at ``gmacs_per_image`` GMACs each."""
    return FLOPS_PER_MAC_TRAINING * gmacs_per_image * 1e9 * global_batch / 1e15


@dataclass(frozen=True)
class BudgetPlan:
    """steps: optimizer steps the budget buys; epochs: whole epochs that hold them (the last may be cut short);
    pflop: what the steps cost (≤ the budget, within one step of it); warmup_steps: the warm-up in steps."""
    steps: int
    epochs: int
    pflop: float
    warmup_steps: float


def plan_budget(budget_pflop: float, gmacs_per_image: float, global_batch: int, steps_per_epoch: int,
                warmup_epochs: float) -> BudgetPlan:
    """The run a budget of ``budget_pflop`` PFLOP allows.

    Raises:
        ConfigError: a non-positive budget, or one that buys no step or no more steps than the warm-up
            (``warmup_epochs`` × ``steps_per_epoch``).
    """
    if not budget_pflop > 0:
        raise ConfigError(f"train.budget_pflop={budget_pflop!r}: must be > 0")
    per_step = pflop_per_step(gmacs_per_image, global_batch)
    steps = int(budget_pflop // per_step)
    warmup = warmup_epochs * steps_per_epoch
    if steps <= warmup:
        raise ConfigError(f"train.budget_pflop={budget_pflop:g}: buys {steps} optimizer steps "
                          f"({per_step:.3g} PFLOP each), not more than the {warmup:g}-step warm-up "
                          f"(train.warmup_epochs={warmup_epochs:g}); raise the budget or shorten the warm-up")
    return BudgetPlan(steps=steps, epochs=math.ceil(steps / steps_per_epoch), pflop=steps * per_step,
                      warmup_steps=warmup)
