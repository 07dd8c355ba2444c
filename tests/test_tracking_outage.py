"""A tracking-server outage costs no training: a real ``mlflow server`` stopped and started under a live tracker."""
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from launching import free_port
from mlflow import MlflowClient

from deepvit.training import outage
from deepvit.training.tracking import MlflowTracker
from deepvit.training.upload import main as upload_main

pytestmark = pytest.mark.slow  # starts a real MLflow server (seconds each time): not in the fast lane


class Server:
    """``mlflow server`` on a SQLite file, stopped and started on the same port."""

    def __init__(self, tmp_path):
        self.db, self.art, self.port = tmp_path / 'server.db', tmp_path / 'art', free_port()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'mlflow', 'server', '--backend-store-uri', f'sqlite:///{self.db}',
             '--default-artifact-root', str(self.art), '--host', '127.0.0.1', '--port', str(self.port),
             '--workers', '1'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, 'MLFLOW_SERVER_ENABLE_JOB_EXECUTION': 'false'})   # no job workers: faster start
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{self.port}/health', timeout=2):
                    return
            except OSError:
                assert self.proc.poll() is None, 'mlflow server exited'
                time.sleep(0.5)
        raise TimeoutError('mlflow server did not start')

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGKILL)    # the server and the uvicorn worker it starts
        self.proc.wait()


def _steps(client, run_id, key='loss'):
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_an_outage_mid_run_queues_the_records_in_order_and_sends_them_when_the_store_is_back(tmp_path, monkeypatch,
                                                                                               capsys):
    for key in ('MLFLOW_HTTP_REQUEST_MAX_RETRIES', 'MLFLOW_HTTP_REQUEST_TIMEOUT'):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(outage, 'RETRY_INTERVAL_S', 0.0)
    monkeypatch.setattr(outage, 'END_WAIT_S', 1.0)
    server = Server(tmp_path)
    server.start()
    try:
        tracker = MlflowTracker('outage', tracking_uri=f'http://127.0.0.1:{server.port}',
                                backlog_dir=tmp_path / 'tracking_backlog')
        assert os.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES'] == '2'      # the client's own retries shortened
        tracker.log_metrics({'loss': 1.0}, 1)
        server.stop()

        t0 = time.perf_counter()
        tracker.log_metrics({'loss': 0.9}, 2)      # the store is down: queued, training goes on
        tracker.set_tags({'phase': 'during'})
        tracker.log_metrics({'loss': 0.8}, 3)
        stalled = time.perf_counter() - t0
        assert [r['kind'] for r in tracker._backlog.pending] == ['metrics', 'tags', 'metrics']
        assert stalled < 60, stalled                  # MLflow's default retries alone took ~2 minutes per write
        assert 'cannot be reached' in capsys.readouterr().err

        server.start()
        tracker.log_metrics({'loss': 0.7}, 4)      # the store is back: the backlog first, in order, then this
        assert tracker._backlog.pending == []
        client = MlflowClient(f'sqlite:///{server.db}')
        assert _steps(client, tracker.run_id) == [1, 2, 3, 4]
        assert client.get_run(tracker.run_id).data.tags['phase'] == 'during'
        assert 'is back after' in capsys.readouterr().err

        server.stop()                                # down again at the end of the run: no exception, clear words
        tracker.log_metrics({'loss': 0.6}, 5)
        tracker.log_numpy(np.arange(3), 'eval/correct.npy')
        tracker.end('FINISHED')
        err = capsys.readouterr().err
        assert '3 records are not in it (1 metrics, 1 numpy, 1 status; metrics of steps 5-5)' in err, err
        assert 'python -m deepvit.training.upload' in err and 'stays RUNNING there until they are uploaded' in err
        run = MlflowClient(f'sqlite:///{server.db}').get_run(tracker.run_id)
        assert run.info.status == 'RUNNING' and _steps(client, tracker.run_id) == [1, 2, 3, 4]

        server.start()                               # the store is back: the kept records go up, the run ends
        assert upload_main([str(tmp_path / 'tracking_backlog')]) == 0
        run = client.get_run(tracker.run_id)
        assert run.info.status == 'FINISHED' and _steps(client, tracker.run_id) == [1, 2, 3, 4, 5]
        np.testing.assert_array_equal(np.load(client.download_artifacts(tracker.run_id, 'eval/correct.npy',
                                                                        str(tmp_path / 'dl'))), np.arange(3))
        assert (tmp_path / 'tracking_backlog.uploaded').is_dir() and not (tmp_path / 'tracking_backlog').exists()
    finally:
        if server.proc.poll() is None:
            server.stop()


def test_a_refused_write_is_not_mistaken_for_an_outage(tmp_path):
    from mlflow.exceptions import MlflowException
    tracker = MlflowTracker('refused', tracking_uri=f"sqlite:///{tmp_path / 'db'}")
    tracker.log_params({'a': 1})
    with pytest.raises(MlflowException):        # changing a param is refused by the store: raised, not queued
        tracker.client.log_param(tracker.run_id, 'a', 2)
    with pytest.raises(MlflowException):
        tracker._backlog.send({'kind': 'params', 'params': {'a': '2'}})
    assert tracker._backlog.pending == []
    assert upload_main([str(tmp_path / 'nothing')]) == 2                 # no records there: one line, exit 2
