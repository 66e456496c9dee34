"""Rows past the watermark of a database source, fetched in one pass and checked as a file's rows are.

One query through the database's Arrow (ADBC) driver: PostgreSQL's streams the rows with COPY in
binary form, SQLite's reads the file; either way they arrive as pyarrow columns, never row by row,
and go through the same checks as a file's (``riskwatch/core/schema.py``): a bad row is dropped and
counted by reason. The range is fixed first (up to the newest watermark now), so rows added during the fetch
wait for the next one. Nothing here writes the ingestion record: the caller advances the
watermark only once the output is safely written.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather

from riskwatch.core.databases import (
    DatabaseSource,
    RecordedState,
    comparable_watermark,
    connect_directly,
    describe_source_state,
    fetched_from,
    last_watermark,
    parameter_marker,
    quote_identifier,
    read_source_state,
    read_watermark_kind,
    shown_value,
    unreachable,
)
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import atomic_path
from riskwatch.core.rowhash import hash_rows
from riskwatch.core.schema import COLUMNS, ID_COLUMN, ParsedFile, clean_rows
from riskwatch.state.artifacts import IngestedFetch, IngestedFile, utc_now

log = logging.getLogger("ingestion")

# A number as text: what a numeric column may hold; anything else in it is text where a number is expected.
NUMBER_PATTERN = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
NOT_A_NUMBER = "text where a number is expected"
UNREADABLE_TEXT = "id not UTF-8 text (binary data)"
WATERMARK_COLUMN = "_watermark"  # each fetched row's watermark, as text, to name a bad row by
# Control characters no client id holds (line breaks and NUL have their own reason): binary data read as text.
CONTROL_CHARACTERS = r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]"
BATCH_BYTES = 4 << 20


@dataclass
class FetchedRows:
    """One fetch: its checked rows, the watermark range it covered and a hash of what it holds."""

    parsed: ParsedFile
    watermark_from: int | str | None
    watermark_to: int | str
    sha256: str

    def describe(self, source: DatabaseSource) -> str:
        """The fetch's name in ``ingestedfiles.txt``: the table and the watermark range."""
        start = "" if self.watermark_from is None else f"{self.watermark_from} < "
        return f"{source.table} [{start}{source.watermark} <= {self.watermark_to}]"


def json_watermark(value: Any) -> int | str:
    """A watermark value as the ingestion record keeps it: a whole number, or text (timestamps as ISO 8601)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        return int(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    return str(value)


def read_columns(connection: Any, source: DatabaseSource) -> set[str] | None:
    """The source table's column names, lowercased; None when there is no such table or view.

    Asked of the database's catalogue through a plain DB-API connection (``connect_directly``),
    without SQLAlchemy: SQLite's ``table_info`` pragma, or PostgreSQL's ``pg_attribute`` for the
    relation the table's name resolves to, as the fetch's query will resolve it.
    """
    cursor = connection.cursor()
    if source.url.kind == "sqlite":
        schema, _, table = source.table.rpartition(".")
        pragma = f"{quote_identifier(schema)}.table_info" if schema else "table_info"
        cursor.execute(f"PRAGMA {pragma}({quote_identifier(table)})")
        names = {str(row[1]).lower() for row in cursor.fetchall()}
        return names or None  # a table has at least one column: none means there is no table
    relation = quote_identifier(source.table)
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (relation,))
    if not cursor.fetchone()[0]:
        return None
    cursor.execute(
        "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
        "AND NOT attisdropped",
        (relation,),
    )
    return {as_text(row[0]).lower() for row in cursor.fetchall()}


def as_text(value: object) -> str:
    """A catalogue value as text: a database in SQL_ASCII hands text over as bytes."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def check_table(connection: Any, source: DatabaseSource) -> None:
    """Raise PipelineError naming the table when it is missing or lacks a column the schema needs."""
    present = read_columns(connection, source)
    if present is None:
        raise PipelineError(f"{source.shown} does not exist (a table or view holding {', '.join(COLUMNS)} is needed)")
    missing = [name for name in (*COLUMNS, source.watermark) if name.lower() not in present]
    if missing:
        raise PipelineError(f"{source.shown} has no column {', '.join(missing)}")


def query_value(connection: Any, query: str, params: tuple[Any, ...] = ()) -> Any:
    """The first value of a query's first row (None: no row)."""
    cursor = connection.cursor()
    cursor.execute(query, params)
    row = cursor.fetchone()
    return None if row is None else row[0]


