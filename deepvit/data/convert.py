"""Convert an ImageFolder / ImageNet-style tree into WebDataset shards in the public ImageNet shard layout.

    python -m deepvit.data.convert --src ROOT --out DIR --name NAME [--shard-size N] [--workers K] [--seed S]
                                   [--max-side PX [--quality Q]]

``ROOT/SPLIT/CLASS/**/IMAGE`` (jpg, jpeg, png, webp, bmp, any case) becomes ``DIR/NAME-SPLIT-NNNN.tar``; one sample is
``KEY.jpg`` (or ``.png``, ``.webp``, ``.bmp``, after the format PIL detects: the original bytes, never re-encoded),
``KEY.cls`` (class index, classes in sorted folder-name order, the union over splits) and ``KEY.json``
(``label``, ``class_name``, ``path`` relative to ROOT, ``width``, ``height`` as stored, before EXIF orientation).
``--max-side PX`` stores smaller copies instead (the usual pre-resized ImageNet shards): an image whose longer side
exceeds PX is resized to a longer side of PX (aspect kept, Lanczos; EXIF orientation applied first) and re-encoded
as JPEG at ``--quality`` (PNG when it has an alpha channel); smaller images keep their bytes. Decoding then costs a
fraction (a 3000×2000 photo at ``--max-side 512``: ~1/30 of the pixels), but what a training crop sees changes:
RandomResizedCrop's smallest crops are upsampled more. ``width``/``height`` in ``KEY.json`` are then the stored size,
``resized_from`` the original, and ``_info.json`` records ``max_side``.
``KEY`` is ``SPLIT_NNNNNNNN``, the file's index in the sorted listing. ``DIR/_info.json`` follows the schema of timm's
``timm/data/readers/reader_wds.py`` (splits → name, num_samples, filenames, shard_lengths) plus ``classes``.

Samples are shuffled across shards with ``seed``. Every shard is written to a temporary file and renamed into place,
and a record of what it holds is kept in ``DIR/.convert/``: a crash never leaves a truncated shard under its final
name, and rerunning the same command skips the finished shards and writes the rest. Files PIL cannot decode, and
image-named entries that are no regular file (FIFOs, dangling symlinks, symlink loops), are skipped and listed in
``DIR/_skipped.tsv`` (path, reason); their count is printed at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .. import atomic
from .info import DatasetInfo, SplitInfo, write_info
from .shards import write_shard

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.webp', '.bmp')
_EXT_BY_FORMAT = {'JPEG': 'jpg', 'PNG': 'png', 'WEBP': 'webp', 'BMP': 'bmp'}
STATE_DIR = '.convert'
SKIPPED_REPORT = '_skipped.tsv'


@dataclass
class ConvertResult:
    """What :func:`convert_image_folder` wrote: the dataset info, and the skipped files as (path, reason)."""
    info: DatasetInfo
    skipped: list[tuple[str, str]] = field(default_factory=list)
    out: Path = Path('.')


def scan_image_folder(src: str | os.PathLike, splits=None) -> tuple[dict[str, list[tuple[str, str]]], list[str],
                                                                  list[tuple[str, str]]]:
    """List ``ROOT/SPLIT/CLASS/**/image`` files: ({split: sorted [(path relative to ROOT, class name)]}, classes,
    unusable), where ``unusable`` lists the entries with an image name that are no regular file (a FIFO, a socket, a
    dangling symlink, a symlink loop) as (path, reason): never read, but reported with the skipped files.

    Raises ``FileNotFoundError`` when ROOT does not exist and ``ValueError`` when a requested split is missing or
    no split holds a class folder with images.
    """
    root = Path(src)
    if not root.is_dir():
        raise FileNotFoundError(f'src={str(src)!r} is not a directory')
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))
    if splits is not None:
        missing = [s for s in splits if s not in names]
        if missing:
            raise ValueError(f'splits={list(splits)}: {missing} not found in {str(src)!r} (folders: {names})')
        names = list(splits)
    files, unusable = {}, []
    for split in names:
        items = []
        for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            for f in class_dir.rglob('*'):
                if f.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if f.is_file():
                    items.append((f.relative_to(root).as_posix(), class_dir.name))
                elif not f.is_dir():
                    unusable.append((f.relative_to(root).as_posix(), _not_a_file(f)))
        if items:
            files[split] = sorted(items)
    if not files:
        raise ValueError(f'src={str(src)!r} holds no SPLIT/CLASS/image files (extensions {IMAGE_SUFFIXES})')
    classes = sorted({c for items in files.values() for _, c in items})
    return files, classes, sorted(unusable)


def _not_a_file(path: Path) -> str:
    """Why an image-named entry is not read: the kind of thing it is."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            return 'not a regular file: a symlink loop'
        except OSError as e:
            return 'not a regular file: a symlink loop' if e.errno == 40 else 'not a regular file: a dangling symlink'
        return 'not a regular file: a symlink to something else'
    import stat
    mode = path.lstat().st_mode
    kind = 'a FIFO' if stat.S_ISFIFO(mode) else 'a socket' if stat.S_ISSOCK(mode) else 'a device' \
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 'something else'
    return f'not a regular file: {kind}'


