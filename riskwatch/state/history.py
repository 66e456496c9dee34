"""The run history: one database that records every fullprocess.py run and its decision.

SQLite by default (``models/runhistory.sqlite``), or a PostgreSQL database named by
``monitoring.history_url``, so that several API hosts and the monitoring job share one history;
both speak the same plain SQL through one storage interface (``HistoryStore``: SQLAlchemy Core for
PostgreSQL, the standard library's sqlite3 for SQLite). Tables (query
them with ``sqlite3 models/runhistory.sqlite`` or ``psql``)::

    runs           one row per run: times, outcome, decision, versions, scores, drift, timings
    run_files      the data files a run saw as new or edited, and the stray files it ignored
    feature_drift  per run and feature: the data-drift test, its statistic, threshold and verdict

The project creates and upgrades the schema itself; its version is SQLite's ``user_version``
or PostgreSQL's ``history_schema`` table, and a database of a newer version is refused.
Writers and readers may overlap (the API reads while a run writes): SQLite runs in WAL mode,
so readers see the last committed state and never wait for a run to finish.
SQLAlchemy is imported only to open a PostgreSQL history: the cron job's run with nothing new stays cheap.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from riskwatch.core.databases import DatabaseUrl
from riskwatch.core.errors import PipelineError, describe_os_error, disk_is_full
from riskwatch.state.runs import FeatureDrift, RunFields, RunFile, StoredRun, read_stored_run

T = TypeVar("T")

SCHEMA_VERSION = 5

# Outcomes a run can end with; "running" until it ends, "interrupted" if it never did.
RUNNING = "running"
NO_NEW_DATA = "no_new_data"
FIRST_DEPLOYMENT = "first_deployment"
KEPT = "kept"
WAITING = "waiting"  # too few new rows to decide on: they wait for the next batch
DEPLOYED = "deployed"
FAILED = "failed"
INTERRUPTED = "interrupted"
# A data integrity alarm: the new rows' columns no longer hang together; nothing is trained on their batches
# until an operator accepts them (``integrity_accepted_at``).
QUARANTINED = "quarantined"
# Runs whose decision covers the new files they saw, so those files are not new again.
DECIDED_OUTCOMES = (FIRST_DEPLOYMENT, KEPT, DEPLOYED, QUARANTINED)

# {id} and {real} differ between SQLite and PostgreSQL (see COLUMN_TYPES); the rest is plain SQL.
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    id {{id}},
    started_at TEXT NOT NULL,              -- UTC, ISO 8601
    finished_at TEXT,
    seconds {{real}},
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
    deployed_f1 {{real}},                      -- the champion's F1 on the test data when deployed
    new_data_f1 {{real}},                      -- the champion's F1 on the new rows
    drift_threshold {{real}},                  -- model drift when new_data_f1 is below this
    drift_reference TEXT,                  -- where the earlier F1 scores came from
    model_drift INTEGER,                   -- 1 drift, 0 none
    data_drift INTEGER,
    drift_trigger TEXT,                    -- the statistic that triggered retraining
    champion_recent_f1 {{real}},               -- on the held-out part of the new rows
    challenger_recent_f1 {{real}},
    champion_test_f1 {{real}},                 -- on the test data
    challenger_test_f1 {{real}},
    missing_percent {{real}},                  -- percent of empty cells in the new files
    timings TEXT,                          -- JSON: seconds per stage
    details TEXT                           -- JSON: everything else worth keeping
);
CREATE TABLE IF NOT EXISTS run_files (
    {{row_id}}run_id INTEGER NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    sha256 TEXT,
    status TEXT NOT NULL,                  -- new, edited, stray, rejected (a bad file, left out), unlabelled
    note TEXT
);
CREATE TABLE IF NOT EXISTS feature_drift (
    {{row_id}}run_id INTEGER NOT NULL REFERENCES runs(id),
    feature TEXT NOT NULL,
    test TEXT NOT NULL,                    -- ks (p-value below threshold) or wasserstein (normalised distance above)
    statistic {{real}} NOT NULL,
    p_value {{real}},
    threshold {{real}} NOT NULL,
    drifted INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS run_files_sha256 ON run_files(sha256);
CREATE INDEX IF NOT EXISTS run_files_run ON run_files(run_id);
CREATE INDEX IF NOT EXISTS feature_drift_run ON feature_drift(run_id)
"""
# What differs between the two: the key that numbers runs, the type of a float, the order rows were added in.
COLUMN_TYPES = {
    "sqlite": {"id": "INTEGER PRIMARY KEY", "real": "REAL", "row_id": "", "row_order": "rowid"},
    "postgresql": {
        "id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "real": "DOUBLE PRECISION",
        "row_id": "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,\n    ",
        "row_order": "id",
    },
}

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
    ("winning_family", "TEXT"),  # the model family of the best challenger
    ("model_family", "TEXT"),  # the model family of the version serving after the run
    ("data_reference_first_batch", "INTEGER"),  # the batches of the rows the data-drift tests compared with
    ("data_reference_last_batch", "INTEGER"),
    ("expected_exits", "REAL"),  # the calibration test on the new labelled rows
    ("expected_exits_low", "REAL"),
    ("expected_exits_high", "REAL"),
    ("observed_exits", "INTEGER"),
    ("calibration_slope", "REAL"),
    ("miscalibrated", "INTEGER"),
    ("champion_recent_log_loss", "REAL"),  # the gate's calibration rule
    ("challenger_recent_log_loss", "REAL"),
    ("gate_rule", "TEXT"),  # "f1" or "calibration": the rule the best challenger passed
    ("reconstruction_error", "REAL"),  # the integrity test: the new rows' mean reconstruction error,
    ("reconstruction_reference", "REAL"),  # the reference's,
    ("reconstruction_expected", "REAL"),  # the one the new rows' own columns imply,
    ("reconstruction_threshold", "REAL"),  # the integrity alarm's threshold,
    ("multivariate_drift", "INTEGER"),  # the batch moved as a whole,
    ("integrity_alarm", "INTEGER"),  # its columns no longer hang together,
    ("integrity_accepted_at", "TEXT"),  # and when an operator accepted the batch (fullprocess.py --accept-run)
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