def newest_watermark(connection: Any, source: DatabaseSource, since: int | str | None, condition: str) -> Any:
    """The largest watermark past ``since`` now among the rows meeting ``condition`` (None: no such row)."""
    table, column = quote_identifier(source.table), quote_identifier(source.watermark)
    if since is None:
        return query_value(connection, f"SELECT MAX({column}) FROM {table} WHERE {condition}")
    marker = parameter_marker(source.url)
    return query_value(
        connection, f"SELECT MAX({column}) FROM {table} WHERE {condition} AND {column} > {marker}", (since,)
    )


def count_at_or_below(connection: Any, source: DatabaseSource, until: Any, condition: str) -> int:
    """How many rows meeting ``condition`` have a watermark at or below ``until``."""
    table, column = quote_identifier(source.table), quote_identifier(source.watermark)
    marker = parameter_marker(source.url)
    query = f"SELECT COUNT(*) FROM {table} WHERE {condition} AND {column} <= {marker}"
    return int(query_value(connection, query, (until,)) or 0)


def sql_literal(value: int | str) -> str:
    """A watermark as a SQL literal both databases read: a whole number, or quoted text (quotes doubled)."""
    if isinstance(value, int):
        return str(int(value))
    text = str(value)
    if "\x00" in text:
        raise PipelineError(f"the recorded watermark {text!r} holds a NUL character")
    return "'" + text.replace("'", "''") + "'"


def select_rows(source: DatabaseSource, since: Any, until: Any, as_text: bool, condition: str = "1 = 1") -> str:
    """The query of a fetch: the rows in the watermark range meeting ``condition``, in watermark order, ids as text,
    and each row's watermark as text (``WATERMARK_COLUMN``), so a bad row can be named.

    ``as_text``: every value as text (never null), for a SQLite table whose numeric columns hold
    something other than whole numbers; such values are then checked as a file's text is.
    """
    column = quote_identifier(source.watermark)
    if as_text:
        values = [f"COALESCE(CAST({quote_identifier(name)} AS TEXT), '')" for name in COLUMNS]
    else:
        values = [f"COALESCE(CAST({quote_identifier(ID_COLUMN)} AS TEXT), '')"]
        values += [quote_identifier(name) for name in COLUMNS[1:]]
    where = f"{condition} AND {column} <= {sql_literal(json_watermark(until))}"
    if since is not None:
        where = f"{column} > {sql_literal(since)} AND {where}"
    selected = ", ".join(f"{value} AS {quote_identifier(name)}" for value, name in zip(values, COLUMNS, strict=True))
    selected += f", CAST({column} AS TEXT) AS {quote_identifier(WATERMARK_COLUMN)}"
    return f"SELECT {selected} FROM {quote_identifier(source.table)} WHERE {where} ORDER BY {column}"


def libpq_uri(source: DatabaseSource) -> str:
    """The PostgreSQL connection URI for the Arrow driver, with the password from its variable."""
    url = source.url
    login = quote(url.user, safe="")
    password = url.password()
    if password:
        login += ":" + quote(password, safe="")
    return f"postgresql://{login}@{url.host}:{url.port}/{quote(url.database, safe='')}?connect_timeout=5"


def read_batches(reader: pa.RecordBatchReader) -> pa.Table:
    """Every record batch of a query's result, as one table of one chunk per column.

    SQLite's driver hands over 1,024 rows a batch: the checks, the cache and the CSV writer
    each go faster over one long column than over a thousand short ones.
    """
    return pa.Table.from_batches(list(reader), schema=reader.schema).combine_chunks()


def open_arrow_database(source: DatabaseSource) -> Any:
    """The database's Arrow (ADBC) driver, opened at the source (SQLite read-only).

    The drivers' low-level interface: their DB-API layer imports pyarrow.dataset and pandas
    (a quarter of a second) for nothing a single query needs.
    """
    if source.url.kind == "postgresql":
        import adbc_driver_postgresql

        return adbc_driver_postgresql.connect(libpq_uri(source))
    import adbc_driver_sqlite

    if source.url.path is None:
        raise PipelineError(f"{source.shown}: a SQLite URL needs a file path")
    return adbc_driver_sqlite.connect(f"{source.url.path.as_uri()}?mode=ro")


def fetch_arrow_table(source: DatabaseSource, query: str) -> pa.Table:
    """Run one query through the database's Arrow (ADBC) driver: the rows arrive as columns, never row by row.

    PostgreSQL's driver streams them with COPY in binary form; SQLite's reads the file directly (read-only).
    """
    from adbc_driver_manager import AdbcConnection, AdbcStatement

    with (
        open_arrow_database(source) as database,
        AdbcConnection(database) as connection,
        AdbcStatement(connection) as statement,
    ):
        if source.url.kind == "postgresql":  # batches of a few MiB: memory stays flat, a lost server is seen at once
            statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_BYTES)})
        statement.set_sql_query(query)
        stream, _ = statement.execute_query()
        return read_batches(pa.RecordBatchReader.from_stream(stream))


