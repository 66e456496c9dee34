"""The run history: one SQLite database that records every fullprocess.py run and its decision.

Tables (query them with ``sqlite3 models/runhistory.sqlite``)::

    runs           one row per run: times, outcome, decision, versions, scores, drift, timings
    run_files      the data files a run saw as new or edited, and the stray files it ignored
    feature_drift  per run and feature: the data-drift test, its statistic, threshold and verdict

Writers and readers may overlap (the API reads while a run writes): the database is in WAL
mode, so readers see the last committed state and never wait for a run to finish.
This module imports only the standard library: the no-op run reads it before anything heavy.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import PipelineError, describe_os_error, disk_is_full

SCHEMA_VERSION = 2

# Outcomes a run can end with; "running" until it ends, "interrupted" if it never did.
RUNNING = "running"
NO_NEW_DATA = "no_new_data"
FIRST_DEPLOYMENT = "first_deployment"
KEPT = "kept"
WAITING = "waiting"  # too few new rows to decide on: they wait for the next batch
DEPLOYED = "deployed"
FAILED = "failed"
INTERRUPTED = "interrupted"
# Runs whose decision covers the new files they saw, so those files are not new again.
DECIDED_OUTCOMES = (FIRST_DEPLOYMENT, KEPT, DEPLOYED)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,              -- UTC, ISO 8601
    finished_at TEXT,
    seconds REAL,
    outcome TEXT NOT NULL,                 -- {RUNNING}, {NO_NEW_DATA}, {FIRST_DEPLOYMENT}, {KEPT}, {WAITING},
                                           -- {DEPLOYED}, {FAILED} or {INTERRUPTED}
    decision TEXT,                         -- why, in one sentence
    failed_stage TEXT,                     -- the stage that failed (also after a deployment that stands)
    error TEXT,
    pid INTEGER,
    model_version_before TEXT,
    model_version_after TEXT,
    new_files INTEGER,
    new_rows INTEGER,                      -- labelled rows not seen before
    ingested_rows INTEGER,                 -- rows in finaldata.csv after the run
    model_drift_test TEXT,                 -- raw, parametric or nonparametric
    deployed_f1 REAL,                      -- the champion's F1 on the test data when deployed
    new_data_f1 REAL,                      -- the champion's F1 on the new rows
    drift_threshold REAL,                  -- model drift when new_data_f1 is below this
    drift_reference TEXT,                  -- where the earlier F1 scores came from
    model_drift INTEGER,                   -- 1 drift, 0 none
    data_drift INTEGER,
    drift_trigger TEXT,                    -- the statistic that triggered retraining
    champion_recent_f1 REAL,               -- on the held-out part of the new rows
    challenger_recent_f1 REAL,
    champion_test_f1 REAL,                 -- on the test data
    challenger_test_f1 REAL,
    missing_percent REAL,                  -- percent of empty cells in the new files
    timings TEXT,                          -- JSON: seconds per stage
    details TEXT                           -- JSON: everything else worth keeping
);
CREATE TABLE IF NOT EXISTS run_files (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    sha256 TEXT,
    status TEXT NOT NULL,                  -- new, edited, stray, rejected (a bad file, left out), unlabelled
    note TEXT
);
CREATE TABLE IF NOT EXISTS feature_drift (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    feature TEXT NOT NULL,
    test TEXT NOT NULL,                    -- ks (p-value below threshold) or wasserstein (normalised distance above)
    statistic REAL NOT NULL,
    p_value REAL,
    threshold REAL NOT NULL,
    drifted INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS run_files_sha256 ON run_files(sha256);
CREATE INDEX IF NOT EXISTS run_files_run ON run_files(run_id);
CREATE INDEX IF NOT EXISTS feature_drift_run ON feature_drift(run_id);
PRAGMA user_version = {SCHEMA_VERSION};
"""

