"""Full process: find new data, test for drift, retrain, gate and redeploy; cron runs it every 10 minutes.

One run, in order (each step is a named stage; a failure stops the run and names it):

1. check: compare the source files with the data the deployed model was trained on and the
   files earlier runs decided on, by content hash. An edited file is new; a renamed or
   touched one is not; stray files are noted and ignored. Nothing new: one log line, exit 0,
   and pandas, scikit-learn, numpy and pyarrow are never imported.
2. ingestion: add the new files to what was ingested before (their rows are appended, each
   with the batch it arrived in); the new rows are those of the batches no run decided on yet.
3. the decision (``riskwatch/monitoring/decision.py``): the F1 the serving model's probabilities promise on
   the new rows, then its measured F1 against its own reference (model drift) and each feature
   against the rows it was trained on (data drift); ``monitoring.retrain_on`` says which
   triggers retraining. Challengers are trained on several windows of the data (all rows,
   the recent rows, recency-weighted), none on the rolling evaluation window, and the best on
   the held-out recent rows faces the serving model at the gate (``monitoring.min_gain``,
   ``monitoring.gate_confidence``).
   New files without outcomes (no ``exited`` column) are ranked but never trained on: when the
   new rows are all such, the run records the estimated F1 and tests data drift only, and only
   data drift can retrain (on the labelled rows, judged on the rolling evaluation window).
4. deployment of a winner, then diagnostics, reporting (``confusionmatrix2.png`` and the PDF)
   and the API calls (``apireturns2.txt``) when the API is running.

Every run, its decision and the numbers behind it go to the run history (SQLite), its stages'
timings to the stage-timing records, and a deployment, a failure or drift no challenger could
fix to the configured webhooks. One run at a time: a second run exits at once with code 75.
Logs go to stderr and a rotating file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from riskwatch.core.cli import build_parser
from riskwatch.core.config import MODEL_FAMILIES, Config, load_config
from riskwatch.core.databases import (
    DatabaseSource,
    describe_source_state,
    describe_sources,
    fetched_from,
    inspect_source,
    last_watermark,
    read_recorded_state,
    watermark_fits,
)
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import (
    LockHeld,
    atomic_path,
    changed_within,
    file_signature,
    hold_lock,
    list_data_files,
    list_names,
    sha256_file,
)
from riskwatch.core.logs import add_log_file, setup_logging
from riskwatch.core.timings import record_stage_timings
from riskwatch.cycle.crontab import write_cronjob

# Only light modules at the top: a run that finds nothing new must not pay for numpy, pyarrow,
# pandas or scikit-learn. The stages and the statistics are imported once there is work.
from riskwatch.state.artifacts import (
    DEPLOYMENT_LOCK_FILE,
    DIAGNOSTICS_FILE,
    EVALUATION_WINDOW_FILE,
    INGESTED_FILES,
    INGESTION_REPORT,
    LATEST_SCORE_FILE,
    METRICS_FILE,
    MISSING_CACHE_FILE,
    MODEL_FILE,
    MODEL_INFO_FILE,
    REPORT_RECORD_FILE,
    current_version,
    current_version_folder,
    load_deployed_version,
    read_ingested_files,
    read_ingestion_record,
    read_ingestion_report,
    utc_now,
)
from riskwatch.state.history import (
    DEPLOYED,
    FAILED,
    FIRST_DEPLOYMENT,
    INTERRUPTED,
    KEPT,
    NO_NEW_DATA,
    HistoryStore,
    decided_batch,
    decided_hashes,
    mark_interrupted,
    open_history,
    save_run,
    start_run,
    waiting_hashes,
)
from riskwatch.state.records import (
    read_model_version,
    write_evaluation_window,
)
from riskwatch.state.runs import AlertRecord, FeatureDrift, JsonObject, RunFields, RunFile
from riskwatch.state.stages import StageClock, StageFailed

if TYPE_CHECKING:  # imported where used: a run with nothing new imports no data-science library
    import numpy as np

    from riskwatch.data.batches import IngestedData
    from riskwatch.monitoring.verdicts import Assessment
    from riskwatch.stages.ingestion_sources import IngestionResult
    from riskwatch.state.artifacts import DeployedVersion, IngestedFile

log = logging.getLogger("fullprocess")

EXIT_FAILED = 1
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the lock; nothing was done, try again later
EXIT_INTERRUPTED = 130
PLOT_AFTER_DEPLOYMENT = "confusionmatrix2.png"
ALERTS_LOG_FILE = "alerts.log"
ALERT_DETAILS = ("new_rows", "new_data_f1", "drift_threshold", "estimated_f1", "winning_window", "failed_stage")
API_RETURNS_AFTER_DEPLOYMENT = "apireturns2.txt"


@dataclass
class SourceFile:
    """A file in the source folder (or a fetch from the database) that the deployed model has not seen."""

    name: str
    path: Path | None  # None: rows of the database
    sha256: str | None  # None: rows past the watermark, not fetched yet
    status: str  # "new", or "edited" when a file of that name was trained on with other content


@dataclass
class NewData:
    files: list[SourceFile]
    stray: list[str]
    known: int
    waiting: set[str] = field(default_factory=set)  # hashes of files whose rows wait for more to be tested
    arriving: list[str] = field(default_factory=list)  # files still changing: read on a later run
    fetched_before: set[str] = field(default_factory=set)  # hashes of the database fetches ingested before this run


@dataclass
class RunRecord:
    """What a run did, collected as it goes and written to the history at the end."""

    fields: RunFields = field(default_factory=RunFields)
    files: list[RunFile] = field(default_factory=list)
    feature_drift: list[FeatureDrift] = field(default_factory=list)
    clock: StageClock = field(default_factory=StageClock)
    details: JsonObject = field(default_factory=dict)
    rows_saved: bool = False
    timings_kept: set[str] = field(default_factory=set)

    def update(self, changes: RunFields) -> None:
        """Take the fields ``changes`` knows (those not None) in place of the ones recorded so far."""
        self.fields = self.fields.updated(changes)

    def keep_timings(self, output_model_path: Path, run_id: int) -> None:
        """Add the stages timed since the last call to the stage-timing records diagnostics reports."""
        fresh = {stage: seconds for stage, seconds in self.clock.timings.items() if stage not in self.timings_kept}
        record_stage_timings(output_model_path, fresh, f"fullprocess.py run {run_id}")
        self.timings_kept.update(fresh)

    def save(self, connection: HistoryStore, run_id: int) -> None:
        """Write the run as it stands to the history (its files and drift rows once)."""
        fields = self.fields.updated(RunFields(timings=self.clock.timings, details=self.details or None))
        if self.rows_saved:
            save_run(connection, run_id, fields)
        else:
            save_run(connection, run_id, fields, self.files, self.feature_drift)
        self.rows_saved = True


# ---------------------------------------------------------------- locking and stages


def run_lock(prod_deployment_path: Path) -> contextlib.AbstractContextManager[Path]:
    """Hold the deployment's lock for this run; raise LockHeld at once if a run or a deployment command holds it."""
    path = prod_deployment_path / DEPLOYMENT_LOCK_FILE
    busy = f"another run changing the deployment ({{holder}}) holds {path}; this run exits doing nothing"
    return hold_lock(path, "fullprocess.py run", busy)


