"""Shards end to end on real CIFAR-10 images: converter, timm's reader, ShardWriter input, multi-rank plans,
exact resume, bad input, the built-in digits, errors. The CIFAR subset is converted once per session."""
import collections
import hashlib
import json
import os
import shutil
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepvit.data import convert_image_folder, create_loader, create_mixup, digits_dir, read_info, resolve_shards
from deepvit.data import plan
from deepvit.data.shards import write_shard

SHARED = Path(os.environ.get('DEEPVIT_SHARED_DATA') or Path(__file__).resolve().parents[1].parent / 'shared' / 'data')
CIFAR = SHARED / 'cifar10_subset'
CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


@pytest.fixture(autouse=True, scope='module')
def _real_images_present():
    # The real-image tests are the point of this module: a missing data folder is a failure, not a skip.
    if not CIFAR.is_dir():
        pytest.fail(f'CIFAR-10 subset not found at {CIFAR}: the tests read ../shared/data beside the repository; '
                    f'set DEEPVIT_SHARED_DATA to its location')


@pytest.fixture(scope='session')
def cifar_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp('cifar_wds')
    result = convert_image_folder(CIFAR, out, 'cifar10', shard_size=700, workers=2, seed=0, progress=False)
    return out, result


def read_tar(path):
    """Samples of a tar with Python's own tarfile (independent of our reader): {key: {ext: bytes}}."""
    samples = collections.OrderedDict()
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split('.', 1)
            samples.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return samples


def digest(x):
    return hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest()


def eval_digests(loader):
    """Digests of the real (label >= 0) images a loader yields, and its batch count."""
    out, batches = [], 0
    for images, labels in loader:
        batches += 1
        out += [digest(img) for img, y in zip(images, labels) if y >= 0]
    return out, batches


# --- converter ---------------------------------------------------------------------------------------------------
def test_conversion_keeps_bytes_labels_and_counts(cifar_shards):
    out, result = cifar_shards
    info = read_info(out)
    assert info.splits['train'].num_samples == 5000 and info.splits['val'].num_samples == 1000
    assert list(info.classes) == CLASSES and result.skipped == []
    assert info.splits['train'].shard_lengths == (700,) * 7 + (100,)
    seen = set()
    for split in ('train', 'val'):
        for name, length in zip(info.splits[split].filenames, info.splits[split].shard_lengths):
            samples = read_tar(out / name)
            assert len(samples) == length
            for key, members in samples.items():
                assert '.' not in key and set(members) == {'jpg', 'cls', 'json'}
                meta = json.loads(members['json'])
                assert members['jpg'] == (CIFAR / meta['path']).read_bytes()       # original bytes
                assert int(members['cls']) == CLASSES.index(Path(meta['path']).parent.name) == meta['label']
                assert meta['class_name'] == CLASSES[meta['label']] and (meta['width'], meta['height']) == (32, 32)
                seen.add(meta['path'])
    assert len(seen) == 6000


def test_conversion_shuffles_across_shards(cifar_shards):
    out, _ = cifar_shards
    labels = [int(m['cls']) for m in read_tar(out / 'cifar10-train-0000.tar').values()]
    assert len(set(labels)) == 10 and max(collections.Counter(labels).values()) < 110   # not class-sorted


def small_tree(root, per_class=6):
    for split in ('train', 'val'):
        for c in CLASSES[:3]:
            (root / split / c).mkdir(parents=True)
            for f in sorted((CIFAR / split / c).iterdir())[:per_class]:
                shutil.copy(f, root / split / c / f.name.replace('.jpg', '.JPG'))
    (root / 'train' / 'bird' / 'broken.jpg').write_bytes(b'garbage, not a jpeg')
    Image.new('P', (20, 10), 3).save(root / 'train' / 'automobile' / 'palette.png')


