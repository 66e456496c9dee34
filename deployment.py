"""Deployment: publish the trained model with its scores and ingestion record as one version.

This file is the command line; the work is in ``riskwatch.stages.deployment``.
"""

from riskwatch.classic import store_model_into_pickle
from riskwatch.stages.deployment import main

__all__ = ["main", "store_model_into_pickle"]  # with the classic project's functions, importable from here


if __name__ == "__main__":
    raise SystemExit(main())