def fetch_rows(source: DatabaseSource, since: Any, until: Any, condition: str = "1 = 1") -> pa.Table:
    """The range's rows, numbers as numbers; as text when SQLite's loose types mix kinds in a column.

    SQLite's driver takes a column's type from its first rows: a later value of another kind
    (text, or a fraction among whole numbers) is a type mismatch, and the range is read again
    as text, which is then checked as a file's text is.
    """
    try:
        return fetch_arrow_table(source, select_rows(source, since, until, False, condition))
    except Exception as exc:  # the driver's own error type; only a type mismatch is retried
        if source.url.kind != "sqlite" or "type mismatch" not in str(exc).lower():
            raise
    log.info("%s: the numeric columns hold values of mixed kinds; reading them as text", source.shown)
    return fetch_arrow_table(source, select_rows(source, since, until, True, condition))


def as_numbers(values: pa.ChunkedArray) -> tuple[pa.ChunkedArray, np.ndarray]:
    """A column as float64 (nulls where missing) and a mask of the values that are text, not numbers."""
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_decimal(values.type):
        return pc.cast(values, pa.float64()), np.zeros(len(values), dtype=bool)
    values = pc.cast(values, pa.string())
    number = pc.fill_null(pc.match_substring_regex(values, NUMBER_PATTERN), False)
    blank = pc.fill_null(pc.equal(pc.utf8_length(values), 0), True)
    text = ~(number.to_numpy(zero_copy_only=False) | blank.to_numpy(zero_copy_only=False))
    return pc.cast(pc.if_else(number, values, pa.scalar(None, pa.string())), pa.float64()), text


def check_fetched_rows(table: pa.Table) -> ParsedFile:
    """The rows of a fetch checked like a file's: text in a numeric column drops its row, then the file rules."""
    not_number = np.zeros(table.num_rows, dtype=bool)
    columns: dict[str, Any] = {ID_COLUMN: pc.cast(table[ID_COLUMN], pa.string())}
    for name in COLUMNS[1:]:
        columns[name], text = as_numbers(table[name])
        not_number |= text
    checked = pa.table(columns)
    if not_number.any():
        checked = checked.filter(pa.array(~not_number))
    parsed = clean_rows(checked, COLUMNS)
    bad = int(not_number.sum())
    if bad:
        parsed.rows_read += bad
        parsed.dropped = {NOT_A_NUMBER: bad, **parsed.dropped}
    return parsed


def split_range(
    connection: Any, source: DatabaseSource, since: Any, until: Any, condition: str = "1 = 1"
) -> list[tuple[Any, Any]]:
    """The watermark range to fetch, as two halves read at once from SQLite, whose driver reads a query on one core.

    Only whole-number watermarks are split; a PostgreSQL server streams one query fast enough.
    """
    whole = [(since, until)]
    if source.url.kind != "sqlite" or type(until) is not int:
        return whole
    if since is None:
        table, column = quote_identifier(source.table), quote_identifier(source.watermark)
        lowest = query_value(connection, f"SELECT MIN({column}) FROM {table} WHERE {condition}")
        low = lowest - 1 if type(lowest) is int else None
    else:
        low = since if type(since) is int else None
    if low is None or until - low < 2:
        return whole
    middle = low + (until - low) // 2
    return [(since, middle), (middle, until)]


def join_parts(
    source: DatabaseSource, parts: list[pa.Table], since: Any, until: Any, condition: str = "1 = 1"
) -> pa.Table:
    """The fetched halves as one table in watermark order; read again whole as text when their column types differ
    (SQLite's loose types: one half held text, or only nulls, in a numeric column)."""
    if len(parts) == 1:
        return parts[0]
    if any(not part.schema.equals(parts[0].schema) for part in parts[1:]):
        return fetch_arrow_table(source, select_rows(source, since, until, True, condition))
    return pa.concat_tables(parts).combine_chunks()


def import_pandas() -> None:
    """Import pandas, which pyarrow imports at its first conversion of Python values (a quarter of a second).

    Every check of the rows converts some, so it is imported while the driver reads them instead.
    """
    import pandas  # noqa: F401


@dataclass
class DatabaseRead:
    """What one ingestion took from a database source: its entries, the warnings it is worth, and the state to keep."""

    entries: list[IngestedFile]
    warnings: list[str]
    state: RecordedState | None  # written once the ingestion record is (``write_recorded_state``)


