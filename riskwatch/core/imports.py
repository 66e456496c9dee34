"""Keeping pandas out of the pipeline's own processes.

pandas is installed for the classic course functions only (they hand analysts DataFrames). The
stages, the cron job and the API never use it, but scikit-learn imports it on import whenever it
is installed (``sklearn/utils/fixes.py`` binds it and uses it nowhere else) and pyarrow on the
first ``to_numpy()``: 0.2 to 0.6 s for every process.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def sklearn_without_pandas() -> Iterator[None]:
    """Import scikit-learn within the block without pandas (unless either is imported already).

    scikit-learn looks pandas up again when it is handed a DataFrame, so a later ``import pandas``
    (a classic course function's) works as usual.
    """
    if "pandas" in sys.modules or "sklearn" in sys.modules:
        yield
        return
    sys.modules["pandas"] = None  # type: ignore[assignment]  # the import system's "not available" marker
    try:
        yield
    finally:
        if sys.modules.get("pandas", False) is None:
            del sys.modules["pandas"]