# ---------------------------------------------------------------- 1. new data (light)


@dataclass(frozen=True)
class IngestedNow:
    """What the ingested data holds now: the content hashes of its files, and the files its last run left out as bad."""

    hashes: frozenset[str]
    rejected: frozenset[str]

    def holds(self, path: Path, digest: str) -> bool:
        """Whether this content is what the ingested data holds now (or was left out as bad, and would be again)."""
        return digest in self.hashes or path.name in self.rejected


def read_ingested_now(output_folder_path: Path) -> IngestedNow:
    """What ``finaldata.csv`` and the unlabelled clients are made of now, from the ingestion record and report.

    A report that cannot be read names no rejected file: those files are then read again, and left out again.
    """
    record = read_ingestion_record(output_folder_path / INGESTED_FILES)
    rejected: frozenset[str] = frozenset()
    if (output_folder_path / INGESTION_REPORT).exists():
        try:
            rejected = frozenset(read_ingestion_report(output_folder_path / INGESTION_REPORT).rejected)
        except PipelineError as exc:
            log.warning("%s; the files it left out are read again", exc)
    return IngestedNow(frozenset(entry.sha256 for entry in record.files), rejected)


def find_new_data(
    input_folder_path: Path, trained_on: dict[str, Any], decided: set[str], ingested: IngestedNow | None = None
) -> NewData:
    """The source files whose content neither the deployed model nor an earlier decision has seen.

    With ``ingested``, content seen before counts as known only while the ingested data holds it: a
    file restored to an earlier content (or flipped back to labelled) is new again, as ingestion reads it.
    """
    if not input_folder_path.is_dir():
        raise PipelineError(f"input folder {input_folder_path} does not exist")
    data_files, ignored = list_data_files(input_folder_path)
    known_hashes = {entry.sha256 for entry in trained_on.values()} | decided
    files, known = [], 0
    for path in data_files:
        digest = sha256_file(path)
        if digest in known_hashes and (ingested is None or ingested.holds(path, digest)):
            known += 1
            continue
        files.append(SourceFile(path.name, path, digest, "edited" if path.name in trained_on else "new"))
    return NewData(files, [path.name for path in ignored], known)


