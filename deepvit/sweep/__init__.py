"""Depth/width sweeps: one DeepSpeed launch of ``launch/train.py`` per grid point, idempotent across reruns.

:mod:`.plan` lays out the grid (pure: points, keys, sweep id, the driver's reserved train.py flags, sizes from the
registered variants); :mod:`.launch` runs it (subprocesses, the MLflow parent run, skip/resume); :mod:`.cli` is the
command line (``deepvit-sweep``, ``python -m deepvit.sweep``, ``launch/sweep.py``). mlflow is imported only when a
store is touched.
"""
from .cli import build_parser, main
from .launch import find_or_create_parent, point_statuses, run, status_counts, summarise_parent
from .plan import (DEFAULT_SIZE, DRIVER_FLAGS, FAMILIES, REMEDIES, SIZES, Plan, Point, SweepError, grid_points,
                   make_plan, parse_grid_axis, parse_ints, parse_widths, point_command, size_defaults, size_head_dim,
                   split_output_dir, sweep_id_for)

__all__ = ['build_parser', 'main', 'run', 'find_or_create_parent', 'point_statuses', 'status_counts',
           'summarise_parent', 'DEFAULT_SIZE', 'DRIVER_FLAGS', 'FAMILIES', 'REMEDIES', 'SIZES', 'Plan', 'Point',
           'SweepError', 'grid_points', 'make_plan', 'parse_grid_axis', 'parse_ints', 'parse_widths',
           'point_command', 'size_defaults', 'size_head_dim', 'split_output_dir', 'sweep_id_for']