def find_unreadable_text(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A mask of the values of a text column that are not UTF-8 text, or hold control characters (binary data).

    One check of the whole column; the values are looked at one by one only when it fails.
    """
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not (pa.types.is_string(array.type) or pa.types.is_binary(array.type)):
        return np.zeros(len(array), dtype=bool)
    try:
        if pa.types.is_binary(array.type):
            raise pa.ArrowInvalid("binary")
        array.validate(full=True)
        control = pc.match_substring_regex(array, CONTROL_CHARACTERS)
        return np.asarray(pc.fill_null(control, False).to_numpy(zero_copy_only=False), dtype=bool)
    except pa.ArrowInvalid:
        values = array.view(pa.binary()).to_pylist()
        return np.array([value is not None and not readable_text(value) for value in values], dtype=bool)


def readable_text(value: bytes) -> bool:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return re.search(CONTROL_CHARACTERS, text) is None


def drop_unreadable_rows(table: pa.Table) -> tuple[pa.Table, list[str]]:
    """The rows whose text is readable; and the watermarks (as text) of the rows dropped."""
    unreadable = np.zeros(table.num_rows, dtype=bool)
    for name in table.column_names:
        if name != WATERMARK_COLUMN:
            unreadable |= find_unreadable_text(table[name])
    if not unreadable.any():
        return table, []
    watermarks = table[WATERMARK_COLUMN].filter(pa.array(unreadable)).to_pylist()
    return table.filter(pa.array(~unreadable)), [str(value) for value in watermarks]


def fetch_past_watermark(
    source: DatabaseSource,
    earlier: list[IngestedFile],
    recorded: RecordedState | None = None,
    cache_path: Callable[[str], Path] | None = None,
) -> tuple[FetchedRows | None, list[str], RecordedState | None]:
    """The rows past the recorded watermark up to the newest now, checked; the warnings; the state to keep.

    Only rows whose watermark is of the column's kind (its type in the catalogue) are fetched; the
    others, and rows without one, are counted and named in a warning. Before the fetch, the rows at
    or below the newest watermark are counted: when a later run finds more there (a transaction that
    committed after a later one, a row loaded with an old value), the whole range is read again and
    the rows already fetched are dropped by their hashes. Raises PipelineError (URL masked) when the
    database cannot be reached, the connection is lost mid-fetch, or the table is missing: nothing
    is returned, so nothing is ingested or advanced.
    """
    warnings: list[str] = []
    try:
        with connect_directly(source.url) as connection:
            check_table(connection, source)
            kind = read_watermark_kind(connection, source)
            condition = comparable_watermark(source, kind)
            since = last_watermark(earlier, source, kind)
            latest = last_watermark(earlier, source)
            if latest != since:
                warnings.append(
                    f"{source.shown}: the recorded {source.watermark} {shown_value(latest)} is not a {kind} value; "
                    f"reading again from {since if since is not None else 'the start'}"
                )
            state = read_source_state(connection, source, kind, since)
            before = recorded.rows_at_or_below if recorded is not None and recorded.watermark == since else None
            warnings += describe_source_state(source, state, since, before)
            low = None if before is not None and state.at_or_below > before else since
            until = newest_watermark(connection, source, low, condition)
            if until is None:
                kept = RecordedState(since, state.at_or_below) if since is not None else None
                return None, warnings, kept
            counted = count_at_or_below(connection, source, until, condition)  # before the fetch: see above
            ranges = split_range(connection, source, low, until, condition)
        with ThreadPoolExecutor(max_workers=len(ranges)) as pool:  # the driver reads without the GIL
            parts = [pool.submit(fetch_rows, source, start, end, condition) for start, end in ranges]
            import_pandas()
            table = join_parts(source, [part.result() for part in parts], low, until, condition)
    except PipelineError:
        raise
    except Exception as exc:  # a driver's error of any kind: the database could not be read
        raise unreachable(source, exc) from None
    table, unreadable = drop_unreadable_rows(table)
    if unreadable:
        warnings.append(
            f"{source.shown}: {len(unreadable)} row(s) dropped, their text not UTF-8 (binary data), at "
            f"{source.watermark} {', '.join(shown_value(value) for value in unreadable[:5])}"
            + (", ..." if len(unreadable) > 5 else "")
        )
    parsed = check_fetched_rows(table)
    if unreadable:
        parsed.rows_read += len(unreadable)
        parsed.dropped = {UNREADABLE_TEXT: len(unreadable), **parsed.dropped}
    until_value = json_watermark(until)
    new_state = RecordedState(until_value, counted)
    if low is None and earlier and cache_path is not None:  # read again: keep only the rows not fetched before
        parsed = drop_seen_rows(parsed, [cache_path(entry.sha256) for entry in earlier])
        if parsed.rows_kept == 0:
            return None, warnings, new_state
    digest = hashlib.sha256(f"{source.key}|{low}|{until_value}|{parsed.rows_read}|".encode())
    digest.update(hash_rows(parsed.table).tobytes())
    return FetchedRows(parsed, low, until_value, digest.hexdigest()), warnings, new_state


def drop_seen_rows(parsed: ParsedFile, caches: list[Path]) -> ParsedFile:
    """The rows of a fetch that no earlier fetch (``caches``: their cached rows) held, by row hash; the others are
    not counted again."""
    seen = np.concatenate(
        [np.zeros(0, np.uint64)] + [hash_rows(feather.read_table(path, memory_map=True)) for path in caches]
    )
    fresh = ~np.isin(hash_rows(parsed.table), seen)
    return ParsedFile(parsed.table.filter(pa.array(fresh)), int(fresh.sum()) + parsed.rows_dropped, parsed.dropped)


def read_database_source(
    source: DatabaseSource,
    earlier: list[IngestedFile],
    cache_path: Callable[[str], Path],
    usable: Callable[[str], bool],
    recorded: RecordedState | None = None,
) -> DatabaseRead:
    """The entries this source contributes: its earlier fetches (their cached rows kept) and a new fetch, if any.

    The new fetch's rows are cached under ``cache_path(sha256)`` like a file's parsed rows;
    the watermark it reached is only kept once the caller writes the ingestion record.
    ``recorded``: the state the last fetch kept (``read_recorded_state``).
    """
    kept = fetched_from(earlier, source)
    for entry in kept:
        if not usable(entry.sha256):
            raise PipelineError(
                f"the rows fetched from {source.shown} as {entry.name!r} are missing from "
                f"{cache_path(entry.sha256).parent}; run ingestion.py --fresh to read the table from the start"
            )
    fetched, warnings, state = fetch_past_watermark(source, kept, recorded, cache_path)
    for warning in warnings:
        log.warning("%s", warning)
    if fetched is None:
        log.info("%s: no rows past the watermark", source.shown)
        return DatabaseRead(kept, warnings, state)
    with atomic_path(cache_path(fetched.sha256)) as tmp:
        feather.write_feather(fetched.parsed.table, tmp, compression="uncompressed")
    name = unique_name(fetched.describe(source), {entry.name for entry in earlier})
    detail = ", ".join(f"{count} {reason}" for reason, count in fetched.parsed.dropped.items())
    log.info(
        "%s: %d rows kept, %d dropped%s",
        name,
        fetched.parsed.rows_kept,
        fetched.parsed.rows_dropped,
        f" ({detail})" if detail else "",
    )
    entry = IngestedFetch(
        name=name,
        sha256=fetched.sha256,
        rows_kept=fetched.parsed.rows_kept,
        rows_dropped=fetched.parsed.rows_dropped,
        ingested_at=utc_now(),
        source=source.key,
        watermark_from=fetched.watermark_from,
        watermark_to=fetched.watermark_to,
    )
    return DatabaseRead([*kept, entry], warnings, state)


def unique_name(name: str, taken: set[str]) -> str:
    """A fetch's name, numbered when a range is read again (each line of ``ingestedfiles.txt`` names one fetch)."""
    number, unique = 2, name
    while unique in taken:
        unique, number = f"{name} #{number}", number + 1
    return unique


def count_missing_in_table(source: DatabaseSource) -> dict[str, Any]:
    """Percent of missing (null or blank) values per column of the source table, in one query."""
    from riskwatch.data.datastats import percentages

    sums = ", ".join(
        f"SUM(CASE WHEN {quote_identifier(name)} IS NULL OR CAST({quote_identifier(name)} AS TEXT) = '' "
        "THEN 1 ELSE 0 END)"
        for name in COLUMNS
    )
    try:
        with connect_directly(source.url) as connection:
            check_table(connection, source)
            cursor = connection.cursor()
            cursor.execute(f"SELECT COUNT(*), {sums} FROM {quote_identifier(source.table)}")
            row = cursor.fetchone()
    except PipelineError:
        raise
    except Exception as exc:  # a driver's error of any kind: the database could not be read
        raise unreachable(source, exc, outcome="its missing values are not measured") from None
    rows, missing = int(row[0]), {name: int(count or 0) for name, count in zip(COLUMNS, row[1:], strict=True)}
    percent = percentages(missing, rows)
    return {
        "rows": rows,
        "percent": percent,
        "files": {source.table: {"rows": rows, "percent": percent}},
        "unreadable": {},
    }
