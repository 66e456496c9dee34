"""The run history: schema, what counts as decided, interrupted runs, and clear errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from riskwatch.core.errors import PipelineError
from riskwatch.state.history import (
    RUN_COLUMNS,
    SCHEMA_VERSION,
    open_history,
    read_runs,
    save_run,
    start_run,
)
from riskwatch.state.runs import (
    AlertRecord,
    CandidateScore,
    FeatureDrift,
    RunFields,
    RunFile,
    StoredRun,
    column_values,
    stored_columns,
)
from tests import history_rules
from tests.history_rules import add_run


def test_only_files_of_finished_decisions_count_as_decided(tmp_path):
    history_rules.only_files_of_finished_decisions_count_as_decided(tmp_path)


def test_runs_left_running_are_marked_interrupted(tmp_path):
    history_rules.runs_left_running_are_marked_interrupted(tmp_path)


def test_a_run_killed_after_its_deployment_switched_says_what_it_deployed(tmp_path):
    history_rules.a_run_killed_after_its_deployment_switched_says_what_it_deployed(tmp_path)


def test_files_of_runs_that_wait_for_more_rows_are_neither_decided_nor_forgotten(tmp_path):
    history_rules.files_of_runs_that_wait_for_more_rows_are_neither_decided_nor_forgotten(tmp_path)


def test_the_reference_starts_at_the_gate_and_takes_later_scores_without_drift(tmp_path):
    history_rules.the_reference_starts_at_the_gate_and_takes_later_scores_without_drift(tmp_path)


def test_a_run_whose_challengers_lost_after_drift_confirms_the_serving_model(tmp_path):
    history_rules.a_run_whose_challengers_lost_after_drift_confirms_the_serving_model(tmp_path)


def test_batches_decided_and_where_an_unfollowed_change_began(tmp_path):
    history_rules.batches_decided_and_where_an_unfollowed_change_began(tmp_path)


def test_a_history_of_the_first_schema_gains_the_new_columns(tmp_path):
    path = tmp_path / "history.sqlite"
    with sqlite3.connect(path) as connection:
        connection.executescript(
            "CREATE TABLE runs (id INTEGER PRIMARY KEY, started_at TEXT NOT NULL, outcome TEXT NOT NULL, "
            "details TEXT); INSERT INTO runs (started_at, outcome) VALUES ('2026-01-01T00:00:00Z', 'kept'); "
            "PRAGMA user_version = 1;"
        )
    connection = open_history(path)
    columns = {row[1] for row in connection.execute("PRAGMA table_info(runs)")}
    assert {"first_batch", "last_batch", "candidates", "winning_window", "window_f1"} <= columns
    assert {"winning_family", "model_family", "data_reference_first_batch", "data_reference_last_batch"} <= columns
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_damaged_json_cell_does_not_hide_the_run(tmp_path):
    path = tmp_path / "history.sqlite"
    add_run(open_history(path), "kept", "a", f1=0.6)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE runs SET details = '{not json', timings = '[1,'")
    (run,) = read_runs(path)
    assert run.outcome == "kept" and run.details is None and run.timings is None


def test_the_schema_is_plain_sql_a_person_can_query(tmp_path):
    path = tmp_path / "history.sqlite"
    add_run(open_history(path), "kept", "a", f1=0.6)
    with sqlite3.connect(path) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        joined = connection.execute(
            "SELECT r.outcome, f.name FROM runs r JOIN run_files f ON f.run_id = r.id WHERE f.status = 'new'"
        ).fetchall()
    assert {"runs", "run_files", "feature_drift"} <= tables
    assert joined == [("kept", "a.csv")]


def test_reading_a_missing_history_creates_nothing(tmp_path):
    assert read_runs(tmp_path / "none.sqlite") == []
    assert not (tmp_path / "none.sqlite").exists()


def test_a_file_that_is_not_a_database_is_named(tmp_path):
    path = tmp_path / "history.sqlite"
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(PipelineError, match="run history .*history.sqlite cannot be used .*move it aside"):
        open_history(path)
    with pytest.raises(PipelineError, match="cannot be read"):
        read_runs(path)


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "history.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version = 99")
    with pytest.raises(PipelineError, match="schema version 99, newer than this code's 5"):
        open_history(path)


FIXTURES = Path(__file__).parent / "fixtures"


def a_full_run() -> tuple[RunFields, list[RunFile], list[FeatureDrift]]:
    """A run with every column filled, as a deployment after drift writes it."""
    fields = RunFields(
        started_at="2026-11-21T10:00:00Z",
        finished_at="2026-11-21T10:02:00Z",
        seconds=120.5,
        outcome="deployed",
        decision="model drift; challenger deployed as v0002",
        model_version_before="v0001",
        model_version_after="v0002",
        new_files=2,
        new_rows=3000,
        model_drift=True,
        data_drift=False,
        drift_threshold=0.6,
        new_data_f1=0.52,
        timings={"ingestion": 0.5, "training": 3.25},
        details={"missing_data": {"overall": 0.25, "columns": {"lastmonth_activity": 0.5}, "rows": 3000}},
        first_batch=2,
        last_batch=3,
        candidates=(
            CandidateScore("all", "all rows, batches 1-3", 12000, 1, 3, 0.66, 0.69, 0.65),
            CandidateScore("recent", "the recent rows", 2400, 3, 3, 0.61, 0.6),
        ),
        winning_window="all",
        test_data_drift=True,
        alerts=AlertRecord("deployed", 2, "/tmp/alerts.log"),
        confirmed=False,
        estimate_reliable=True,
    )
    files = [RunFile("new.csv", "new", "ab" * 32), RunFile(".DS_Store", "stray", note="not a data file; ignored")]
    drift = [
        FeatureDrift("lastmonth_activity", "ks", 0.2, 0.001, 0.01, True),
        FeatureDrift("number_of_employees", "wasserstein", 0.05, None, 0.1, False),
    ]
    return fields, files, drift


def test_a_saved_run_reads_back_as_the_same_typed_values(tmp_path):
    connection = open_history(tmp_path / "history.sqlite")
    fields, files, drift = a_full_run()
    run_id = start_run(connection, fields.started_at, 42, fields.model_version_before)
    save_run(connection, run_id, fields, files, drift)
    save_run(connection, run_id, RunFields(error="a later note"))  # fields left None keep what was written
    connection.close()
    (run,) = read_runs(tmp_path / "history.sqlite")
    assert run == StoredRun(
        **{**column_values(fields), "error": "a later note"},
        id=run_id,
        pid=42,
        files=tuple(files),
        feature_drift=tuple(drift),
    )
    assert run.confirmed is False and run.candidates[1].window_f1 is None


def test_damaged_json_cells_read_as_none_and_the_rest_of_the_run_stays(tmp_path):
    path = tmp_path / "history.sqlite"
    connection = open_history(path)
    fields, files, drift = a_full_run()
    save_run(connection, start_run(connection, "2026-11-21T10:00:00Z", 1, "v0001"), fields, files, drift)
    connection.close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE runs SET candidates = '[{\"window\": 1}]', alerts = '\"sent\"', timings = '[1, 2]'")
    (run,) = read_runs(path)
    assert run.candidates is None and run.alerts is None and run.timings is None
    assert run.details == fields.details and run.files == tuple(files) and run.feature_drift == tuple(drift)


def test_runs_written_before_read_back_and_answer_the_same_json(tmp_path):
    """Rows as the history stored them before runs were typed, and what /history answered for them."""
    path = tmp_path / "history.sqlite"
    history_rules.write_runs_as_written(path)
    answered = json.loads((FIXTURES / "history_runs.json").read_text(encoding="utf-8"))
    runs = read_runs(path)
    shown = [history_rules.without_later_columns(run.to_json()) for run in runs]
    assert shown == answered
    assert [list(run) for run in shown] == [list(run) for run in answered]  # the keys in their order
    assert runs[1].candidates[0].window_f1 == 0.65 and runs[1].alerts == AlertRecord("deployed", 2, "/tmp/alerts.log")


def test_the_typed_run_names_every_column_of_the_table_in_its_order():
    assert stored_columns() == RUN_COLUMNS