# Columns added after the first schema: created on a new database and added to an older one.
ADDED_COLUMNS = (
    ("first_batch", "INTEGER"),  # the batches of the new rows this run decided on
    ("last_batch", "INTEGER"),
    ("reference_f1", "REAL"),  # model drift: the deployed model's reference F1, pooled
    ("reference_rows", "INTEGER"),  # the rows behind it
    ("drift_spread", "REAL"),  # the F1 spread a batch of this size shows when nothing has changed
    ("data_drift_reference", "TEXT"),  # the rows the data-drift tests compared with
    ("holdout_rows", "INTEGER"),  # held-out recent rows the gate compared the models on
    ("candidates", "TEXT"),  # JSON: each challenger's training window, rows and F1
    ("winning_window", "TEXT"),  # the training window of the best challenger
    ("window_rows", "INTEGER"),  # rows in the rolling evaluation window after the run
    ("window_f1", "REAL"),  # the serving model's F1 on it
    ("test_data_drift", "INTEGER"),  # 1 when the test data no longer looks like the recent rows
    ("alerts", "TEXT"),  # JSON: the alert sent, if any
    ("confirmed", "INTEGER"),  # 1: drift called for retraining and no challenger was better by the margin
    ("estimated_f1", "REAL"),  # the serving model's F1 on the new rows estimated from its probabilities alone
    ("estimated_f1_low", "REAL"),  # the central 95% of the F1 the labels could show
    ("estimated_f1_high", "REAL"),
    ("calibration_error", "REAL"),  # expected calibration error on the new labelled rows (ten bins)
    ("estimate_reliable", "INTEGER"),  # 0 when that error passes monitoring.max_calibration_error
)
RUN_COLUMNS = (
    "id",
    "started_at",
    "finished_at",
    "seconds",
    "outcome",
    "decision",
    "failed_stage",
    "error",
    "pid",
    "model_version_before",
    "model_version_after",
    "new_files",
    "new_rows",
    "ingested_rows",
    "model_drift_test",
    "deployed_f1",
    "new_data_f1",
    "drift_threshold",
    "drift_reference",
    "model_drift",
    "data_drift",
    "drift_trigger",
    "champion_recent_f1",
    "challenger_recent_f1",
    "champion_test_f1",
    "challenger_test_f1",
    "missing_percent",
    "timings",
    "details",
    *(name for name, _ in ADDED_COLUMNS),
)
JSON_COLUMNS = ("timings", "details", "candidates", "alerts")


