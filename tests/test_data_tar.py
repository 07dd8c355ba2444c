"""deepvit.data.shards: webdataset's tar iterators and writers as the loader uses them. Truncation at every place in
a shard, gzip, sample positions, payloads never decoded, atomic and reproducible writes. Synthetic shards, fast."""
import gzip
import io
import pickle
import tarfile

import pytest
import webdataset as wds

from deepvit.data import create_loader
from deepvit.data.shards import AtomicShardWriter, CorruptShardError, count_samples, iter_samples, write_shard

WANTED = frozenset(('jpg', 'png', 'cls'))


class Boom:
    """Unpickling this runs code: a loader that decodes .pkl payloads would raise."""

    def __reduce__(self):
        return (exec, ("raise RuntimeError('a pickle was decoded')",))


def samples(n=8):
    return [(f'k{i:03d}', {'jpg': bytes([i + 1]) * (600 + 97 * i), 'cls': str(i).encode(),
                           'json': b'{"i": %d}' % i, 'pkl': pickle.dumps(Boom())}) for i in range(n)]


def shard_bytes(tmp_path, n=8):
    path = tmp_path / 'full.tar'
    write_shard(path, samples(n))
    return path.read_bytes()


def header_offsets(data):
    """Offsets of each sample's first member header, and of the end-of-archive block (independent: tarfile)."""
    firsts, end = {}, 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf.getmembers():
            firsts.setdefault(m.name.split('.')[0], m.offset)
            end = m.offset_data + -(-m.size // 512) * 512
    return list(firsts.values()), end


def read_all(path, **kw):
    out, error = [], None
    try:
        for sample in iter_samples(str(path), WANTED, **kw):
            out.append(sample)
    except CorruptShardError as e:
        error = e
    return out, error


def test_full_shard_reads_only_wanted_members_in_order(tmp_path):
    path = tmp_path / 's.tar'
    write_shard(path, samples())
    got, error = read_all(path)
    assert error is None and [k for _, k, _ in got] == [k for k, _ in samples()]
    assert [i for i, _, _ in got] == list(range(8))
    for (_, _, members), (_, ref) in zip(got, samples()):
        assert members == {'jpg': ref['jpg'], 'cls': ref['cls']}        # .json, .pkl never read
    assert count_samples(str(path)) == (8, None)
    # the same shard through webdataset's own pipeline (ground truth for keys and bytes)
    ref = list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False))
    assert [s['__key__'] for s in ref] == [k for _, k, _ in got] and ref[3]['jpg'] == got[3][2]['jpg']


def test_truncation_anywhere_yields_complete_samples_then_raises(tmp_path):
    data = shard_bytes(tmp_path)
    firsts, end = header_offsets(data)
    full, _ = read_all(tmp_path / 'full.tar')
    path = tmp_path / 'cut.tar'
    cuts = sorted({c for b in range(0, end + 1024, 512) for c in (b, b + 1, b + 300, b + 511)})
    for cut in cuts:
        path.write_bytes(data[:cut])
        got, error = read_all(path)
        # a sample is known complete once the header after it has been read: the next sample's or the end block
        complete = sum(1 for nxt in firsts[1:] + [end] if cut >= nxt + 512)
        assert got == full[:complete], cut                     # never a partial sample, never a sample lost early
        assert (error is None) == (cut >= end + 512), cut      # damage reported unless only the padding is missing
        count, damage = count_samples(str(path))
        assert count == complete and (damage is None) == (error is None), cut


def test_damage_inside_the_range_and_outside_it(tmp_path):
    data = shard_bytes(tmp_path)
    firsts, _ = header_offsets(data)
    path = tmp_path / 'cut.tar'
    path.write_bytes(data[:firsts[5] + 700])                   # inside sample 5
    got, error = read_all(path, start=1, stop=4)
    assert [i for i, _, _ in got] == [1, 2, 3] and error is None   # the range ends before the damage
    got, error = read_all(path, start=3, stop=8)
    assert [i for i, _, _ in got] == [3, 4] and isinstance(error, CorruptShardError)


