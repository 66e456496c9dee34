"""Ingestion: merge every data file in the input folder into ``finaldata.csv``.

This file is the command line; the work is in ``riskwatch.stages.ingestion``.
"""

from riskwatch.classic import merge_multiple_dataframe
from riskwatch.stages.ingestion import main

__all__ = ["main", "merge_multiple_dataframe"]  # with the classic project's functions, importable from here


if __name__ == "__main__":
    raise SystemExit(main())
