"""``python -m deepvit.sweep ...``: the sweep command (see :mod:`deepvit.sweep.cli`)."""
import sys

from .cli import main

if __name__ == '__main__':
    sys.exit(main(prog='python -m deepvit.sweep'))
