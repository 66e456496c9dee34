"""Data files read in batches: CSV, JSON (an array of records) and JSON Lines, checked against the schema.

A file is read a batch at a time (pyarrow's streaming CSV reader; JSON Lines a block of lines at a
time; a JSON array record by record with ijson), so reading it costs a batch of memory whatever
its size. Each batch is cleaned as ``riskwatch.core.schema.clean_rows`` does and split into rows with an
outcome and rows whose ``exited`` cell is blank: clients whose outcome is not known yet.

A structural fault anywhere in the file (a missing column, text in a numeric column, a line too
long, bytes that are not UTF-8) raises ``BadFileError`` naming the file: a reader that has
written some batches somewhere throws them away (see ``riskwatch.stages.ingestion_reading.parse_new_file``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ijson
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv

from riskwatch.core.schema import (
    BAD_ID_TYPE,
    COLUMNS,
    ID_COLUMN,
    PENDING_OUTCOME,
    TARGET,
    UNLABELLED_COLUMNS,
    UNLABELLED_SCHEMA,
    BadFileError,
    ParsedFile,
    check_columns,
    clean_rows,
    describe_arrow_error,
    describe_json_error,
    describe_json_type,
    json_id,
    labelled_arrays,
    normalise_keys,
    read_header,
    unique_names,
)

log = logging.getLogger(__name__)

# How much of a file is read at once (``ingestion.batch_mb``): pyarrow's CSV reader parses a few dozen such blocks
# ahead, so memory is some tens of times this; 1 MiB keeps it near 60 MB and reads as fast as larger blocks.
DEFAULT_BATCH_BYTES = 1024 * 1024
_MIN_BATCH_BYTES = 1024 * 1024  # pyarrow's CSV block holds whole lines: no line may be longer than a block
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass
class CleanBatch:
    """The valid rows of one batch of a file: with an outcome, and with a blank one (not known yet)."""

    labelled: pa.Table  # SCHEMA
    pending: pa.Table  # UNLABELLED_SCHEMA
    rows_read: int
    dropped: dict[str, int] = field(default_factory=dict)


def batch_bytes(value: int | None) -> int:
    """The batch size to read with: at least a CSV block, so a line of the longest allowed length fits."""
    return max(int(value or DEFAULT_BATCH_BYTES), _MIN_BATCH_BYTES)


def stream_data_file(path: Path, block_bytes: int | None = None, require_target: bool = False) -> Iterator[CleanBatch]:
    """The valid rows of a CSV, JSON or JSON Lines file, a batch at a time (see the module's docstring).

    A file without an ``exited`` column reads as rows whose outcome is not known (every row pending), unless
    ``require_target``: it then lacks a column. Raises BadFileError for an empty file or a structural fault,
    when it is met.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadFileError(f"{path.name}: cannot be read ({exc.strerror})") from None
    if size == 0:
        raise BadFileError(f"{path.name}: the file is empty")
    block = batch_bytes(block_bytes)
    suffix = path.suffix.lower()
    optional = () if require_target else (TARGET,)
    if suffix in (".json", ".jsonl"):
        raw = _json_batches(path, block, suffix == ".jsonl", optional)
    else:
        raw = _csv_batches(path, block, optional)
    for table, set_aside in raw:
        yield split_batch(table, set_aside)


def split_batch(table: pa.Table, set_aside: dict[str, int]) -> CleanBatch:
    """Clean one raw batch (every column of the schema, counts as float64): rows with an outcome are checked as
    labelled rows, rows whose outcome is blank as unlabelled ones; each dropped row is counted under its reason."""
    blank = np.isnan(table[TARGET].to_numpy(zero_copy_only=False))
    dropped = {reason: count for reason, count in set_aside.items() if count}
    if not blank.any():
        labelled = clean_rows(table, COLUMNS)
        pending = UNLABELLED_SCHEMA.empty_table()
        parts = [labelled]
    else:
        labelled = clean_rows(table.filter(pa.array(~blank)), COLUMNS)
        unlabelled = clean_rows(table.filter(pa.array(blank)).drop_columns([TARGET]), UNLABELLED_COLUMNS)
        pending = unlabelled.table
        parts = [labelled, unlabelled]
    for part in parts:
        for reason, count in part.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
    return CleanBatch(labelled.table, pending, table.num_rows + sum(set_aside.values()), dropped)


def _csv_batches(path: Path, block: int, optional: tuple[str, ...]) -> Iterator[tuple[pa.Table, dict[str, int]]]:
    names = read_header(path)
    columns = check_columns(path, names, COLUMNS, optional)
    malformed = 0

    def skip_malformed(_row: object) -> str:
        nonlocal malformed
        malformed += 1
        return "skip"

    types = {name: pa.float64() for name in columns if name != ID_COLUMN}
    types[ID_COLUMN] = pa.string()
    try:
        reader = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(column_names=unique_names(names), skip_rows=1, block_size=block),
            parse_options=pa_csv.ParseOptions(invalid_row_handler=skip_malformed),
            convert_options=pa_csv.ConvertOptions(include_columns=list(columns), column_types=types),
        )
        for record_batch in reader:
            table = with_target(pa.Table.from_batches([record_batch]))
            counted, malformed = malformed, 0
            yield table, {"wrong number of fields": counted}
        if malformed:
            yield (
                with_target(pa.table({name: pa.array([], types[name]) for name in columns})),
                {"wrong number of fields": malformed},
            )
    except pa.ArrowInvalid as exc:
        raise BadFileError(f"{path.name}: {describe_arrow_error(str(exc), names)}") from None
    except OSError as exc:
        raise BadFileError(f"{path.name}: cannot be read ({exc})") from None