def test_conversion_skips_garbage_reports_it_and_resumes(tmp_path, capsys):
    src, out = tmp_path / 'src', tmp_path / 'out'
    small_tree(src)
    from deepvit.data.convert import main
    assert main(['--src', str(src), '--out', str(out), '--name', 'tiny', '--shard-size', '5', '--workers', '1',
                 '--no-progress']) == 0
    printed = capsys.readouterr().out
    assert '1 files skipped' in printed
    report = (out / '_skipped.tsv').read_text().splitlines()
    assert len(report) == 1 and report[0].startswith('train/bird/broken.jpg\t')
    info = read_info(out)
    assert info.splits['train'].num_samples == 19 and info.splits['val'].num_samples == 18   # 20 files - 1 bad
    pngs = [m for f in info.splits['train'].filenames for m in read_tar(out / f).values() if 'png' in m]
    assert len(pngs) == 1                         # the PNG keeps its own format, not re-encoded
    before = {f.name: f.read_bytes() for f in out.glob('*.tar')}
    # a crash mid-run: one shard missing, a stale temporary file left behind; rerunning finishes the job
    (out / info.splits['train'].filenames[1]).unlink()
    (out / '.tiny-train-0001.tar.999.tmp').write_bytes(b'partial')
    result = convert_image_folder(src, out, 'tiny', shard_size=5, workers=2, progress=False)
    assert {f.name: f.read_bytes() for f in out.glob('*.tar')} == before      # identical, reproducible shards
    assert not list(out.glob('.*.tmp')) and len(result.skipped) == 1


def test_conversion_lists_entries_that_are_no_regular_file(tmp_path):
    """Issue 22.7: a FIFO, a dangling symlink and a symlink loop named *.jpg were dropped without a word, and the
    skip reason of an undecodable file printed PIL's '<_io.BytesIO object at 0x…>'."""
    src = tmp_path / 'src'
    small_tree(src)
    bird = src / 'train' / 'bird'
    os.mkfifo(bird / 'pipe.jpg')
    (bird / 'dangling.jpg').symlink_to(bird / 'nowhere.jpg')
    (bird / 'loop.jpg').symlink_to(bird / 'loop.jpg')
    result = convert_image_folder(src, tmp_path / 'out', 'tiny', shard_size=5, workers=1, progress=False)
    reasons = dict(result.skipped)
    assert reasons['train/bird/pipe.jpg'] == 'not a regular file: a FIFO'
    assert reasons['train/bird/dangling.jpg'] == 'not a regular file: a dangling symlink'
    assert reasons['train/bird/loop.jpg'] == 'not a regular file: a symlink loop'
    assert 'BytesIO' not in reasons['train/bird/broken.jpg'] and 'cannot identify image file' in \
        reasons['train/bird/broken.jpg']
    assert len((tmp_path / 'out' / '_skipped.tsv').read_text().splitlines()) == 4


