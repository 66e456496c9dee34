"""Database URLs, identifiers and the cheap "is there a row past the watermark" question.

Standard library only at import: the cron job's no-op run asks its question through ``sqlite3``
or psycopg directly (each imported only when that kind of database is configured), without
SQLAlchemy or anything else heavy. Passwords come from an environment variable, never from a
file, and a URL is only ever shown masked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from riskwatch.core.errors import PipelineError
from riskwatch.core.files import write_text_atomic

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql+psycopg", "postgresql")
DEFAULT_PASSWORD_ENV = "RISK_DATABASE_PASSWORD"
CONNECT_TIMEOUT_SECONDS = 5
# A plain SQL identifier, optionally qualified by a schema: anything else is refused, then quoted.
# Matched whole (``fullmatch``): ``$`` would also match before a trailing newline.
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
NUMBER_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed database URL: SQLite (an absolute file path) or PostgreSQL (host, port, user, database)."""

    url: str  # as SQLAlchemy takes it, without a password
    kind: str  # "sqlite" or "postgresql"
    path: Path | None = None
    host: str = ""
    port: int = 5432
    user: str = ""
    database: str = ""
    password_env: str = DEFAULT_PASSWORD_ENV

    @property
    def shown(self) -> str:
        """The URL as it may appear in a message or a log: never a password."""
        if self.kind == "sqlite":
            return f"{SQLITE_PREFIX}{self.path}"
        user = f"{self.user}:***@" if self.user else ""
        return f"postgresql://{user}{self.host}:{self.port}/{self.database}"

    def __str__(self) -> str:
        return self.shown

    def password(self) -> str | None:
        """The password from its environment variable (None when unset)."""
        return os.environ.get(self.password_env) or None


def parse_database_url(url: str, base: Path, where: str, password_env: str = DEFAULT_PASSWORD_ENV) -> DatabaseUrl:
    """Check a database URL from a config; a SQLite path resolves against ``base`` (the config's folder).

    Raises PipelineError naming ``where`` (the config key) when the URL is not one of the two kinds
    or carries a password.
    """
    if url.startswith(SQLITE_PREFIX) and len(url) > len(SQLITE_PREFIX):
        path = (base / url[len(SQLITE_PREFIX) :]).resolve()
        return DatabaseUrl(f"{SQLITE_PREFIX}{path}", "sqlite", path=path, password_env=password_env)
    parts = urlsplit(url)
    if parts.scheme not in POSTGRES_SCHEMES or not parts.hostname or not parts.path.strip("/"):
        raise PipelineError(
            f"{where} must be 'sqlite:///path/to/file.sqlite' or 'postgresql+psycopg://user@host:port/database'"
        )
    if parts.password:
        raise PipelineError(
            f"{where} holds a password; remove it and set the environment variable {password_env} instead"
        )
    try:
        port = parts.port or 5432
    except ValueError:
        raise PipelineError(f"{where} has a port that is not a number") from None
    user = unquote(parts.username or "")
    database = unquote(parts.path.strip("/"))
    host = parts.hostname
    login = f"{user}@" if user else ""
    return DatabaseUrl(
        f"postgresql+psycopg://{login}{host}:{port}/{database}",
        "postgresql",
        host=host,
        port=port,
        user=user,
        database=database,
        password_env=password_env,
    )


def check_identifier(name: str, where: str, qualified: bool = False) -> str:
    """A table or column name, checked: letters, digits and underscores (``schema.table`` when ``qualified``)."""
    parts = name.split(".") if qualified else [name]
    if not isinstance(name, str) or len(parts) > 2 or not all(IDENTIFIER.fullmatch(part) for part in parts):
        schema = ", optionally schema.name" if qualified else ""
        raise PipelineError(f"{where} must be a plain SQL name (letters, digits and underscores{schema}), not {name!r}")
    return name


def quote_identifier(name: str) -> str:
    """A checked name quoted for SQLite and PostgreSQL alike (``schema.table`` quoted part by part)."""
    return ".".join(f'"{part}"' for part in name.split("."))


