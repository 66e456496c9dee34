"""The client data schema and the one reader that turns a data file into checked rows.

A file with a structural fault (empty, header only, missing column, text in a numeric
column, not UTF-8, not CSV at all) raises ``BadFileError`` naming the file and the fault.
Rows with missing or invalid values (negative or fractional counts, ``exited`` outside
{0, 1}, an empty id) are dropped and counted, never imputed.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from riskwatch.core.errors import PipelineError

log = logging.getLogger(__name__)

ID_COLUMN = "corporation"
FEATURES = ("lastmonth_activity", "lastyear_activity", "number_of_employees")
FEATURE_LABELS = {
    "lastmonth_activity": "activity last month",
    "lastyear_activity": "activity last year",
    "number_of_employees": "head-count",
}
TARGET = "exited"
COLUMNS = (ID_COLUMN, *FEATURES, TARGET)
SCHEMA = pa.schema([(ID_COLUMN, pa.string()), *[(name, pa.int64()) for name in (*FEATURES, TARGET)]])
# Clients whose outcome is not known yet: the same columns without the label.
UNLABELLED_COLUMNS = (ID_COLUMN, *FEATURES)
UNLABELLED_SCHEMA = pa.schema([(ID_COLUMN, pa.string()), *[(name, pa.int64()) for name in FEATURES]])

# The largest count a float64 holds exactly: from 2**53 on, two different counts (2**53 and 2**53 + 1)
# parse to the same float, so such a value is refused as too large rather than silently rounded.
MAX_COUNT = 2**53 - 1
FEW_VALUES = 64  # up to this many values are checked in Python rather than by numpy (see features_are_counts)
# An id is a client's name or number; a longer one is a broken row, not a client.
MAX_ID_LENGTH = 256
_BLOCK_BYTES = 1024 * 1024  # pyarrow's CSV block: no line may be longer
_HEAD_BYTES = _BLOCK_BYTES  # the header is read from this much of the start: a longer line is no header
_FIELD_COUNT_ERROR = re.compile(r"Row #(\d+): Expected (\d+) columns, got (\d+)")
_QUOTED_TEXT = re.compile(r":\s*\".*$")
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
# A JSON id that is neither text nor a whole number (an object, a list, true/false, 1.5): a bad row.
BAD_ID_TYPE = "id not text or a whole number"
PENDING_OUTCOME = "exited blank (outcome not known yet)"
_CONVERSION_ERROR = re.compile(r"CSV column #(\d+).*conversion error to (\w+): invalid value '(.*)'", re.S)
JSON_LINES_BATCH = 10_000  # JSON Lines records parsed and checked at a time


class BadFileError(PipelineError):
    """A data file that cannot be used at all; the message names the file and the fault."""


class TooManyRowsError(PipelineError):
    """More rows to score than a reader may hold: ``rows`` is how many when they were counted, else None (the reader
    stopped once past ``limit``)."""

    def __init__(self, source: str, limit: int, rows: int | None = None):
        counted = f"more than {limit:,}" if rows is None else f"{rows:,}"
        super().__init__(f"{source}: {counted} rows, where at most {limit:,} may be read")
        self.source, self.limit, self.rows = source, limit, rows


@dataclass
class ParsedFile:
    """The valid rows of one data file, with what was dropped and why."""

    table: pa.Table
    rows_read: int
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def rows_kept(self) -> int:
        return int(self.table.num_rows)

    @property
    def rows_dropped(self) -> int:
        return self.rows_read - self.rows_kept

    @property
    def labelled(self) -> bool:
        """Whether the rows carry the outcome (``exited``); unlabelled rows describe clients still to be decided."""
        return TARGET in self.table.column_names


def labelled_arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Features (float64, one column per feature) and labels of a table in the schema."""
    features = np.column_stack([table[name].to_numpy().astype(np.float64) for name in FEATURES])
    return features, table[TARGET].to_numpy()


