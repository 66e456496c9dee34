"""Scoring: measure a trained model on the test data.

This file is the command line; the work is in ``riskwatch.stages.scoring``.
"""

from riskwatch.classic import score_model
from riskwatch.stages.scoring import main

__all__ = ["main", "score_model"]  # with the classic project's functions, importable from here


if __name__ == "__main__":
    raise SystemExit(main())
