"""timm's transforms in the form the loader uses, and one compatibility fix.

Source: ``timm/data/transforms_factory.py::create_transform`` with ``use_prefetcher=True`` (no ToTensor/Normalize:
the loader normalises whole batches, as timm's PrefetchLoader does).
"""
from __future__ import annotations

from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def create_transform(img_size: int, train: bool, in_chans: int = 3, *, mean=None, std=None, scale=(0.08, 1.0),
                     ratio=(3 / 4, 4 / 3), hflip: float = 0.5, vflip: float = 0.0, color_jitter: float | None = 0.4,
                     auto_augment: str | None = None, interpolation: str = 'bilinear', crop_pct: float = 0.875,
                     to_tensor: bool = True):
    """timm's ``create_transform`` in its prefetcher form: PIL image → uint8 tensor (C, img_size, img_size).

    Training: RandomResizedCrop(scale, ratio), flips, colour jitter or RandAugment (``auto_augment``, e.g.
    ``'rand-m9-mstd0.5-inc1'``); evaluation: resize to img_size / crop_pct, centre crop. Normalisation and random
    erasing run on the batch (see :class:`ShardLoader`). ``to_tensor=False``: without timm's final
    ``MaybePILToTensor``, so the output is the PIL image (the loader copies it straight into the uint8 batch).
    """
    from timm.data import create_transform as timm_create_transform
    mean, std = default_mean_std(in_chans, mean, std)
    transform = timm_create_transform(
        (in_chans, img_size, img_size), is_training=train, scale=scale, ratio=ratio, hflip=hflip, vflip=vflip,
        color_jitter=color_jitter, auto_augment=auto_augment, interpolation=interpolation, mean=mean, std=std,
        crop_pct=crop_pct, use_prefetcher=True)
    transform = _safe_posterize(transform)
    if not to_tensor:
        from timm.data.transforms import MaybePILToTensor
        from torchvision.transforms import Compose
        assert isinstance(transform.transforms[-1], MaybePILToTensor), transform
        transform = Compose(transform.transforms[:-1])
    return transform


def default_mean_std(in_chans: int, mean=None, std=None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean/std for 3 channels; their channel averages for 1 channel. Raises ValueError on a length mismatch."""
    if in_chans not in (1, 3):
        raise ValueError(f'in_chans={in_chans}: images are decoded as RGB (3) or grayscale (1)')
    mean = tuple(mean) if mean is not None else (IMAGENET_MEAN if in_chans == 3 else (sum(IMAGENET_MEAN) / 3,))
    std = tuple(std) if std is not None else (IMAGENET_STD if in_chans == 3 else (sum(IMAGENET_STD) / 3,))
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f'mean={mean} and std={std} must have in_chans={in_chans} values')
    return mean, std


def posterize_0_bits_ok(img: Image.Image, bits_to_keep: int, **__) -> Image.Image:
    """timm's ``posterize`` op, also for 0 bits (an all-black image, what Pillow < 13 returned).

    timm 1.0.31's RandAugment with increasing posterize (``inc1``, the DeiT recipe ``rand-m9-mstd0.5-inc1``) asks for
    0 bits whenever the sampled magnitude hits 10 (about 2 % of posterize draws with m9, mstd0.5); Pillow 13's
    ``ImageOps.posterize`` raises ``ValueError`` for bits outside 1..8, which would stop training.
    """
    from PIL import ImageOps
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits_to_keep)


def _safe_posterize(transform):
    from timm.data import auto_augment
    for t in getattr(transform, 'transforms', ()):
        for op in getattr(t, 'ops', ()):
            if getattr(op, 'aug_fn', None) is auto_augment.posterize:
                op.aug_fn = posterize_0_bits_ok
    return transform
