"""Reporting: plot the deployed model's confusion matrix and write a PDF summary report.

This file is the command line; the work is in ``riskwatch.report.reporting``.
"""

from riskwatch.classic import report_score_model as score_model
from riskwatch.report.reporting import main

__all__ = ["main", "score_model"]  # with the classic project's functions, importable from here


if __name__ == "__main__":
    raise SystemExit(main())