def test_gzipped_shard_and_truncated_gzip(tmp_path):
    data = shard_bytes(tmp_path)
    full, _ = read_all(tmp_path / 'full.tar')
    path = tmp_path / 's.tar.gz'
    gz = gzip.compress(data)
    path.write_bytes(gz)
    assert read_all(path) == (full, None)
    for cut in range(0, len(gz), max(1, len(gz) // 40)):
        path.write_bytes(gz[:cut])
        got, error = read_all(path)
        assert got == full[:len(got)] and (error is not None or len(got) == len(full)), cut


def test_positions_count_samples_without_wanted_members(tmp_path):
    rows = samples(6)
    rows[2] = ('k002', {'json': b'{}'})                        # nothing the loader reads
    rows[5] = ('k005', {'txt': b'x'})                          # last sample, nothing wanted
    path = tmp_path / 's.tar'
    write_shard(path, rows)
    got, error = read_all(path)
    assert error is None and [(i, k) for i, k, _ in got] == [(i, f'k{i:03d}') for i in range(6)]
    assert got[2][2] == {} and got[5][2] == {}
    for start, stop in [(0, 3), (2, 5), (3, None), (5, 6), (6, None)]:
        assert read_all(path, start=start, stop=stop)[0] == got[start:stop]
    assert count_samples(str(path)) == (6, None)


def test_unreadable_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(iter_samples(str(tmp_path / 'missing.tar'), WANTED))
    (tmp_path / 'empty.tar').write_bytes(b'')
    assert read_all(tmp_path / 'empty.tar')[0] == [] and count_samples(str(tmp_path / 'empty.tar'))[1]
    (tmp_path / 'junk.tar').write_bytes(b'not a tar at all' * 100)
    assert count_samples(str(tmp_path / 'junk.tar'))[0] == 0 and count_samples(str(tmp_path / 'junk.tar'))[1]


def test_writers_are_atomic_reproducible_and_reject_dotted_keys(tmp_path):
    with pytest.raises(ValueError, match='must not contain a dot'):
        write_shard(tmp_path / 'bad.tar', [('a.b', {'cls': b'1'})])
    assert list(tmp_path.iterdir()) == []                      # no temporary file left behind, no shard
    write_shard(tmp_path / 'a.tar', samples())
    write_shard(tmp_path / 'b.tar', samples())
    assert (tmp_path / 'a.tar').read_bytes() == (tmp_path / 'b.tar').read_bytes()
    with AtomicShardWriter(str(tmp_path / 'w-%04d.tar'), maxcount=3) as sink:
        for key, members in samples(7):
            sink.write(key, members)
    assert sink.counts == [3, 3, 1] and [p.rsplit('/', 1)[-1] for p in sink.filenames] == [
        'w-0000.tar', 'w-0001.tar', 'w-0002.tar']
    assert not list(tmp_path.glob('.*.tmp'))
    keys = [s['__key__'] for s in wds.WebDataset(str(tmp_path / 'w-{0000..0002}.tar'), shardshuffle=False,
                                                 empty_check=False)]
    assert keys == [k for k, _ in samples(7)]


def test_loader_never_unpickles_and_reads_shards_without_info(tmp_path):
    from PIL import Image
    buf = io.BytesIO()
    Image.new('RGB', (20, 20), (200, 30, 30)).save(buf, format='PNG')
    rows = [(f'n{i:04d}', {'png': buf.getvalue(), 'cls': str(i % 3).encode(), 'pkl': pickle.dumps(Boom()),
                           'pth': pickle.dumps(Boom())}) for i in range(12)]
    write_shard(tmp_path / 'x-0000.tar', rows)
    loader = create_loader(str(tmp_path / 'x-0000.tar'), batch_size=4, train=False, img_size=16, num_classes=3)
    assert loader.num_samples == 12                            # counted without _info.json
    labels = [int(v) for _, y in loader for v in y]
    assert labels == [i % 3 for i in range(12)] and loader.skipped_samples == 0


def test_damaged_header_ends_the_shard_and_is_counted(tmp_path):
    """tarfile takes a header with a wrong checksum for the end of the archive: no error is raised, so the loader
    compares with the length _info.json lists and counts the shard as corrupt and the rest as lost."""
    from PIL import Image

    from deepvit.data import DatasetInfo, SplitInfo, write_info
    buf = io.BytesIO()
    Image.new('RGB', (20, 20), (20, 90, 200)).save(buf, format='PNG')
    rows = [(f'n{i:04d}', {'cls': b'1', 'png': buf.getvalue()}) for i in range(10)]
    write_shard(tmp_path / 'd-0000.tar', rows)
    data = bytearray((tmp_path / 'd-0000.tar').read_bytes())
    firsts, _ = header_offsets(bytes(data))
    data[firsts[6] + 3] ^= 0x55                               # a name byte: the checksum no longer matches
    (tmp_path / 'd-0000.tar').write_bytes(bytes(data))
    assert count_samples(str(tmp_path / 'd-0000.tar')) == (6, None)
    write_info(tmp_path, DatasetInfo('d', {'val': SplitInfo('val', ('d-0000.tar',), (10,))}, ('a', 'b')))
    loader = create_loader(tmp_path, 'val', batch_size=4, train=False, img_size=16)
    assert sum(len(y) for _, y in loader) == 6
    assert loader.skipped['corrupt_shard'] == 1 and loader.skipped['lost_samples'] == 4
