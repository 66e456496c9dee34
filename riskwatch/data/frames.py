"""Client data as pandas DataFrames, for the classic course functions and the analysts who call them.

pandas is imported here and only here: the stages, the cron job's check and the API's hot path
use pyarrow and numpy, and import this module only inside a function that hands data to a person.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.csv as pa_csv

from riskwatch.core.errors import PipelineError
from riskwatch.core.schema import FEATURES, ID_COLUMN, BadFileError, check_feature_values
from riskwatch.data.datafiles import read_data_file


def read_client_frame(path: Path) -> pd.DataFrame:
    """An ingested data file (``finaldata.csv``) as a DataFrame: ids as text, counts as integers."""
    try:
        table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types={ID_COLUMN: "string"}))
    except FileNotFoundError:
        raise PipelineError(f"ingested data {path} does not exist; run ingestion.py first") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"ingested data {path} cannot be read ({str(exc).splitlines()[0]})") from None
    frame: pd.DataFrame = table.to_pandas()
    return frame


def read_test_frame(path: Path) -> pd.DataFrame:
    """A test data file as a DataFrame, its rows checked as ingestion checks them (bad rows dropped)."""
    try:
        frame: pd.DataFrame = read_data_file(path).table.to_pandas()
    except BadFileError as exc:
        raise PipelineError(f"cannot use test data: {exc}") from None
    return frame


def frame_features(frame: pd.DataFrame, source: str = "the DataFrame") -> np.ndarray:
    """The feature columns of a DataFrame as float64 rows; column names match in any case, trimmed.

    Raises BadFileError naming the missing column or the first value that is not a usable count.
    """
    names = {str(column).strip().lower(): column for column in frame.columns}
    missing = [name for name in FEATURES if name not in names]
    if missing:
        found = ", ".join(str(column) for column in frame.columns) or "no columns"
        raise BadFileError(f"{source}: missing column {', '.join(missing)} (found: {found})")
    columns = []
    for name in FEATURES:
        values = pd.to_numeric(frame[names[name]], errors="coerce")
        text = values.isna() & frame[names[name]].notna()
        if text.any():
            row = int(np.flatnonzero(text.to_numpy())[0])
            shown = str(frame[names[name]].iloc[row])[:40]
            raise BadFileError(f"{source}: row {row + 1}, {name} is {shown!r}, where a number is expected")
        columns.append(values.to_numpy(dtype=np.float64, na_value=np.nan))
    features = np.column_stack(columns) if columns else np.zeros((len(frame), 0))
    check_feature_values(features, source)
    return features