def clean_rows(table: pa.Table, columns: tuple[str, ...]) -> ParsedFile:
    """Drop rows with a missing or invalid value; cast counts to int64; count each reason."""
    ids = pc.utf8_trim_whitespace(table[ID_COLUMN])
    missing = pc.fill_null(pc.equal(pc.utf8_length(ids), 0), True).to_numpy(zero_copy_only=False)
    long_id = pc.fill_null(pc.greater(pc.utf8_length(ids), MAX_ID_LENGTH), False).to_numpy(zero_copy_only=False)
    # A line break in an id would not survive a CSV round trip into every reader: a bad row.
    broken_id = pc.fill_null(pc.match_substring_regex(ids, r"[\r\n\x00]"), False).to_numpy(zero_copy_only=False)
    numeric = [name for name in columns if name != ID_COLUMN]
    values = {name: table[name].to_numpy() for name in numeric}  # nulls become NaN
    negative = np.zeros(table.num_rows, dtype=bool)
    fractional = np.zeros(table.num_rows, dtype=bool)
    too_large = np.zeros(table.num_rows, dtype=bool)
    with np.errstate(invalid="ignore"):
        for name, column in values.items():
            if name != TARGET:
                missing |= np.isnan(column)
            negative |= column < 0
            fractional |= np.isinf(column) | (column != np.floor(column))
            too_large |= column > MAX_COUNT
    # Each dropped row is counted once, under the first reason that applies.
    long_id &= ~missing
    broken_id &= ~(missing | long_id)
    missing |= long_id | broken_id
    negative &= ~missing
    fractional &= ~(missing | negative)
    too_large &= ~(missing | negative | fractional)
    # Only the outcome blank: a pending client in a file that labels others (a file of its own reads as unlabelled).
    pending = np.isnan(values[TARGET]) & ~missing if TARGET in values else np.zeros(table.num_rows, dtype=bool)
    negative &= ~pending
    fractional &= ~pending
    too_large &= ~pending
    checks = {
        f"id longer than {MAX_ID_LENGTH} characters": long_id,
        "id with a line break": broken_id,
        "missing value": missing & ~(long_id | broken_id),
        "negative count": negative,
        "not a whole number": fractional,
        "count too large": too_large,
        PENDING_OUTCOME: pending,
    }
    if TARGET in columns:
        outside = (values[TARGET] != 0) & (values[TARGET] != 1)
        checks["exited not 0 or 1"] = outside & ~(missing | negative | fractional | too_large | pending)
    keep = ~np.logical_or.reduce(list(checks.values()))
    kept = pa.array(keep)
    cleaned = {ID_COLUMN: pc.filter(ids, kept)}
    for name in numeric:
        cleaned[name] = pa.array(values[name][keep].astype(np.int64))
    return ParsedFile(
        table=pa.table(cleaned),
        rows_read=table.num_rows,
        dropped={reason: int(mask.sum()) for reason, mask in checks.items() if mask.any()},
    )


def read_header(path: Path) -> list[str]:
    """The normalised column names of a CSV file, after checks that it is UTF-8 text."""
    with open(path, "rb") as handle:
        head = handle.read(_HEAD_BYTES)
    return parse_header(head, path.name)


def parse_header(head: bytes, source: str) -> list[str]:
    """The normalised column names on the first line of CSV bytes, after checks that they are UTF-8 text."""
    if head.startswith(_UTF16_BOMS):
        raise BadFileError(f"{source}: the file is UTF-16 text; save it as UTF-8 CSV")
    if b"\x00" in head[:_HEAD_BYTES]:
        raise BadFileError(f"{source}: the file is binary, not CSV text")
    lines = _LINE_BREAK.split(head.removeprefix(_UTF8_BOM), maxsplit=1)
    if len(lines) == 1 and len(head) >= _HEAD_BYTES:
        raise BadFileError(f"{source}: {describe_long_line()}")
    first_line = lines[0]
    try:
        text = first_line.decode("utf-8")
    except UnicodeDecodeError:
        raise BadFileError(f"{source}: the header is not UTF-8 text; save the file as UTF-8 CSV") from None
    if not text.strip():
        raise BadFileError(f"{source}: the first line is blank, where the CSV header should be")
    try:
        names = next(csv.reader([text]))
    except csv.Error as exc:
        raise BadFileError(f"{source}: the header cannot be read as CSV ({exc})") from None
    return [name.strip().lower() for name in names]