def with_target(table: pa.Table) -> pa.Table:
    """The table with an ``exited`` column (all blank when the file has none), columns in the schema's order."""
    if TARGET not in table.column_names:
        table = table.append_column(TARGET, pa.nulls(table.num_rows, pa.float64()))
    return table.select(list(COLUMNS))


def _json_batches(
    path: Path, block: int, lines: bool, optional: tuple[str, ...]
) -> Iterator[tuple[pa.Table, dict[str, int]]]:
    """Records in batches of about ``block`` bytes; BadFileError for a required column no record holds."""
    seen: set[str] = set()
    records_read = 0
    try:
        for records in _json_line_records(path, block) if lines else _json_array_records(path, block):
            normalised = [normalise_keys(item) for item in records]
            seen.update(*normalised)
            records_read += len(normalised)
            yield records_table(path.name, normalised)
    except OSError as exc:
        raise BadFileError(f"{path.name}: cannot be read ({exc.strerror})") from None
    if not records_read:
        raise BadFileError(f"{path.name}: the file holds no records")
    check_columns(path, sorted(seen), COLUMNS, optional)


def _json_line_records(path: Path, block: int) -> Iterator[list[Any]]:
    """The records of a JSON Lines file, a block of whole lines at a time."""
    number = 0
    with open(path, "rb") as handle:
        rest = b""
        while True:
            chunk = handle.read(block)
            data = rest + chunk
            if number == 0:
                data = data.removeprefix(_UTF8_BOM)
            cut = data.rfind(b"\n") + 1 if chunk else len(data)
            piece, rest = data[:cut], data[cut:]
            records = []
            for line in piece.split(b"\n"):
                number += 1
                if line.strip():
                    records.append(_json_line(line, path.name, number))
            if records:
                yield records
            if not chunk:
                return


def _json_line(line: bytes, source: str, number: int) -> Any:
    try:
        line.decode("utf-8")
        record = orjson.loads(line)
    except UnicodeDecodeError:
        raise BadFileError(f"{source}: the file is not UTF-8 text") from None
    except orjson.JSONDecodeError as exc:
        raise BadFileError(f"{source}: {describe_json_error(exc, f'line {number}')}") from None
    if not isinstance(record, dict):
        raise BadFileError(f"{source}: JSON data must be a list of records (objects)")
    return record


def _json_array_records(path: Path, block: int) -> Iterator[list[Any]]:
    """The records of a JSON array (or ``{"records": [...]}``), read with ijson a record at a time.

    ijson's C parser stops at a whole number beyond 64 bits; the file is then read on from the same record with
    ijson's Python parser, which reads it (as orjson did), so such a count is a bad row, not a bad file.
    """
    done = 0
    # The C parser turns a lone surrogate escape (``"\\ud800"``) into "?": such a file is read by the Python
    # parser, which keeps it, so that the id is dropped as not UTF-8 text (``encodable``).
    first = ijson.get_backend("python") if has_surrogate_escape(path, block) else ijson
    try:
        for records in _records_by(path, block, first, skip=0):
            done += len(records)
            yield records
    except _NumberTooLarge:
        yield from _records_by(path, block, ijson.get_backend("python"), skip=done)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def has_surrogate_escape(path: Path, block: int) -> bool:
    """Whether a file spells a UTF-16 surrogate as an escape (``\\ud800``-``\\udfff``), read a block at a time."""
    with open(path, "rb") as handle:
        tail = b""
        while chunk := handle.read(block):
            if _SURROGATE_ESCAPE.search(tail + chunk):
                return True
            tail = chunk[-5:]
    return False


class _NumberTooLarge(Exception):
    """ijson's C parser met a number it cannot hold."""


