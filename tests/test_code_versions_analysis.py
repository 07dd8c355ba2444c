"""The analysis of paired cells' code versions (``analysis/code_versions.py``) on runs written to a real store."""
import shutil

import pandas as pd
import pytest

from analysis.code_versions import code_versions_markdown, one_commit, paired_code_versions, run_tags
from deepvit.code_version import UNKNOWN, CodeVersion, code_tags

A, B = CodeVersion('a' * 40, 'false'), CodeVersion('b' * 40, 'true')


@pytest.fixture
def cells(store_template, tmp_path):
    """vit / deepvit at depth 2, seeds 0-3: seed 0 one commit; seed 1 the deepvit resumed on other, dirty code;
    seed 2 the vit recorded nothing (made before the tags); seed 3 has no vit run."""
    from mlflow import MlflowClient
    shutil.copy(store_template, tmp_path / 'mlflow.db')
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment('e')
    plan = {('vit', 0): [A], ('deepvit', 0): [A], ('vit', 1): [A], ('deepvit', 1): [A, B], ('vit', 2): [],
            ('deepvit', 2): [A], ('deepvit', 3): [A]}
    rows = []
    for (series, seed), versions in plan.items():
        run = client.create_run(exp).info.run_id
        tags = {}
        for i, v in enumerate(versions):
            tags.update(code_tags(v, tags, resumed=i > 0, step=10 * i))
        for k, v in tags.items():
            client.set_tag(run, k, v)
        rows.append({'series': series, 'depth': 2, 'seed': seed, 'run_id': run})
    runs = pd.DataFrame(rows)
    return paired_code_versions(runs, run_tags(client, runs['run_id']), 'vit')


def test_each_paired_cell_says_whether_both_members_ran_on_one_commit(cells):
    assert list(cells['seed']) == [0, 1, 2]                      # seed 3 has no baseline partner
    assert list(cells['one_commit']) == [True, False, None]
    assert list(cells['dirty']) == [False, True, False]
    assert cells.loc[1, 'commits'] == ['a' * 40, 'b' * 40] and cells.loc[2, 'baseline_commits'] == []
    text = '\n'.join(code_versions_markdown(cells))
    assert '3 paired cells: 1 on one commit, 1 on mixed code, 1 unknown' in text
    assert f"mismatch: deepvit, depth 2, seed 1: baseline {'a' * 10}, this run {'a' * 10} → {'b' * 10}" in text
    assert 'dirty tree: deepvit, depth 2, seed 1' in text and 'seed 0' not in text


def test_one_run_resumed_on_other_code_is_a_mismatch_and_unknown_is_never_a_match():
    assert one_commit(['a'], ['a', 'b']) is False and one_commit(['a'], ['a']) is True
    assert one_commit(['a'], [UNKNOWN.commit]) is None and one_commit([], ['a']) is None


@pytest.mark.parametrize('runs, tags, message', [
    (pd.DataFrame({'series': ['vit'], 'depth': [2], 'seed': [0]}), {}, 'missing column'),
    (pd.DataFrame({'series': ['vit'] * 2, 'depth': [2] * 2, 'seed': [0] * 2, 'run_id': ['r', 's']}), {},
     'cannot be paired'),
    (pd.DataFrame({'series': ['vit'], 'depth': [2], 'seed': [0], 'run_id': ['r']}), {}, 'no tags given')])
def test_bad_input_is_refused(runs, tags, message):
    with pytest.raises(ValueError, match=message):
        paired_code_versions(runs, tags, 'vit')