HistoryLocation = Path | DatabaseUrl  # a SQLite file, or a PostgreSQL database
VERSION_TABLE = "history_schema"  # PostgreSQL's place for the schema version (SQLite: PRAGMA user_version)


class HistoryStore:
    """One open history on PostgreSQL: a SQLAlchemy connection in autocommit mode, with explicit transactions.

    ``execute`` takes plain SQL with ``:name`` parameters (a list of parameter sets runs it for
    each; no parameters: a string run as is, for the database's own statements); ``where``
    names the database in messages (a URL masked).
    """

    def __init__(self, engine: Any, connection: Any, where: str):
        self.engine = engine
        self.connection = connection
        self.where = where
        self.dialect = engine.dialect.name
        self.types = COLUMN_TYPES[self.dialect]

    def execute(self, statement: str, parameters: Any = None) -> Any:
        if parameters is None:
            return self.connection.exec_driver_sql(statement)
        from sqlalchemy import text

        return self.connection.execute(text(statement), parameters)

    def rows(self, statement: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        """Every row of a query, each as a mapping of its column names."""
        return [dict(row) for row in self.execute(statement, parameters).mappings()]

    def column_names(self, table: str) -> set[str]:
        from sqlalchemy import inspect

        return {column["name"] for column in inspect(self.connection).get_columns(table)}

    def has_table(self, table: str) -> bool:
        from sqlalchemy import inspect

        return bool(inspect(self.connection).has_table(table))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; SQLite takes its write lock at the start, so two writers never deadlock."""
        self.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
        try:
            yield
        except BaseException:
            self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def close(self) -> None:
        self.connection.close()
        self.engine.dispose()


class SqliteHistoryStore(HistoryStore):
    """One open SQLite history, through the standard library's sqlite3 in autocommit mode.

    The same SQL as on PostgreSQL (sqlite3 takes ``:name`` parameters too); without SQLAlchemy,
    whose import takes a fifth of a second, so a run that finds nothing new stays cheap.
    """

    def __init__(self, connection: sqlite3.Connection, where: str):  # noqa: PLW0231 (no engine to set up)
        self.connection = connection
        self.where = where
        self.dialect = "sqlite"
        self.types = COLUMN_TYPES["sqlite"]

    def execute(self, statement: str, parameters: Any = None) -> Any:
        if parameters is None:
            return self.connection.execute(statement)
        if isinstance(parameters, list):
            return self.connection.executemany(statement, parameters)
        return self.connection.execute(statement, parameters)

    def rows(self, statement: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        cursor = self.execute(statement, parameters)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def column_names(self, table: str) -> set[str]:
        return {row[1] for row in self.connection.execute(f"PRAGMA table_info({table})")}

    def has_table(self, table: str) -> bool:
        found = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name"
        return self.connection.execute(found, {"name": table}).fetchone() is not None

    def close(self) -> None:
        self.connection.close()


def history_name(location: HistoryLocation) -> str:
    """The history as messages and the API show it: the SQLite file's path, or the URL masked."""
    return location.shown if isinstance(location, DatabaseUrl) else str(location)


def connect_history(location: HistoryLocation, read_only: bool = False) -> HistoryStore:
    """A connection to the history; SQLite opened read-only when ``read_only`` (the file must then exist)."""
    if not isinstance(location, DatabaseUrl):
        path = Path(location)
        uri = f"{path.resolve().as_uri()}?mode=ro" if read_only else str(path)
        connection = sqlite3.connect(uri, uri=read_only, timeout=10, isolation_level=None)
        return SqliteHistoryStore(connection, history_name(location))
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    engine = create_engine(
        make_url(location.url).set(password=location.password()),
        poolclass=NullPool,
        connect_args={"connect_timeout": 10},
    )
    return HistoryStore(
        engine, engine.connect().execution_options(isolation_level="AUTOCOMMIT"), history_name(location)
    )


def is_database_error(exc: BaseException) -> bool:
    """An error of the history's database: sqlite3's, or SQLAlchemy's where it is in use (it is imported then)."""
    if isinstance(exc, sqlite3.Error):
        return True
    sqlalchemy_errors = sys.modules.get("sqlalchemy.exc")
    return sqlalchemy_errors is not None and isinstance(exc, sqlalchemy_errors.SQLAlchemyError)


def database_error(exc: BaseException) -> BaseException:
    """The driver's own error behind SQLAlchemy's wrapper, whose message names the fault without the SQL."""
    return getattr(exc, "orig", None) or exc


def open_history(location: HistoryLocation) -> HistoryStore:
    """Open (creating and upgrading the schema if need be) the history for writing; raise PipelineError naming it."""
    where = history_name(location)
    try:
        if not isinstance(location, DatabaseUrl):
            Path(location).parent.mkdir(parents=True, exist_ok=True)
        store = connect_history(location)
        try:
            prepare_schema(store)
        except BaseException:
            store.close()
            raise
    except PipelineError:
        raise
    except OSError as exc:
        raise PipelineError(f"run history {where} cannot be created ({describe_os_error(exc)})") from None
    except Exception as exc:
        if not is_database_error(exc):
            raise
        raise describe_open_error(location, database_error(exc)) from None
    return store


def describe_open_error(location: HistoryLocation, exc: BaseException) -> PipelineError:
    """One sentence for a history that cannot be opened: a full disk, a lock, a file that is no database, no server."""
    where = history_name(location)
    if isinstance(location, DatabaseUrl):
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return PipelineError(f"run history {where} cannot be opened ({detail}); the next run tries again")
    if isinstance(exc, sqlite3.OperationalError):
        if disk_is_full(Path(location)) or "full" in str(exc):
            return PipelineError(
                f"run history {where} cannot be written: the disk holding it is full; free some space and run again"
            )
        hint = "if another program holds it, try again when it is done" if "locked" in str(exc) else "check the file"
        return PipelineError(f"run history {where} cannot be opened ({exc}); {hint}")
    return PipelineError(f"run history {where} cannot be used ({exc}); move it aside and the next run starts a new one")


def read_schema_version(store: HistoryStore) -> int:
    if store.dialect == "sqlite":
        return int(store.execute("PRAGMA user_version").fetchone()[0])
    store.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)")
    return int(store.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}").fetchone()[0])