def test_max_side_stores_smaller_copies_of_large_images_only(tmp_path):
    """Issue 21.4: --max-side PX re-encodes images whose longer side exceeds PX at that size (aspect kept, EXIF
    orientation applied, alpha kept as PNG), records the original size per sample and max_side in _info.json; smaller
    images keep their bytes; a rerun with another max_side rewrites the shards instead of reusing them."""
    from deepvit.data.convert import main
    src = tmp_path / 'src'
    for split in ('train', 'val'):
        (src / split / 'a').mkdir(parents=True)
    yy, xx = np.mgrid[0:600, 0:900]
    big = Image.fromarray(np.stack([xx * 255 // 900, yy * 255 // 600, (xx // 150 + yy // 150) % 2 * 200],
                                   -1).astype(np.uint8))
    big.save(src / 'train' / 'a' / 'big.jpg', quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6                                     # orientation: rotate 90° on display
    big.save(src / 'train' / 'a' / 'rotated.jpg', quality=95, exif=exif)
    Image.new('RGBA', (1000, 200), (1, 2, 3, 4)).save(src / 'train' / 'a' / 'alpha.png')
    Image.new('RGB', (30, 20)).save(src / 'val' / 'a' / 'small.jpg')
    small_bytes = (src / 'val' / 'a' / 'small.jpg').read_bytes()
    out = tmp_path / 'out'
    assert main(['--src', str(src), '--out', str(out), '--name', 't', '--workers', '1', '--no-progress',
                 '--max-side', '300']) == 0
    assert json.loads((out / '_info.json').read_text())['max_side'] == 300 and read_info(out).max_side == 300
    samples = {json.loads(m['json'])['path'].split('/')[-1]: m for f in sorted(out.glob('t-*.tar'))
               for m in read_tar(f).values()}
    meta = {k: json.loads(m['json']) for k, m in samples.items()}
    assert (meta['big.jpg']['width'], meta['big.jpg']['height'], meta['big.jpg']['resized_from']) == (300, 200, [900, 600])
    assert (meta['rotated.jpg']['width'], meta['rotated.jpg']['height']) == (200, 300)       # turned upright
    assert Image.open(__import__('io').BytesIO(samples['alpha.png']['png'])).size == (300, 60)
    assert samples['small.jpg']['jpg'] == small_bytes and 'resized_from' not in meta['small.jpg']
    stored = np.asarray(Image.open(__import__('io').BytesIO(samples['big.jpg']['jpg'])), dtype=float)
    expected = np.asarray(big.resize((300, 200), Image.LANCZOS), dtype=float)
    assert np.abs(stored - expected).mean() < 3           # the same picture, up to JPEG noise
    assert np.abs(stored - expected[::-1]).mean() > 30    # (a flipped one is far off)
    convert_image_folder(src, out, 't', workers=1, progress=False)        # no max_side: the originals again
    assert read_info(out).max_side is None
    big_again = [m for f in out.glob('t-train-*.tar') for m in read_tar(f).values()
                 if json.loads(m['json'])['path'].endswith('big.jpg')]
    assert big_again[0]['jpg'] == (src / 'train' / 'a' / 'big.jpg').read_bytes()
    with pytest.raises(ValueError, match='max_side=8'):
        convert_image_folder(src, out, 't', max_side=8)


def test_converter_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='src='):
        convert_image_folder(tmp_path / 'nope', tmp_path / 'o', 'x')
    (tmp_path / 'empty' / 'train').mkdir(parents=True)
    with pytest.raises(ValueError, match='holds no SPLIT/CLASS/image'):
        convert_image_folder(tmp_path / 'empty', tmp_path / 'o', 'x')
    with pytest.raises(ValueError, match='name='):
        convert_image_folder(CIFAR, tmp_path / 'o', 'a.b')


# --- interoperability ---------------------------------------------------------------------------------------------
def test_timm_reader_reads_our_shards(cifar_shards):
    import timm.data
    out, _ = cifar_shards
    ds = timm.data.create_dataset('wds/cifar10', root=str(out), split='val', is_training=False)
    counts = collections.Counter(int(y) for _, y in ds)
    assert sum(counts.values()) == 1000 and set(counts.values()) == {100}


def test_loader_reads_webdataset_shardwriter_output(tmp_path):
    import webdataset as wds
    files = sorted((CIFAR / 'val').glob('*/*.jpg'))[::25]      # 40 images, 10 classes
    with wds.ShardWriter(str(tmp_path / 'pub-val-%04d.tar'), maxcount=16, verbose=0) as sink:
        for i, f in enumerate(files):
            sink.write({'__key__': f'n{i:06d}', 'jpg': f.read_bytes(), 'cls': CLASSES.index(f.parent.name),
                        'json': {'filename': f.name}})
    loader = create_loader(str(tmp_path / 'pub-val-{0000..0002}.tar'), batch_size=8, train=False, img_size=32,
                           num_classes=10)
    assert loader.num_samples == 40
    labels = torch.cat([y for _, y in loader]).tolist()
    assert labels == [CLASSES.index(f.parent.name) for f in files]     # every sample, stored order, right label


# --- multi-rank semantics -----------------------------------------------------------------------------------------
@pytest.mark.slow  # several simulated ranks reading real shards (3 s)
def test_training_ranks_get_equal_full_batches(cifar_shards):
    out, _ = cifar_shards
    counts = []
    for rank in (0, 1):
        loader = create_loader(out, 'train', batch_size=64, train=True, img_size=16, rank=rank, world_size=2)
        shapes = [tuple(x.shape) for x, y in loader]
        assert len(shapes) == len(loader) == 5000 // (2 * 64)
        assert set(shapes) == {(64, 3, 16, 16)}
        counts.append(len(shapes))
    assert counts[0] == counts[1]


def test_training_plan_reads_each_sample_at_most_once_per_epoch():
    lengths = [700] * 7 + [100]
    per_rank, wb = plan.train_batches(5000, 64, 2, 3)
    seen = []
    for rank in (0, 1):
        for w in range(3):
            own, _ = plan.train_segments(lengths, 0, 4, rank, w, wb, 64)
            assert sum(s.count for s in own) == wb[w] * 64
            seen += [(s.shard, s.start + i) for s in own for i in range(s.count)]
    assert len(seen) == len(set(seen)) == per_rank * 2 * 64


def test_rank_and_world_size_from_environment(cifar_shards, monkeypatch):
    out, _ = cifar_shards
    monkeypatch.setenv('RANK', '1')
    monkeypatch.setenv('WORLD_SIZE', '3')
    loader = create_loader(out, 'val', batch_size=50, train=False, img_size=16)
    assert (loader.dataset.rank, loader.dataset.world_size) == (1, 3) and loader.rank_num_samples == 333
    assert sum(len(y) for _, y in loader) == 333


@pytest.mark.parametrize('world_size, num_workers', [(2, 0), pytest.param(2, 2, marks=pytest.mark.slow), (3, 0)])  # workers: 6 s
def test_evaluation_covers_every_sample_exactly_once(cifar_shards, world_size, num_workers):
    out, _ = cifar_shards
    reference, _ = eval_digests(create_loader(out, 'val', batch_size=64, train=False, img_size=16))
    assert len(reference) == 1000
    combined, per_rank = [], []
    for rank in range(world_size):
        loader = create_loader(out, 'val', batch_size=64, train=False, img_size=16, rank=rank,
                               world_size=world_size, num_workers=num_workers)
        digests, batches = eval_digests(loader)
        assert len(digests) == loader.rank_num_samples and batches == len(loader)
        combined += digests
        per_rank.append(len(digests))
    assert sorted(combined) == sorted(reference) and sum(per_rank) == 1000


def test_padded_evaluation_has_equal_batches_and_exact_count(cifar_shards):
    out, _ = cifar_shards
    combined, batch_counts = [], set()
    for rank in range(3):        # 1000 = 334 + 333 + 333: ranks would otherwise differ
        loader = create_loader(out, 'val', batch_size=64, train=False, img_size=16, rank=rank, world_size=3,
                               num_workers=0, pad=True)
        shapes = []
        for x, y in loader:
            shapes.append(tuple(x.shape))
            combined += [digest(img) for img, label in zip(x, y) if label >= 0]
        batch_counts.add(len(shapes))
        assert set(shapes) == {(64, 3, 16, 16)} and len(shapes) == len(loader)
    assert len(batch_counts) == 1 and len(combined) == len(set(combined)) == 1000


@pytest.mark.slow  # two passes over real shards (2.5 s)
def test_resume_mid_epoch_sees_the_same_stream(cifar_shards):
    out, _ = cifar_shards
    kw = dict(batch_size=32, train=True, img_size=16, rank=1, world_size=2, seed=3, num_workers=2,
              auto_augment='rand-m9-mstd0.5-inc1', re_prob=0.25, mixup=create_mixup(10))
    loader = create_loader(out, 'train', epoch=2, **kw)
    full = list(loader)
    resumed = create_loader(out, 'train', epoch=0, **kw)
    resumed.set_epoch(2, start_batch=5)
    tail = list(resumed)
    assert len(tail) == len(full) - 5
    for (xa, ya), (xb, yb) in zip(full[5:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert ya.shape == (32, 10) and torch.allclose(ya.sum(1), torch.ones(32))     # mixup soft targets
    resumed.set_epoch(3)
    assert not torch.equal(next(iter(resumed))[0], full[0][0])                      # a new epoch, a new order


def test_a_subset_keeps_the_full_class_list(tmp_path):
    """Three CIFAR classes converted with the full 10-class list keep their 10-class labels (was: 0-2), and the list
    reaches _info.json and the trainer's num_classes; an ImageNet subset gets its ImageNet-1k indices."""
    src = tmp_path / 'src'
    small_tree(src, per_class=2)
    (src / 'train' / 'bird' / 'broken.jpg').unlink()
    names = tmp_path / 'classes.txt'
    names.write_text('# CIFAR-10, standard order\n' + '\n'.join(CLASSES) + '\n')
    out = tmp_path / 'wds'
    result = convert_image_folder(src, out, 'sub', workers=1, progress=False, classes=names)
    assert result.info.classes == tuple(CLASSES) and read_info(out).classes == tuple(CLASSES)
    labels = {int(m['cls']) for t in out.glob('sub-train-*.tar') for m in read_tar(t).values()}
    assert labels == {CLASSES.index(c) for c in CLASSES[:3]}
    from deepvit.training import build as trainer_build, preflight as trainer_preflight
    from deepvit.training.config import Config
    cfg = Config()
    cfg.data.source, cfg.train.collapse_images, cfg.output_dir = str(out), 4, str(tmp_path / 'run')
    assert trainer_preflight.preflight(cfg, str(Path(__file__).resolve().parents[1] / 'ds_configs' / 'zero2.json')).num_classes == 10

    inet = tmp_path / 'inet'
    for synset in ('n01440764', 'n15075141'):   # ImageNet-1k indices 0 and 999
        (inet / 'val' / synset).mkdir(parents=True)
        shutil.copy(sorted((CIFAR / 'val' / 'cat').iterdir())[0], inet / 'val' / synset / 'a.jpg')
    res = convert_image_folder(inet, tmp_path / 'inet-wds', 'inet', workers=1, progress=False, classes='imagenet1k')
    assert len(res.info.classes) == 1000
    assert sorted(int(m['cls']) for t in (tmp_path / 'inet-wds').glob('inet-val-*.tar')
                  for m in read_tar(t).values()) == [0, 999]
    names.write_text('cat\ndog\n')   # folders missing from the list: refused before anything is written
    with pytest.raises(ValueError, match=r"class folder\(s\) not in the list: \['airplane', 'automobile', 'bird'\]"):
        convert_image_folder(src, tmp_path / 'never', 'x', workers=1, progress=False, classes=names)
    assert not (tmp_path / 'never' / '_info.json').exists()


def test_channels_are_recorded_and_set_in_chans(tmp_path, capsys):
    """Grayscale PNGs convert with channels 1 in _info.json, and the trainer builds a 1-channel model from them
    without --in-chans (was: 3 channels, silently); an explicit --in-chans 3 is kept and the mismatch reported."""
    src = tmp_path / 'gray'
    for split in ('train', 'val'):
        for c in ('a', 'b'):
            (src / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new('L', (12, 12), 40 * i).save(src / split / c / f'{i}.png')
    out = tmp_path / 'wds'
    assert convert_image_folder(src, out, 'gray', workers=1, progress=False).info.channels == 1
    assert json.loads((out / '_info.json').read_text())['channels'] == 1
    from deepvit.training import build as trainer_build, preflight as trainer_preflight
    from deepvit.training.config import Config
    ds = str(Path(__file__).resolve().parents[1] / 'ds_configs' / 'zero2.json')
    cfg = Config()
    cfg.data.source, cfg.train.collapse_images, cfg.output_dir = str(out), 4, str(tmp_path / 'run')
    assert trainer_preflight.preflight(cfg, ds).model_kwargs['in_chans'] == 1
    cfg.model.in_chans = 3
    assert trainer_preflight.preflight(cfg, ds).model_kwargs['in_chans'] == 3
    assert 'recorded as grayscale (1 channel(s)) at conversion' in capsys.readouterr().out
    colour = convert_image_folder(CIFAR, tmp_path / 'c', 'c', workers=2, progress=False, splits=['val'])
    assert colour.info.channels == 3


@pytest.mark.slow  # two full loader passes (8 s)
def test_device_side_input_gives_the_same_batches(cifar_shards):
    """With ``device`` given (the trainer passes its device), uint8 batches are normalised, erased and mixed on that
    device: on the CPU the batches are identical to the default path, and only CUDA pins memory."""
    out, _ = cifar_shards
    kw = dict(batch_size=16, train=True, img_size=16, seed=1, num_workers=1, re_prob=0.5, mixup=create_mixup(10))
    plain, on_device = create_loader(out, 'train', **kw), create_loader(out, 'train', device='cpu', **kw)
    assert on_device.device == torch.device('cpu') and not on_device.pin_memory
    for (xa, ya), (xb, yb) in zip(list(plain)[:4], list(on_device)[:4]):
        assert xb.device.type == 'cpu' and xb.dtype == torch.float32
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.slow  # builds the trainer's loaders (1 s)
def test_the_trainer_builds_its_loaders_on_its_device(tmp_path):
    from deepvit.training import build as trainer_build, preflight as trainer_preflight
    from deepvit.training.config import Config
    import timm
    cfg = Config()
    cfg.data.source, cfg.output_dir, cfg.data.holdout = 'digits', str(tmp_path / 'run'), 64
    plan = trainer_preflight.preflight(cfg, str(Path(__file__).resolve().parents[1] / 'ds_configs' / 'zero2.json'))
    model = timm.create_model(cfg.model.name, **plan.model_kwargs)
    loaders = trainer_build.build_loaders(plan, model, None, torch.device('cpu'))   # + holdout, train_eval
    assert len(loaders) == 5 and loaders[3].num_samples == 64 and loaders[4].num_samples == cfg.data.train_eval
    for loader in loaders:
        assert loader.device == torch.device('cpu')


# --- bad input ----------------------------------------------------------------------------------------------------
def corrupt_copy(src, dst):
    """Copy the val shards; shard 0: truncated mid-way; shard 1: a garbage image, a sample without label,
    a label out of range. Returns the number of samples lost to the truncation."""
    dst.mkdir()
    info = read_info(src)
    for f in info.splits['val'].filenames:
        shutil.copy(src / f, dst / f)
    shutil.copy(src / '_info.json', dst / '_info.json')
    first, second = (dst / f for f in info.splits['val'].filenames)
    samples = list(read_tar(second).items())
    samples[3][1]['jpg'] = b'\xff\xd8 garbage that is no JPEG'
    del samples[10][1]['cls']
    samples[20][1]['cls'] = b'42'
    write_shard(second, samples)
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2 + 100])
    kept = sum(1 for _ in read_tar_prefix(first))
    return info.splits['val'].shard_lengths[0] - kept


def read_tar_prefix(path):
    keys = []
    with open(path, 'rb') as f, tarfile.open(fileobj=f, mode='r|') as tf:
        try:
            for m in tf:
                keys.append(m.name.split('.')[0])
        except tarfile.ReadError:
            pass
    return sorted(set(keys))[:-1]      # the last key may be partial


@pytest.mark.parametrize('num_workers', [0, pytest.param(2, marks=pytest.mark.slow)])  # 2: worker start-up, ~7 s
def test_damaged_shards_are_read_to_the_end_and_counted(cifar_shards, tmp_path, num_workers):
    out, _ = cifar_shards
    lost = corrupt_copy(out, tmp_path / 'bad')
    assert lost > 0
    loader = create_loader(tmp_path / 'bad', 'val', batch_size=64, train=False, img_size=16,
                           num_workers=num_workers)
    n = sum(len(y) for _, y in loader)
    s = loader.skipped
    assert (s['bad_image'], s['missing_label'], s['bad_label']) == (1, 1, 1)
    assert s['corrupt_shard'] == 1 + num_workers // 2     # the damaged shard spans both workers' ranges
    assert s['lost_samples'] == lost and n + loader.skipped_samples == 1000
    padded = create_loader(tmp_path / 'bad', 'val', batch_size=64, train=False, img_size=16, rank=1,
                           world_size=2, pad=True, num_workers=num_workers)
    assert sum(1 for _ in padded) == len(padded)
    train = create_loader(tmp_path / 'bad', 'val', batch_size=64, train=True, img_size=16, rank=0, world_size=2)
    assert sum(1 for _ in train) == len(train) == 1000 // 128


# --- built-in data, errors ----------------------------------------------------------------------------------------
@pytest.mark.slow  # materialises the digits twice (1.6 s)
def test_digits_materialise_once_and_load_one_channel(tmp_path, monkeypatch):
    monkeypatch.setenv('DEEPVIT_DATA_CACHE', str(tmp_path))
    threads = [threading.Thread(target=digits_dir) for _ in range(2)]   # two ranks starting at once
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.name for p in tmp_path.iterdir()] == ['digits-v1']
    info = read_info(tmp_path / 'digits-v1')
    assert (info.splits['train'].num_samples, info.splits['val'].num_samples) == (1437, 360)
    loader = create_loader('digits', 'val', batch_size=90, train=False, img_size=16, in_chans=1)
    batches = list(loader)
    labels = torch.cat([y for _, y in batches])
    assert batches[0][0].shape == (90, 1, 16, 16) and loader.classes == tuple('0123456789')
    assert torch.bincount(labels).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]  # stratified 20 %
    from sklearn.datasets import load_digits
    first = next(iter(create_loader('digits', 'train', batch_size=8, train=True, img_size=16, in_chans=3)))[0]
    assert first.shape == (8, 3, 16, 16) and load_digits().images.shape == (1797, 8, 8)


