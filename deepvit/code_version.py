"""The version of the code a run executes: the git commit of the checkout holding the ``deepvit`` package and whether
its tracked files differ from that commit.

Read by the trainer on rank 0 only, when a run starts and each time it resumes (``record.code_tags`` turns it into
the run's ``code.*`` tags, ``docs/mlflow_schema.md``). Not a git checkout (an installed wheel, a copied tree), no
``git`` executable, or git failing: both fields are ``'unknown'`` — never an error.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

from .schema import CODE_COMMIT_TAG, CODE_DIRTY_TAG, CODE_RESUME_TAG, CODE_RESUMES_TAG, UNKNOWN_CODE

GIT_TIMEOUT_S = 30   # a `git status` on a large tree over a network file system; past it the version is unknown
PACKAGE_DIR = Path(__file__).resolve().parent
# a study's record under docs/<study>/ (launch/study.py): its MLflow store, artifacts and analysis — data, not code
STUDY_RECORD = ('docs/*/mlflow.db', 'docs/*/artifacts/**', 'docs/*/analysis/**', 'docs/*/*.json')


@dataclass(frozen=True)
class CodeVersion:
    """``commit``: 40 hex digits, or ``'unknown'``. ``dirty``: ``'true'`` when a tracked file differs from the commit
    (staged or not), ``'false'`` when none does, ``'unknown'`` when the commit is unknown. Strings, as MLflow tags.
    Untracked files do not count (outputs, stores and caches live in the tree; a new source file must be added to git
    to count), nor does a committed study record (:data:`STUDY_RECORD`): a study's runs write its store while they
    run, and the store is committed at every milestone, so the next run would otherwise read as dirty code."""
    commit: str
    dirty: str

    @property
    def known(self) -> bool:
        return self.commit != UNKNOWN_CODE


UNKNOWN = CodeVersion(UNKNOWN_CODE, UNKNOWN_CODE)


def code_version(directory: Optional[Union[str, Path]] = None) -> CodeVersion:
    """The code version of the git checkout holding ``directory`` (default: the ``deepvit`` package, i.e. the code
    that runs, wherever the working directory is). Runs ``git`` twice (``rev-parse HEAD``, ``status``).

    Args:
        directory: a folder inside the checkout.

    Returns:
        :class:`CodeVersion`; :data:`UNKNOWN` when ``directory`` is not in a git checkout, git is missing, or a git
        command fails or takes longer than :data:`GIT_TIMEOUT_S` seconds.
    """
    folder = Path(directory) if directory is not None else PACKAGE_DIR
    commit = _git(folder, 'rev-parse', '--verify', 'HEAD')
    if commit is None:
        return UNKNOWN
    status = _git(folder, 'status', '--porcelain', '--untracked-files=no', '--', ':(top)',
                  *(f':(top,exclude,glob){p}' for p in STUDY_RECORD))
    if status is None:
        return CodeVersion(commit, UNKNOWN_CODE)
    return CodeVersion(commit, 'true' if status else 'false')


def _git(folder: Path, *args: str) -> Optional[str]:
    """``git -C folder args`` stripped stdout, or ``None`` when it cannot run or exits non-zero."""
    try:
        done = subprocess.run(['git', '-C', str(folder), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):   # no git executable, the folder missing, the timeout
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_tags(version: CodeVersion, previous: Dict[str, str], resumed: bool, step: int) -> Dict[str, str]:
    """The ``code.*`` tags to set on a run (names: :mod:`deepvit.schema`, meaning: ``docs/mlflow_schema.md``).

    Args:
        version: the code running now (:func:`code_version`).
        previous: the run's tags before this start (``{}`` for a new run).
        resumed: this job continues an existing MLflow run.
        step: the optimizer step training continues from (0 for a new run).

    Returns:
        a new run: ``code.commit``, ``code.dirty``, ``code.resumes='0'``; a resume: ``code.resumes`` raised by one and
        ``code.resume.<n>.commit|dirty|step`` for it (the start's tags are left as they were: a run started before
        they existed keeps none).

    Raises:
        ValueError: ``step`` is negative, or the run's ``code.resumes`` tag is not a non-negative integer.
    """
    if step < 0:
        raise ValueError(f'step must be >= 0, got {step}')
    if not resumed:
        return {CODE_COMMIT_TAG: version.commit, CODE_DIRTY_TAG: version.dirty, CODE_RESUMES_TAG: '0'}
    count = previous.get(CODE_RESUMES_TAG, '0')
    if not count.isdigit():
        raise ValueError(f'tag {CODE_RESUMES_TAG} must be a non-negative integer, got {count!r}')
    n = int(count) + 1
    return {CODE_RESUMES_TAG: str(n), CODE_RESUME_TAG.format(n=n, field='commit'): version.commit,
            CODE_RESUME_TAG.format(n=n, field='dirty'): version.dirty,
            CODE_RESUME_TAG.format(n=n, field='step'): str(int(step))}


def run_commits(tags: Dict[str, str]) -> List[str]:
    """The commits a run trained with, in order, from its tags: ``code.commit`` then each resume's commit, repeats
    kept, ``'unknown'`` where git could not tell — and for the start of a run begun before the ``code.*`` tags
    existed but resumed after. ``[]`` when the run recorded none."""
    resumes, n = [], 1
    while CODE_RESUME_TAG.format(n=n, field='commit') in tags:
        resumes.append(tags[CODE_RESUME_TAG.format(n=n, field='commit')])
        n += 1
    if CODE_COMMIT_TAG not in tags and not resumes:
        return []
    return [tags.get(CODE_COMMIT_TAG, UNKNOWN_CODE)] + resumes