def prepare_schema(store: HistoryStore) -> None:
    """Create the tables, add the columns later versions added, and record the version; refuse a newer database."""
    if store.dialect == "sqlite":
        store.execute("PRAGMA journal_mode = WAL")
    version = read_schema_version(store)
    if version > SCHEMA_VERSION:
        raise PipelineError(
            f"run history {store.where} has schema version {version}, newer than this code's {SCHEMA_VERSION}; "
            "update the code"
        )
    if version == SCHEMA_VERSION and store.dialect == "postgresql":
        return  # up to date: no DDL, so API hosts and the job opening it at once never wait on each other
    with store.transaction():
        if store.dialect == "postgresql":  # one upgrader at a time; the others wait, then find it done
            store.execute(f"LOCK TABLE {VERSION_TABLE} IN EXCLUSIVE MODE")
        for statement in SCHEMA.format(**store.types).split(";"):
            store.execute(statement)
        add_missing_columns(store)
        if store.dialect == "sqlite":
            store.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        else:
            store.execute(f"DELETE FROM {VERSION_TABLE}")
            store.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES ({SCHEMA_VERSION})")


def add_missing_columns(store: HistoryStore) -> None:
    """Add the columns of ``ADDED_COLUMNS`` that a database written by an earlier version lacks."""
    present = store.column_names("runs")
    for name, kind in ADDED_COLUMNS:
        if name not in present:
            store.execute(f"ALTER TABLE runs ADD COLUMN {name} {store.types['real'] if kind == 'REAL' else kind}")