def find_new_rows(
    source: DatabaseSource, output_folder_path: Path, trained_on: dict[str, Any], decided: set[str]
) -> tuple[list[SourceFile], set[str], list[str]]:
    """Fetches ingested but not decided on, rows past the watermark or late below it (a few cheap queries); the
    fetches' hashes; and the warnings the table's state is worth (a table that went back, NULL or bad watermarks).

    Raises PipelineError in one sentence when the database cannot be reached.
    """
    fetched = fetched_from(read_ingestion_record(output_folder_path / INGESTED_FILES).files, source)
    known = {entry.sha256 for entry in trained_on.values()} | decided
    files = [SourceFile(entry.name, None, entry.sha256, "new") for entry in fetched if entry.sha256 not in known]
    recorded = read_recorded_state(output_folder_path, source) if fetched else None

    def choose_watermark(kind: str) -> Any:
        """The last watermark of the column's kind (one recorded from a bad row, text in an integer column, is
        passed over); with none, the one ingestion kept after reading the table again, so that an old bad
        record does not send every run down the heavy path."""
        found = last_watermark(fetched, source, kind)
        if found is None and recorded is not None and watermark_fits(recorded.watermark, kind):
            return recorded.watermark
        return found

    watermark, state = inspect_source(source, choose_watermark)
    before = recorded.rows_at_or_below if recorded is not None and recorded.watermark == watermark else None
    warnings = describe_source_state(source, state, watermark, before)
    if state.past:
        past = "" if watermark is None else f" past {source.watermark} {watermark}"
        files.append(SourceFile(f"{source.table}: rows{past}", None, None, "new"))
    elif before is not None and state.at_or_below > before:
        files.append(SourceFile(f"{source.table}: rows at or below {source.watermark} {watermark}", None, None, "new"))
    return files, {entry.sha256 for entry in fetched}, warnings


def note_source_warnings(record: RunRecord, warnings: list[str]) -> None:
    """Log what the sources are worth a person's attention for, and keep it in the run's details (the history)."""
    fresh = [warning for warning in warnings if warning not in record.details.get("source_warnings", [])]
    for warning in fresh:
        log.warning("%s", warning)
    if fresh:
        record.details["source_warnings"] = [*record.details.get("source_warnings", []), *fresh]


def note_fetches(record: RunRecord, new: NewData, ingested: list[Any]) -> None:
    """Record the database fetches this run ingested (by content hash) in place of "rows past the watermark"."""
    record.files = [row for row in record.files if row.sha256 is not None or row.status != "new"]
    record.files += [
        RunFile(entry.name, "new", entry.sha256)
        for entry in ingested
        if entry.source and entry.sha256 not in new.fetched_before
    ]


def let_files_settle(new: NewData, settle_seconds: float) -> None:
    """Wait (at most ``settle_seconds``) for new files modified just now to stop changing; set aside any that did not.

    A file being copied in grows while it is copied: read then, its first rows would count as
    arrived in this batch and the rest in the next. The ones still changing go to ``new.arriving``
    and are read on a later run, whole.
    """
    recent = {}
    for item in new.files:
        if item.path is None:  # rows of the database: fetched whole, up to the watermark of the moment
            continue
        signature = file_signature(item.path)
        if changed_within(signature, settle_seconds):
            recent[item.name] = signature
    if not recent:
        return
    newest = max(signature[1] for signature in recent.values())
    wait = min(settle_seconds, max(0.0, settle_seconds - (time.time_ns() - newest) / 1e9))
    log.info("waiting %.1f s for %s to stop changing", wait, ", ".join(sorted(recent)))
    time.sleep(wait)
    for item in list(new.files):
        if item.name not in recent or item.path is None:
            continue
        try:
            unchanged = file_signature(item.path) == recent[item.name]
        except OSError:
            unchanged = False
        if not unchanged:
            new.files.remove(item)
            new.arriving.append(item.name)
    if new.arriving:
        log.info("still changing, read on a later run: %s", ", ".join(new.arriving))


def describe_stray(stray: list[str]) -> str:
    if not stray:
        return ""
    shown = list_names(stray)
    return f"; ignored {len(stray)} file(s) that are not data ({shown})"


# ---------------------------------------------------------------- 2-6. the work (heavy modules imported here)


