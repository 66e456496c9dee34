"""Training: choose the model family the data supports, fit it on ``finaldata.csv`` and save it with its metadata.

This file is the command line; the work is in ``riskwatch.stages.training``.
"""

from riskwatch.classic import train_model
from riskwatch.stages.training import main

__all__ = ["main", "train_model"]  # with the classic project's functions, importable from here


if __name__ == "__main__":
    raise SystemExit(main())