@contextlib.contextmanager
def named_errors(where: str, doing: str) -> Iterator[None]:
    """Turn a database error into PipelineError naming the history and what was being done."""
    try:
        yield
    except Exception as exc:
        if not is_database_error(exc):
            raise
        cause = database_error(exc)
        full = not where.startswith("postgresql:") and disk_is_full(Path(where))
        why = "the disk holding it is full; free some space" if full else str(cause).strip().splitlines()[0]
        raise PipelineError(f"run history {where}: cannot {doing} ({why})") from None


def placeholders(name: str, values: Iterable[Any]) -> tuple[str, dict[str, Any]]:
    """``:name0, :name1, ...`` for an IN list, and the parameters that fill it."""
    params = {f"{name}{index}": value for index, value in enumerate(values)}
    return ", ".join(f":{key}" for key in params), params


def start_run(connection: HistoryStore, started_at: str, pid: int, version_before: str | None) -> int:
    """Insert a run as ``running``; return its id."""
    with named_errors(connection.where, "record the start of the run"):
        row = connection.execute(
            "INSERT INTO runs (started_at, outcome, pid, model_version_before) "
            "VALUES (:started, :outcome, :pid, :version) RETURNING id",
            {"started": started_at, "outcome": RUNNING, "pid": pid, "version": version_before},
        ).fetchone()
    return int(row[0])


def save_run(
    connection: HistoryStore,
    run_id: int,
    fields: RunFields,
    files: Sequence[RunFile] = (),
    feature_drift: Sequence[FeatureDrift] = (),
) -> None:
    """Write the run's known fields, and add its files and drift tests, in one transaction."""
    with named_errors(connection.where, "record the run"), connection.transaction():
        update_run(connection, run_id, fields)
        insert_files(connection, run_id, files)
        insert_feature_drift(connection, run_id, feature_drift)


def update_run(connection: HistoryStore, run_id: int, fields: RunFields) -> int:
    """Set the columns ``fields`` knows (those not None); return how many."""
    values = fields.to_columns()
    if values:
        assignments = ", ".join(f"{key} = :{key}" for key in values)
        connection.execute(f"UPDATE runs SET {assignments} WHERE id = :run_id", {**values, "run_id": run_id})
    return len(values)


def insert_files(connection: HistoryStore, run_id: int, files: Sequence[RunFile]) -> int:
    """Add the files a run saw; return how many."""
    if files:
        connection.execute(
            "INSERT INTO run_files (run_id, name, sha256, status, note) "
            "VALUES (:run_id, :name, :sha256, :status, :note)",
            [{"run_id": run_id, **file.to_json()} for file in files],
        )
    return len(files)