def missing_percent(paths: list[Path], output_model_path: Path) -> dict[str, Any]:
    """Percent of empty cells in these files, overall and per column."""
    from riskwatch.data.datastats import missing_data

    missing = missing_data([path for path in paths if path.is_file()], output_model_path / MISSING_CACHE_FILE)
    percents = missing["percent"]
    overall = sum(percents.values()) / len(percents) if percents and missing["rows"] else 0.0
    return {"overall": round(overall, 4), "columns": percents, "rows": missing["rows"]}


def deploy_first_model(config: Config, record: RunRecord, new: NewData) -> RunFields:
    """Nothing is deployed yet: ingest, train, score and deploy without a gate; return the run's fields."""
    from riskwatch.model.evaluation import score_model
    from riskwatch.stages.deployment import publish_deployment
    from riskwatch.stages.ingestion import ingest_folder
    from riskwatch.stages.scoring import write_scores
    from riskwatch.stages.training import train_from_folder

    clock = record.clock
    with clock.stage("ingestion"):
        ingested = ingest_folder(
            config.input_folder_path,
            config.output_folder_path,
            settle_seconds=config.monitoring.settle_seconds,
            database=config.database,
            block_bytes=config.ingestion.batch_bytes,
        )
        note_fetches(record, new, ingested.files)
        note_source_warnings(record, ingested.warnings)
        folder = config.input_folder_path
        missing = missing_percent(
            [folder / entry.name for entry in ingested.files if folder and not entry.source], config.output_model_path
        )
    record.details["missing_data"] = missing
    mark_unlabelled(record, ingested.unlabelled)
    with clock.stage("training"):
        info = train_from_folder(config.output_folder_path, config.output_model_path, config.model, config.monitoring)
    with clock.stage("scoring"):
        metrics = score_model(config.output_model_path / MODEL_FILE, config.test_data_path)
        write_scores(metrics, config.output_model_path)
    with clock.stage("deployment"):
        deployed = publish_deployment(
            config.output_model_path, config.output_folder_path, config.prod_deployment_path, config.keep_versions
        )
    return RunFields(
        outcome=FIRST_DEPLOYMENT,
        first_batch=1,
        last_batch=info.training_window.last_batch if info.training_window else None,
        new_rows=ingested.rows_written,
        ingested_rows=ingested.rows_written,
        missing_percent=missing["overall"],
        deployed_f1=metrics.f1,
        challenger_test_f1=metrics.f1,
        model_version_after=deployed.version,
        model_family=info.family,
        decision=f"no model was deployed yet: deployed {deployed.version}, the {info.family} family (F1 "
        f"{metrics.f1:.4f} on the test data)",
    )


def adopt_challenger(folder: Path, output_model_path: Path) -> None:
    """Copy a deployed challenger's files to the model folder, the classic place of the latest model."""

    # metrics.json last: it names the model, so it marks the set complete (as scoring.py writes it)
    for name in (MODEL_FILE, MODEL_INFO_FILE, LATEST_SCORE_FILE, METRICS_FILE):
        with atomic_path(output_model_path / name) as tmp:
            shutil.copyfile(folder / name, tmp)


def find_watermark(connection: HistoryStore, champion: DeployedVersion, batch_before: int) -> int:
    """The last batch whose rows are not new: decided on by an earlier run, or trained on by the serving model."""

    decided = decided_batch(connection)
    window = champion.model_info.training_window
    known = [value for value in (decided, window.last_batch if window else None) if value is not None]
    return max(known) if known else batch_before


def assess_new_data(config: Config, connection: HistoryStore, record: RunRecord, new: NewData) -> RunFields:
    """Ingest the new files, decide on the rows that arrived (drift, challengers, gate), deploy a winner.

    Returns the run's fields.
    """
    with record.clock.stage("champion load"):
        champion = load_deployed_version(current_version_folder(config.prod_deployment_path))
    ingested, data, missing = ingest_new_files(config, record, new, champion)
    left_out = mark_rejected(record, ingested.rejected)
    unlabelled = mark_unlabelled(record, ingested.unlabelled)
    batch_before = ingested.batch - 1 if ingested.batch else data.latest_batch
    watermark = find_watermark(connection, champion, batch_before)
    if left_out == len(new.files) and not data.in_batches(watermark + 1).any():
        return RunFields(
            outcome=NO_NEW_DATA,
            ingested_rows=ingested.rows_written,
            decision=f"no new data: the new file(s) were left out ({'; '.join(ingested.rejected.values())}); "
            f"{champion.version} serves",
        )
    assessment = decide_on_new_rows(config, connection, record, champion, data, watermark, unlabelled)
    record.feature_drift = list(assessment.findings.feature_drift)
    measured = RunFields(
        ingested_rows=ingested.rows_written,
        missing_percent=missing,
        deployed_f1=champion.metrics.f1,
        model_family=champion.model_info.family or MODEL_FAMILIES[0],  # written before families: linear
    )
    deployed = deploy_winner(config, record.clock, assessment)
    window = assessment.action.window
    if window is not None:
        serving = deployed.model_version_after or champion.version
        write_evaluation_window(config.output_model_path / EVALUATION_WINDOW_FILE, window.to_record(serving))
    return measured.updated(assessment.history_fields()).updated(deployed)


