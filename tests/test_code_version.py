"""The code version a run records (``deepvit/code_version.py``): real git repositories in a temporary folder, and the
``code.*`` tags of a start and of resumes on a real SQLite store (no training)."""
import shutil
import subprocess

import pytest

from deepvit import schema
from deepvit.code_version import UNKNOWN, CodeVersion, code_tags, code_version, run_commits

needs_git = pytest.mark.skipif(shutil.which('git') is None, reason='no git executable')


def _git(folder, *args):
    return subprocess.run(['git', '-C', str(folder), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A one-commit repository (tracked ``a.py``); git never looks above ``tmp_path`` for another repository."""
    monkeypatch.setenv('GIT_CEILING_DIRECTORIES', str(tmp_path))
    folder = tmp_path / 'repo'
    folder.mkdir()
    _git(folder, 'init', '-q')
    (folder / 'a.py').write_text('x = 1\n')
    (folder / 'pkg').mkdir()
    (folder / 'pkg' / 'b.py').write_text('y = 2\n')
    _git(folder, 'add', '.')
    _git(folder, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '-m', 'one')
    return folder


@needs_git
def test_a_clean_checkout_gives_its_commit_and_not_dirty(repo):
    version = code_version(repo / 'pkg')   # any folder inside the checkout
    assert version == CodeVersion(_git(repo, 'rev-parse', 'HEAD'), 'false') and len(version.commit) == 40


@needs_git
def test_a_modified_tracked_file_makes_it_dirty_an_untracked_file_does_not(repo):
    (repo / 'notes.txt').write_text('untracked\n')
    assert code_version(repo).dirty == 'false'
    (repo / 'a.py').write_text('x = 2\n')
    assert code_version(repo) == CodeVersion(_git(repo, 'rev-parse', 'HEAD'), 'true')
    _git(repo, 'add', 'a.py')   # staged but not committed: still not the commit
    assert code_version(repo).dirty == 'true'


@needs_git
def test_a_committed_study_record_being_written_is_not_dirty_code(repo):
    study = repo / 'docs' / 'study'
    (study / 'artifacts' / '1').mkdir(parents=True)
    for f in ('mlflow.db', 'lr_selection.json', 'artifacts/1/m.json'):
        (study / f).write_text('0')
    (repo / 'docs' / 'guide.md').write_text('text\n')
    _git(repo, 'add', '.')
    _git(repo, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '-m', 'store')
    for f in ('mlflow.db', 'lr_selection.json', 'artifacts/1/m.json'):
        (study / f).write_text('1')   # the running study writes its record
    assert code_version(repo / 'pkg').dirty == 'false'
    (repo / 'docs' / 'guide.md').write_text('changed\n')   # any other tracked file under docs/ still counts
    assert code_version(repo / 'pkg').dirty == 'true'


@needs_git
def test_outside_a_checkout_or_without_git_the_version_is_unknown(repo, tmp_path, monkeypatch):
    plain = tmp_path / 'plain'
    plain.mkdir()
    assert code_version(plain) == UNKNOWN == CodeVersion('unknown', 'unknown') and not UNKNOWN.known
    assert code_version(tmp_path / 'missing') == UNKNOWN
    monkeypatch.setenv('PATH', str(tmp_path / 'no-bin'))   # no git executable on the PATH
    assert code_version(repo) == UNKNOWN


def test_a_new_run_records_its_start_and_each_resume_its_own_version_and_step():
    v1, v2 = CodeVersion('a' * 40, 'false'), CodeVersion('b' * 40, 'true')
    start = code_tags(v1, {}, resumed=False, step=0)
    assert start == {'code.commit': 'a' * 40, 'code.dirty': 'false', 'code.resumes': '0'}
    first = code_tags(v2, start, resumed=True, step=44)
    assert first == {'code.resumes': '1', 'code.resume.1.commit': 'b' * 40, 'code.resume.1.dirty': 'true',
                     'code.resume.1.step': '44'}
    second = code_tags(UNKNOWN, {**start, **first}, resumed=True, step=88)
    assert second['code.resumes'] == '2' and second['code.resume.2.step'] == '88'
    assert run_commits({**start, **first, **second}) == ['a' * 40, 'b' * 40, 'unknown']
    # a run started before the tags existed: the resume is counted from 1, its start is unknown
    old = code_tags(v2, {'family': 'vit'}, resumed=True, step=10)
    assert old['code.resumes'] == '1' and 'code.commit' not in old
    assert run_commits(old) == ['unknown', 'b' * 40] and run_commits({'family': 'vit'}) == []


@pytest.mark.parametrize('tags, step, message', [({}, -1, 'step must be >= 0'),
                                                 ({'code.resumes': 'two'}, 5, 'must be a non-negative integer')])
def test_bad_input_is_refused(tags, step, message):
    with pytest.raises(ValueError, match=message):
        code_tags(CodeVersion('a' * 40, 'false'), tags, resumed=True, step=step)


def test_the_tags_of_a_start_and_a_resume_land_on_one_run(store_template, tmp_path):
    """The trainer's path without training: open a run, tag it, reopen it by id (``--resume``) and tag the resume
    from the tags the tracker read back."""
    from deepvit.training.tracking import MlflowTracker
    shutil.copy(store_template, tmp_path / 'mlflow.db')
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = MlflowTracker(experiment='e', tracking_uri=uri)
    first.set_tags(code_tags(CodeVersion('a' * 40, 'false'), first.tags(), resumed=False, step=0))
    first.end('KILLED')
    again = MlflowTracker(experiment='e', tracking_uri=uri, run_id=first.run_id)
    assert again.tags()[schema.CODE_RESUMES_TAG] == '0'
    again.set_tags(code_tags(CodeVersion('b' * 40, 'true'), again.tags(), resumed=True, step=7))
    again.end()
    tags = MlflowTracker(experiment='e', tracking_uri=uri, run_id=first.run_id).tags()
    assert (tags['code.resumes'], tags['code.resume.1.step'], run_commits(tags)) == ('1', '7', ['a' * 40, 'b' * 40])