@dataclass(frozen=True)
class DatabaseSource:
    """A table (or view) of client rows and the column that only grows as rows are added."""

    url: DatabaseUrl
    table: str
    watermark: str
    base: Path | None = None  # the config's folder: a SQLite file inside it is keyed by its relative path

    @property
    def key(self) -> str:
        """What identifies this source in the ingestion record: a SQLite file relative to the config's folder,
        so a project moved elsewhere keeps its state."""
        return f"{self.location}#{self.table}.{self.watermark}"

    @property
    def location(self) -> str:
        path = self.url.path
        if self.url.kind == "sqlite" and path is not None and self.base is not None and path.is_relative_to(self.base):
            return f"{SQLITE_PREFIX}{path.relative_to(self.base).as_posix()}"
        return self.url.shown

    def matches(self, key: str) -> bool:
        """Whether a key of the ingestion record names this source, keys written with an absolute SQLite path too
        (recorded before keys were relative, perhaps in the folder the project was moved from)."""
        if key == self.key:
            return True
        location, _, column = key.rpartition("#")
        if column != f"{self.table}.{self.watermark}" or self.location == self.url.shown:
            return location == self.url.shown and column == f"{self.table}.{self.watermark}"
        relative = self.location[len(SQLITE_PREFIX) :]
        return location == self.url.shown or (
            location.startswith(SQLITE_PREFIX + "/") and location.endswith("/" + relative)
        )

    @property
    def shown(self) -> str:
        return f"table {self.table} of {self.url.shown}"


def unreachable(
    source: DatabaseSource | DatabaseUrl,
    exc: BaseException,
    doing: str = "read",
    outcome: str = "nothing was taken from it; the next run tries again",
) -> PipelineError:
    """The one sentence for a database that cannot be reached, read or written; the URL masked, no password."""
    url = source.url if isinstance(source, DatabaseSource) else source
    shown = source.shown if isinstance(source, DatabaseSource) else f"the database {url.shown}"
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    password = url.password()
    if password:
        detail = detail.replace(password, "***")
    return PipelineError(f"{shown} cannot be {doing} ({detail}); {outcome}")


@contextlib.contextmanager
def connect_directly(url: DatabaseUrl) -> Iterator[Any]:
    """A DB-API connection without SQLAlchemy (the cheap check); read-only for SQLite, which must exist."""
    if url.kind == "sqlite":
        if not url.path or not url.path.is_file():
            raise PipelineError(f"database file {url.path} does not exist")
        connection: Any = sqlite3.connect(f"{url.path.as_uri()}?mode=ro", uri=True, timeout=10)
    else:
        import psycopg  # only when a PostgreSQL database is configured

        connection = psycopg.connect(
            host=url.host,
            port=url.port,
            user=url.user or None,
            dbname=url.database,
            password=url.password(),
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
        )
    try:
        yield connection
    finally:
        connection.close()


def parameter_marker(url: DatabaseUrl) -> str:
    """How a query marks a parameter for the database's DB-API driver: sqlite3's ``?``, psycopg's ``%s``."""
    return "?" if url.kind == "sqlite" else "%s"


def read_watermark_kind(connection: Any, source: DatabaseSource) -> str:
    """The watermark column's kind by its type in the catalogue: ``integer``, ``number``, ``timestamp`` or ``text``.

    SQLite's declared type follows its affinity rules (``INT`` anywhere: integer); a column with
    no declared type compares whatever it holds, and is taken as ``any``.
    """
    cursor = connection.cursor()
    if source.url.kind == "sqlite":
        schema, _, table = source.table.rpartition(".")
        pragma = f"{quote_identifier(schema)}.table_info" if schema else "table_info"
        cursor.execute(f"PRAGMA {pragma}({quote_identifier(table)})")
        declared = {str(row[1]).lower(): str(row[2] or "").upper() for row in cursor.fetchall()}
        kind = declared.get(source.watermark.lower(), "")
        if not kind:
            return "any"
    else:
        cursor.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute WHERE attrelid = to_regclass(%s) "
            "AND lower(attname) = lower(%s) AND NOT attisdropped",
            (quote_identifier(source.table), source.watermark),
        )
        row = cursor.fetchone()
        kind = str(row[0]).upper() if row else ""
    if "INT" in kind or kind == "SERIAL":
        return "integer"
    if "DATE" in kind or "TIME" in kind:
        return "timestamp"
    if any(name in kind for name in ("REAL", "FLOA", "DOUB", "NUMERIC", "DECIMAL")):
        return "number"
    return "text"