def test_clear_errors_before_training(cifar_shards, tmp_path):
    out, _ = cifar_shards
    with pytest.raises(FileNotFoundError, match='source='):
        create_loader(tmp_path / 'missing.tar', batch_size=4, train=True)
    with pytest.raises(FileNotFoundError, match='matches no shard'):
        create_loader(str(tmp_path / '*.tar'), batch_size=4, train=True)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        create_loader(str(out / 'cifar10-val-{0000..0005}.tar'), batch_size=4, train=False)
    with pytest.raises(ValueError, match="split='test'"):
        create_loader(out, 'test', batch_size=4, train=True)
    with pytest.raises(ValueError, match='no full batch per rank'):
        create_loader(out, 'val', batch_size=600, train=True, world_size=2, rank=0)
    with pytest.raises(FileNotFoundError, match='without _info.json'):
        create_loader(tmp_path, batch_size=4, train=True)
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / '_info.json').write_text(json.dumps(
        {'name': 'e', 'splits': {'train': {'name': 'train', 'num_samples': 0, 'filenames': [], 'shard_lengths': []}}}))
    with pytest.raises(ValueError, match='is empty'):
        create_loader(empty, 'train', batch_size=4, train=True)
    with pytest.raises(ValueError, match='fewer than ranks \\* workers'):
        plan.check_enough_shards(2, 4)
    shards = resolve_shards([str(out / 'cifar10-val-0000.tar')])
    assert shards.lengths == (700,)    # lengths found in the _info.json next to the shard