def insert_feature_drift(connection: HistoryStore, run_id: int, feature_drift: Sequence[FeatureDrift]) -> int:
    """Add a run's per-feature drift tests; return how many."""
    if feature_drift:
        connection.execute(
            "INSERT INTO feature_drift (run_id, feature, test, statistic, p_value, threshold, drifted) "
            "VALUES (:run_id, :feature, :test, :statistic, :p_value, :threshold, :drifted)",
            [{"run_id": run_id, **row.to_json(), "drifted": int(row.drifted)} for row in feature_drift],
        )
    return len(feature_drift)


def mark_interrupted(connection: HistoryStore, finished_at: str, serving: str | None) -> int:
    """Close the runs a process that died left unfinished; call only while holding the run lock.

    A run still ``running`` becomes ``interrupted``; if the serving version changed under it,
    the record says it deployed that version. A run that had deployed and died in the steps
    after keeps its outcome and gets its end noted.
    """
    stopped = "the run stopped before it finished (killed or crashed)"
    with named_errors(connection.where, "close unfinished runs"), connection.transaction():
        closed = connection.execute(
            "UPDATE runs SET outcome = :interrupted, finished_at = :now, model_version_after = :serving, "
            "decision = CASE WHEN model_version_before = :serving OR (model_version_before IS NULL AND "
            "CAST(:serving AS TEXT) IS NULL) THEN :nothing_decided ELSE :deployed END "
            "WHERE outcome = :running",
            {
                "interrupted": INTERRUPTED,
                "now": finished_at,
                "serving": serving,
                "nothing_decided": f"{stopped}; nothing was decided",
                "deployed": f"{stopped} after deploying {serving or 'nothing'}",
                "running": RUNNING,
            },
        ).rowcount
        noted = connection.execute(
            "UPDATE runs SET finished_at = :now, failed_stage = 'after deployment', "
            "error = :stopped WHERE finished_at IS NULL AND outcome != :running",
            {"now": finished_at, "stopped": stopped, "running": RUNNING},
        ).rowcount
    return int(closed) + int(noted)


def hashes_with_outcome(
    connection: HistoryStore, outcomes: tuple[str, ...], statuses: tuple[str, ...] = ("new", "edited")
) -> set[str]:
    """Content hashes of the files with one of ``statuses`` seen by runs that ended with one of ``outcomes``."""
    status_list, status_params = placeholders("status", statuses)
    outcome_list, outcome_params = placeholders("outcome", outcomes)
    with named_errors(connection.where, "read the files of earlier runs"):
        rows = connection.execute(
            "SELECT DISTINCT f.sha256 FROM run_files f JOIN runs r ON r.id = f.run_id "
            f"WHERE f.status IN ({status_list}) AND f.sha256 IS NOT NULL AND r.outcome IN ({outcome_list})",
            {**status_params, **outcome_params},
        ).fetchall()
    return {row[0] for row in rows}


def decided_hashes(connection: HistoryStore) -> set[str]:
    """Content hashes of the files that finished runs have already decided on, left out as bad, or read as unlabelled.

    Unlabelled rows never wait for more: they are ranked and tested for data drift when they arrive.
    """
    left_out = hashes_with_outcome(connection, (*DECIDED_OUTCOMES, WAITING, NO_NEW_DATA), ("rejected", "unlabelled"))
    return hashes_with_outcome(connection, DECIDED_OUTCOMES) | left_out


def waiting_hashes(connection: HistoryStore) -> set[str]:
    """Content hashes of the files whose rows were too few to decide on, and not decided since."""
    return hashes_with_outcome(connection, (WAITING,)) - decided_hashes(connection)


@dataclass(frozen=True)
class ReferenceScore:
    """One F1 score the deployed model is judged against: what it scored, on how many rows, and where."""

    f1: float
    rows: int
    source: str


def gate_score(connection: HistoryStore, version: str) -> tuple[int, ReferenceScore | None]:
    """(the id of the run that deployed ``version`` as a challenger, its F1 at the gate); (0, None) without one.

    A version deployed by the first run or by the stage scripts had no gate: it was judged on the test data.
    """
    with named_errors(connection.where, "read the deployment of the serving model"):
        row = connection.execute(
            "SELECT id, challenger_recent_f1, holdout_rows FROM runs WHERE outcome = :outcome "
            "AND model_version_after = :version ORDER BY id DESC LIMIT 1",
            {"outcome": DEPLOYED, "version": version},
        ).fetchone()
    if row is None or row[1] is None or not row[2]:
        return (row[0] if row else 0), None
    return row[0], ReferenceScore(float(row[1]), int(row[2]), f"held-out recent rows at its gate in run {row[0]}")


