"""Training glue: config schema, DeepSpeed config checks, the epoch loop, checkpoints, MLflow tracking.

Takes any iterable of batches and any model from :mod:`deepvit.models`; only :mod:`.tracking` imports mlflow.
"""
from .config import Config, ConfigError, build_parser, resolve
from .ds_config import DeepSpeedConfigError, resolve_ds_config