def ingest_new_files(
    config: Config, record: RunRecord, new: NewData, champion: DeployedVersion
) -> tuple[IngestionResult, IngestedData, float]:
    """Ingest the new files (the serving model's cached rows kept) and read the rows; with the new files' missing %."""
    from riskwatch.data.batches import read_ingested_data
    from riskwatch.stages.ingestion import ingest_folder

    with record.clock.stage("ingestion"):
        ingested = ingest_folder(
            config.input_folder_path,
            config.output_folder_path,
            keep_parsed=keep_hashes(champion),
            settle_seconds=config.monitoring.settle_seconds,
            database=config.database,
            block_bytes=config.ingestion.batch_bytes,
        )
        note_fetches(record, new, ingested.files)
        note_source_warnings(record, ingested.warnings)
    with record.clock.stage("new rows"):
        data = read_ingested_data(config.output_folder_path)
        missing = missing_percent([item.path for item in new.files if item.path], config.output_model_path)
    record.details["missing_data"] = missing
    return ingested, data, float(missing["overall"])


def decide_on_new_rows(
    config: Config,
    connection: HistoryStore,
    record: RunRecord,
    champion: DeployedVersion,
    data: IngestedData,
    watermark: int,
    unlabelled: list[IngestedFile],
) -> Assessment:
    """The monitoring decision on the rows past ``watermark``; on the unlabelled files' rows when only they are new."""
    from riskwatch.monitoring.decision import assess, assess_unlabelled
    from riskwatch.monitoring.verdicts import RunInputs

    inputs = RunInputs(config, connection, champion, data, watermark)
    if unlabelled and not data.in_batches(watermark + 1).any():
        with record.clock.stage("unlabelled rows"):
            features = read_unlabelled_features(config.output_folder_path, unlabelled)
        return assess_unlabelled(inputs, record.clock, features)
    return assess(inputs, record.clock)


def deploy_winner(config: Config, clock: StageClock, assessment: Assessment) -> RunFields:
    """Publish the challenger the gate chose, if any; return the fields that record it (none without one)."""
    from riskwatch.monitoring.verdicts import describe_deployment
    from riskwatch.stages.deployment import publish_deployment

    if assessment.deploy_folder is None:
        return RunFields()
    with clock.stage("deployment"):
        info = publish_deployment(
            assessment.deploy_folder, config.output_folder_path, config.prod_deployment_path, config.keep_versions
        )
        adopt_challenger(assessment.deploy_folder, config.output_model_path)
    gate, replaced = assessment.action.gate, assessment.action.replaced_version
    return RunFields(
        outcome=DEPLOYED,
        model_version_after=str(info.version),
        model_family=gate.best.family if gate else None,
        decision=describe_deployment(gate, replaced, str(info.version)) if gate and replaced else assessment.decision,
    )


def mark_rejected(record: RunRecord, rejected: dict[str, str]) -> int:
    """Record the new files ingestion left out as bad, so they are not new again until edited; return how many."""
    marked = [row.name in rejected and row.status in ("new", "edited") for row in record.files]
    record.files = [
        replace(row, status="rejected", note=rejected[row.name]) if bad else row
        for row, bad in zip(record.files, marked, strict=True)
    ]
    return sum(marked)


def mark_unlabelled(record: RunRecord, unlabelled: list[IngestedFile]) -> list[IngestedFile]:
    """Record the new files ingestion read as unlabelled as such; return their ingestion entries."""
    new = {entry.sha256: entry for entry in unlabelled}
    marked = [row.sha256 in new and row.status in ("new", "edited") for row in record.files]
    note = "no exited column: ranked as current clients, never trained on"
    record.files = [
        replace(row, status="unlabelled", note=note) if found else row
        for row, found in zip(record.files, marked, strict=True)
    ]
    return [new[row.sha256] for row, found in zip(record.files, marked, strict=True) if found and row.sha256]


def read_unlabelled_features(output_folder_path: Path, files: list[IngestedFile]) -> np.ndarray:
    """The features (float64, one column per feature) of the valid rows of these unlabelled files, as ingested."""
    import numpy as np

    from riskwatch.core.schema import FEATURES, UNLABELLED_SCHEMA
    from riskwatch.data.finaldata import merge_tables

    table = merge_tables(output_folder_path, [entry.sha256 for entry in files], UNLABELLED_SCHEMA)
    return np.column_stack([table[name].to_numpy().astype(np.float64) for name in FEATURES])


