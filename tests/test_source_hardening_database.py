"""A database source under attack: typed watermarks, unreadable ids, moved projects, warnings that reach the job."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sqlite3
from pathlib import Path

import pytest

from riskwatch.core.config import Config, load_config
from riskwatch.cycle.fullprocess import check_for_new_data, run_full_process
from riskwatch.cycle.newdata import find_new_rows
from riskwatch.data.generator import load_into_database
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.state.artifacts import FINAL_DATA, INGESTED_FILES, INGESTED_RECORD, read_ingestion_record
from riskwatch.state.history import open_history, read_runs
from riskwatch.state.stages import StageClock
from tests.helpers import deploy, free_port, train_and_score, write_clients, write_config, write_database_config

COLUMNS = "corporation, lastmonth_activity, lastyear_activity, number_of_employees, exited"


def ingest(config: Config, fresh: bool = False):
    return ingest_folder(config.input_folder_path, config.output_folder_path, fresh=fresh, database=config.database)


def loose_table(folder: Path, rows: int) -> Config:
    """A SQLite table whose integer ``id`` is a plain column (not the rowid): it holds any value, as SQLite allows."""
    with contextlib.closing(sqlite3.connect(folder / "clients.sqlite")) as connection, connection:
        connection.execute(
            "CREATE TABLE client_activity (id INTEGER, corporation TEXT, lastmonth_activity BIGINT, "
            "lastyear_activity BIGINT, number_of_employees BIGINT, exited BIGINT)"
        )
        add_loose_rows(folder, range(1, rows + 1), connection)
    return load_config(write_database_config(folder, "sqlite:///clients.sqlite"))


def add_loose_rows(folder: Path, ids: range, connection: sqlite3.Connection | None = None) -> None:
    rows = [(index, f"c{index}", index % 50, index % 70, index % 9, index % 2) for index in ids]
    with contextlib.ExitStack() as stack:
        if connection is None:
            connection = stack.enter_context(contextlib.closing(sqlite3.connect(folder / "clients.sqlite")))
            stack.enter_context(connection)
        connection.executemany(f"INSERT INTO client_activity (id, {COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows)


def execute(config: Config, sql: str) -> None:
    with contextlib.closing(sqlite3.connect(config.database.url.path)) as connection, connection:
        connection.execute(sql)


def test_a_text_watermark_in_an_integer_column_is_a_bad_row_not_the_watermark(tmp_path, caplog):
    config = loose_table(tmp_path, 100)
    execute(config, f"INSERT INTO client_activity (id, {COLUMNS}) VALUES ('n/a', 'odd', 1, 2, 3, 0)")
    with caplog.at_level(logging.WARNING):
        first = ingest(config)
    assert first.rows_written == 100 and first.files[-1].watermark_to == 100
    assert any(
        "1 row(s) have a id that cannot be compared" in warning and "n/a" in warning for warning in first.warnings
    )
    assert "n/a" in caplog.text
    add_loose_rows(tmp_path, range(101, 601))
    assert ingest(config).rows_written == 600


def table_with_a_bad_recorded_watermark(tmp_path: Path) -> Config:
    """100 rows ingested, then the last fetch's watermark turned to text, as the code before could record it."""
    config = loose_table(tmp_path, 100)
    ingest(config)
    record_file = config.output_folder_path / INGESTED_RECORD
    record = json.loads(record_file.read_text())
    record["files"][-1]["watermark_to"] = "n/a"
    record_file.write_text(json.dumps(record))
    return config


def test_a_watermark_recorded_from_a_bad_row_is_passed_over(tmp_path):
    config = table_with_a_bad_recorded_watermark(tmp_path)
    add_loose_rows(tmp_path, range(101, 601))
    again = ingest(config)
    assert again.rows_written == 600
    assert any("the recorded id n/a is not a integer value" in warning for warning in again.warnings)


def test_a_bad_recorded_watermark_does_not_make_every_cheap_check_find_rows(tmp_path):
    """The cheap check passes over a watermark of the wrong kind as ingestion does, so a job whose record holds
    one does not take the heavy path every 10 minutes."""
    config = table_with_a_bad_recorded_watermark(tmp_path)
    ingest(config)  # reads the table again from the start, finds nothing new, keeps the newest id it saw
    decided = {entry.sha256 for entry in read_ingestion_record(config.output_folder_path / INGESTED_FILES).files}
    for _ in range(2):
        files, _, _ = find_new_rows(config.database, config.output_folder_path, {}, decided)
        assert [file.name for file in files] == []
    add_loose_rows(tmp_path, range(101, 111))
    files, _, _ = find_new_rows(config.database, config.output_folder_path, {}, decided)
    assert [file.name for file in files] == ["client_activity: rows past id 100"]