def comparable_watermark(source: DatabaseSource, kind: str) -> str:
    """A SQL condition true for the rows whose watermark is of the column's kind (SQLite stores any value anywhere)."""
    column = quote_identifier(source.watermark)
    if source.url.kind != "sqlite" or kind == "any":
        return f"{column} IS NOT NULL"
    stored = {"integer": "'integer'", "number": "'integer', 'real'"}.get(kind, "'text'")
    return f"typeof({column}) IN ({stored})"


def watermark_fits(value: Any, kind: str) -> bool:
    """Whether a recorded watermark is of the column's kind (one recorded from a bad row is not)."""
    if value is None:
        return True
    if kind == "integer":
        return type(value) is int
    if kind == "number":
        return type(value) is int or (isinstance(value, str) and NUMBER_TEXT.fullmatch(value) is not None)
    return isinstance(value, str) or kind == "any"


@dataclass(frozen=True)
class SourceState:
    """What the cheap check sees of the table around the recorded watermark."""

    past: bool  # a row past the watermark (None: any row)
    at_or_below: int  # rows at or below it
    reached: bool  # a row at or past it: False when the table went back (emptied, reloaded, reset)
    null_watermarks: int
    bad_watermarks: list[str]  # a few of the watermarks not of the column's kind
    bad_count: int


def read_source_state(connection: Any, source: DatabaseSource, kind: str, watermark: Any) -> SourceState:
    """The table's rows around ``watermark``, in a few index-friendly queries (standard library drivers only)."""
    table, column = quote_identifier(source.table), quote_identifier(source.watermark)
    marker, comparable = parameter_marker(source.url), comparable_watermark(source, kind)
    cursor = connection.cursor()

    def value(query: str, params: tuple[Any, ...] = ()) -> Any:
        cursor.execute(query, params)
        row = cursor.fetchone()
        return None if row is None else row[0]

    nulls = int(value(f"SELECT COUNT(*) FROM {table} WHERE {column} IS NULL") or 0)
    bad_count, bad = 0, []
    if source.url.kind == "sqlite" and kind != "any":
        bad_count = int(value(f"SELECT COUNT(*) FROM {table} WHERE {column} IS NOT NULL AND NOT {comparable}") or 0)
        if bad_count:
            cursor.execute(
                f"SELECT CAST({column} AS TEXT) FROM {table} WHERE {column} IS NOT NULL AND NOT {comparable} LIMIT 3"
            )
            bad = [shown_value(row[0]) for row in cursor.fetchall()]
    if watermark is None:
        past = value(f"SELECT 1 FROM {table} WHERE {comparable} LIMIT 1") is not None
        return SourceState(past, 0, True, nulls, bad, bad_count)
    past = value(f"SELECT 1 FROM {table} WHERE {comparable} AND {column} > {marker} LIMIT 1", (watermark,)) is not None
    below = int(value(f"SELECT COUNT(*) FROM {table} WHERE {comparable} AND {column} <= {marker}", (watermark,)) or 0)
    reached = (
        past
        or value(f"SELECT 1 FROM {table} WHERE {comparable} AND {column} >= {marker} LIMIT 1", (watermark,)) is not None
    )
    return SourceState(past, below, reached, nulls, bad, bad_count)


def shown_value(value: Any) -> str:
    """A watermark value as a message may show it: short, printable."""
    text = value if isinstance(value, str) else repr(value)
    text = text if text.isprintable() else repr(text)
    return text[:40]