@pytest.mark.slow  # starts loader worker processes (1.6 s)
def test_workers_come_from_a_forkserver_that_a_job_signal_leaves_alive(cifar_shards):
    """Workers are forked from a single-threaded forkserver, not from the (threaded) training process: a fork of the
    latter deadlocked a validation worker in CPython's after-fork cleanup and hung a 2-rank job. A SIGTERM to every
    process of the job (a cluster's preemption) leaves the server alive, so the epoch-end evaluation that follows a
    stop request still gets its workers from it; the batches do not change."""
    import multiprocessing.forkserver as forkserver
    import signal as signals
    from deepvit.data.workers import worker_context
    out, _ = cifar_shards
    loader = create_loader(out, 'val', batch_size=16, train=False, img_size=16, num_workers=1)
    first = [x for x, _ in loader]
    assert worker_context().get_start_method() == 'forkserver'
    server = forkserver._forkserver._forkserver_pid
    assert server is not None
    os.kill(server, signals.SIGTERM)
    time.sleep(0.5)
    assert open(f'/proc/{server}/stat').read().split(') ')[1][0] != 'Z'   # alive, not a zombie
    again = [x for x, _ in loader]
    assert forkserver._forkserver._forkserver_pid == server             # the same server made the new workers
    assert len(first) == len(again) and all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.slow  # a loader in a subprocess, killed (~8 s)
