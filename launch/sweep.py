#!/usr/bin/env python
"""Depth/width sweep driver: ``launch/sweep.py ARGS`` is ``deepvit-sweep ARGS`` (see ``deepvit/sweep/cli.py`` or
``--help``). Kept so that ``launch/sweep_depth.sh``, ``launch/study.sh`` and ``launch/slurm/*`` run unchanged."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package, installed or not

from deepvit.sweep.cli import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