def keep_hashes(champion: DeployedVersion) -> frozenset[str]:
    """Content hashes of the files the serving model was trained on, whose cached rows ingestion keeps."""
    return frozenset(entry.sha256 for entry in read_ingested_files(champion.folder / INGESTED_FILES).values())


def after_deployment(config: Config, record: RunRecord) -> None:
    """Diagnostics, the report and the API calls for the model just deployed."""
    import requests

    from riskwatch.report.reporting import write_report
    from riskwatch.stages.apicalls import write_api_returns
    from riskwatch.stages.diagnostics import write_diagnostics

    with record.clock.stage("diagnostics"):
        write_diagnostics(config, config.diagnostics.timing_runs)
    with record.clock.stage("reporting"):
        report = write_report(config, plot_name=PLOT_AFTER_DEPLOYMENT)
        record.details["report"] = {"plot": str(report["plot"]), "pdf": str(report["pdf"])}
    with record.clock.stage("apicalls"):
        url = config.api.url.rstrip("/")
        try:
            requests.get(f"{url}/health", timeout=3)
        except requests.RequestException as exc:
            log.warning(
                "the API at %s is not running (%s); API calls skipped; the deployment stands", url, type(exc).__name__
            )
            record.details["apicalls"] = f"skipped: the API at {url} is not running"
            return
        record.details["apicalls"] = str(write_api_returns(config, url, API_RETURNS_AFTER_DEPLOYMENT))


# ---------------------------------------------------------------- the run


def check_for_new_data(config: Config, connection: HistoryStore, record: RunRecord) -> NewData:
    with record.clock.stage("check"):
        version = record.fields.model_version_before
        if version is None:  # nothing serves: every data file is new, whatever earlier runs decided
            trained_on, decided = {}, set()
        else:
            trained_on = read_ingested_files(current_version_folder(config.prod_deployment_path) / INGESTED_FILES)
            decided = decided_hashes(connection)
        new = NewData([], [], 0)
        if config.input_folder_path is not None:
            ingested = read_ingested_now(config.output_folder_path)
            new = find_new_data(config.input_folder_path, trained_on, decided, ingested)
        if config.database is not None:
            rows, new.fetched_before, warnings = find_new_rows(
                config.database, config.output_folder_path, trained_on, decided
            )
            new.files += rows
            note_source_warnings(record, warnings)
        new.waiting = waiting_hashes(connection) if version else set()
    with record.clock.stage("settle"):
        let_files_settle(new, config.monitoring.settle_seconds)
    record.files = [RunFile(item.name, item.status, item.sha256) for item in new.files]
    record.files += [RunFile(name, "arriving", note="still changing; read later") for name in new.arriving]
    record.update(RunFields(new_files=len(new.files)))
    return new


def reports_outdated(config: Config, version: str | None) -> bool:
    """True when a version serves but the diagnostics or the report describe another (a run died before them)."""
    if version is None:
        return False
    folder = config.output_model_path
    made = (read_model_version(folder / DIAGNOSTICS_FILE), read_model_version(folder / REPORT_RECORD_FILE))
    return any(made_version != version for made_version in made)


def run_once(config: Config, connection: HistoryStore, record: RunRecord, run_id: int) -> None:
    """Decide what this run does and do it, filling ``record``."""
    new = check_for_new_data(config, connection, record)
    version = record.fields.model_version_before
    waiting = [item for item in new.files if item.sha256 in new.waiting]
    if len(waiting) == len(new.files):
        arriving = f"; still changing, read on a later run: {', '.join(new.arriving)}" if new.arriving else ""
        warned = record.details.get("source_warnings", [])
        warnings = f"; {len(warned)} source warning(s): {'; '.join(warned)}" if warned else ""
        record.update(RunFields(outcome=NO_NEW_DATA, decision=f"no new data{arriving}{warnings}"))
        note = f"; {len(waiting)} file(s) wait for more rows to test for drift" if waiting else ""
        note += arriving
        if not reports_outdated(config, version):
            log.info(
                "no new data in %s (%d file(s), all seen before%s)%s; nothing to do",
                describe_sources(config.input_folder_path, config.database),
                new.known,
                note,
                describe_stray(new.stray),
            )
            return
        log.warning(
            "no new data, but the diagnostics and report are not those of %s, which serves; making them", version
        )
        record.update(
            RunFields(decision=f"no new data; made the diagnostics, report and API calls for {version}{warnings}")
        )
        record.save(connection, run_id)
        after_deployment(config, record)
        return
    record.files += [RunFile(name, "stray", note="not a data file; ignored") for name in new.stray]
    log.info(
        "%d new or edited file(s) in %s: %s%s",
        len(new.files),
        describe_sources(config.input_folder_path, config.database),
        ", ".join(f"{item.name} ({item.status})" for item in new.files),
        describe_stray(new.stray),
    )
    if version is None:
        record.update(deploy_first_model(config, record, new))
    else:
        record.update(assess_new_data(config, connection, record, new))
    if record.fields.outcome in (DEPLOYED, FIRST_DEPLOYMENT):
        record.save(connection, run_id)  # the report made next shows this run in its trends
        record.keep_timings(config.output_model_path, run_id)  # and the diagnostics its stages' timings
        after_deployment(config, record)
    log.info("decision: %s", record.fields.decision)


