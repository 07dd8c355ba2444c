"""Built-in sample data: ``digits``, the real handwritten digits bundled with scikit-learn, as WebDataset shards.

scikit-learn's ``load_digits()`` (the UCI "Optical Recognition of Handwritten Digits" test set: 1,797 images of
8×8 pixels, 17 grey levels, 0..16; no download, it ships inside scikit-learn) is materialised on first use as
1-channel ('L') PNGs of 32×32 pixels (grey levels scaled to 0..255, upscaled 4× with bicubic interpolation so that
random crops are not limited to whole 8×8 pixels), split 80/20 per class (stratified, fixed seed) into
``train`` (1,437) and ``val`` (360), and written in the same layout as :mod:`deepvit.data.convert`'s output
(``digits-train-NNNN.tar`` of 256 samples, ``_info.json``, classes ``'0'``..``'9'``).

Location: ``$DEEPVIT_DATA_CACHE/digits-v1`` (default ``~/.cache/deepvit/digits-v1``). The shards are built in a
private temporary directory and renamed into place, so ranks starting together never see a half-written copy:
the first rename wins and the others discard their copy.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .info import DatasetInfo, SplitInfo, write_info
from .shards import AtomicShardWriter

def default_cache_dir() -> Path:
    """``$DEEPVIT_DATA_CACHE`` or ``~/.cache/deepvit``: where built-in data is materialised."""
    return Path(os.environ.get('DEEPVIT_DATA_CACHE') or Path.home() / '.cache' / 'deepvit')


DIGITS_VERSION = 'digits-v1'
DIGITS_SIZE = 32
DIGITS_SHARD_SIZE = 256
DIGITS_VAL_FRACTION = 0.2
DIGITS_SEED = 0


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (1797, 32, 32), labels int64 (1797,)) from scikit-learn's bundled digits."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    small = np.round(digits.images * (255 / 16)).astype(np.uint8)           # (N, 8, 8), 0..16 → 0..255
    big = np.stack([np.asarray(Image.fromarray(im, 'L').resize((DIGITS_SIZE, DIGITS_SIZE), Image.BICUBIC))
                    for im in small])
    return big, digits.target.astype(np.int64)


def _split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split
    train, val = train_test_split(np.arange(len(labels)), test_size=DIGITS_VAL_FRACTION, stratify=labels,
                                  random_state=DIGITS_SEED)
    return {'train': np.sort(train), 'val': np.sort(val)}


def _build(directory: Path) -> None:
    images, labels = digits_images()
    rng = np.random.default_rng(DIGITS_SEED)
    splits = {}
    for split, idx in _split_indices(labels).items():
        pattern = str(directory / f'digits-{split}-').replace('%', '%%') + '%04d.tar'
        with AtomicShardWriter(pattern, DIGITS_SHARD_SIZE) as sink:
            for i in idx[rng.permutation(len(idx))]:
                buf = io.BytesIO()
                Image.fromarray(images[i], 'L').save(buf, format='PNG')
                meta = {'label': int(labels[i]), 'class_name': str(labels[i]), 'path': f'sklearn:digits/{i}',
                        'width': DIGITS_SIZE, 'height': DIGITS_SIZE}
                sink.write(f'{split}_{i:08d}', {'png': buf.getvalue(), 'cls': str(labels[i]).encode(),
                                                'json': json.dumps(meta).encode()})
        splits[split] = SplitInfo(split, tuple(Path(f).name for f in sink.filenames), tuple(sink.counts))
    write_info(directory, DatasetInfo('digits', splits, tuple(str(c) for c in range(10))))


def digits_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory of the ``digits`` shards, built on first use (race-safe). Returns the path."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / DIGITS_VERSION
    if (final / '_info.json').is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{DIGITS_VERSION}.', dir=root))
    try:
        os.chmod(tmp, 0o755)
        _build(tmp)
        # a whole directory, not one file (deepvit.atomic is for files): rename(2) of a directory onto a
        # non-empty one fails, so the first process to publish wins and the others discard their copy
        os.rename(tmp, final)
    except OSError:
        if not (final / '_info.json').is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
