"""Analysis of a depth/width sweep, straight from MLflow: runs table, the paper's depth table, saturation depths,
attention-collapse figures.

Reads only what ``docs/mlflow_schema.md`` says a training run records; never imports the trainer.
Command line: ``python -m analysis --experiment NAME [--sweep ID] --out DIR`` (see ``python -m analysis -h``).
"""
from .report import analyze
from .saturation import DEFAULT_THRESHOLD, saturation_depth
from .store import AnalysisError, default_tracking_uri

__all__ = ['analyze', 'AnalysisError', 'default_tracking_uri', 'saturation_depth', 'DEFAULT_THRESHOLD']
