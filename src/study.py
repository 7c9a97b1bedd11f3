"""Train a grid, evaluate every run, average over seeds: ``python src/study.py [train overrides] --eval [eval overrides]``
(see edmlab.cli.study)."""
import sys

from edmlab.cli.study import main

if __name__ == "__main__":
    sys.exit(main())