def alert_kind(fields: RunFields) -> str | None:
    """What a run's end is worth telling people: a deployment, a failure, or drift no challenger could fix."""
    outcome = fields.outcome
    if outcome in (DEPLOYED, FIRST_DEPLOYMENT):
        return "deployed"
    if outcome == FAILED:
        return "failed"
    if outcome == KEPT and fields.drift_trigger:
        return "unresolved_drift"
    return None


def send_alert(
    config: Config, fields: RunFields, run_id: int | None, connection: HistoryStore | None = None
) -> AlertRecord | None:
    """Post the run's end to the configured webhooks without waiting for them; return what was sent.

    With the history open (``connection``), the alert is recorded first, each delivery not known yet,
    and the sender records each webhook's answer when it has it. Without (the history could not be
    opened or written), the alert still goes out; its answers are in the alert log only.
    """
    kind = alert_kind(fields)
    webhooks = config.monitoring.webhooks
    if kind is None or not webhooks:
        return None
    from riskwatch.monitoring.alerts import (  # not for runs with nothing to say
        AlertEvent,
        RecordTo,
        dispatch,
        pending_deliveries,
    )

    project = config.path.parent.name
    which = f"run {run_id}" if run_id is not None else "a run the history could not record"
    event = AlertEvent(
        kind=kind,
        text=f"risk model ({project}), {which}: {fields.decision}",
        project=project,
        run_id=run_id,
        model_version_before=fields.model_version_before,
        model_version_after=fields.model_version_after,
        occurred_at=fields.finished_at,
        details={key: getattr(fields, key) for key in ALERT_DETAILS if getattr(fields, key) is not None},
    )
    log_path = config.log_path.parent / ALERTS_LOG_FILE
    alert = AlertRecord(kind, len(webhooks), str(log_path), pending_deliveries(webhooks))
    record_to = None
    if connection is not None and run_id is not None:
        try:
            save_run(connection, run_id, RunFields(alerts=alert))
            record_to = RecordTo(str(config.path), run_id, str(log_path))
        except PipelineError as exc:
            log.error("the alert could not be recorded in the history: %s", exc)
    dispatch(webhooks, event, config.monitoring.alert_timeout_seconds, log_path, record_to)
    return alert


def alert_unrecorded_failure(config: Config, failure: StageFailed, started: str) -> AlertRecord | None:
    """Alert on a run that failed before the history opened: the webhooks are in the config, which loaded."""
    try:
        serving = current_version(config.prod_deployment_path)
    except OSError:
        serving = None
    fields = RunFields(
        started_at=started, finished_at=utc_now(), model_version_before=serving, model_version_after=serving
    ).updated(describe_failure(failure, RunFields(), serving))
    return send_alert(config, fields, None)


def begin_run(config: Config, started: str) -> tuple[HistoryStore, int, str | None]:
    """Open the history, close the records of runs that died, and record this one as running.

    Returns (the connection, this run's id, the serving version); raises StageFailed("history").
    """
    try:
        connection = open_history(config.history_path)
    except PipelineError as exc:
        raise StageFailed("history", str(exc)) from None
    version = current_version(config.prod_deployment_path)
    try:
        stale = mark_interrupted(connection, started, version)
        run_id = start_run(connection, started, os.getpid(), version)
    except PipelineError as exc:
        connection.close()
        raise StageFailed("history", str(exc)) from None
    if stale:
        log.warning("%d earlier run(s) stopped before finishing; recorded them as interrupted", stale)
    return connection, run_id, version