def _records_by(path: Path, block: int, backend: Any, skip: int) -> Iterator[list[Any]]:
    with open(path, "rb") as handle:
        head = handle.read(4096)
        handle.seek(len(_UTF8_BOM) if head.startswith(_UTF8_BOM) else 0)
        start = head.removeprefix(_UTF8_BOM).lstrip()
        if start[:1] not in (b"[", b"{"):
            raise BadFileError(f"{path.name}: {describe_ijson_error(start[:1])}")
        prefix = "item" if start.startswith(b"[") else "records.item"
        batch: list[Any] = []
        found = 0
        # About 40 bytes a record: a batch of block / 40 records holds about ``block`` bytes of the file.
        per_batch = max(block // 40, 1000)
        try:
            for record in backend.items(handle, prefix, use_float=True):
                if not isinstance(record, dict):
                    raise BadFileError(f"{path.name}: JSON data must be a list of records (objects)")
                found += 1
                if found <= skip:
                    continue
                batch.append(record)
                if len(batch) >= per_batch:
                    yield batch
                    batch = []
        except ijson.JSONError as exc:
            if "integer overflow" in str(exc) and backend is ijson:
                raise _NumberTooLarge from None
            raise BadFileError(f"{path.name}: {describe_ijson_error(exc)}") from None
        except UnicodeDecodeError:
            raise BadFileError(f"{path.name}: the file is not UTF-8 text") from None
        if batch:
            yield batch
        elif prefix == "records.item" and not found:
            raise BadFileError(f"{path.name}: JSON data must be a list of records (objects)")


def describe_ijson_error(exc: object) -> str:
    """Why a JSON file could not be parsed, in words, never quoting the data."""
    text = str(exc)
    if "UTF8" in text or "utf-8" in text.lower():
        return "the file is not UTF-8 text"
    if "premature EOF" in text:
        return "not valid JSON (the file ends in the middle of a record)"
    if "overflow" in text:
        return "not valid JSON (a number is too large)"
    return "not valid JSON"


def records_table(source: str, records: list[dict[str, Any]]) -> tuple[pa.Table, dict[str, int]]:
    """One batch of normalised records as a raw table (every schema column; blank ``exited`` when absent),
    with the records left out for an id of another kind (``json_id``) counted."""
    ids = [item.get(ID_COLUMN) for item in records]
    usable = [value is None or (json_id(value) is not None and encodable(value)) for value in ids]
    bad_ids = usable.count(False)
    if bad_ids:
        records = [item for item, keep in zip(records, usable, strict=True) if keep]
    arrays = {}
    for name in COLUMNS:
        values = [item.get(name) for item in records]
        if name == ID_COLUMN:
            arrays[name] = pa.array([None if v is None else json_id(v) for v in values], pa.string())
            continue
        if name == TARGET:  # a blank outcome is not known yet, as an empty CSV cell is
            values = [None if isinstance(v, str) and not v.strip() else v for v in values]
        text = next((v for v in values if isinstance(v, (str, bool, list, dict))), None)
        if text is not None:
            raise BadFileError(f"{source}: column {name} holds {describe_json_type(text)} where a number is expected")
        try:
            arrays[name] = pa.array(
                [float(v) if type(v) is int and abs(v) >= 2**63 else v for v in values], pa.float64()
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise BadFileError(f"{source}: column {name} holds a value that is not a usable number ({exc})") from None
    return pa.table(arrays), {BAD_ID_TYPE: bad_ids}


def encodable(value: object) -> bool:
    """Whether an id can be written as UTF-8 text: JSON can spell a lone surrogate (``"\\ud800"``), UTF-8 cannot."""
    if not isinstance(value, str) or value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_data_file(path: Path, allow_unlabelled: bool = False) -> ParsedFile:
    """Read a CSV, JSON (array of records) or JSON Lines file whole and keep its valid rows.

    Columns may come in any order and extra columns are ignored. Rows whose ``exited`` is blank are
    clients whose outcome is not known yet: with ``allow_unlabelled``, a file all of whose kept rows
    are such (a file without the ``exited`` column included) is read as unlabelled (its table in
    ``UNLABELLED_SCHEMA``); otherwise they are dropped and counted as pending, and a file without
    ``exited`` lacks a column like any other.
    """
    path = Path(path)
    batches = list(stream_data_file(path, require_target=not allow_unlabelled))
    rows_read = sum(batch.rows_read for batch in batches)
    dropped: dict[str, int] = {}
    for batch in batches:
        for reason, count in batch.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
    labelled = pa.concat_tables([batch.labelled for batch in batches])
    pending = pa.concat_tables([batch.pending for batch in batches])
    if rows_read == 0:
        raise BadFileError(f"{path.name}: the file has a header but no data rows")
    if allow_unlabelled and labelled.num_rows == 0 and pending.num_rows:
        table = pending
    else:
        if pending.num_rows:
            dropped[PENDING_OUTCOME] = pending.num_rows
        table = labelled
    if table.num_rows == 0:
        reasons = ", ".join(f"{count} {reason}" for reason, count in dropped.items())
        raise BadFileError(f"{path.name}: none of its {rows_read} rows is valid ({reasons})")
    return ParsedFile(table=table, rows_read=rows_read, dropped=dropped)


def read_labelled_data(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Features (float64, one column per feature) and labels of checked data files, in order.

    Invalid rows are left out with a warning; a bad file raises BadFileError.
    """
    tables = []
    for path in paths:
        parsed = read_data_file(path)
        if parsed.rows_dropped:
            log.warning("%s: %d invalid rows left out (%s)", path, parsed.rows_dropped, parsed.dropped)
        tables.append(parsed.table)
    return labelled_arrays(pa.concat_tables(tables))
