"""Statistics of client data that several stages report: summary statistics and missing data."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from riskwatch.core.errors import PipelineError
from riskwatch.core.files import sha256_file, write_text_atomic
from riskwatch.core.schema import (
    COLUMNS,
    FEATURES,
    ID_COLUMN,
    TARGET,
    BadFileError,
    normalise_keys,
    read_header,
    read_json_records,
    unique_names,
)

log = logging.getLogger(__name__)

NUMERIC_COLUMNS = (*FEATURES, TARGET)
MISSING_CACHE_FILES = 1000  # files whose missing-cell counts are kept


def read_numeric_columns(path: Path) -> dict[str, np.ndarray]:
    """The numeric columns of an ingested data file (``finaldata.csv``) as float64 arrays."""
    try:
        table = pa_csv.read_csv(
            path,
            convert_options=pa_csv.ConvertOptions(
                include_columns=list(NUMERIC_COLUMNS),
                column_types={name: pa.float64() for name in NUMERIC_COLUMNS},
            ),
        )
    except FileNotFoundError:
        raise PipelineError(f"ingested data {path} does not exist; run ingestion.py first") from None
    except (pa.ArrowException, OSError) as exc:
        raise PipelineError(f"ingested data {path} cannot be read ({str(exc).splitlines()[0]})") from None
    return {name: table[name].to_numpy() for name in NUMERIC_COLUMNS}


def summary_statistics(columns: dict[str, np.ndarray]) -> dict[str, dict[str, float | int | None]]:
    """Per column: count, mean, median, standard deviation (n - 1), min, quartiles and max; NaN left out."""
    summary = {}
    for name, values in columns.items():
        values = values[~np.isnan(values)]
        if values.size == 0:
            summary[name] = {"count": 0, **dict.fromkeys(("mean", "median", "std", "min", "q1", "q3", "max"))}
            continue
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        summary[name] = {
            "count": int(values.size),
            "mean": _round(values.mean()),
            "median": _round(median),
            "std": _round(values.std(ddof=1)) if values.size > 1 else None,
            "min": _round(values.min()),
            "q1": _round(q1),
            "q3": _round(q3),
            "max": _round(values.max()),
        }
    return summary


def count_missing(path: Path) -> tuple[int, dict[str, int]]:
    """(rows, missing cells per column) of one raw data file, by the rules ingestion applies.

    A numeric cell is missing when blank or a null marker such as NA; an id when blank after
    trimming (an id "NA" is a name). An absent column counts as missing in every row, except
    ``exited``: a file without it holds clients whose outcome is not known yet, not gaps. Rows
    with the wrong number of fields count as rows with every column missing.
    """
    if path.suffix.lower() in (".json", ".jsonl"):
        return count_missing_in_records(read_json_records(path))
    names = read_header(path)
    present = [name for name in COLUMNS if name in names]
    table, malformed = read_csv_as_text(path, names, present)
    missing = {}
    for name in COLUMNS:
        if name not in present:
            missing[name] = 0 if name == TARGET else table.num_rows + malformed
        else:
            missing[name] = count_blank(table[name], null_markers=name != ID_COLUMN) + malformed
    return table.num_rows + malformed, missing


def count_missing_in_records(records: list[Any]) -> tuple[int, dict[str, int]]:
    """(rows, missing cells per column) of the records of a JSON file."""
    normalised = [normalise_keys(item) for item in records]
    missing = {
        name: sum(1 for item in normalised if item.get(name) is None or str(item[name]).strip() == "")
        for name in COLUMNS
    }
    if not any(TARGET in item for item in normalised):
        missing[TARGET] = 0
    return len(records), missing


def read_csv_as_text(path: Path, names: list[str], present: list[str]) -> tuple[pa.Table, int]:
    """The ``present`` columns of a CSV file as text, and how many rows had the wrong number of fields."""
    malformed = 0

    def count_malformed(_row: object) -> str:
        nonlocal malformed
        malformed += 1
        return "skip"

    try:
        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(column_names=unique_names(names), skip_rows=1),
            parse_options=pa_csv.ParseOptions(invalid_row_handler=count_malformed),
            convert_options=pa_csv.ConvertOptions(
                include_columns=present, column_types=dict.fromkeys(present, pa.string())
            ),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadFileError(f"{path.name}: cannot be parsed as CSV ({str(exc).splitlines()[0]})") from None
    return table, malformed


def count_blank(column: pa.ChunkedArray, null_markers: bool) -> int:
    """Cells of a text column that are null, blank after trimming, or (with ``null_markers``) NA and the like."""
    values = pc.utf8_trim_whitespace(column)
    blank = pc.equal(pc.utf8_length(values), 0)
    if null_markers:
        blank = pc.or_(blank, pc.is_in(values, value_set=pa.array(pa_csv.ConvertOptions().null_values, pa.string())))
    return int(pc.sum(pc.fill_null(blank, True)).as_py() or 0)


def missing_data(paths: list[Path], cache_path: Path | None = None) -> dict[str, Any]:
    """Percent of missing values per column over raw data files, overall and per file.

    Files that cannot be parsed at all are listed under ``unreadable`` with the reason. With
    ``cache_path``, each file's counts are kept there by its content hash, so an unchanged file
    is counted once.
    """
    cache = read_missing_cache(cache_path) if cache_path else {}
    kept: dict[str, Any] = dict(cache)
    total_rows = 0
    total_missing = dict.fromkeys(COLUMNS, 0)
    per_file, unreadable = {}, {}
    for path in paths:
        try:
            digest = sha256_file(path) if cache_path else ""
            rows, missing = cache[digest] if digest in cache else count_missing(path)
        except BadFileError as exc:
            unreadable[path.name] = str(exc)
            continue
        except OSError as exc:
            unreadable[path.name] = f"{path.name}: cannot be read ({exc.strerror})"
            continue
        kept[digest] = (rows, missing)
        total_rows += rows
        for name in COLUMNS:
            total_missing[name] += missing[name]
        per_file[path.name] = {"rows": rows, "percent": percentages(missing, rows)}
    if cache_path and kept.keys() != cache.keys():
        try:
            write_text_atomic(cache_path, json.dumps(dict(list(kept.items())[-MISSING_CACHE_FILES:])))
        except OSError as exc:
            log.warning("the missing-data counts were not kept in %s (%s)", cache_path, exc.strerror)
    return {
        "rows": total_rows,
        "percent": percentages(total_missing, total_rows),
        "files": per_file,
        "unreadable": unreadable,
    }


def read_missing_cache(path: Path) -> dict[str, Any]:
    """Missing-cell counts kept per file content hash; {} when there are none or they cannot be read."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        return {key: (int(rows), dict(missing)) for key, (rows, missing) in stored.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("%s cannot be read (%s); the files are counted again", path, exc)
        return {}


def percentages(missing: dict[str, int], rows: int) -> dict[str, float]:
    return {name: round(100.0 * count / rows, 4) if rows else 0.0 for name, count in missing.items()}


def _round(value: float) -> float:
    return round(float(value), 6)
