"""Database URLs, identifiers and the cheap "is there a row past the watermark" question.

Standard library only at import: the cron job's no-op run asks its question through ``sqlite3``
or psycopg directly (each imported only when that kind of database is configured), without
SQLAlchemy or anything else heavy. Passwords come from an environment variable, never from a
file, and a URL is only ever shown masked.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from common.errors import PipelineError

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql+psycopg", "postgresql")
DEFAULT_PASSWORD_ENV = "RISK_DATABASE_PASSWORD"
CONNECT_TIMEOUT_SECONDS = 5
# A plain SQL identifier, optionally qualified by a schema: anything else is refused, then quoted.
# Matched whole (``fullmatch``): ``$`` would also match before a trailing newline.
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


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

    @property
    def key(self) -> str:
        """What identifies this source in the ingestion record."""
        return f"{self.url.shown}#{self.table}.{self.watermark}"

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


def has_rows_past(source: DatabaseSource, watermark: Any) -> bool:
    """Whether the table holds a row whose watermark is past ``watermark`` (None: any row); one cheap query."""
    table, column = quote_identifier(source.table), quote_identifier(source.watermark)
    marker = parameter_marker(source.url)
    query = f"SELECT 1 FROM {table} WHERE {column} IS NOT NULL LIMIT 1"
    params: tuple[Any, ...] = ()
    if watermark is not None:
        query = f"SELECT 1 FROM {table} WHERE {column} > {marker} LIMIT 1"
        params = (watermark,)
    try:
        with connect_directly(source.url) as connection:
            cursor = connection.cursor()
            cursor.execute(query, params)
            return cursor.fetchone() is not None
    except PipelineError:
        raise
    except Exception as exc:  # sqlite3 or psycopg: any failure to ask is the same sentence
        raise unreachable(source, exc) from None


def fetched_from(entries: list[Any], source: DatabaseSource) -> list[Any]:
    """The ingestion record's entries (``IngestedFile``) fetched from this source, in their order."""
    return [entry for entry in entries if entry.source == source.key]


def last_watermark(entries: list[Any], source: DatabaseSource) -> Any:
    """The watermark up to which this source's rows were ingested (None: nothing yet)."""
    fetched = fetched_from(entries, source)
    return fetched[-1].watermark_to if fetched else None


def describe_sources(input_folder_path: Path | None, database: DatabaseSource | None) -> str:
    """The sources of the data as messages and reports name them (a database's URL masked)."""
    sources = [str(input_folder_path)] if input_folder_path is not None else []
    return " and ".join([*sources, *([database.shown] if database is not None else [])]) or "no source"