def later_scores(connection: HistoryStore, version: str, after_run: int) -> list[ReferenceScore]:
    """The F1 scores ``version`` had on batches after run ``after_run`` in which no model drift was found, oldest first.

    Batches that drifted are left out, so drift cannot widen the reference that detects it.
    """
    with named_errors(connection.where, "read earlier F1 scores"):
        rows = connection.execute(
            "SELECT id, new_data_f1, new_rows FROM runs WHERE model_version_before = :version AND id > :after "
            "AND new_data_f1 IS NOT NULL AND new_rows > 0 AND model_drift = 0 AND outcome IN (:kept, :deployed) "
            "ORDER BY id",
            {"version": version, "after": after_run, "kept": KEPT, "deployed": DEPLOYED},
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


def latest_confirmation(connection: HistoryStore, version: str, after_run: int) -> Confirmation | None:
    """The latest run after ``after_run`` in which ``version`` faced challengers and kept serving; None if none."""
    with named_errors(connection.where, "read the runs that confirmed the serving model"):
        row = connection.execute(
            "SELECT id, first_batch, last_batch, new_data_f1, new_rows FROM runs WHERE model_version_before = :version "
            "AND id > :after AND outcome = :kept AND confirmed = 1 AND new_data_f1 IS NOT NULL "
            "AND first_batch IS NOT NULL ORDER BY id DESC LIMIT 1",
            {"version": version, "after": after_run, "kept": KEPT},
        ).fetchone()
    if row is None:
        return None
    run_id, first, last, f1, rows = row
    source = f"new rows of run {run_id}, where no challenger beat it"
    return Confirmation(run_id, int(first), int(last), ReferenceScore(float(f1), int(rows), source))


def decided_batch(connection: HistoryStore) -> int | None:
    """The latest batch a finished run decided on (its rows are no longer new); None when no run recorded one."""
    outcomes, params = placeholders("outcome", DECIDED_OUTCOMES)
    with named_errors(connection.where, "read the batches earlier runs decided on"):
        row = connection.execute(f"SELECT MAX(last_batch) FROM runs WHERE outcome IN ({outcomes})", params).fetchone()
    return None if row[0] is None else int(row[0])


def change_started_batch(connection: HistoryStore) -> int | None:
    """The first batch of the earliest run since the last deployment or confirmation whose drift called for retraining.

    The change it found has not been followed yet (no challenger was deployed since, and none
    was found no better than the serving model), so a recent training window starts there.
    """
    with named_errors(connection.where, "read when the change began"):
        row = connection.execute(
            "SELECT MIN(first_batch) FROM runs WHERE drift_trigger IS NOT NULL AND id > "
            "COALESCE((SELECT MAX(id) FROM runs WHERE outcome IN (:deployed, :first) OR confirmed = 1), 0)",
            {"deployed": DEPLOYED, "first": FIRST_DEPLOYMENT},
        ).fetchone()
    return None if row[0] is None else int(row[0])


def read_runs(location: HistoryLocation, limit: int = 100, with_no_op: bool = True) -> list[StoredRun]:
    """The latest ``limit`` runs, newest first, each with its files and feature drift; [] without a history.

    Opens SQLite read-only, and creates nothing in PostgreSQL, so a reader never creates or changes a history.
    """
    none: list[StoredRun] = []
    return read_history(location, lambda store: read_latest_runs(store, limit, with_no_op), none)


def read_deploying_run(location: HistoryLocation, version: str) -> StoredRun | None:
    """The run that deployed ``version`` (its candidates, the gate's verdict), or None: no history, or the version
    was deployed by hand. PipelineError when the history cannot be read."""
    condition = "WHERE model_version_after = :version AND outcome IN (:deployed, :first)"
    params = {"version": version, "deployed": DEPLOYED, "first": FIRST_DEPLOYMENT}
    none: list[StoredRun] = []
    runs = read_history(location, lambda store: read_latest_runs(store, 1, True, (condition, params)), none)
    return runs[0] if runs else None


def read_history(location: HistoryLocation, read: Callable[[HistoryStore], T], empty: T) -> T:
    """``read`` on the history opened read-only; ``empty`` when there is none yet; PipelineError naming the history
    when it cannot be opened or read."""
    where = history_name(location)
    if not isinstance(location, DatabaseUrl) and not Path(location).exists():
        return empty
    try:
        store = connect_history(location, read_only=True)
    except Exception as exc:
        if not is_database_error(exc):
            raise
        raise PipelineError(f"run history {where} cannot be opened ({database_error(exc)})") from None
    try:
        if store.dialect == "postgresql" and not store.has_table("runs"):
            return empty
        return read(store)
    except Exception as exc:
        if not is_database_error(exc):
            raise
        raise PipelineError(f"run history {where} cannot be read ({database_error(exc)})") from None
    finally:
        store.close()


def read_latest_runs(
    store: HistoryStore, limit: int, with_no_op: bool, condition: tuple[str, dict[str, Any]] | None = None
) -> list[StoredRun]:
    """The latest ``limit`` runs (those meeting ``condition``: a WHERE clause and its parameters, if given)."""
    where, params = condition or ("" if with_no_op else "WHERE outcome != :no_op", {"no_op": NO_NEW_DATA})
    rows = store.rows(f"SELECT * FROM runs {where} ORDER BY id DESC LIMIT :limit", {"limit": limit, **params})
    ids = [row["id"] for row in rows]
    files = rows_by_run(store, "run_files", "name, sha256, status, note", ids)
    drift = rows_by_run(store, "feature_drift", "feature, test, statistic, p_value, threshold, drifted", ids)
    return [
        read_stored_run(
            row,
            tuple(RunFile(item["name"], item["status"], item["sha256"], item["note"]) for item in files[row["id"]]),
            tuple(read_drift_row(item) for item in drift[row["id"]]),
        )
        for row in rows
    ]


def rows_by_run(store: HistoryStore, table: str, columns: str, run_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """The rows of ``table`` that belong to these runs, in one query; each run's in the order it recorded them."""
    found: dict[int, list[dict[str, Any]]] = {run_id: [] for run_id in run_ids}
    if not run_ids:
        return found
    marks, params = placeholders("run", run_ids)
    query = f"SELECT run_id, {columns} FROM {table} WHERE run_id IN ({marks}) ORDER BY {store.types['row_order']}"
    for row in store.rows(query, params):
        found[row["run_id"]].append(row)
    return found


def read_drift_row(row: dict[str, Any]) -> FeatureDrift:
    return FeatureDrift(
        row["feature"], row["test"], row["statistic"], row["p_value"], row["threshold"], bool(row["drifted"])
    )


def quarantined_batches(connection: HistoryStore) -> list[tuple[int, int]]:
    """The batches (first, last) of the runs that raised a data integrity alarm no operator has accepted."""
    with named_errors(connection.where, "read the batches kept out of training"):
        rows = connection.execute(
            "SELECT first_batch, last_batch FROM runs WHERE outcome = :outcome AND integrity_accepted_at IS NULL "
            "AND first_batch IS NOT NULL ORDER BY id",
            {"outcome": QUARANTINED},
        ).fetchall()
    return [(int(first), int(last)) for first, last in rows]


def accept_quarantined(connection: HistoryStore, run_id: int, accepted_at: str) -> tuple[int | None, int | None]:
    """Record that an operator accepted the batch run ``run_id`` raised a data integrity alarm on; return its
    batches (None for rows without outcomes). Raises PipelineError in one sentence when the run raised none or
    was accepted already."""
    with named_errors(connection.where, "record the acceptance"), connection.transaction():
        row = connection.execute(
            "SELECT outcome, integrity_accepted_at, first_batch, last_batch FROM runs WHERE id = :id", {"id": run_id}
        ).fetchone()
        if row is None or row[0] != QUARANTINED:
            raise PipelineError(f"run {run_id} raised no data integrity alarm; nothing to accept")
        if row[1] is not None:
            raise PipelineError(f"run {run_id}'s batch was accepted already, at {row[1]}")
        connection.execute(
            "UPDATE runs SET integrity_accepted_at = :at WHERE id = :id", {"at": accepted_at, "id": run_id}
        )
    return (None if row[2] is None else int(row[2]), None if row[3] is None else int(row[3]))