def open_history(path: Path) -> sqlite3.Connection:
    """Open (creating if need be) the history database for writing; raise PipelineError naming the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, timeout=10, isolation_level=None)
        connection.execute("PRAGMA journal_mode = WAL")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            connection.close()
            raise PipelineError(
                f"run history {path} has schema version {version}, newer than this code's {SCHEMA_VERSION}; "
                "update the code"
            )
        connection.executescript(SCHEMA)
        add_missing_columns(connection)
    except sqlite3.OperationalError as exc:
        if disk_is_full(path) or "full" in str(exc):
            raise PipelineError(
                f"run history {path} cannot be written: the disk holding it is full; free some space and run again"
            ) from None
        hint = "if another program holds it, try again when it is done" if "locked" in str(exc) else "check the file"
        raise PipelineError(f"run history {path} cannot be opened ({exc}); {hint}") from None
    except sqlite3.DatabaseError as exc:
        raise PipelineError(
            f"run history {path} cannot be used ({exc}); move it aside and the next run starts a new one"
        ) from None
    except OSError as exc:
        raise PipelineError(f"run history {path} cannot be created ({describe_os_error(exc)})") from None
    return connection


def add_missing_columns(connection: sqlite3.Connection) -> None:
    """Add the columns of ``ADDED_COLUMNS`` that a database written by an earlier version lacks."""
    present = {row[1] for row in connection.execute("PRAGMA table_info(runs)")}
    for name, kind in ADDED_COLUMNS:
        if name not in present:
            connection.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")


@contextlib.contextmanager
def named_errors(path: Path | str, doing: str) -> Iterator[None]:
    """Turn a database error into PipelineError naming the history file and what was being done."""
    try:
        yield
    except sqlite3.Error as exc:
        why = "the disk holding it is full; free some space" if disk_is_full(Path(path)) else str(exc)
        raise PipelineError(f"run history {path}: cannot {doing} ({why})") from None


def database_path(connection: sqlite3.Connection) -> str:
    return connection.execute("PRAGMA database_list").fetchone()[2]


def start_run(connection: sqlite3.Connection, started_at: str, pid: int, version_before: str | None) -> int:
    """Insert a run as ``running``; return its id."""
    with named_errors(database_path(connection), "record the start of the run"):
        cursor = connection.execute(
            "INSERT INTO runs (started_at, outcome, pid, model_version_before) VALUES (?, ?, ?, ?)",
            (started_at, RUNNING, pid, version_before),
        )
    return int(cursor.lastrowid)


def save_run(
    connection: sqlite3.Connection,
    run_id: int,
    fields: dict[str, Any],
    files: Iterable[dict[str, Any]] = (),
    feature_drift: Iterable[dict[str, Any]] = (),
) -> None:
    """Write a run's results so far, and add its files and drift statistics, in one transaction."""
    unknown = set(fields) - set(RUN_COLUMNS)
    if unknown:
        raise ValueError(f"unknown run fields: {', '.join(sorted(unknown))}")
    values = {key: json.dumps(value) if key in JSON_COLUMNS else value for key, value in fields.items()}
    assignments = ", ".join(f"{key} = :{key}" for key in values)
    with named_errors(database_path(connection), "record the run"), connection:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(f"UPDATE runs SET {assignments} WHERE id = :run_id", {**values, "run_id": run_id})
        connection.executemany(
            "INSERT INTO run_files (run_id, name, sha256, status, note) VALUES (?, ?, ?, ?, ?)",
            [(run_id, row["name"], row.get("sha256"), row["status"], row.get("note")) for row in files],
        )
        connection.executemany(
            "INSERT INTO feature_drift (run_id, feature, test, statistic, p_value, threshold, drifted) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    run_id,
                    row["feature"],
                    row["test"],
                    row["statistic"],
                    row.get("p_value"),
                    row["threshold"],
                    int(row["drifted"]),
                )
                for row in feature_drift
            ],
        )


def mark_interrupted(connection: sqlite3.Connection, finished_at: str, serving: str | None) -> int:
    """Close the runs a process that died left unfinished; call only while holding the run lock.

    A run still ``running`` becomes ``interrupted``; if the serving version changed under it,
    the record says it deployed that version. A run that had deployed and died in the steps
    after keeps its outcome and gets its end noted.
    """
    stopped = "the run stopped before it finished (killed or crashed)"
    with named_errors(database_path(connection), "close unfinished runs"), connection:
        connection.execute("BEGIN IMMEDIATE")
        cursor = connection.execute(
            "UPDATE runs SET outcome = :interrupted, finished_at = :now, model_version_after = :serving, "
            "decision = CASE WHEN model_version_before IS :serving THEN :stopped || '; nothing was decided' "
            "ELSE :stopped || ' after deploying ' || COALESCE(:serving, 'nothing') END "
            "WHERE outcome = :running",
            {
                "interrupted": INTERRUPTED,
                "now": finished_at,
                "serving": serving,
                "stopped": stopped,
                "running": RUNNING,
            },
        )
        closed = cursor.rowcount
        cursor = connection.execute(
            "UPDATE runs SET finished_at = :now, failed_stage = 'after deployment', "
            "error = :stopped WHERE finished_at IS NULL AND outcome != :running",
            {"now": finished_at, "stopped": stopped, "running": RUNNING},
        )
    return closed + cursor.rowcount