def describe_failure(exc: BaseException, fields: RunFields, serving: str | None) -> RunFields:
    """The fields of a run that a failed stage or a signal stopped; a deployment that happened stands."""
    deployed = fields.outcome in (DEPLOYED, FIRST_DEPLOYMENT)
    if isinstance(exc, StageFailed):
        if deployed:
            return RunFields(failed_stage=exc.stage, error=exc.message, decision=f"{fields.decision}; then {exc}")
        decision = f"stopped: {exc}; {serving or 'nothing'} serving"
        return RunFields(failed_stage=exc.stage, error=exc.message, outcome=FAILED, decision=decision)
    if deployed:
        return RunFields(failed_stage="after deployment", error="stopped by a signal")
    return RunFields(outcome=INTERRUPTED, decision="stopped by a signal; nothing was decided")


def finish_run(
    config: Config,
    connection: HistoryStore,
    record: RunRecord,
    run_id: int,
    clock: float,
    failure: BaseException | None,
) -> None:
    """Record how the run ended (and its stages' timings), then alert; a run that cannot be recorded fails."""
    record.fields = replace(
        record.fields,
        finished_at=utc_now(),
        seconds=round(time.perf_counter() - clock, 3),
        model_version_after=current_version(config.prod_deployment_path),
    )
    if record.fields.outcome != NO_NEW_DATA:
        record.keep_timings(config.output_model_path, run_id)
    unrecorded: StageFailed | None = None
    try:
        record.save(connection, run_id)
    except PipelineError as exc:
        unrecorded = StageFailed("history", str(exc))
        if failure is None:  # the alert says the run failed, as its exit code will
            record.update(describe_failure(unrecorded, record.fields, record.fields.model_version_after))
    send_alert(config, record.fields, run_id, None if unrecorded else connection)
    if unrecorded is not None:
        if failure is None:
            raise unrecorded from None
        log.error("the run could not be recorded: %s", unrecorded.message)


def run_full_process(config: Config) -> RunFields:
    """One whole run under the lock, recorded in the run history; return the run's fields.

    Raises StageFailed (after recording it) when a stage fails, KeyboardInterrupt on a signal.
    """
    started, clock = utc_now(), time.perf_counter()
    try:
        connection, run_id, version = begin_run(config, started)
    except StageFailed as exc:
        alert_unrecorded_failure(config, exc, started)
        raise
    with contextlib.closing(connection):
        record = RunRecord()
        record.update(RunFields(started_at=started, model_version_before=version, model_version_after=version))
        failure: BaseException | None = None
        try:
            run_once(config, connection, record, run_id)
        except (StageFailed, KeyboardInterrupt) as exc:  # KeyboardInterrupt: Ctrl-C, or SIGTERM (see main)
            failure = exc
            record.update(describe_failure(exc, record.fields, current_version(config.prod_deployment_path)))
            raise
        finally:
            finish_run(config, connection, record, run_id, clock, failure)
    return record.fields


# A run told to stop records that and releases its lock within this long, or the kernel ends it (SIGALRM's default
# action): a run that cannot finish its cleanup is then a killed run, which the pipeline survives (see docs/design.md).
STOP_SECONDS = 30


def stop_on_signal(signum: int, frame: object) -> None:
    """SIGTERM ends a run as Ctrl-C does: recorded, the lock released, the deployed model serving; a run still
    going ``STOP_SECONDS`` later is ended by the kernel."""
    signal.alarm(STOP_SECONDS)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--history", type=int, nargs="?", const=20, metavar="N", help="print the last N runs (default 20) and exit"
    )
    action.add_argument(
        "--write-cronjob", type=Path, metavar="PATH", help="write the crontab line for this checkout to PATH and exit"
    )
    args = parser.parse_args(argv)
    setup_logging(args.verbose - args.quiet)
    try:
        config = load_config(args.config)
        if args.history is not None:
            from riskwatch.cycle.historytext import format_history
            from riskwatch.state.history import read_runs

            print(format_history(read_runs(config.history_path, limit=max(1, args.history))))
            return 0
        if args.write_cronjob is not None:
            log.info("wrote %s", write_cronjob(config, args.write_cronjob))
            return 0
        add_log_file(config.log_path, int(config.monitoring.log_max_mb * 2**20), config.monitoring.log_backups)
    except (PipelineError, OSError) as exc:
        log.error("fullprocess failed: %s", exc)
        return EXIT_FAILED
    signal.signal(signal.SIGTERM, stop_on_signal)
    try:
        with run_lock(config.prod_deployment_path):
            run_full_process(config)
    except LockHeld as exc:
        log.warning("%s", exc)
        return EXIT_LOCKED
    except StageFailed as exc:
        log.error("fullprocess %s; the deployed model keeps serving", exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        log.error("fullprocess interrupted; the deployed model keeps serving")
        return EXIT_INTERRUPTED
    except (PipelineError, OSError) as exc:
        log.error("fullprocess failed: %s", exc)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
