"""One run's output folder (``--output-dir``): the only place that knows its layout.

    <output_dir>/
      checkpoints/          DeepSpeed checkpoint tags (epoch0003, step000120, *_universal) and ``latest``
                            (:mod:`.checkpoint`)
      model.safetensors     the exported fp32 weights, written when the run finishes
      model.json            {"name": ..., "kwargs": {...}}: the ``timm.create_model`` call that rebuilds the model
      run.json              {"run_id": ...}: lets ``--resume`` continue the MLflow run even before a checkpoint
      config.json           the resolved config (flat), compared with a resume's
      tracking_backlog/     records kept from an unreachable tracking store (:mod:`.outage`)
      .job.lock, .job.json  the job lock and its holder (:mod:`.joblock`)
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Union

LATEST = 'latest'   # the file in checkpoints/ naming the newest complete tag


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run's output folder; nothing is created or read on construction."""
    root: Path

    @classmethod
    def of(cls, output_dir: Union[str, Path]) -> 'RunDir':
        """The folder of ``output_dir``, made absolute (a job's ranks may change directory)."""
        return cls(Path(output_dir).resolve())

    @property
    def checkpoints(self) -> Path:
        return self.root / 'checkpoints'

    @property
    def export(self) -> Path:
        return self.root / 'model.safetensors'

    @property
    def model_file(self) -> Path:
        return self.root / 'model.json'

    @property
    def run_file(self) -> Path:
        return self.root / 'run.json'

    @property
    def config_file(self) -> Path:
        return self.root / 'config.json'

    @property
    def backlog(self) -> Path:
        return self.root / 'tracking_backlog'

    @property
    def lock_file(self) -> Path:
        return self.root / '.job.lock'

    @property
    def holder_file(self) -> Path:
        return self.root / '.job.json'

    def holds_run(self) -> bool:
        """A checkpoint or a recorded MLflow run is here: a new (non-resume) job must not start in this folder."""
        return (self.checkpoints / LATEST).is_file() or self.run_file.is_file()


def checkpoint_folder(path: Union[str, Path]) -> Path:
    """The checkpoints folder a user named: ``path`` itself when it holds ``latest``, else ``path/checkpoints``
    (a run's output folder)."""
    p = Path(path)
    return p if (p / LATEST).is_file() else RunDir(p).checkpoints
