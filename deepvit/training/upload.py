"""Upload to MLflow, in order, the records a run kept when its tracking store was unreachable, and end the run.

A run whose store never came back keeps them in ``OUTPUT_DIR/tracking_backlog``; once the store is back:

    python -m deepvit.training.upload runs/cifar-zero2/tracking_backlog
    python -m deepvit.training.upload runs/cifar-zero2/tracking_backlog --tracking-uri http://mlflow.internal:5000

The folder is written by :func:`deepvit.training.outage.dump` when a run ends while its store is unreachable. After a
complete upload it is renamed ``<folder>.uploaded``; a failed upload leaves it as it was, to be run again (records
already sent are sent again: metrics of the same (key, step) are then listed twice in MLflow's history, params and
tags are idempotent).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .outage import load
from .run_writer import RunWriter
from .tracking import tracking_client


def upload(folder: Path, tracking_uri: Optional[str] = None) -> int:
    """Send every record of ``folder`` to its run; returns the number sent.

    Raises:
        FileNotFoundError: ``folder`` holds no ``records.jsonl``.
    """
    folder = Path(folder)
    header, records = load(folder)
    writer = RunWriter(tracking_client(tracking_uri or header['uri']), header['run_id'])
    for record in records:
        writer.apply(record)
    folder.rename(folder.with_name(folder.name + '.uploaded'))
    return len(records)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m deepvit.training.upload', description=__doc__.split('\n')[0])
    p.add_argument('folder', type=Path, help="a run's tracking_backlog folder")
    p.add_argument('--tracking-uri', default=None, help='the store to send to (default: the one the run used)')
    args = p.parse_args(argv)
    if not (args.folder / 'records.jsonl').is_file():
        print(f"upload: {args.folder} holds no records.jsonl (a run writes one only when it ended while its "
              f"tracking store was unreachable)", file=sys.stderr)
        return 2
    n = upload(args.folder, args.tracking_uri)
    print(f"upload: {n} records sent; the folder is now {args.folder.name}.uploaded")
    return 0


if __name__ == '__main__':
    sys.exit(main())
