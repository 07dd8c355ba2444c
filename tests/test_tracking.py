"""The training-side MLflow writer against real SQLite stores: jobs racing to create a new store."""
import subprocess
import sys
import textwrap

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow  # real multi-process launches: not in the fast lane

JOB = textwrap.dedent('''
    import sys
    from deepvit.training.tracking import MlflowTracker
    t = MlflowTracker(experiment='race', tracking_uri=sys.argv[1], run_name=sys.argv[2])
    t.log_metrics({'x': 1.0}, step=0)
    t.end()
''')


def test_jobs_starting_together_on_a_new_store_are_all_recorded(tmp_path):
    """Six jobs start at once on a store that does not exist (a job array): every one is recorded (MLflow's own
    table creation, unguarded, fails for most of them with alembic/SQLite errors)."""
    uri = f"sqlite:///{tmp_path / 'store' / 'new.db'}"
    procs = [subprocess.Popen([sys.executable, '-c', JOB, uri, f'job{i}'], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(6)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, '\n'.join(o[-1500:] for o in outs)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name('race')
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f'job{i}' for i in range(6)]
    assert all(r.info.status == 'FINISHED' and r.data.metrics == {'x': 1.0} for r in runs)
    assert len(client.search_experiments()) == 2  # Default and 'race', created once