def _reason(err: Exception) -> str:
    """One-line skip reason: the exception's type and words, without PIL's in-memory buffer repr."""
    text = re.sub(r'<_io\.BytesIO object at 0x[0-9a-fA-F]+>', 'these bytes', str(err))
    return f'{type(err).__name__}: {text}'.replace('\t', ' ').replace('\n', ' ')


GRAY_MODES = frozenset({'1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'F'})


def shrink_image(data: bytes, max_side: int, quality: int = 90) -> tuple[bytes, tuple[int, int]] | None:
    """``(new bytes, original (width, height))`` with the longer side resized to ``max_side`` pixels (aspect kept,
    Lanczos, EXIF orientation applied), JPEG at ``quality`` (PNG with alpha), or ``None`` when the image is no larger
    than ``max_side`` (it keeps its bytes). JPEGs are first DCT-scaled by libjpeg (``draft``) to no less than twice the
    target, so the filter still has 2× the output's pixels. Raises an exception when PIL cannot decode ``data``."""
    from PIL import ImageOps
    with Image.open(io.BytesIO(data)) as img:
        size = img.size
        if max(size) <= max_side:
            return None
        if img.format == 'JPEG':
            scale = 2 * max_side / max(size)
            img.draft(img.mode, (max(1, int(size[0] * scale)), max(1, int(size[1] * scale))))
        img = ImageOps.exif_transpose(img)
        alpha = img.mode in ('RGBA', 'LA', 'PA') or (img.mode == 'P' and 'transparency' in img.info)
        gray = img.mode in GRAY_MODES or img.mode == 'LA'
        img = img.convert(('LA' if gray else 'RGBA') if alpha else ('L' if gray else 'RGB'))
        w, h = img.size
        k = max_side / max(w, h)
        img = img.resize((max(1, round(w * k)), max(1, round(h * k))), Image.LANCZOS)
        buf = io.BytesIO()
        if alpha:
            img.save(buf, 'PNG')
        else:
            img.save(buf, 'JPEG', quality=quality)
    return buf.getvalue(), size


def inspect_image(data: bytes) -> tuple[str, int, int, int]:
    """(member extension, width, height, channels) of encoded image bytes, after decoding them fully (JPEGs at 1/8
    scale, which still reads every byte of the entropy-coded data); channels is 1 for a grayscale mode, else 3
    (palette images count as colour). Raises an exception when PIL cannot decode them."""
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        fmt = img.format
        channels = 1 if img.mode in GRAY_MODES else 3
        if fmt == 'JPEG':
            img.draft(None, (max(1, width // 8), max(1, height // 8)))
        img.load()
    return _EXT_BY_FORMAT.get(fmt, fmt.lower()), width, height, channels


@dataclass(frozen=True)
class _ShardTask:
    root: str
    out: str
    filename: str
    items: tuple[tuple[int, str, str, int], ...]   # (index in the sorted listing, relative path, class, label)
    split: str
    max_side: int | None = None
    quality: int = 90

    @property
    def digest(self) -> str:
        resize = [] if self.max_side is None else [self.max_side, self.quality]   # old records stay valid
        return hashlib.sha1(json.dumps([self.items, *resize] if resize else self.items).encode()).hexdigest()

    @property
    def state_path(self) -> Path:
        return Path(self.out) / STATE_DIR / f'{self.filename}.json'

    def done(self) -> dict | None:
        """The record of a finished shard with this exact content plan, else None."""
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        ok = state.get('digest') == self.digest and (Path(self.out) / self.filename).is_file()
        return state if ok else None


def _run_task(task: _ShardTask) -> dict:
    state = task.done()
    if state is not None:
        return state
    skipped, count, channels = [], 0, set()

    def samples():
        nonlocal count
        for index, rel, class_name, label in task.items:
            try:
                data = (Path(task.root) / rel).read_bytes()
                shrunk = shrink_image(data, task.max_side, task.quality) if task.max_side else None
                if shrunk is not None:
                    data, original = shrunk
                ext, width, height, chans = inspect_image(data)
            except Exception as e:  # noqa: BLE001 - any failure to read or decode skips this file, named in the report
                skipped.append((rel, _reason(e)))
                continue
            meta = {'label': label, 'class_name': class_name, 'path': rel, 'width': width, 'height': height}
            if shrunk is not None:
                meta['resized_from'] = list(original)
            count += 1
            channels.add(chans)
            yield f'{task.split}_{index:08d}', {ext: data, 'cls': str(label).encode(),
                                                'json': json.dumps(meta).encode()}

    write_shard(Path(task.out) / task.filename, samples())
    state = {'digest': task.digest, 'count': count, 'skipped': skipped, 'channels': sorted(channels)}
    atomic.write_text(task.state_path, json.dumps(state))
    return state


def plan_shards(files: dict[str, list[tuple[str, str]]], classes: list[str], src, out, name: str,
                shard_size: int, seed: int, max_side: int | None = None, quality: int = 90) -> list[_ShardTask]:
    """Shuffle each split with (seed, split) and cut it into shards of ``shard_size`` files."""
    label = {c: i for i, c in enumerate(classes)}
    tasks = []
    for split, items in files.items():
        indexed = [(i, rel, c, label[c]) for i, (rel, c) in enumerate(items)]
        random.Random(f'{seed}-{split}').shuffle(indexed)
        chunks = [indexed[i:i + shard_size] for i in range(0, len(indexed), shard_size)]
        width = max(4, len(str(len(chunks) - 1)))
        safe_split = split.replace('.', '_')
        for k, chunk in enumerate(chunks):
            tasks.append(_ShardTask(str(src), str(out), f'{name}-{safe_split}-{k:0{width}d}.tar', tuple(chunk),
                                    safe_split, max_side, quality))
    return tasks


def resolve_classes(spec: str | os.PathLike | None, found: list[str]) -> list[str]:
    """The class list that fixes the labels: ``None`` → the class folders found (sorted), ``'imagenet1k'`` → the
    1,000 ImageNet-1k synsets in the standard sorted order (timm's ``ImageNetInfo``, so label i is ImageNet-1k
    index i), else a file of class names, one per line (blank lines and ``#`` comments ignored).

    Raises ``ValueError`` (duplicates, or class folders missing from the list, named) or ``FileNotFoundError``.
    """
    if spec is None:
        return found
    if str(spec) == 'imagenet1k':
        from timm.data import ImageNetInfo
        names = list(ImageNetInfo().label_names())
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f'classes={str(spec)!r}: no such file (or give "imagenet1k")')
        names = [line.split('#', 1)[0].strip() for line in path.read_text().splitlines()]
        names = [n for n in names if n]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f'classes={str(spec)!r}: duplicate names {dupes[:5]}')
    missing = sorted(set(found) - set(names))
    if missing:
        raise ValueError(f'classes={str(spec)!r}: {len(missing)} class folder(s) not in the list: {missing[:5]}'
                         f'{" …" if len(missing) > 5 else ""}')
    return names


def convert_image_folder(src, out, name: str, *, shard_size: int = 1000, workers: int | None = None,
                         seed: int = 0, splits=None, progress: bool = True, classes=None,
                         max_side: int | None = None, quality: int = 90) -> ConvertResult:
    """Convert ``src`` (ROOT/SPLIT/CLASS/images) into shards in ``out``; see the module docstring for the layout.

    Args: shard_size: files per shard (before skipped ones are removed); workers: processes (default: every core;
    1 runs in this process); seed: shuffle seed; splits: split folder names (default: all); progress: tqdm bar;
    classes: the full class list (:func:`resolve_classes`: ``'imagenet1k'`` or a file), so that a subset of the
    folders keeps the labels of the whole dataset; written into ``_info.json``; max_side, quality: store images
    with a longer side above ``max_side`` pixels resized to it (:func:`shrink_image`; ``None``: original bytes).
    Returns a :class:`ConvertResult`. Raises ``ValueError`` for a bad name / shard_size / empty source and
    ``FileNotFoundError`` for a missing ``src``, before writing anything.
    """
    if not name or any(c in name for c in '/.{}'):
        raise ValueError(f'name={name!r} must be non-empty, without "/", "." or braces')
    if shard_size < 1:
        raise ValueError(f'shard_size={shard_size} must be >= 1')
    if max_side is not None and max_side < 16:
        raise ValueError(f'max_side={max_side} must be >= 16 pixels (or None: keep the images as they are)')
    if not 1 <= quality <= 95:
        raise ValueError(f'quality={quality} must be from 1 to 95 (PIL\'s JPEG quality scale)')
    files, found, unusable = scan_image_folder(src, splits)
    classes = resolve_classes(classes, found)
    out = Path(out)
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f'.{name}-*.tmp'):
        stale.unlink()
    tasks = plan_shards(files, classes, Path(src).resolve(), out, name, shard_size, seed, max_side, quality)
    workers = workers or os.cpu_count() or 1
    from tqdm import tqdm
    bar = tqdm(total=sum(len(t.items) for t in tasks), unit='img', disable=not progress, desc=f'convert {name}')
    states = {}
    if workers == 1:
        results = ((t, _run_task(t)) for t in tasks)
    else:
        pool = ProcessPoolExecutor(workers)
        futures = {pool.submit(_run_task, t): t for t in tasks}
        results = ((futures[f], f.result()) for f in as_completed(futures))
    try:
        for task, state in results:
            states[task.filename] = state
            bar.update(len(task.items))
    finally:
        bar.close()
        if workers != 1:
            pool.shutdown(cancel_futures=True)
    split_infos, skipped = {}, list(unusable)
    for split in dict.fromkeys(t.split for t in tasks):
        mine = [t for t in tasks if t.split == split]
        split_infos[split] = SplitInfo(split, tuple(t.filename for t in mine),
                                       tuple(states[t.filename]['count'] for t in mine))
        skipped += [tuple(s) for t in mine for s in states[t.filename]['skipped']]
    seen = [states[t.filename].get('channels') for t in tasks]
    union = set() if any(c is None for c in seen) else set().union(*map(set, seen))  # None: converted before
    channels = None if not union else (1 if union == {1} else 3)
    info = DatasetInfo(name, split_infos, tuple(classes), channels, max_side)
    report = out / SKIPPED_REPORT
    report.write_text(''.join(f'{path}\t{reason}\n' for path, reason in sorted(skipped)))
    write_info(out, info)
    return ConvertResult(info, sorted(skipped), out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='python -m deepvit.data.convert', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--src', required=True, help='ROOT holding split folders (train/, val/, …) of class folders')
    p.add_argument('--out', required=True, help='output directory for NAME-SPLIT-NNNN.tar and _info.json')
    p.add_argument('--name', required=True, help='dataset name, the shard file prefix (e.g. imagenet1k)')
    p.add_argument('--shard-size', type=int, default=1000, help='images per shard (default 1000)')
    p.add_argument('--workers', type=int, default=None, help='processes (default: every core)')
    p.add_argument('--seed', type=int, default=0, help='seed of the cross-shard shuffle (default 0)')
    p.add_argument('--splits', nargs='+', default=None, help='split folders to convert (default: all)')
    p.add_argument('--classes', default=None, metavar='FILE|imagenet1k',
                   help='the full class list that fixes the labels: a file of names (one per line) or imagenet1k '
                        '(the 1,000 synsets, standard order); default: the class folders found')
    p.add_argument('--max-side', type=int, default=None, metavar='PX',
                   help='store images whose longer side exceeds PX resized to PX (JPEG at --quality): much cheaper '
                        'decoding for a small training crop; default: original bytes')
    p.add_argument('--quality', type=int, default=90, help='JPEG quality of the resized images (default 90)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = p.parse_args(argv)
    try:
        result = convert_image_folder(args.src, args.out, args.name, shard_size=args.shard_size,
                                      workers=args.workers, seed=args.seed, splits=args.splits,
                                      progress=not args.no_progress, classes=args.classes,
                                      max_side=args.max_side, quality=args.quality)
    except (FileNotFoundError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    for split, s in result.info.splits.items():
        print(f'{split}: {s.num_samples} samples in {len(s.filenames)} shards')
    print(f'{len(result.info.classes)} classes; {len(result.skipped)} files skipped (not decodable or not a regular '
          f'file)'
          + (f', listed in {result.out / SKIPPED_REPORT}' if result.skipped else ''))
    print(f'wrote {result.out / "_info.json"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
