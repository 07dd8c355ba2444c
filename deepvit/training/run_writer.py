"""One tracking record sent to an MLflow run: the single place where a training run's writes reach MLflow (used by
:class:`deepvit.training.tracking.MlflowTracker` and by ``python -m deepvit.training.upload``). The record format is
:class:`deepvit.training.outage.Backlog`'s."""
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict


class RunWriter:
    """Sends one tracking record (:class:`deepvit.training.outage.Backlog`'s format) to an existing run: the one
    place where a training run's writes reach MLflow (the tracker, and ``python -m deepvit.training.upload``)."""

    def __init__(self, client, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def apply(self, r: Dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param
        kind, c, rid = r['kind'], self.client, self.run_id
        if kind == 'metrics':
            c.log_batch(rid, metrics=[Metric(k, v, r['timestamp'], r['step']) for k, v in r['metrics'].items()])
        elif kind == 'params':
            items = [Param(k, v) for k, v in r['params'].items()]
            for start in range(0, len(items), 100):
                c.log_batch(rid, params=items[start:start + 100])
        elif kind == 'tags':
            for key, value in r['tags'].items():
                c.set_tag(rid, key, value)
        elif kind == 'dict':
            c.log_dict(rid, r['data'], r['artifact_file'])
        elif kind == 'text':
            c.log_text(rid, r['text'], r['artifact_file'])
        elif kind == 'figure':
            c.log_figure(rid, r['figure'], r['artifact_file'])
        elif kind == 'numpy':
            import numpy as np
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / Path(r['artifact_file']).name
                np.save(path, r['array'])
                c.log_artifact(rid, str(path), str(Path(r['artifact_file']).parent) or None)
        elif kind == 'artifact':
            c.log_artifact(rid, r['path'], r['artifact_path'])
        elif kind == 'datasets':
            self._datasets(r['datasets'])
        elif kind == 'model':
            self._model(r)
        elif kind == 'status':
            c.set_terminated(rid, status=r['status'])
        else:
            raise ValueError(f"tracking record kind {kind!r} is not one of metrics, params, tags, dict, text, figure, "
                             f"numpy, artifact, datasets, model, status")

    def _datasets(self, datasets) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag
        if self.client.get_run(self.run_id).inputs.dataset_inputs:
            return  # a continued run logged them when it started
        inputs = [DatasetInput(Dataset(d['name'], d['digest'], 'local' if '://' not in d['source'] else 'url',
                                       d['source'], profile=json.dumps({'num_samples': d['num_samples'],
                                                                        'num_classes': d['num_classes'],
                                                                        'split': d['split']})),
                               tags=[InputTag('mlflow.data.context', d['context'])]) for d in datasets]
        self.client.log_inputs(self.run_id, datasets=inputs)

    def _model(self, r) -> None:
        from mlflow.entities import LoggedModelOutput
        exp_id = self.client.get_run(self.run_id).info.experiment_id
        model = self.client.create_logged_model(exp_id, name=r['name'], source_run_id=self.run_id,
                                                params=r['params'], model_type='timm')
        with tempfile.TemporaryDirectory() as tmp:
            for f in r['files']:
                _link_or_copy(Path(f), Path(tmp) / Path(f).name)
            self.client.log_model_artifacts(model.model_id, tmp)
        self.client.finalize_logged_model(model.model_id, 'READY')
        self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, r['step'])])


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (no copy of large weights) where the file system allows it, else a copy."""
    import shutil
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