def test_workers_and_their_server_exit_when_the_loader_process_is_killed(cifar_shards):
    """SIGKILL of a process mid-epoch (a rank killed by the OOM killer or a scheduler) ends its loader workers, their
    forkserver and its resource tracker within seconds (was: all three left running for good, the worker keeping
    the server alive and the server being the parent DataLoader's own check watches)."""
    import psutil
    import subprocess
    import sys
    out, _ = cifar_shards
    code = ("import sys, multiprocessing.forkserver as fs, psutil\n"
            "from deepvit.data import create_loader\n"
            f"loader = create_loader({str(out)!r}, 'train', batch_size=8, train=True, img_size=16, num_workers=1)\n"
            "it = iter(loader); next(it)\n"
            "server = psutil.Process(fs._forkserver._forkserver_pid)\n"
            "mine = psutil.Process().children()\n"
            "print(' '.join(str(p.pid) for p in [server, *server.children(), *mine]), flush=True)\n"
            "import time; time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    helpers = [psutil.Process(p) for p in pids]
    assert len(helpers) >= 3   # the server, its worker, the resource tracker
    proc.kill()
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(helpers, timeout=20)
    assert not alive, [p.cmdline()[-1][:80] for p in alive]


@pytest.mark.slow  # reads every shard (1.2 s)
def test_holdout_split_is_a_fixed_disjoint_tail_of_every_shard(cifar_shards):
    """The holdout (issue: selection on held-out training data) is the last samples of every shard in proportion
    to its length: exact size, disjoint from what training reads, seed-independent, and readable by the loader."""
    from deepvit.data import create_loader
    from deepvit.data.sources import resolve_shards
    out, _ = cifar_shards
    shards = resolve_shards(str(out), 'train')
    train, held = shards.split_holdout(500)
    assert (train.num_samples, held.num_samples) == (shards.num_samples - 500, 500)
    assert all(abs(h - 500 * n / shards.num_samples) < 1 for h, n in zip(held.lengths, shards.lengths))
    keys = {u: list(read_tar(u)) for u in shards.urls}
    train_keys = {k for i, u in enumerate(train.urls) for k in keys[u][:train.lengths[i]]}
    held_keys = {k for i, u in enumerate(held.urls) for k in keys[u][held.offset(i):held.offset(i) + held.lengths[i]]}
    assert len(held_keys) == 500 and not train_keys & held_keys
    assert train_keys | held_keys == {k for ks in keys.values() for k in ks}
    assert shards.split_holdout(500) == (train, held) and held.digest() == shards.split_holdout(500)[1].digest()
    assert held.digest() != shards.split_holdout(501)[1].digest()
    loader = create_loader(str(out), 'train', batch_size=100, train=False, img_size=32, holdout_samples=500,
                           holdout=True)
    labels = torch.cat([y for _, y in loader])
    assert len(labels) == 500 and (labels >= 0).all()
    per_class = torch.bincount(labels, minlength=10)
    assert per_class.min() > 20   # a shuffled tail: every class is there
    assert create_loader(str(out), 'train', batch_size=100, train=True, img_size=32,
                         holdout_samples=500).num_batches == (shards.num_samples - 500) // 100
    with pytest.raises(ValueError, match=r'data.holdout=5000: must be in \[1, 4999\], fewer than the 5000 samples'):
        shards.split_holdout(5000)


@pytest.mark.slow  # loaders with workers for several world sizes (3 s)
def test_per_image_results_go_back_to_sample_order_for_any_world_size_and_workers(cifar_shards):
    """Issue 20.8: eval/correct.npy is indexed by sample. Every rank's loader rows (labels here, padding -1) put back
    through sample_positions / by_sample give the split's labels in shard order, for world sizes 1-3 and 0-3
    workers; the old rank-major order differs between layouts, which is why it could not be paired."""
    from deepvit.data import create_loader
    from deepvit.training.engine import by_sample
    out, _ = cifar_shards
    kw = dict(batch_size=64, train=False, img_size=8, pad=True)
    one = create_loader(str(out), 'val', rank=0, world_size=1, num_workers=0, **kw)
    reference = torch.cat([y for _, y in one])[:one.num_samples]    # one reader: shard order, then padding
    assert len(reference) == 1000 and (reference >= 0).all()
    layouts = []
    for world, workers in ((1, 0), (1, 3), (2, 2), (3, 1), (3, 3)):
        rows = []
        for rank in range(world):
            loader = create_loader(str(out), 'val', rank=rank, world_size=world, num_workers=workers, **kw)
            labels = torch.cat([y for _, y in loader])
            positions = loader.sample_positions()
            assert len(positions) == len(labels) == loader.num_batches * 64
            expect = torch.tensor([reference[p] if p >= 0 else -1 for p in positions])
            assert torch.equal(labels, expect), (world, workers, rank)
            rows.append(labels.to(torch.int8))
        gathered = torch.cat(rows)
        layouts.append(gathered)
        assert np.array_equal(by_sample(gathered, loader), reference.numpy().astype(np.int8)), (world, workers)
    assert not torch.equal(layouts[1][:len(reference)], layouts[0][:len(reference)])   # loader orders differ


def test_train_accuracy_subset_is_a_fixed_head_of_the_samples_trained_on(cifar_shards):
    """The train-accuracy subset (issue 20.2) is the first samples of every shard of the train view: exact size,
    inside what training reads (never the holdout), the same for every seed, and scored in eval mode."""
    from deepvit.data import create_loader
    from deepvit.data.sources import resolve_shards
    out, _ = cifar_shards
    train, held = resolve_shards(str(out), 'train').split_holdout(500)
    head = train.head(300)
    assert head.num_samples == 300 and all(h <= n for h, n in zip(head.lengths, train.lengths))
    keys = {u: list(read_tar(u)) for u in train.urls}
    head_keys = {k for i, u in enumerate(head.urls) for k in keys[u][:head.lengths[i]]}
    train_keys = {k for i, u in enumerate(train.urls) for k in keys[u][:train.lengths[i]]}
    held_keys = {k for i, u in enumerate(held.urls) for k in keys[u][held.offset(i):held.offset(i) + held.lengths[i]]}
    assert len(head_keys) == 300 and head_keys <= train_keys and not head_keys & held_keys
    assert train.head(10 ** 6) is train   # larger than the split: all of it
    kw = dict(batch_size=64, train=False, img_size=32, holdout_samples=500, head_samples=300)
    runs = [torch.cat([y for _, y in create_loader(str(out), 'train', seed=seed, **kw)]) for seed in (0, 1)]
    assert len(runs[0]) == 300 and torch.equal(runs[0], runs[1])   # seed-independent, unshuffled
    with pytest.raises(ValueError, match=r'data.train_eval=0: must be in \[1, '):
        train.head(0)
