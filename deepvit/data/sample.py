"""Turn one shard sample (its raw members) into ``(image, label)``: the loader's ``make_sample``.

Only the image member and the ``.cls`` member are ever decoded: JSON, pickle (``.pkl``, ``.pyd``) and torch
(``.pth``) payloads are never read, unlike webdataset's generic ``.decode()``.
Images come out in the mode the model wants (``'RGB'`` for ``in_chans=3``, ``'L'`` for ``in_chans=1``), whatever they
were stored as (grayscale, palette, RGBA, CMYK, 16-bit), with the EXIF orientation applied.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTS = ('jpg', 'jpeg', 'png', 'webp', 'bmp')
_PIL_FORMAT = {'jpg': 'JPEG', 'jpeg': 'JPEG', 'png': 'PNG', 'webp': 'WEBP', 'bmp': 'BMP'}
_EXIF_ORIENTATION = 0x0112

# Reasons a sample or shard is skipped: the keys of the loader's `skipped` counter.
MISSING_IMAGE = 'missing_image'        # sample has no jpg/jpeg/png/webp/bmp member
BAD_IMAGE = 'bad_image'                # image bytes that PIL cannot decode (garbage, truncated, bomb)
MISSING_LABEL = 'missing_label'        # sample has no .cls member
BAD_LABEL = 'bad_label'                # .cls is not an integer, or is outside [0, num_classes)
CORRUPT_SHARD = 'corrupt_shard'        # shards found truncated or damaged (events, not samples)
UNREADABLE_SHARD = 'unreadable_shard'  # shards that could not be opened (events, not samples)
LOST_SAMPLES = 'lost_samples'          # samples listed in shard_lengths but never read (damaged or short shards)
SAMPLE_REASONS = (MISSING_IMAGE, BAD_IMAGE, MISSING_LABEL, BAD_LABEL, LOST_SAMPLES)
REASONS = SAMPLE_REASONS + (CORRUPT_SHARD, UNREADABLE_SHARD)

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, UnidentifiedImageError,
                  Image.DecompressionBombError)


class BadSample(Exception):
    """A sample that must be skipped; ``reason`` is one of the ``REASONS`` above."""

    def __init__(self, reason: str, detail: str = ''):
        super().__init__(f'{reason}: {detail}' if detail else reason)
        self.reason = reason


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Apply the EXIF orientation, then convert to ``mode`` (``'RGB'`` or ``'L'``).

    Palette images with transparency go through RGBA (alpha is dropped, as ``convert('RGB')`` does);
    16-bit and 32-bit grayscale (``I;16``, ``I``, ``F``) are scaled to 8 bits first; CMYK uses PIL's conversion.
    """
    exif = img.getexif()
    if exif.get(_EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode == mode:
        return img
    if img.mode == 'P' and 'transparency' in img.info:
        img = img.convert('RGBA')
    elif img.mode.startswith('I') or img.mode == 'F':
        arr = np.asarray(img)
        arr = arr >> 8 if img.mode.startswith('I;16') or arr.max(initial=0) > 255 else arr
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), 'L')
    return img if img.mode == mode else img.convert(mode)


def decode_image(data: bytes, ext: str, mode: str = 'RGB', draft_size: int | None = None) -> Image.Image:
    """Decode image bytes to a loaded PIL image in ``mode`` (EXIF orientation applied).

    ``draft_size``: for JPEGs, let libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT scaling, ``Image.draft``) as long
    as both sides stay >= ``draft_size`` pixels; the caller picks it so that no later crop needs more pixels.
    Raises :class:`BadSample` (``bad_image``) for bytes PIL cannot decode.
    """
    fmt = _PIL_FORMAT.get(ext.lower())
    try:
        try:
            img = Image.open(io.BytesIO(data), formats=(fmt,) if fmt else None)
        except UnidentifiedImageError:   # extension lies about the format: let PIL sniff it
            img = Image.open(io.BytesIO(data))
        if draft_size and img.format == 'JPEG' and min(img.size) >= 2 * draft_size:
            img.draft(None, (draft_size, draft_size))
        img.load()
        return to_mode(img, mode)
    except _DECODE_ERRORS as e:
        raise BadSample(BAD_IMAGE, f'{type(e).__name__}: {e}') from None


def parse_label(data: bytes | None, num_classes: int | None) -> int:
    """Class index from a ``.cls`` payload (ASCII integer). Raises :class:`BadSample` when absent or out of range."""
    if data is None:
        raise BadSample(MISSING_LABEL)
    try:
        label = int(data)
    except ValueError:
        raise BadSample(BAD_LABEL, f'not an integer: {data[:20]!r}') from None
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise BadSample(BAD_LABEL, f'{label} outside [0, {num_classes})')
    return label


def make_sample(members: dict[str, bytes], transform, *, mode: str = 'RGB', num_classes: int | None = None,
                draft_size: int | None = None):
    """Pure function: raw members of one sample → ``(transform(image), label)``.

    ``members`` maps extensions to payloads (``{'jpg': b'...', 'cls': b'3'}``); the first image member in the order
    jpg, jpeg, png, webp, bmp is used. ``transform`` takes a PIL image (timm's ``create_transform`` with
    ``use_prefetcher=True`` returns a uint8 tensor (C, H_img, W_img)). Returns ``(transform output, int label)``.
    Raises :class:`BadSample` with the reason (label checked first, so no image is decoded for a bad label).
    """
    label = parse_label(members.get('cls'), num_classes)
    for ext in IMAGE_EXTS:
        data = members.get(ext)
        if data is not None:
            return transform(decode_image(data, ext, mode, draft_size)), label
    raise BadSample(MISSING_IMAGE, f'members {sorted(members)}')


def draft_size_for(img_size: int, train: bool, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                   crop_pct: float = 0.875) -> int:
    """Smallest shorter side (pixels) a JPEG may be DCT-downscaled to without changing what the transform sees.

    Training (RandomResizedCrop): the smallest crop side is >= shorter_side * sqrt(scale_min * min(ratio_min,
    1 / ratio_max)), so requiring that to be >= ``img_size`` keeps every crop at or above output resolution.
    Evaluation (resize the shorter side to img_size / crop_pct, centre crop): the resize target itself.
    """
    if train:
        return math.ceil(img_size / math.sqrt(scale[0] * min(ratio[0], 1 / ratio[1])))
    return math.ceil(img_size / crop_pct)
