"""``deepvit.atomic``: a reader sees the old file or the whole new one, never a part; no temporary file is left."""
import os

import pytest

from deepvit import atomic


def test_a_completed_write_replaces_the_target_and_leaves_nothing_else(tmp_path):
    target = tmp_path / 'f.json'
    target.write_text('old')
    atomic.write_text(target, 'new')
    assert target.read_text() == 'new' and os.listdir(tmp_path) == ['f.json']
    with atomic.atomic_path(tmp_path / 'w.bin') as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith('.w.bin.') and tmp.name.endswith('.tmp')
        tmp.write_bytes(b'weights')
    assert (tmp_path / 'w.bin').read_bytes() == b'weights' and sorted(os.listdir(tmp_path)) == ['f.json', 'w.bin']


@pytest.mark.parametrize('opener', ['file', 'path'])
def test_a_write_that_fails_midway_keeps_the_old_target_whole_and_removes_the_temporary(tmp_path, opener):
    target = tmp_path / 'shard.tar'
    target.write_bytes(b'complete old content')
    with pytest.raises(RuntimeError, match='writer died'):
        if opener == 'file':
            with atomic.atomic_file(target) as f:
                f.write(b'half of the new')
                f.flush()
                assert target.read_bytes() == b'complete old content'   # nothing reaches the target before commit
                raise RuntimeError('writer died')
        else:
            with atomic.atomic_path(target) as tmp:
                tmp.write_bytes(b'half of the new')
                raise RuntimeError('writer died')
    assert target.read_bytes() == b'complete old content'
    assert os.listdir(tmp_path) == ['shard.tar']                           # no temporary file left behind


def test_a_new_target_does_not_exist_until_the_write_completes(tmp_path):
    with atomic.atomic_file(tmp_path / 'new') as f:
        f.write(b'x' * 1000)
        assert not (tmp_path / 'new').exists() and [p.name for p in tmp_path.iterdir()] == [
            atomic.tmp_path(tmp_path / 'new').name]
    assert (tmp_path / 'new').read_bytes() == b'x' * 1000 and os.listdir(tmp_path) == ['new']