def test_an_id_that_is_not_utf8_is_one_bad_row_named_by_table_and_watermark(tmp_path):
    config = loose_table(tmp_path, 100)
    execute(config, f"INSERT INTO client_activity (id, {COLUMNS}) VALUES (101, CAST(X'66FF6F' AS TEXT), 1, 2, 3, 0)")
    execute(config, f"INSERT INTO client_activity (id, {COLUMNS}) VALUES (102, X'0102', 1, 2, 3, 0)")
    result = ingest(config)
    (fetch,) = result.files
    assert (fetch.rows_kept, fetch.rows_dropped) == (100, 2)
    (warning,) = [warning for warning in result.warnings if "UTF-8" in warning]
    assert "client_activity" in warning and "id 101, 102" in warning
    (config.output_folder_path / FINAL_DATA).read_bytes().decode("utf-8")  # the output stays UTF-8 text
    add_loose_rows(tmp_path, range(103, 150))
    assert ingest(config).rows_written == 147  # later runs go on


def moved_database_project(tmp_path: Path) -> tuple[Config, Path]:
    project = tmp_path / "before"
    project.mkdir()
    load_into_database(
        "sqlite:///" + str(project / "clients.sqlite"),
        "client_activity",
        [write_clients(tmp_path / "a.csv", 1000, seed=1)],
    )
    config = load_config(write_database_config(project, "sqlite:///clients.sqlite"))
    assert ingest(config).rows_written == 1000
    return config, project


@pytest.mark.parametrize("written_before", [False, True])
def test_a_moved_sqlite_project_keeps_its_rows_and_watermark(tmp_path, written_before):
    config, project = moved_database_project(tmp_path)
    if written_before:  # the key as it was written before keys were relative: the absolute path
        record_file = config.output_folder_path / INGESTED_RECORD
        record = json.loads(record_file.read_text())
        for entry in record["files"]:
            entry["source"] = f"sqlite:///{project / 'clients.sqlite'}#client_activity.id"
        record_file.write_text(json.dumps(record))
    moved = shutil.move(project, tmp_path / "after")
    config = load_config(Path(moved) / "config.json")
    with contextlib.closing(sqlite3.connect(config.database.url.path)) as connection, connection:
        connection.execute("DELETE FROM client_activity WHERE id <= 989")  # deleted upstream since
    result = ingest(config)
    assert result.rows_written == 1000 and len(result.files) == 1
    (entry,) = read_ingestion_record(config.output_folder_path / "ingestedfiles.txt").files
    assert entry.source.endswith("clients.sqlite#client_activity.id")
    assert written_before or entry.source == "sqlite:///clients.sqlite#client_activity.id"  # relative to the config


def test_a_moved_folder_project_keeps_the_rows_of_a_removed_file(tmp_path):
    project = tmp_path / "before"
    project.mkdir()
    config = load_config(write_config(project))
    write_clients(config.input_folder_path / "a.csv", 300, seed=1)
    write_clients(config.input_folder_path / "b.csv", 200, seed=2)
    ingest(config)
    (config.input_folder_path / "b.csv").unlink()
    assert ingest(config).rows_written == 500
    moved = shutil.move(project, tmp_path / "after")
    config = load_config(Path(moved) / "config.json")
    result = ingest(config)
    assert result.rows_written == 500 and result.kept_from_history == ["b.csv"]


@pytest.fixture
def deployed_database(tmp_path: Path) -> Config:
    """A project whose source is client_activity in clients.sqlite, ingested, trained and deployed."""
    load_into_database(
        "sqlite:///" + str(tmp_path / "clients.sqlite"),
        "client_activity",
        [write_clients(tmp_path / "csv" / "a.csv", 1000, seed=1)],
    )
    write_clients(tmp_path / "testdata" / "testdata.csv", 300, seed=3)
    config = load_config(
        write_database_config(
            tmp_path,
            "sqlite:///clients.sqlite",
            diagnostics={"package_index": "http://127.0.0.1:9/pypi", "index_timeout_seconds": 1},
            api={"url": f"http://127.0.0.1:{free_port()}"},
        )
    )
    ingest(config)
    train_and_score(config)
    deploy(config)
    return config