def describe_source_state(
    source: DatabaseSource, state: SourceState, watermark: Any, rows_before: int | None
) -> list[str]:
    """The warnings a table's state is worth (each one sentence naming the table); none when all is well.

    ``rows_before``: how many rows were at or below ``watermark`` when it was recorded (None: not known).
    """
    where, column = source.shown, source.watermark
    notes = []
    if watermark is not None and not state.reached:
        notes.append(
            f"{where}: no row has a {column} of {watermark} or more, the value its rows were ingested up to "
            "(the table was emptied and reloaded, or the column went back); rows up to it are not fetched again "
            "(ingestion.py --fresh reads the table anew)"
        )
    if rows_before is not None and state.at_or_below > rows_before:
        notes.append(
            f"{where}: {state.at_or_below - rows_before} row(s) appeared at or below the {column} {watermark} "
            "already ingested (committed late, or loaded with an old value); they are read again"
        )
    elif rows_before is not None and state.at_or_below < rows_before:
        notes.append(
            f"{where}: {rows_before - state.at_or_below} row(s) at or below the {column} {watermark} were deleted "
            "since it was ingested; their ingested rows are kept"
        )
    if state.null_watermarks:
        notes.append(f"{where}: {state.null_watermarks} row(s) have no {column} (NULL) and are never fetched")
    if state.bad_count:
        notes.append(
            f"{where}: {state.bad_count} row(s) have a {column} that cannot be compared with the column's other "
            f"values ({', '.join(state.bad_watermarks)}); they are left out until it is corrected"
        )
    return notes


def has_rows_past(source: DatabaseSource, watermark: Any) -> bool:
    """Whether the table holds a row whose watermark is past ``watermark`` (None: any row) and of the column's kind."""
    return check_source(source, watermark).past


def check_source(source: DatabaseSource, watermark: Any) -> SourceState:
    """The cheap check's look at the table around ``watermark``; one sentence when the database cannot be asked."""
    return inspect_source(source, lambda kind: watermark if watermark_fits(watermark, kind) else None)[1]


def inspect_source(source: DatabaseSource, choose_watermark: Callable[[str], Any]) -> tuple[Any, SourceState]:
    """The watermark ``choose_watermark`` picks for the column's kind, and the table's state around it; one
    sentence when the database cannot be asked."""
    try:
        with connect_directly(source.url) as connection:
            kind = read_watermark_kind(connection, source)
            watermark = choose_watermark(kind)
            return watermark, read_source_state(connection, source, kind, watermark)
    except PipelineError:
        raise
    except Exception as exc:  # sqlite3 or psycopg: any failure to ask is the same sentence
        raise unreachable(source, exc) from None


def fetched_from(entries: list[Any], source: DatabaseSource) -> list[Any]:
    """The ingestion record's entries (``IngestedFile``) fetched from this source, in their order."""
    return [entry for entry in entries if entry.source and source.matches(entry.source)]


def last_watermark(entries: list[Any], source: DatabaseSource, kind: str | None = None) -> Any:
    """The watermark up to which this source's rows were ingested (None: nothing yet).

    With ``kind`` (the column's, see ``read_watermark_kind``), the last recorded one of that kind:
    a watermark recorded from a bad row (text in an integer column) is passed over.
    """
    fetched = fetched_from(entries, source)
    for entry in reversed(fetched):
        if kind is None or watermark_fits(entry.watermark_to, kind):
            return entry.watermark_to
    return None


SOURCE_STATE_FILE = "sourcestate.json"


@dataclass(frozen=True)
class RecordedState:
    """What a fetch saw below the watermark it recorded: the rows at or below it (counted before the fetch)."""

    watermark: Any
    rows_at_or_below: int


def read_recorded_state(output_folder_path: Path, source: DatabaseSource) -> RecordedState | None:
    """The state ingestion recorded for this source in ``sourcestate.json``; None when missing or unreadable."""
    path = Path(output_folder_path) / SOURCE_STATE_FILE
    try:
        stored = json.loads(path.read_text(encoding="utf-8")).get(source.key)
        return RecordedState(stored["watermark"], int(stored["rows_at_or_below"]))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def write_recorded_state(output_folder_path: Path, source: DatabaseSource, state: RecordedState) -> Path:
    """Write this source's state to ``sourcestate.json`` atomically (after the ingestion record: a stale
    state only makes the next fetch read the table again, and the row hashes drop what was seen)."""
    payload = {source.key: {"watermark": state.watermark, "rows_at_or_below": state.rows_at_or_below}}
    return write_text_atomic(Path(output_folder_path) / SOURCE_STATE_FILE, json.dumps(payload, indent=2) + "\n")


def describe_sources(input_folder_path: Path | None, database: DatabaseSource | None) -> str:
    """The sources of the data as messages and reports name them (a database's URL masked)."""
    sources = [str(input_folder_path)] if input_folder_path is not None else []
    return " and ".join([*sources, *([database.shown] if database is not None else [])]) or "no source"