def hashes_with_outcome(
    connection: sqlite3.Connection, outcomes: tuple[str, ...], statuses: tuple[str, ...] = ("new", "edited")
) -> set[str]:
    """Content hashes of the files with one of ``statuses`` seen by runs that ended with one of ``outcomes``."""
    with named_errors(database_path(connection), "read the files of earlier runs"):
        rows = connection.execute(
            "SELECT DISTINCT f.sha256 FROM run_files f JOIN runs r ON r.id = f.run_id "
            f"WHERE f.status IN ({', '.join('?' for _ in statuses)}) AND f.sha256 IS NOT NULL "
            f"AND r.outcome IN ({', '.join('?' for _ in outcomes)})",
            (*statuses, *outcomes),
        ).fetchall()
    return {row[0] for row in rows}


def decided_hashes(connection: sqlite3.Connection) -> set[str]:
    """Content hashes of the files that finished runs have already decided on, left out as bad, or read as unlabelled.

    Unlabelled rows never wait for more: they are ranked and tested for data drift when they arrive.
    """
    left_out = hashes_with_outcome(connection, (*DECIDED_OUTCOMES, WAITING, NO_NEW_DATA), ("rejected", "unlabelled"))
    return hashes_with_outcome(connection, DECIDED_OUTCOMES) | left_out


def waiting_hashes(connection: sqlite3.Connection) -> set[str]:
    """Content hashes of the files whose rows were too few to decide on, and not decided since."""
    return hashes_with_outcome(connection, (WAITING,)) - decided_hashes(connection)


@dataclass(frozen=True)
class ReferenceScore:
    """One F1 score the deployed model is judged against: what it scored, on how many rows, and where."""

    f1: float
    rows: int
    source: str


def gate_score(connection: sqlite3.Connection, version: str) -> tuple[int, ReferenceScore | None]:
    """(the id of the run that deployed ``version`` as a challenger, its F1 at the gate); (0, None) without one.

    A version deployed by the first run or by the stage scripts had no gate: it was judged on the test data.
    """
    with named_errors(database_path(connection), "read the deployment of the serving model"):
        row = connection.execute(
            "SELECT id, challenger_recent_f1, holdout_rows FROM runs WHERE outcome = ? AND model_version_after = ? "
            "ORDER BY id DESC LIMIT 1",
            (DEPLOYED, version),
        ).fetchone()
    if row is None or row[1] is None or not row[2]:
        return (row[0] if row else 0), None
    return row[0], ReferenceScore(float(row[1]), int(row[2]), f"held-out recent rows at its gate in run {row[0]}")


def later_scores(connection: sqlite3.Connection, version: str, after_run: int) -> list[ReferenceScore]:
    """The F1 scores ``version`` had on batches after run ``after_run`` in which no model drift was found, oldest first.

    Batches that drifted are left out, so drift cannot widen the reference that detects it.
    """
    with named_errors(database_path(connection), "read earlier F1 scores"):
        rows = connection.execute(
            "SELECT id, new_data_f1, new_rows FROM runs WHERE model_version_before = ? AND id > ? "
            "AND new_data_f1 IS NOT NULL AND new_rows > 0 AND model_drift = 0 AND outcome IN (?, ?) ORDER BY id",
            (version, after_run, KEPT, DEPLOYED),
        ).fetchall()
    return [ReferenceScore(float(f1), int(rows), f"new rows of run {run}") for run, f1, rows in rows]


@dataclass(frozen=True)
class Confirmation:
    """A run in which drift called for retraining and no challenger was better than the serving model by the margin.

    The serving model is then as good as a model can be made on the data: that batch becomes its
    reference, for model drift (its F1 there) and for data drift (those rows). A challenger that
    was better by the margin but not reliably so (too few rows to tell) confirms nothing: the
    change stays open, and the next batch is judged as this one was.
    """

    run_id: int
    first_batch: int
    last_batch: int
    score: ReferenceScore


