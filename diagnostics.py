"""Diagnostics: predictions, data statistics, stage timings and dependency health, in one JSON file.

This file is the command line; the work is in ``riskwatch.stages.diagnostics``.
"""

from riskwatch.classic import (
    dataframe_summary,
    execution_time,
    missing_data,
    model_predictions,
    outdated_packages_list,
)
from riskwatch.stages.diagnostics import main

__all__ = [
    "dataframe_summary",
    "execution_time",
    "main",
    "missing_data",
    "model_predictions",
    "outdated_packages_list",
]  # with the classic project's functions, importable from here


if __name__ == "__main__":
    raise SystemExit(main())
