"""A SQLite table as a source: first fetch, increments, bad rows, edited watermarks, a table that vanishes, crashes."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from riskwatch.core.config import Config, load_config
from riskwatch.core.databases import check_identifier, has_rows_past, parse_database_url, quote_identifier
from riskwatch.core.errors import PipelineError
from riskwatch.data import database_rows
from riskwatch.data.generator import load_into_database
from riskwatch.stages import ingestion
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.state.artifacts import FINAL_DATA, INGESTED_FILES, INGESTION_REPORT, read_ingestion_record
from tests.helpers import PROJECT_ROOT, write_clients, write_config, write_database_config


def ingest(config: Config, fresh: bool = False) -> ingestion.IngestionResult:
    return ingest_folder(config.input_folder_path, config.output_folder_path, fresh=fresh, database=config.database)


@pytest.fixture
def sqlite_project(tmp_path: Path) -> Config:
    """A project whose source is client_activity in clients.sqlite, loaded with the rows of two files."""
    first = write_clients(tmp_path / "csv" / "clients_a.csv", 600, seed=1)
    second = write_clients(tmp_path / "csv" / "clients_b.csv", 400, seed=2)
    write_clients(tmp_path / "testdata" / "testdata.csv", 500, seed=3)
    load_into_database("sqlite:///" + str(tmp_path / "clients.sqlite"), "client_activity", [first, second])
    return load_config(write_database_config(tmp_path, "sqlite:///clients.sqlite"))


def add_rows(config: Config, *rows: tuple) -> None:
    with sqlite3.connect(config.database.url.path) as connection:
        connection.executemany(
            "INSERT INTO client_activity (corporation, lastmonth_activity, lastyear_activity, number_of_employees, "
            "exited) VALUES (?, ?, ?, ?, ?)",
            rows,
        )


def test_the_first_fetch_ingests_what_the_same_rows_as_files_would(sqlite_project: Config, tmp_path: Path):
    result = ingest(sqlite_project)
    assert result.rows_written == 1000
    (tmp_path / "files").mkdir()
    from_files = load_config(write_config(tmp_path / "files", input_folder_path=str(tmp_path / "csv")))
    ingest_folder(from_files.input_folder_path, from_files.output_folder_path)
    final = sqlite_project.output_folder_path / FINAL_DATA
    assert final.read_bytes() == (from_files.output_folder_path / FINAL_DATA).read_bytes()
    (entry,) = read_ingestion_record(sqlite_project.output_folder_path / INGESTED_FILES).files
    assert (entry.watermark_from, entry.watermark_to, entry.rows_kept) == (None, 1000, 1000)
    assert entry.name == "client_activity [id <= 1000]"
    report = json.loads((sqlite_project.output_folder_path / INGESTION_REPORT).read_text())
    assert report["files"][0]["sha256"] == entry.sha256 and report["files"][0]["watermark_to"] == 1000


def test_each_fetch_takes_only_the_rows_past_the_watermark(sqlite_project: Config, tmp_path: Path):
    ingest(sqlite_project)
    again = ingest(sqlite_project)
    assert again.batch == 0 and again.rows_written == 1000
    load_into_database(
        sqlite_project.database.url.url, "client_activity", [write_clients(tmp_path / "c.csv", 50, seed=9)]
    )
    more = ingest(sqlite_project)
    assert more.appended and more.rows_written == 1050 and more.batch == 2
    entries = read_ingestion_record(sqlite_project.output_folder_path / INGESTED_FILES).files
    assert [(entry.watermark_from, entry.watermark_to, entry.rows_kept) for entry in entries] == [
        (None, 1000, 1000),
        (1000, 1050, 50),
    ]
    lines = (sqlite_project.output_folder_path / INGESTED_FILES).read_text().splitlines()
    assert lines == ["client_activity [id <= 1000]", "client_activity [1000 < id <= 1050]"]


def test_bad_rows_are_dropped_and_counted_by_reason(sqlite_project: Config):
    ingest(sqlite_project)
    add_rows(
        sqlite_project,
        ("good", 1, 2, 3, 0),
        ("lots", "many", 2, 3, 0),
        ("neg", -1, 2, 3, 0),
        ("half", 1.5, 2, 3, 1),
        ("exit", 1, 2, 3, 7),
        ("", 1, 2, 3, 0),
        ("blank", None, 2, 3, 0),
    )
    result = ingest(sqlite_project)
    fetch = result.files[-1]
    assert (fetch.rows_kept, fetch.rows_dropped) == (1, 6)
    assert result.rows_written == 1001
    report = json.loads((sqlite_project.output_folder_path / INGESTION_REPORT).read_text())
    assert report["files"][-1]["rows_dropped"] == 6


def test_the_reasons_of_a_fetch_are_those_of_a_file():
    import pyarrow as pa

    table = pa.table(
        {
            "corporation": ["a", "b", "c", "d", ""],
            "lastmonth_activity": ["1", "lots", "-2", "1.5", "3"],
            "lastyear_activity": ["2", "2", "2", "2", "2"],
            "number_of_employees": ["3", "3", "3", "3", "3"],
            "exited": ["0", "1", "0", "0", "1"],
        }
    )
    parsed = database_rows.check_fetched_rows(table)
    assert parsed.rows_kept == 1 and parsed.rows_read == 5
    assert parsed.dropped == {
        "text where a number is expected": 1,
        "missing value": 1,
        "negative count": 1,
        "not a whole number": 1,
    }


def test_an_edited_watermark_repeats_nothing(sqlite_project: Config, caplog: pytest.LogCaptureFixture):
    ingest(sqlite_project)
    with sqlite3.connect(sqlite_project.database.url.path) as connection:
        connection.execute("UPDATE client_activity SET id = 5000 WHERE id = 10")  # an old row moved past the watermark
    moved = ingest(sqlite_project)
    assert moved.files[-1].rows_kept == 1 and moved.rows_written == 1000  # fetched again, a duplicate of a kept row
    with sqlite3.connect(sqlite_project.database.url.path) as connection:
        # the newest rows gone: the watermark went back
        connection.execute("DELETE FROM client_activity WHERE id > 900")
    with caplog.at_level(logging.WARNING):
        back = ingest(sqlite_project)
    assert back.rows_written == 1000
    assert "no row has a id of 5000 or more" in caplog.text
    add_rows(sqlite_project, ("fresh", 1, 2, 3, 0))  # takes id 901, below the watermark: counted there, read again
    assert ingest(sqlite_project).rows_written == 1001
    assert ingest(sqlite_project, fresh=True).rows_written == 900  # rows 902-1000 and the moved one deleted


def test_a_table_that_vanishes_is_named_and_nothing_is_lost(sqlite_project: Config):
    ingest(sqlite_project)
    before = (sqlite_project.output_folder_path / FINAL_DATA).read_bytes()
    with sqlite3.connect(sqlite_project.database.url.path) as connection:
        connection.execute("ALTER TABLE client_activity RENAME TO old_activity")
    with pytest.raises(PipelineError, match=r"^table client_activity of sqlite:///.*clients.sqlite does not exist"):
        ingest(sqlite_project)
    assert (sqlite_project.output_folder_path / FINAL_DATA).read_bytes() == before
    with sqlite3.connect(sqlite_project.database.url.path) as connection:
        connection.execute("ALTER TABLE old_activity RENAME TO client_activity")
    sqlite_project.database.url.path.rename(sqlite_project.database.url.path.with_suffix(".away"))
    with pytest.raises(PipelineError, match="database file .*clients.sqlite does not exist"):
        ingest(sqlite_project)


def test_a_fetch_that_fails_midway_takes_nothing_and_the_next_takes_all(
    sqlite_project: Config, monkeypatch: pytest.MonkeyPatch
):
    ingest(sqlite_project)
    add_rows(sqlite_project, ("new1", 1, 2, 3, 0), ("new2", 4, 5, 6, 1))

    def lose_connection(reader: object) -> None:
        raise OSError("[SQLite] disk I/O error")

    monkeypatch.setattr(database_rows, "read_batches", lose_connection)
    with pytest.raises(PipelineError, match=r"cannot be read \(\[SQLite\] disk I/O error\); nothing was taken from it"):
        ingest(sqlite_project)
    monkeypatch.undo()
    assert read_ingestion_record(sqlite_project.output_folder_path / INGESTED_FILES).files[-1].watermark_to == 1000
    assert ingest(sqlite_project).rows_written == 1002


def test_a_crash_before_the_record_is_written_repeats_nothing(sqlite_project: Config, monkeypatch: pytest.MonkeyPatch):
    ingest(sqlite_project)
    add_rows(sqlite_project, ("new1", 1, 2, 3, 0), ("new2", 4, 5, 6, 1))

    def crash(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ingestion, "write_ingestion_record", crash)
    with pytest.raises(KeyboardInterrupt):
        ingest(sqlite_project)  # finaldata.csv already holds the two rows; the watermark did not move
    monkeypatch.undo()
    result = ingest(sqlite_project)
    assert result.rows_written == 1002
    lines = (sqlite_project.output_folder_path / FINAL_DATA).read_text().splitlines()
    assert len(lines) == 1003 and len(set(lines)) == 1003
    assert read_ingestion_record(sqlite_project.output_folder_path / INGESTED_FILES).files[-1].watermark_to == 1002


def test_folder_and_database_together(sqlite_project: Config, tmp_path: Path):
    write_clients(tmp_path / "sourceddata" / "clients_c.csv", 300, seed=4)
    both = load_config(write_database_config(tmp_path, "sqlite:///clients.sqlite", folder_too=True))
    result = ingest(both)
    assert result.rows_written == 1300
    assert sorted(bool(entry.source) for entry in result.files) == [False, True]


def test_the_config_checks_names_and_keeps_passwords_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(PipelineError, match="input_database_table must be a plain SQL name"):
        load_config(write_database_config(tmp_path, "sqlite:///x.sqlite", input_database_table="t; drop table t"))
    with pytest.raises(PipelineError, match="holds a password; remove it and set the environment variable DB_PW"):
        load_config(
            write_database_config(
                tmp_path, "postgresql+psycopg://me:secret@db:5432/x", input_database_password_env="DB_PW"
            )
        )
    with pytest.raises(PipelineError, match="input_database_url must be 'sqlite:///"):
        load_config(write_database_config(tmp_path, "mysql://db/x"))
    url = parse_database_url("postgresql+psycopg://me@127.0.0.1:9/x", tmp_path, "url", "DB_PW")
    monkeypatch.setenv("DB_PW", "hunter2")
    assert url.shown == "postgresql://me:***@127.0.0.1:9/x" and "hunter2" not in url.url
    assert check_identifier("public.client_activity", "t", qualified=True) == "public.client_activity"
    assert quote_identifier("public.client_activity") == '"public"."client_activity"'
    config = load_config(write_database_config(tmp_path, "sqlite:///data/x.sqlite"))
    assert config.database.url.path == tmp_path / "data" / "x.sqlite" and config.input_folder_path is None


def test_the_cheap_check_asks_one_question(sqlite_project: Config):
    assert has_rows_past(sqlite_project.database, None)
    assert has_rows_past(sqlite_project.database, 999)
    assert not has_rows_past(sqlite_project.database, 1000)


@pytest.mark.slow
def test_a_fetch_from_sqlite_imports_neither_sqlalchemy_nor_the_drivers_dbapi_layer(
    sqlite_project: Config, tmp_path: Path
):
    probe = (
        "import sys\n"
        "import ingestion\n"
        f"code = ingestion.main(['--config', {str(tmp_path / 'config.json')!r}, '-q'])\n"
        "print(code, sorted({'sqlalchemy', 'adbc_driver_manager.dbapi', 'pyarrow.dataset'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["0", "[]"], result.stderr
    assert read_ingestion_record(sqlite_project.output_folder_path / INGESTED_FILES).files[0].rows_kept == 1000


def test_sqlite_rows_are_read_in_two_halves_at_once_and_joined_in_order(
    sqlite_project: Config, monkeypatch: pytest.MonkeyPatch
):
    ranges = []
    fetch = database_rows.fetch_rows

    def recorded(source, since, until, condition):  # noqa: ANN001, ANN202
        ranges.append((since, until))
        return fetch(source, since, until, condition)

    monkeypatch.setattr(database_rows, "fetch_rows", recorded)
    ingest(sqlite_project)
    add_rows(sqlite_project, *[(f"late{index}", 1, 2, 3, 0) for index in range(9)])
    ingest(sqlite_project)
    assert sorted(ranges, key=str) == sorted([(None, 500), (500, 1000), (1000, 1004), (1004, 1009)], key=str)
    ids = [line.split(",")[0] for line in (sqlite_project.output_folder_path / FINAL_DATA).read_text().splitlines()]
    assert ids[-9:] == [f"late{index}" for index in range(9)]
