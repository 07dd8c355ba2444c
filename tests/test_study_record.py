"""A study's record survives in git (issue 20, item 8): the committed study folders under ``docs/`` hold the SQLite
store of every run whose artifacts they hold, and nothing cites a store that is not committed.

A study folder is ``docs/<name>/`` with a tracked ``study.json`` (``launch/study_guard.py``) or tracked run artifacts
(``artifacts/<experiment id>/<run id>/``); its store is ``docs/<name>/mlflow.db`` (``launch/study.py``'s tracking
URI). The one accepted exception is an explicit marker in ``study.json``::

    "database_lost": {"note": "<why>", "runs": ["<run id>", ...]}

naming the run folders whose database rows are gone (``docs/study_2epoch``: the first, 2-epoch CIFAR-10 study's 17 runs and its sweep
parent, whose store the old ``.gitignore`` rule swallowed). Any other run folder needs its row in the committed
database. The checks read git's index (what a commit holds, what CI's clean clone has); they skip only outside a git
checkout of this repository.
"""
import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOST_KEY = 'database_lost'
STORE = 'mlflow.db'
RUN_PATH = re.compile(r'^docs/([^/]+)/artifacts/[^/]+/([0-9a-f]{32})/')
CITED_STORE = re.compile(r'sqlite:///(docs/[\w./-]+\.db)')   # a placeholder (docs/<study>/...) is no citation


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(['git', '-C', str(ROOT), *args], capture_output=True, text=True)


def _in_checkout() -> bool:
    if shutil.which('git') is None:
        return False
    top = _git('rev-parse', '--show-toplevel')
    return top.returncode == 0 and Path(top.stdout.strip()).resolve() == ROOT


pytestmark = pytest.mark.skipif(not _in_checkout(), reason='not a git checkout of this repository')


def _tracked(under: str = 'docs') -> set:
    return set(_git('ls-files', '-z', '--', under).stdout.split('\0')) - {''}


def _ignored(path: str) -> bool:
    """Whether the ignore rules match ``path`` (``--no-index``: whether or not it is tracked or exists)."""
    return _git('check-ignore', '-q', '--no-index', path).returncode == 0


def study_folders(tracked: set) -> dict:
    """``{folder: set of run ids with tracked artifacts}`` for every study folder ``docs/<name>``."""
    folders = {f'docs/{m.group(1)}': set() for m in map(RUN_PATH.match, tracked) if m}
    folders.update({str(Path(p).parent): set() for p in tracked
                    if re.fullmatch(r'docs/[^/]+/study\.json', p) and str(Path(p).parent) not in folders})
    for m in filter(None, map(RUN_PATH.match, tracked)):
        folders[f'docs/{m.group(1)}'].add(m.group(2))
    return folders


def lost_marker(folder: str, tracked: set) -> dict:
    """The folder's ``database_lost`` marker (``{}`` when none); a marker must carry a note and a list of runs."""
    path = f'{folder}/study.json'
    if path not in tracked:
        return {}
    marker = json.loads((ROOT / path).read_text()).get(LOST_KEY, {})
    assert not marker or (isinstance(marker.get('note'), str) and marker['note'].strip()
                          and isinstance(marker.get('runs'), list)), f'{path}: {LOST_KEY} needs a note and runs'
    return marker


def runs_in_store(path: Path) -> set:
    """The run ids in a SQLite MLflow store (its ``runs`` table), read only."""
    with sqlite3.connect(f'file:{path}?mode=ro', uri=True) as conn:
        return {row[0] for row in conn.execute('SELECT run_uuid FROM runs')}


def test_a_study_store_under_docs_is_never_ignored_the_main_jobs_store_is():
    for folder in ('study', 'mini_study', 'a_future_study'):
        assert not _ignored(f'docs/{folder}/{STORE}'), f'.gitignore swallows docs/{folder}/{STORE}'
    assert _ignored(STORE) and _ignored(f'{STORE}.lock') and _ignored('runs/x/' + STORE)


def test_every_study_folder_commits_the_database_of_its_runs():
    tracked = _tracked()
    folders = study_folders(tracked)
    assert 'docs/study_2epoch' in folders and len(folders['docs/study_2epoch']) >= 17   # sees the 2-epoch study
    problems = []
    for folder, runs in sorted(folders.items()):
        marker, db = lost_marker(folder, tracked), f'{folder}/{STORE}'
        lost = set(marker.get('runs', []))
        if lost - runs:
            problems.append(f'{folder}: {LOST_KEY} names runs with no artifacts here: {sorted(lost - runs)}')
        if db in tracked:
            stored = runs_in_store(ROOT / db)
            problems += [f'{folder}: run {r} has artifacts but no row in {db}' for r in sorted(runs - stored - lost)]
            problems += [f'{folder}: {LOST_KEY} names run {r}, which {db} holds' for r in sorted(lost & stored)]
        elif runs - lost or not marker:
            problems.append(f'{folder}: {db} is not committed (git ls-files) but the folder holds runs '
                            f'{sorted(runs - lost)[:3]}... or a study.json; commit it')
    assert not problems, '\n'.join(problems)


def test_a_documented_loss_is_said_in_the_studys_report():
    tracked = _tracked()
    for folder in study_folders(tracked):
        if lost_marker(folder, tracked) and f'{folder}/report.md' in tracked:
            text = (ROOT / folder / 'report.md').read_text()
            assert 'database was lost' in text, f'{folder}/report.md does not say its database was lost'


def test_reports_cite_only_stores_that_are_committed():
    tracked = _tracked()
    cited = {(doc, m.group(1)) for doc in sorted(p for p in tracked if p.endswith('.md'))
             for m in CITED_STORE.finditer((ROOT / doc).read_text())}
    missing = sorted(c for c in cited if c[1] not in tracked)
    assert not missing, f'(document, store) cited but the store is not committed: {missing}'
