"""Whether the two members of each paired cell ran on one code version (issue 20, item 8).

A paired cell is one series against the baseline at one depth and seed (the pairing of :mod:`analysis.stats`). Each
run's commits are read from its ``code.*`` tags (``deepvit.code_version.run_commits``: the start's commit and each
resume's, ``docs/mlflow_schema.md``). The report (:mod:`analysis.report`) lists them under "Code versions of the
pairs".
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import pandas as pd

from deepvit.code_version import run_commits
from deepvit.schema import CODE_DIRTY_TAG, CODE_RESUME_TAG, UNKNOWN_CODE

__all__ = ['run_tags', 'paired_code_versions', 'code_versions_markdown']

COLUMNS = ['series', 'depth', 'seed', 'baseline_run', 'run', 'baseline_commits', 'commits', 'one_commit', 'dirty']


def run_tags(client, run_ids) -> Dict[str, Dict[str, str]]:
    """``{run_id: tags}`` for each run (one ``get_run`` per run: ``search_runs`` already read them when the caller
    kept them — pass those instead)."""
    return {r: dict(client.get_run(r).data.tags) for r in run_ids}


def _dirty(tags: Mapping[str, str]) -> bool:
    """Whether the start or any resume ran with tracked files differing from its commit."""
    values = [tags.get(CODE_DIRTY_TAG)]
    n = 1
    while CODE_RESUME_TAG.format(n=n, field='commit') in tags:
        values.append(tags.get(CODE_RESUME_TAG.format(n=n, field='dirty')))
        n += 1
    return 'true' in values


def one_commit(a: List[str], b: List[str]) -> Optional[bool]:
    """``True`` when both runs' commit lists (:func:`~deepvit.code_version.run_commits`) hold one and the same
    commit, ``False`` when two different known commits appear (between the runs, or within one run that resumed on
    other code), ``None`` when it cannot be told (a run recorded none, or git could not tell)."""
    known = {c for c in a + b if c != UNKNOWN_CODE}
    if len(known) > 1:
        return False
    if not a or not b or UNKNOWN_CODE in a + b:
        return None
    return True


def paired_code_versions(runs: pd.DataFrame, tags: Mapping[str, Mapping[str, str]], baseline: str) -> pd.DataFrame:
    """One row per paired cell: each non-baseline series' run against the baseline's run at the same depth and seed.

    Args:
        runs: :func:`analysis.stats.from_runs_frame` (columns ``series``, ``depth``, ``seed``, ``run_id``).
        tags: ``{run_id: tags}`` (:func:`run_tags`), covering every run of ``runs``.
        baseline: the baseline series label.

    Returns:
        columns :data:`COLUMNS`: ``baseline_commits`` / ``commits`` as ``run_commits`` lists, ``one_commit``
        ``True`` / ``False`` / ``None`` (:func:`one_commit`), ``dirty`` ``True`` when either member ran on a dirty tree.
        Cells whose baseline run is missing are left out.

    Raises:
        ValueError: a column missing, more than one run per (series, depth, seed), or a run without tags.
    """
    missing = [c for c in ('series', 'depth', 'seed', 'run_id') if c not in runs.columns]
    if missing:
        raise ValueError(f'runs frame is missing column(s) {missing}')
    if runs.duplicated(['series', 'depth', 'seed']).any():
        raise ValueError('more than one run per (series, depth, seed): the runs cannot be paired')
    absent = sorted(set(runs['run_id']) - set(tags))
    if absent:
        raise ValueError(f'no tags given for run(s) {absent[:3]}')
    base = {(d, s): r for d, s, r in runs.loc[runs['series'] == baseline, ['depth', 'seed', 'run_id']].itertuples(
        index=False)}
    rows = []
    for series, depth, seed, run in runs.loc[runs['series'] != baseline, ['series', 'depth', 'seed',
                                                                           'run_id']].itertuples(index=False):
        partner = base.get((depth, seed))
        if partner is None:
            continue
        a, b = run_commits(dict(tags[partner])), run_commits(dict(tags[run]))
        rows.append([series, int(depth), int(seed), partner, run, a, b, one_commit(a, b),
                     _dirty(tags[partner]) or _dirty(tags[run])])
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(['series', 'depth', 'seed'], ignore_index=True)


def code_versions_markdown(cells: pd.DataFrame) -> List[str]:
    """The report's lines: counts of cells on one commit, on mixed code and unknown, then every mismatch (series,
    depth, seed and the commits, 10 hex digits each) and every cell that ran on a dirty tree."""
    if cells.empty:
        return ['No paired cells.']
    same, mixed = int((cells['one_commit'] == True).sum()), cells[cells['one_commit'] == False]  # noqa: E712
    lines = [f"Code versions of the {len(cells)} paired cells: {same} on one commit, {len(mixed)} on mixed code, "
             f"{len(cells) - same - len(mixed)} unknown (a run without `code.*` tags, or outside a git checkout)."]
    for row in mixed.itertuples(index=False):
        lines.append(f"- mismatch: {row.series}, depth {row.depth}, seed {row.seed}: baseline "
                     f"{_short(row.baseline_commits)}, this run {_short(row.commits)}")
    for row in cells[cells['dirty']].itertuples(index=False):
        lines.append(f"- dirty tree: {row.series}, depth {row.depth}, seed {row.seed}")
    return lines


def _short(commits: List[str]) -> str:
    return ' → '.join(c[:10] for c in commits) or 'none recorded'