def test_a_table_emptied_and_reloaded_is_a_warning_in_the_jobs_log_and_history(deployed_database, tmp_path, caplog):
    config = deployed_database
    with contextlib.closing(sqlite3.connect(config.database.url.path)) as connection, connection:
        connection.execute("DELETE FROM client_activity")
    load_into_database(
        "sqlite:///" + str(tmp_path / "clients.sqlite"), "client_activity", [write_clients(tmp_path / "b.csv", 500, 2)]
    )
    with caplog.at_level(logging.WARNING, logger="fullprocess"):
        fields = run_full_process(config)
    assert fields.outcome == "no_new_data"
    assert "no row has a id of 1000 or more" in fields.decision
    assert "no row has a id of 1000 or more" in caplog.text
    (run,) = read_runs(config.history_path, limit=1)
    assert any("no row has a id of 1000 or more" in warning for warning in run.details["source_warnings"])


def test_rows_loaded_below_the_watermark_are_found_by_the_cheap_check_and_ingested(deployed_database):
    config = deployed_database
    with contextlib.closing(sqlite3.connect(config.database.url.path)) as connection, connection:
        connection.execute("DELETE FROM client_activity WHERE id = 10")  # ingested; then deleted
    ingest(config)  # the count below the watermark is recorded without it
    with contextlib.closing(sqlite3.connect(config.database.url.path)) as connection, connection:
        connection.execute(f"INSERT INTO client_activity (id, {COLUMNS}) VALUES (10, 'late', 1, 2, 3, 0)")
    with contextlib.closing(open_history(config.history_path)) as connection:
        check = check_for_new_data(config, connection, "v0001", StageClock())
    assert [item.name for item in check.new.files] == ["client_activity: rows at or below id 1000"]
    assert any("appeared at or below the id 1000" in warning for warning in check.warnings)
    result = ingest(config)
    assert result.rows_written == 1001 and result.files[-1].rows_kept == 1


@pytest.mark.slow
def test_postgresql_rows_of_a_transaction_that_commits_after_a_later_one_are_not_lost(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    import psycopg

    from tests.postgres_server import PASSWORD, USER

    def connect() -> psycopg.Connection:
        port, database = postgres_url.rsplit(":", 1)[1].split("/")
        return psycopg.connect(host="127.0.0.1", port=int(port), user=USER, password=PASSWORD, dbname=database)

    load_into_database(postgres_url, "client_activity", [write_clients(tmp_path / "a.csv", 100, seed=1)])
    config = load_config(write_database_config(tmp_path, postgres_url))
    assert ingest(config).rows_written == 100
    insert = f"INSERT INTO client_activity ({COLUMNS}) VALUES (%s, %s, %s, %s, %s)"
    early_rows = [(f"early{index}", index % 40, index % 60, index % 8, index % 2) for index in range(300)]
    later_rows = [(f"later{index}", index % 40, index % 60, index % 8, index % 2) for index in range(300)]
    with connect() as early, connect() as later:
        early.cursor().executemany(insert, early_rows)  # started first: ids 101-400, not committed yet
        later.cursor().executemany(insert, later_rows)  # started second: ids 401-700
        later.commit()  # the later-started transaction commits first
        with caplog.at_level(logging.INFO):
            between = ingest(config)
        print(
            f"while the first transaction is open: {between.rows_written} rows, watermark "
            f"{between.files[-1].watermark_to}"
        )
        assert between.rows_written == 400 and between.files[-1].watermark_to == 700
        early.commit()
    with caplog.at_level(logging.INFO):
        after = ingest(config)
    print(
        f"after it committed: {after.rows_written} rows; fetches: "
        + ", ".join(f"{entry.name} ({entry.rows_kept} rows)" for entry in after.files)
    )
    print("log:\n" + "\n".join(record.getMessage() for record in caplog.records))
    assert after.rows_written == 700
    assert after.files[-1].rows_kept == 300
    ids = {line.split(",")[0] for line in (config.output_folder_path / FINAL_DATA).read_text().splitlines()[1:]}
    assert {f"early{index}" for index in range(300)} <= ids
    assert ingest(config).batch == 0  # read once: a third run finds nothing new
