"""The run history's rules, as functions of a place for the history (``place / name``): tests/test_history.py runs them
on SQLite files in tmp_path, tests/test_history_postgres.py on a PostgreSQL database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from riskwatch.state.history import (
    change_started_batch,
    decided_batch,
    decided_hashes,
    gate_score,
    later_scores,
    latest_confirmation,
    mark_interrupted,
    open_history,
    read_runs,
    save_run,
    start_run,
    waiting_hashes,
)
from riskwatch.state.runs import RunFields, RunFile


def add_run(
    connection,
    outcome: str,
    sha: str,
    version: str = "v0001",
    f1: float | None = None,
    drift: bool = False,
    trigger: str | None = None,
    batches: tuple[int, int] | None = None,
) -> int:
    run_id = start_run(connection, "2026-11-21T10:00:00Z", 1, version)
    first, last = batches or (None, None)
    save_run(
        connection,
        run_id,
        RunFields(
            outcome=outcome,
            new_data_f1=f1,
            new_rows=3000,
            model_drift=drift,
            drift_trigger=trigger,
            first_batch=first,
            last_batch=last,
            finished_at="2026-11-21T10:01:00Z",
        ),
        files=[RunFile(f"{sha}.csv", "new", sha), RunFile(".DS_Store", "stray")],
    )
    return run_id


def only_files_of_finished_decisions_count_as_decided(place) -> None:
    connection = open_history(place / "history.sqlite")
    for outcome, sha in [("kept", "a"), ("deployed", "b"), ("first_deployment", "c"), ("failed", "d")]:
        add_run(connection, outcome, sha)
    start_run(connection, "2026-11-21T11:00:00Z", 2, "v0001")  # still running
    assert decided_hashes(connection) == {"a", "b", "c"}


def runs_left_running_are_marked_interrupted(place) -> None:
    connection = open_history(place / "history.sqlite")
    add_run(connection, "kept", "a")
    start_run(connection, "2026-11-21T11:00:00Z", 2, "v0001")
    assert mark_interrupted(connection, "2026-11-21T11:10:00Z", "v0001") == 1
    runs = read_runs(place / "history.sqlite")
    assert [run.outcome for run in runs] == ["interrupted", "kept"]
    assert runs[0].finished_at == "2026-11-21T11:10:00Z"
    assert runs[0].decision.endswith("nothing was decided") and runs[0].model_version_after == "v0001"


def a_run_killed_after_its_deployment_switched_says_what_it_deployed(place) -> None:
    connection = open_history(place / "history.sqlite")
    start_run(connection, "2026-11-21T11:00:00Z", 2, "v0001")
    deployed = start_run(connection, "2026-11-21T11:20:00Z", 3, "v0002")
    save_run(connection, deployed, RunFields(outcome="deployed", model_version_after="v0003"))  # died in diagnostics
    assert mark_interrupted(connection, "2026-11-21T11:30:00Z", "v0003") == 2
    newest, oldest = read_runs(place / "history.sqlite")
    assert oldest.outcome == "interrupted" and oldest.decision.endswith("after deploying v0003")
    assert newest.outcome == "deployed" and newest.finished_at == "2026-11-21T11:30:00Z"
    assert newest.failed_stage == "after deployment"


def files_of_runs_that_wait_for_more_rows_are_neither_decided_nor_forgotten(place) -> None:
    connection = open_history(place / "history.sqlite")
    add_run(connection, "waiting", "small")
    add_run(connection, "waiting", "also_small")
    add_run(connection, "kept", "also_small")  # tested later with a larger batch
    assert decided_hashes(connection) == {"also_small"}
    assert waiting_hashes(connection) == {"small"}


def the_reference_starts_at_the_gate_and_takes_later_scores_without_drift(place) -> None:
    connection = open_history(place / "history.sqlite")
    add_run(connection, "kept", "a", "v0001", 0.61)
    gate = start_run(connection, "2026-11-21T10:00:00Z", 1, "v0001")
    save_run(
        connection,
        gate,
        RunFields(outcome="deployed", model_version_after="v0002", challenger_recent_f1=0.64, holdout_rows=900),
    )
    add_run(connection, "kept", "b", "v0002", 0.62)
    add_run(connection, "failed", "c", "v0002", 0.10)
    add_run(connection, "kept", "d", "v0002", 0.42, drift=True)
    add_run(connection, "kept", "e", "v0002", 0.63)
    add_run(connection, "kept", "f", "v0003", 0.66)
    run_id, score = gate_score(connection, "v0002")
    assert run_id == gate and (score.f1, score.rows) == (0.64, 900) and "gate" in score.source
    assert [(s.f1, s.rows) for s in later_scores(connection, "v0002", run_id)] == [(0.62, 3000), (0.63, 3000)]
    assert gate_score(connection, "v0001") == (0, None)  # deployed by the first run: judged on the test data


def a_run_whose_challengers_lost_after_drift_confirms_the_serving_model(place) -> None:
    connection = open_history(place / "history.sqlite")
    add_run(connection, "kept", "a", "v0001", 0.61)
    lost = add_run(connection, "kept", "b", "v0001", 0.55, drift=True, trigger="data drift (...)", batches=(3, 4))
    save_run(connection, lost, RunFields(challenger_recent_f1=0.55, confirmed=True))
    unsure = add_run(connection, "kept", "c", "v0001", 0.50, drift=True, trigger="model drift (...)", batches=(5, 5))
    save_run(connection, unsure, RunFields(challenger_recent_f1=0.60, confirmed=False))  # better, but not reliably
    confirmed = latest_confirmation(connection, "v0001", 0)
    assert (confirmed.run_id, confirmed.first_batch, confirmed.last_batch) == (lost, 3, 4)
    assert confirmed.score.f1 == 0.55 and "no challenger beat it" in confirmed.score.source
    assert latest_confirmation(connection, "v0001", lost) is None
    assert change_started_batch(connection) == 5  # the unsure run leaves the change open


def batches_decided_and_where_an_unfollowed_change_began(place) -> None:
    connection = open_history(place / "history.sqlite")
    assert decided_batch(connection) is None
    add_run(connection, "first_deployment", "a", batches=(1, 1))
    add_run(connection, "kept", "b", batches=(2, 2))
    add_run(connection, "waiting", "c", batches=(3, 3))
    assert decided_batch(connection) == 2
    assert change_started_batch(connection) is None
    add_run(connection, "kept", "d", drift=True, trigger="model drift (...)", batches=(3, 4))
    add_run(connection, "kept", "e", drift=True, trigger="model drift (...)", batches=(5, 5))
    assert change_started_batch(connection) == 3 and decided_batch(connection) == 5
    add_run(connection, "deployed", "f", drift=True, trigger="model drift (...)", batches=(6, 6))
    assert change_started_batch(connection) is None  # followed: a challenger was deployed


RULES = (
    only_files_of_finished_decisions_count_as_decided,
    runs_left_running_are_marked_interrupted,
    a_run_killed_after_its_deployment_switched_says_what_it_deployed,
    files_of_runs_that_wait_for_more_rows_are_neither_decided_nor_forgotten,
    the_reference_starts_at_the_gate_and_takes_later_scores_without_drift,
    a_run_whose_challengers_lost_after_drift_confirms_the_serving_model,
    batches_decided_and_where_an_unfollowed_change_began,
)


# Columns the runs table gained after the rows in tests/fixtures/runs_as_written.sql were written (schema 3).
LATER_COLUMNS = (
    "data_reference_first_batch",
    "data_reference_last_batch",
    "expected_exits",
    "expected_exits_low",
    "expected_exits_high",
    "observed_exits",
    "calibration_slope",
    "miscalibrated",
    "champion_recent_log_loss",
    "challenger_recent_log_loss",
    "gate_rule",
    "reconstruction_error",
    "reconstruction_reference",
    "reconstruction_expected",
    "reconstruction_threshold",
    "multivariate_drift",
    "integrity_alarm",
    "integrity_accepted_at",
)


def write_runs_as_written(path: Path) -> None:
    """A SQLite history of schema 3 holding the fixture's rows, as written then, and upgraded by opening it."""
    open_history(path).close()
    with sqlite3.connect(path) as raw:
        for name in LATER_COLUMNS:
            raw.execute(f"ALTER TABLE runs DROP COLUMN {name}")
        raw.execute("PRAGMA user_version = 3")
        raw.executescript((Path(__file__).parent / "fixtures" / "runs_as_written.sql").read_text(encoding="utf-8"))
    open_history(path).close()  # the columns added since, the rows kept


def without_later_columns(run: dict) -> dict:
    """A run as /history answers it, less the columns added after the fixture's rows were written."""
    assert all(run[name] is None for name in LATER_COLUMNS)
    return {key: value for key, value in run.items() if key not in LATER_COLUMNS}
