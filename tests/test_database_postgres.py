"""A PostgreSQL table as a source, on a server the tests start: ingestion, the no-op check, a stop mid-fetch."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from riskwatch.core.config import Config, load_config
from riskwatch.core.errors import PipelineError
from riskwatch.data import database_rows
from riskwatch.data.generator import load_into_database, write_shipped_data
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.state.artifacts import FINAL_DATA, INGESTED_FILES, current_version, read_ingestion_record
from riskwatch.state.history import read_runs
from tests.fullprocess_runs import database_config, no_op_probe, run_fullprocess
from tests.helpers import write_clients, write_config, write_database_config
from tests.postgres_server import PASSWORD, USER, PostgresServer

pytestmark = pytest.mark.slow


def ingest(config: Config, fresh: bool = False):
    return ingest_folder(config.input_folder_path, config.output_folder_path, fresh=fresh, database=config.database)


def connect(url: str) -> psycopg.Connection:
    port, database = url.rsplit(":", 1)[1].split("/")
    return psycopg.connect(host="127.0.0.1", port=int(port), user=USER, password=PASSWORD, dbname=database)


def test_ingestion_from_postgresql_matches_the_same_rows_as_files(postgres_url: str, tmp_path: Path):
    first = write_clients(tmp_path / "csv" / "a.csv", 600, seed=1)
    second = write_clients(tmp_path / "csv" / "b.csv", 400, seed=2)
    load_into_database(postgres_url, "client_activity", [first, second])
    config = load_config(write_database_config(tmp_path, postgres_url))
    assert ingest(config).rows_written == 1000
    (tmp_path / "files").mkdir()
    files = load_config(write_config(tmp_path / "files", input_folder_path=str(tmp_path / "csv")))
    ingest_folder(files.input_folder_path, files.output_folder_path)
    assert (config.output_folder_path / FINAL_DATA).read_bytes() == (files.output_folder_path / FINAL_DATA).read_bytes()
    load_into_database(postgres_url, "client_activity", [write_clients(tmp_path / "c.csv", 50, seed=9)])
    with connect(postgres_url) as connection:
        connection.execute("INSERT INTO client_activity (corporation, lastmonth_activity) VALUES ('partial', 3)")
    more = ingest(config)
    assert more.appended and more.rows_written == 1050
    entries = read_ingestion_record(config.output_folder_path / INGESTED_FILES).files
    assert [(entry.watermark_from, entry.watermark_to, entry.rows_dropped) for entry in entries] == [
        (None, 1000, 0),
        (1000, 1051, 1),
    ]


def test_a_timestamp_watermark(postgres_url: str, tmp_path: Path):
    load_into_database(postgres_url, "client_activity", [write_clients(tmp_path / "a.csv", 300, seed=1)])
    config = load_config(write_database_config(tmp_path, postgres_url, input_database_watermark="loaded_at"))
    assert ingest(config).rows_written == 300
    load_into_database(postgres_url, "client_activity", [write_clients(tmp_path / "b.csv", 200, seed=2)])
    assert ingest(config).rows_written == 500
    assert ingest(config).batch == 0
    entries = read_ingestion_record(config.output_folder_path / INGESTED_FILES).files
    assert entries[1].watermark_from == entries[0].watermark_to and "T" in str(entries[1].watermark_to)


def test_the_table_and_its_columns_are_checked_in_the_catalogue(postgres_url: str, tmp_path: Path):
    load_into_database(postgres_url, "client_activity", [write_clients(tmp_path / "a.csv", 200, seed=1)])
    qualified = load_config(
        write_database_config(tmp_path, postgres_url, input_database_table="public.client_activity")
    )
    assert ingest(qualified).rows_written == 200
    with pytest.raises(
        PipelineError, match=r"^table missing_table of postgresql://.* does not exist \(a table or view"
    ):
        ingest(load_config(write_database_config(tmp_path, postgres_url, input_database_table="missing_table")))
    with connect(postgres_url) as connection:
        connection.execute(
            "CREATE VIEW without_exited AS SELECT id, corporation, lastmonth_activity FROM client_activity"
        )
    with pytest.raises(PipelineError, match=r"without_exited of .* has no column lastyear_activity, .*exited$"):
        ingest(load_config(write_database_config(tmp_path, postgres_url, input_database_table="without_exited")))


def test_a_server_stopped_mid_fetch_loses_nothing_and_repeats_nothing(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    load_into_database(postgres_url, "client_activity", [write_clients(tmp_path / "a.csv", 1000, seed=1)])
    config = load_config(write_database_config(tmp_path, postgres_url))
    ingest(config)
    before = (config.output_folder_path / FINAL_DATA).read_bytes()
    with connect(postgres_url) as connection:  # 200,000 more rows: far more than the socket buffers hold
        connection.execute(
            "INSERT INTO client_activity (corporation, lastmonth_activity, lastyear_activity, number_of_employees, "
            "exited) SELECT 'c' || n, n % 97, n % 1000, 1 + n % 50, n % 2 FROM generate_series(1, 200000) AS n"
        )
    original = database_rows.read_batches
    stopped = threading.Event()

    def stop_the_server_after_the_first_batch(reader):
        def batches():
            for number, batch in enumerate(reader):
                if number == 0:
                    stopped.set()
                    postgres_server.stop("immediate")
                yield batch

        return original(type("Reader", (), {"schema": reader.schema, "__iter__": lambda self: batches()})())

    monkeypatch.setattr(database_rows, "read_batches", stop_the_server_after_the_first_batch)
    try:
        with pytest.raises(PipelineError) as failure:
            ingest(config)
    finally:
        monkeypatch.undo()
        if stopped.is_set():
            postgres_server.start()
    assert stopped.is_set()
    message = str(failure.value)
    assert message.startswith("table client_activity of postgresql://risk:***@127.0.0.1:")
    assert "nothing was taken from it; the next run tries again" in message and PASSWORD not in message
    assert (config.output_folder_path / FINAL_DATA).read_bytes() == before
    assert read_ingestion_record(config.output_folder_path / INGESTED_FILES).files[-1].watermark_to == 1000
    monkeypatch.setenv("RISK_DATABASE_PASSWORD", PASSWORD)
    after = ingest(config)
    assert after.rows_written == 201000
    lines = (config.output_folder_path / FINAL_DATA).read_text().splitlines()
    assert len(lines) == len(set(lines)) == 201001
    assert read_ingestion_record(config.output_folder_path / INGESTED_FILES).files[-1].watermark_to == 201000


@pytest.fixture
def postgres_shipped(postgres_url: str, tmp_path: Path) -> Path:
    """The shipped data loaded into a PostgreSQL table, and a config reading it (no input folder)."""
    write_shipped_data(tmp_path)
    load_into_database(postgres_url, "client_activity", sorted((tmp_path / "sourceddata").glob("*.csv")))
    return database_config(tmp_path, postgres_url)


def test_a_no_op_run_against_postgresql_is_cheap(postgres_shipped: Path):
    first = run_fullprocess(postgres_shipped)
    assert first.returncode == 0, first.stderr
    code, heavy, seconds = no_op_probe(postgres_shipped)
    assert (code, heavy) == (0, [])
    assert seconds < 1.0
    assert read_runs(load_config(postgres_shipped).history_path, limit=1)[0].outcome == "no_new_data"


def test_a_stopped_server_fails_the_run_in_one_sentence_and_the_next_run_retries(
    postgres_server: PostgresServer, postgres_shipped: Path
):
    assert run_fullprocess(postgres_shipped).returncode == 0
    config = load_config(postgres_shipped)
    postgres_server.stop()
    try:
        failed = run_fullprocess(postgres_shipped)
    finally:
        postgres_server.start()
    assert failed.returncode == 1
    assert "fullprocess check failed: table client_activity of postgresql://risk:***@127.0.0.1:" in failed.stderr
    assert "Traceback" not in failed.stderr and PASSWORD not in failed.stderr
    run = read_runs(config.history_path, limit=1)[0]
    assert run.outcome == "failed" and run.failed_stage == "check" and "cannot be read" in run.error
    assert current_version(config.prod_deployment_path) == "v0001"
    again = run_fullprocess(postgres_shipped)
    assert again.returncode == 0 and "no new data" in again.stderr


def insert_clients(url: str, rows: list[tuple], create: bool = False) -> None:
    """Insert client rows into ``client_activity`` over a UTF-8 client connection (creating the table first)."""
    port, database = url.rsplit(":", 1)[1].split("/")
    columns = "corporation, lastmonth_activity, lastyear_activity, number_of_employees, exited"
    with (
        psycopg.connect(
            host="127.0.0.1",
            port=int(port),
            user=USER,
            password=PASSWORD,
            dbname=database,
            options="-c client_encoding=UTF8",
        ) as connection,
        connection.cursor() as cursor,
    ):
        if create:
            cursor.execute(
                "CREATE TABLE client_activity (id serial PRIMARY KEY, corporation text, lastmonth_activity bigint, "
                "lastyear_activity bigint, number_of_employees bigint, exited bigint)"
            )
        cursor.executemany(f"INSERT INTO client_activity ({columns}) VALUES (%s, %s, %s, %s, %s)", rows)


def test_an_id_that_is_not_utf8_on_postgresql_is_one_bad_row_named_by_table_and_watermark(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
):
    # A SQL_ASCII database keeps the bytes it is given: an id can hold bytes that are not UTF-8 text
    # (the escape below is the byte 0xFF, stored as it is).
    url = postgres_server.create_database("t_ascii_bytes", encoding="SQL_ASCII")
    insert_clients(url, [(f"client{number}", number, 2 * number, 3, number % 2) for number in range(100)], True)
    with connect(url) as connection:
        connection.execute(
            "INSERT INTO client_activity (corporation, lastmonth_activity, lastyear_activity, number_of_employees, "
            "exited) VALUES (E'f\\377o', 1, 2, 3, 0)"
        )
    config = load_config(write_database_config(tmp_path, url))
    result = ingest(config)
    (fetch,) = result.files
    assert (fetch.rows_kept, fetch.rows_dropped) == (100, 1)
    (warning,) = [warning for warning in result.warnings if "UTF-8" in warning]
    assert "client_activity" in warning and "id 101" in warning
    (config.output_folder_path / FINAL_DATA).read_bytes().decode("utf-8")  # the output stays UTF-8 text
    insert_clients(url, [(f"later{number}", number, 2 * number, 3, 0) for number in range(50)])
    assert ingest(config).rows_written == 150  # later runs go on
