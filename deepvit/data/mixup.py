"""timm's Mixup / CutMix (with label smoothing) built from flat config values.

Source: ``timm/data/mixup.py`` (Zhang et al. 2018, mixup; Yun et al. 2019, CutMix). The returned object maps a batch
``(images float (B, C, H, W), labels int64 (B,))`` to ``(mixed images, soft targets float (B, num_classes))``;
B must be even. DeiT / DeepViT recipe: mixup_alpha 0.8, cutmix_alpha 1.0, label_smoothing 0.1.
"""
from __future__ import annotations


def create_mixup(num_classes: int, *, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, mode: str = 'batch', label_smoothing: float = 0.1):
    """A ``timm.data.Mixup``, or None when both alphas are 0 (then use plain cross-entropy with smoothing).

    Raises ``ValueError`` for num_classes < 2 or a negative alpha.
    """
    if num_classes < 2:
        raise ValueError(f'num_classes={num_classes} must be >= 2 for mixup')
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f'mixup_alpha={mixup_alpha} and cutmix_alpha={cutmix_alpha} must be >= 0')
    if mixup_alpha == 0 and cutmix_alpha == 0:
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob, mode=mode,
                 label_smoothing=label_smoothing, num_classes=num_classes)