def check_columns(
    path: Path | str, names: list[str], columns: tuple[str, ...], optional: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """The ``columns`` the header holds; BadFileError naming a missing one (``optional`` ones may be absent)."""
    source = getattr(path, "name", path)
    absent = [name for name in columns if name not in names]
    missing = [name for name in absent if name not in optional]
    found = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    if len(absent) == len(columns):
        raise BadFileError(
            f"{source}: not client-activity data; it has none of the columns {', '.join(columns)} (found: {found})"
        )
    if missing:
        raise BadFileError(
            f"{source}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} (found: {found})"
        )
    repeated = sorted({name for name in columns if names.count(name) > 1})
    if repeated:
        raise BadFileError(f"{source}: column {', '.join(repeated)} appears more than once in the header")
    return tuple(name for name in columns if name not in absent)


def unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(name if count == 0 else f"{name}.{count}")
    return unique


def describe_long_line() -> str:
    return f"a line is longer than the {_BLOCK_BYTES // (1024 * 1024)} MiB a line of client data may be"


def describe_arrow_error(message: str, names: list[str]) -> str:
    match = _CONVERSION_ERROR.search(message)
    if match:
        index, target = int(match.group(1)), match.group(2)
        column = names[index] if index < len(names) else f"#{index}"
        if target == "double":
            return f"column {column} holds text where a number is expected"
    if "UTF8" in message or "UTF-8" in message:
        return "the file is not UTF-8 text; save it as UTF-8 CSV"
    fields = _FIELD_COUNT_ERROR.search(message)
    if fields:
        row, expected, got = fields.groups()
        return f"line {row} has {got} field(s) where the header has {expected}"
    if "block size" in message or "straddl" in message:
        return describe_long_line()
    # The reader's own words, without the piece of the file it quotes after a colon.
    return f"cannot be parsed as CSV ({_QUOTED_TEXT.sub('', message.splitlines()[0])[:120]})"


def read_json_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON (array, or ``{"records": [...]}``) or JSON Lines file."""
    return parse_json_records(path.read_bytes(), path.name, lines=path.suffix.lower() == ".jsonl")


def parse_json_records(data: bytes, source: str, lines: bool = False) -> list[dict[str, Any]]:
    """Records from JSON bytes: an array of objects, ``{"records": [...]}``, or one object per line."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadFileError(f"{source}: the file is not UTF-8 text") from None
    body = data.removeprefix(_UTF8_BOM)
    # JSON Lines: one record per line ending in \n (a U+2028 inside a string is no line break).
    pieces = enumerate(body.split(b"\n"), start=1) if lines else [(0, body)]
    parsed = []
    for number, piece in pieces:
        if not piece.strip() and lines:
            continue
        try:
            parsed.append(orjson.loads(piece))
        except orjson.JSONDecodeError as exc:
            where = f"line {number if lines else exc.lineno}"
            raise BadFileError(f"{source}: {describe_json_error(exc, where)}") from None
    records = parsed if lines else parsed[0]
    if isinstance(records, dict) and isinstance(records.get("records"), list):
        records = records["records"]
    if not isinstance(records, list) or not all(isinstance(item, dict) for item in records):
        raise BadFileError(f"{source}: JSON data must be a list of records (objects)")
    return records


def describe_json_error(exc: orjson.JSONDecodeError, where: str) -> str:
    """Why JSON could not be parsed, in words (``where``: the line), never quoting the data."""
    if "depth limit" in exc.msg:
        return f"the JSON is nested too deeply to be client records ({where})"
    reason = "a number is too large" if "infinity" in exc.msg else exc.msg
    return f"not valid JSON ({where}: {reason})"


def normalise_keys(record: dict[Any, Any]) -> dict[str, Any]:
    """A record with its keys matched as CSV header names are: trimmed and lower-case."""
    return {str(key).strip().lower(): value for key, value in record.items()}


def json_id(value: object) -> str | None:
    """A JSON id as text: text as it is, a whole number in digits; None for anything else (a bad row)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return None


@dataclass
class FeatureBatch:
    """Rows to score: client ids (None when the input has no id column; None for a row without one) and features."""

    ids: list[str | None] | None
    features: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.features)


PLAIN_NUMBERS = (int, float)  # what JSON numbers parse to; a bool is not one


def features_are_counts(features: np.ndarray) -> bool:
    """Whether every value is a whole count from 0 to ``MAX_COUNT`` (a NaN or an infinity is not).

    A few values (one API request's records) are tested one by one in Python, where numpy's cost per call would
    be most of the time; more with array operations (no error state to set: a NaN fails each comparison).
    """
    if features.size <= FEW_VALUES and features.dtype.kind == "f":
        return all(0 <= value <= MAX_COUNT and value.is_integer() for value in features.ravel().tolist())
    return bool(((features >= 0) & (features <= MAX_COUNT) & (np.floor(features) == features)).all())


def check_feature_values(features: np.ndarray, source: str, unit: str = "row") -> None:
    """Raise BadFileError naming the first row (or record) and column whose value is not a usable count."""
    if features_are_counts(features):
        return
    with np.errstate(invalid="ignore"):
        bad = np.isnan(features) | (features < 0) | (features != np.floor(features)) | (features > MAX_COUNT)
    if not bad.any():
        return
    row, column = map(int, np.argwhere(bad)[0])
    value = features[row, column]
    if np.isnan(value):
        problem = "is missing"
    elif value < 0:
        problem = f"is negative ({value:g}); counts cannot be below 0"
    elif value > MAX_COUNT:
        problem = f"is too large ({value:g})"
    else:
        problem = f"is not a whole number ({value:g})"
    count = int(bad.sum())
    more = f"; {count} bad values in all" if count > 1 else ""
    raise BadFileError(f"{source}: {unit} {row + 1}, {FEATURES[column]} {problem}{more}")


def read_feature_csv(data: bytes, source: str, max_rows: int | None = None) -> FeatureBatch:
    """Parse CSV bytes into rows to score, strictly: any missing or invalid value is an error.

    The id column is optional; ``exited`` and other columns are ignored. More than ``max_rows`` rows raise
    TooManyRowsError (see ``read_csv_features``).
    """
    if not data.strip():
        raise BadFileError(f"{source}: the CSV is empty")
    return read_csv_features(pa.BufferReader(data), source, max_rows)


def read_csv_features(stream: Any, source: str, max_rows: int | None = None) -> FeatureBatch:
    """Rows to score from a seekable binary stream of CSV, strictly, read a block (``_BLOCK_BYTES``) at a time.

    Only the features (24 bytes a row) and the ids of the rows read so far are kept, beside pyarrow's blocks in
    flight (read ahead: at most about 65 MiB, measured), so a reader never holds more than ``max_rows`` rows,
    whatever the stream's length: past ``max_rows`` it stops and raises TooManyRowsError.
    """
    head = stream.read(_HEAD_BYTES)
    if not head.strip() and len(head) < _HEAD_BYTES:
        raise BadFileError(f"{source}: the CSV is empty")
    names = parse_header(head, source)
    check_columns(source, names, FEATURES)
    stream.seek(0)
    with_ids = ID_COLUMN in names
    types = {name: pa.float64() for name in FEATURES}
    types[ID_COLUMN] = pa.string()
    parts: list[np.ndarray] = []
    ids: list[pa.Array] = []
    rows = 0
    try:
        reader = pa_csv.open_csv(
            stream,
            read_options=pa_csv.ReadOptions(
                column_names=unique_names(names), skip_rows=1, use_threads=False, block_size=_BLOCK_BYTES
            ),
            convert_options=pa_csv.ConvertOptions(
                include_columns=[*FEATURES, ID_COLUMN] if with_ids else list(FEATURES), column_types=types
            ),
        )
        for batch in reader:
            rows += batch.num_rows
            if max_rows is not None and rows > max_rows:
                raise TooManyRowsError(source, max_rows)
            parts.append(np.column_stack([batch.column(name).to_numpy(zero_copy_only=False) for name in FEATURES]))
            if with_ids:
                ids.append(batch.column(ID_COLUMN))
    except pa.ArrowInvalid as exc:
        raise BadFileError(f"{source}: {describe_arrow_error(str(exc), names)}") from None
    if rows == 0:
        raise BadFileError(f"{source}: the CSV has a header but no data rows")
    features = parts[0] if len(parts) == 1 else np.concatenate(parts)
    check_feature_values(features, source)
    return FeatureBatch(ids=pa.chunked_array(ids, pa.string()).to_pylist() if with_ids else None, features=features)


def describe_json_type(value: object) -> str:
    """What kind of JSON value this is, in words: error messages name the kind, never echo the value."""
    if isinstance(value, bool):
        return "true or false"
    kinds = {str: "text", list: "a list", dict: "an object"}
    return next((kind for cls, kind in kinds.items() if isinstance(value, cls)), type(value).__name__)


def features_from_records(records: object, source: str, max_rows: int | None = None) -> FeatureBatch:
    """Turn JSON records (a list of objects) into rows to score, strictly, naming the first fault.

    Keys are matched as in CSV headers (trimmed, any case); ``corporation`` is optional. More than ``max_rows``
    records raise TooManyRowsError before any is looked at.
    """
    if not isinstance(records, list) or not records:
        raise BadFileError(f"{source}: expected a non-empty list of client records (JSON objects)")
    if max_rows is not None and len(records) > max_rows:
        raise TooManyRowsError(source, max_rows, len(records))
    features, ids = records_to_features(records, source)
    check_feature_values(features, source, unit="record")
    return FeatureBatch(ids=None if ids.count(None) == len(ids) else ids, features=features)


def records_to_features(records: list[Any], source: str, first: int = 1) -> tuple[np.ndarray, list[str | None]]:
    """The features and ids of JSON records numbered from ``first``, naming the first one of the wrong shape (its
    values are checked by ``check_feature_values``)."""
    rows: list[list[Any]] = []
    ids: list[str | None] = []
    for number, record in enumerate(records, start=first):
        if not isinstance(record, dict):
            raise BadFileError(f"{source}: record {number} is {type(record).__name__}, not an object")
        try:
            values = [record[name] for name in FEATURES]
        except KeyError:  # keys in another case or with spaces, or a feature missing
            record = normalise_keys(record)
            values = [record.get(name) for name in FEATURES]
        if not all(type(value) in PLAIN_NUMBERS for value in values):  # the common case in one pass
            check_record_values(values, source, number)
        rows.append(values)
        corporation = record.get(ID_COLUMN)
        if isinstance(corporation, (dict, list)):
            raise BadFileError(f"{source}: record {number}, {ID_COLUMN} must be a string or a number")
        ids.append(None if corporation is None else str(corporation))
    try:
        features = np.array(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))
    except OverflowError:
        raise BadFileError(f"{source}: a count is too large to be a number of this kind") from None
    return features, ids


def check_record_values(values: list[Any], source: str, number: int) -> None:
    """Raise BadFileError naming the first of a record's features that is missing or not a number."""
    for name, value in zip(FEATURES, values, strict=True):
        if value is None:
            raise BadFileError(f"{source}: record {number} lacks {name}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadFileError(
                f"{source}: record {number}, {name} is {describe_json_type(value)}, where a number is expected"
            )


def read_json_lines_features(stream: Any, source: str, max_rows: int | None = None) -> FeatureBatch:
    """Rows to score from a binary stream of JSON Lines (one record per line), strictly, ``JSON_LINES_BATCH``
    records at a time: as ``read_csv_features``, never more than ``max_rows`` rows and one batch are held."""
    parts: list[np.ndarray] = []
    ids: list[str | None] = []
    rows = 0
    for records in json_line_batches(stream, source):
        if not all(isinstance(item, dict) for item in records):
            raise BadFileError(f"{source}: JSON data must be a list of records (objects)")
        if max_rows is not None and rows + len(records) > max_rows:
            raise TooManyRowsError(source, max_rows)
        features, batch_ids = records_to_features(records, source, first=rows + 1)
        parts.append(features)
        ids.extend(batch_ids)
        rows += len(records)
    if rows == 0:
        raise BadFileError(f"{source}: expected a non-empty list of client records (JSON objects)")
    features = parts[0] if len(parts) == 1 else np.concatenate(parts)
    check_feature_values(features, source, unit="record")
    return FeatureBatch(ids=None if all(value is None for value in ids) else ids, features=features)


def json_line_batches(stream: Any, source: str) -> Iterator[list[Any]]:
    """The values of the non-blank lines of a binary stream of JSON Lines, ``JSON_LINES_BATCH`` at a time, each
    line checked to be UTF-8 JSON (a line ends in \\n: a U+2028 inside a string is no line break)."""
    batch: list[Any] = []
    rest, number, started = b"", 0, False
    while True:
        block = stream.read(_BLOCK_BYTES)
        data = rest + block
        if not started:
            data, started = data.removeprefix(_UTF8_BOM), True
        lines = data.split(b"\n")
        rest = lines.pop() if block else b""
        if len(rest) > _BLOCK_BYTES:
            raise BadFileError(f"{source}: {describe_long_line()}")
        try:
            data[: len(data) - len(rest)].decode("utf-8")
        except UnicodeDecodeError:
            raise BadFileError(f"{source}: the file is not UTF-8 text") from None
        for line in lines:
            number += 1
            if not line.strip():
                continue
            try:
                batch.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise BadFileError(f"{source}: {describe_json_error(exc, f'line {number}')}") from None
            if len(batch) == JSON_LINES_BATCH:
                yield batch
                batch = []
        if not block:
            break
    if batch:
        yield batch


def read_feature_stream(stream: Any, name: str, max_rows: int | None = None) -> FeatureBatch:
    """Rows to score from a seekable binary stream of a file called ``name``: CSV and JSON Lines read in blocks,
    a JSON array whole (the caller bounds its size); more than ``max_rows`` rows raise TooManyRowsError."""
    suffix = Path(name).suffix.lower()
    if suffix == ".jsonl":
        return read_json_lines_features(stream, name, max_rows)
    if suffix == ".json":
        return features_from_records(parse_json_records(stream.read(), name), name, max_rows)
    return read_csv_features(stream, name, max_rows)


def read_feature_bytes(data: bytes, name: str, max_rows: int | None = None) -> FeatureBatch:
    """Rows to score from the bytes of a file called ``name``: JSON, JSON Lines or else CSV, strictly."""
    if Path(name).suffix.lower() not in (".json", ".jsonl"):
        return read_feature_csv(data, name, max_rows)
    return read_feature_stream(pa.BufferReader(data), name, max_rows)


def read_feature_file(path: Path, max_rows: int | None = None) -> FeatureBatch:
    """Rows to score from a CSV, JSON or JSON Lines file, strictly (see ``read_feature_stream``)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return read_feature_stream(handle, path.name, max_rows)
    except OSError as exc:
        raise BadFileError(f"{path.name}: cannot be read ({exc.strerror})") from None