def latest_confirmation(connection: sqlite3.Connection, version: str, after_run: int) -> Confirmation | None:
    """The latest run after ``after_run`` in which ``version`` faced challengers and kept serving; None if none."""
    with named_errors(database_path(connection), "read the runs that confirmed the serving model"):
        row = connection.execute(
            "SELECT id, first_batch, last_batch, new_data_f1, new_rows FROM runs WHERE model_version_before = ? "
            "AND id > ? AND outcome = ? AND confirmed = 1 AND new_data_f1 IS NOT NULL AND first_batch IS NOT NULL "
            "ORDER BY id DESC LIMIT 1",
            (version, after_run, KEPT),
        ).fetchone()
    if row is None:
        return None
    run_id, first, last, f1, rows = row
    source = f"new rows of run {run_id}, where no challenger beat it"
    return Confirmation(run_id, int(first), int(last), ReferenceScore(float(f1), int(rows), source))


def decided_batch(connection: sqlite3.Connection) -> int | None:
    """The latest batch a finished run decided on (its rows are no longer new); None when no run recorded one."""
    placeholders = ", ".join("?" for _ in DECIDED_OUTCOMES)
    with named_errors(database_path(connection), "read the batches earlier runs decided on"):
        row = connection.execute(
            f"SELECT MAX(last_batch) FROM runs WHERE outcome IN ({placeholders})", DECIDED_OUTCOMES
        ).fetchone()
    return None if row[0] is None else int(row[0])


def change_started_batch(connection: sqlite3.Connection) -> int | None:
    """The first batch of the earliest run since the last deployment or confirmation whose drift called for retraining.

    The change it found has not been followed yet (no challenger was deployed since, and none
    was found no better than the serving model), so a recent training window starts there.
    """
    with named_errors(database_path(connection), "read when the change began"):
        row = connection.execute(
            "SELECT MIN(first_batch) FROM runs WHERE drift_trigger IS NOT NULL AND id > "
            "COALESCE((SELECT MAX(id) FROM runs WHERE outcome IN (?, ?) OR confirmed = 1), 0)",
            (DEPLOYED, FIRST_DEPLOYMENT),
        ).fetchone()
    return None if row[0] is None else int(row[0])


def read_runs(path: Path, limit: int = 100, with_no_op: bool = True) -> list[dict[str, Any]]:
    """The latest ``limit`` runs, newest first, each with its files and feature drift; [] without a history.

    Opens the database read-only, so a reader never creates or changes it.
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise PipelineError(f"run history {path} cannot be opened ({exc})") from None
    try:
        connection.row_factory = sqlite3.Row
        where = "" if with_no_op else f"WHERE outcome != '{NO_NEW_DATA}'"
        runs = [
            decode_run(row)
            for row in connection.execute(f"SELECT * FROM runs {where} ORDER BY id DESC LIMIT ?", (limit,))
        ]
        for run in runs:
            run["files"] = [
                dict(row)
                for row in connection.execute(
                    "SELECT name, sha256, status, note FROM run_files WHERE run_id = ? ORDER BY rowid", (run["id"],)
                )
            ]
            run["feature_drift"] = [
                {**dict(row), "drifted": bool(row["drifted"])}
                for row in connection.execute(
                    "SELECT feature, test, statistic, p_value, threshold, drifted FROM feature_drift "
                    "WHERE run_id = ? ORDER BY rowid",
                    (run["id"],),
                )
            ]
    except sqlite3.Error as exc:
        raise PipelineError(f"run history {path} cannot be read ({exc})") from None
    finally:
        connection.close()
    return runs


def decode_json(text: str | None) -> Any:
    """A JSON column's value; None for an empty or damaged one (a damaged cell must not hide the run)."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def decode_run(row: sqlite3.Row) -> dict[str, Any]:
    run = dict(row)
    for key in JSON_COLUMNS:
        run[key] = decode_json(run.get(key))
    for key in ("model_drift", "data_drift", "test_data_drift"):
        run[key] = None if run[key] is None else bool(run[key])
    return run
