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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from riskwatch.core.cli import build_parser
from riskwatch.core.config import MODEL_FAMILIES, Config, load_config
from riskwatch.core.databases import describe_sources
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import LockHeld, atomic_path, hold_lock
from riskwatch.core.logs import add_log_file, setup_logging
from riskwatch.cycle.crontab import write_cronjob
from riskwatch.cycle.newdata import (
    NewData,
    SourceCheck,
    describe_stray,
    find_new_data,
    find_new_rows,
    let_files_settle,
    read_ingested_now,
)
from riskwatch.cycle.runrecord import (
    IngestionStep,
    ReportMade,
    RunEnd,
    RunRecord,
    RunSteps,
    RunWriter,
    record_of,
    rejected_count,
    unlabelled_new,
)

# Only light modules at the top: a run that finds nothing new must not pay for numpy, pyarrow,
# pandas or scikit-learn. The stages and the statistics are imported once there is work.
from riskwatch.state.artifacts import (
    DEPLOYMENT_LOCK_FILE,
    DIAGNOSTICS_FILE,
    EVALUATION_WINDOW_FILE,
    INGESTED_FILES,
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
    utc_now,
)
from riskwatch.state.history import (
    DEPLOYED,
    FAILED,
    FIRST_DEPLOYMENT,
    INTERRUPTED,
    KEPT,
    NO_NEW_DATA,
    QUARANTINED,
    HistoryStore,
    accept_quarantined,
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
from riskwatch.state.runs import AlertRecord, RunFields
from riskwatch.state.stages import StageClock, StageFailed

if TYPE_CHECKING:  # imported where used: a run with nothing new imports no data-science library
    import numpy as np

    from riskwatch.data.batches import IngestedData
    from riskwatch.monitoring.verdicts import Assessment
    from riskwatch.state.artifacts import DeployedVersion, IngestedFile

log = logging.getLogger("fullprocess")

EXIT_FAILED = 1
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the lock; nothing was done, try again later
EXIT_INTERRUPTED = 130
PLOT_AFTER_DEPLOYMENT = "confusionmatrix2.png"
ALERTS_LOG_FILE = "alerts.log"
ALERT_DETAILS = (
    "new_rows",
    "new_data_f1",
    "drift_threshold",
    "estimated_f1",
    "winning_window",
    "failed_stage",
    "reconstruction_error",
    "reconstruction_threshold",
)
API_RETURNS_AFTER_DEPLOYMENT = "apireturns2.txt"


# ---------------------------------------------------------------- locking and stages


def run_lock(prod_deployment_path: Path) -> contextlib.AbstractContextManager[Path]:
    """Hold the deployment's lock for this run; raise LockHeld at once if a run or a deployment command holds it."""
    path = prod_deployment_path / DEPLOYMENT_LOCK_FILE
    busy = f"another run changing the deployment ({{holder}}) holds {path}; this run exits doing nothing"
    return hold_lock(path, "fullprocess.py run", busy)


# ---------------------------------------------------------------- 1. new data (light)


def check_for_new_data(config: Config, connection: HistoryStore, version: str | None, clock: StageClock) -> SourceCheck:
    """Step 1: the new files and database rows (``version``: the serving one; None: everything is new)."""
    with clock.stage("check"):
        if version is None:  # nothing serves: every data file is new, whatever earlier runs decided
            trained_on, decided = {}, set()
        else:
            trained_on = read_ingested_files(current_version_folder(config.prod_deployment_path) / INGESTED_FILES)
            decided = decided_hashes(connection)
        new = NewData(())
        if config.input_folder_path is not None:
            ingested = read_ingested_now(config.output_folder_path)
            new = find_new_data(config.input_folder_path, trained_on, decided, ingested)
        warnings: list[str] = []
        if config.database is not None:
            rows, fetched_before, warnings = find_new_rows(
                config.database, config.output_folder_path, trained_on, decided
            )
            new = replace(new, files=new.files + tuple(rows), fetched_before=frozenset(fetched_before))
        distinct = tuple(dict.fromkeys(warnings))
        for warning in distinct:
            log.warning("%s", warning)
        if version:
            new = replace(new, waiting=frozenset(waiting_hashes(connection)))
    with clock.stage("settle"):
        new = let_files_settle(new, config.monitoring.settle_seconds)
    return SourceCheck(new, distinct)


# ---------------------------------------------------------------- 2-6. the work (heavy modules imported here)


def missing_percent(paths: list[Path], output_model_path: Path) -> dict[str, Any]:
    """Percent of empty cells in these files, overall and per column."""
    from riskwatch.data.datastats import missing_data

    missing = missing_data([path for path in paths if path.is_file()], output_model_path / MISSING_CACHE_FILE)
    percents = missing["percent"]
    overall = sum(percents.values()) / len(percents) if percents and missing["rows"] else 0.0
    return {"overall": round(overall, 4), "columns": percents, "rows": missing["rows"]}


def ingest_sources(
    config: Config, clock: StageClock, check: SourceCheck, champion: DeployedVersion | None = None
) -> IngestionStep:
    """Step 2: ingest the new files (the serving model's cached rows kept); with the new files' missing cells.

    Logs the source warnings the check had not given already.
    """
    from riskwatch.stages.ingestion import ingest_folder

    with clock.stage("ingestion"):
        result = ingest_folder(
            config.input_folder_path,
            config.output_folder_path,
            keep_parsed=keep_hashes(champion) if champion is not None else frozenset(),
            settle_seconds=config.monitoring.settle_seconds,
            database=config.database,
            block_bytes=config.ingestion.batch_bytes,
        )
        for warning in dict.fromkeys(result.warnings):
            if warning not in check.warnings:
                log.warning("%s", warning)
    if champion is None:  # the first model: every file it ingested is new
        folder = config.input_folder_path
        paths = [folder / entry.name for entry in result.files if folder and not entry.source]
    else:
        paths = [item.path for item in check.new.files if item.path]
    with clock.stage("ingestion" if champion is None else "new rows"):
        return IngestionStep(result, missing_percent(paths, config.output_model_path))


def deploy_first_model(config: Config, steps: RunSteps, check: SourceCheck) -> None:
    """Nothing is deployed yet: ingest, train, score and deploy without a gate."""
    from riskwatch.model.evaluation import score_model
    from riskwatch.stages.deployment import publish_deployment
    from riskwatch.stages.scoring import write_scores
    from riskwatch.stages.training import train_from_folder

    clock = steps.clock
    steps.ingestion = ingested = ingest_sources(config, clock, check)
    with clock.stage("training"):
        info = train_from_folder(config.output_folder_path, config.output_model_path, config.model, config.monitoring)
    with clock.stage("scoring"):
        metrics = score_model(config.output_model_path / MODEL_FILE, config.test_data_path)
        write_scores(metrics, config.output_model_path)
    with clock.stage("deployment"):
        deployed = publish_deployment(
            config.output_model_path, config.output_folder_path, config.prod_deployment_path, config.keep_versions
        )
    steps.outcome = RunFields(
        outcome=FIRST_DEPLOYMENT,
        first_batch=1,
        last_batch=info.training_window.last_batch if info.training_window else None,
        new_rows=ingested.result.rows_written,
        ingested_rows=ingested.result.rows_written,
        missing_percent=ingested.missing_overall,
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


def assess_new_data(config: Config, connection: HistoryStore, run_id: int, steps: RunSteps, check: SourceCheck) -> None:
    """Ingest the new files, decide on the rows that arrived (drift, challengers, gate), deploy a winner."""
    from riskwatch.data.batches import read_ingested_data

    with steps.clock.stage("champion load"):
        champion = load_deployed_version(current_version_folder(config.prod_deployment_path))
    steps.ingestion = ingested = ingest_sources(config, steps.clock, check, champion)
    with steps.clock.stage("new rows"):
        data = read_ingested_data(config.output_folder_path)
    result = ingested.result
    batch_before = result.batch - 1 if result.batch else data.latest_batch
    watermark = find_watermark(connection, champion, batch_before)
    if rejected_count(steps) == len(check.new.files) and not data.in_batches(watermark + 1).any():
        steps.outcome = RunFields(
            outcome=NO_NEW_DATA,
            ingested_rows=result.rows_written,
            decision=f"no new data: the new file(s) were left out ({'; '.join(result.rejected.values())}); "
            f"{champion.version} serves",
        )
        return
    assessment = decide_on_new_rows(
        config, connection, run_id, steps.clock, champion, data, watermark, unlabelled_new(steps)
    )
    steps.feature_drift = tuple(assessment.findings.feature_drift)
    measured = RunFields(
        ingested_rows=result.rows_written,
        missing_percent=ingested.missing_overall,
        deployed_f1=champion.metrics.f1,
        model_family=champion.model_info.family or MODEL_FAMILIES[0],  # written before families: linear
    )
    deployed = deploy_winner(config, steps.clock, assessment)
    window = assessment.action.window
    if window is not None:
        serving = deployed.model_version_after or champion.version
        write_evaluation_window(config.output_model_path / EVALUATION_WINDOW_FILE, window.to_record(serving))
    steps.outcome = measured.updated(assessment.history_fields()).updated(deployed)


def decide_on_new_rows(
    config: Config,
    connection: HistoryStore,
    run_id: int,
    clock: StageClock,
    champion: DeployedVersion,
    data: IngestedData,
    watermark: int,
    unlabelled: list[IngestedFile],
) -> Assessment:
    """The monitoring decision on the rows past ``watermark``; on the unlabelled files' rows when only they are new."""
    from riskwatch.monitoring.decision import assess, assess_unlabelled
    from riskwatch.monitoring.verdicts import RunInputs

    inputs = RunInputs(config, connection, champion, data, watermark, run_id)
    if unlabelled and not data.in_batches(watermark + 1).any():
        with clock.stage("unlabelled rows"):
            features = read_unlabelled_features(config.output_folder_path, unlabelled)
        return assess_unlabelled(inputs, clock, features)
    return assess(inputs, clock)


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


def after_deployment(config: Config, steps: RunSteps) -> None:
    """Diagnostics, the report and the API calls for the model just deployed."""
    from riskwatch.report.reporting import write_report
    from riskwatch.stages.diagnostics import write_diagnostics

    with steps.clock.stage("diagnostics"):
        write_diagnostics(config, config.diagnostics.timing_runs)
    with steps.clock.stage("reporting"):
        report = write_report(config, plot_name=PLOT_AFTER_DEPLOYMENT)
        steps.report = ReportMade(str(report["plot"]), str(report["pdf"]))
    with steps.clock.stage("apicalls"):
        steps.apicalls = call_api(config)


def call_api(config: Config) -> str:
    """Call the API's endpoints and write their answers; return the file, or why the calls were skipped."""
    import requests

    from riskwatch.stages.apicalls import write_api_returns

    url = config.api.url.rstrip("/")
    try:
        requests.get(f"{url}/health", timeout=3)
    except requests.RequestException as exc:
        log.warning(
            "the API at %s is not running (%s); API calls skipped; the deployment stands", url, type(exc).__name__
        )
        return f"skipped: the API at {url} is not running"
    return str(write_api_returns(config, url, API_RETURNS_AFTER_DEPLOYMENT))


# ---------------------------------------------------------------- the run


def reports_outdated(config: Config, version: str | None) -> bool:
    """True when a version serves but the diagnostics or the report describe another (a run died before them)."""
    if version is None:
        return False
    folder = config.output_model_path
    made = (read_model_version(folder / DIAGNOSTICS_FILE), read_model_version(folder / REPORT_RECORD_FILE))
    return any(made_version != version for made_version in made)


def describe_no_new_data(check: SourceCheck, outdated_for: str | None) -> str:
    """The decision of a run with nothing new (``outdated_for``: the version whose diagnostics and report it made)."""
    new = check.new
    warned = check.warnings
    warnings = f"; {len(warned)} source warning(s): {'; '.join(warned)}" if warned else ""
    if outdated_for is not None:
        return f"no new data; made the diagnostics, report and API calls for {outdated_for}{warnings}"
    arriving = f"; still changing, read on a later run: {', '.join(new.arriving)}" if new.arriving else ""
    return f"no new data{arriving}{warnings}"


def run_once(config: Config, connection: HistoryStore, steps: RunSteps, writer: RunWriter) -> None:
    """Decide what this run does and do it, keeping each step's value in ``steps``."""
    version = steps.version_before
    steps.check = check = check_for_new_data(config, connection, version, steps.clock)
    new = check.new
    if new.nothing_to_decide:
        outdated = reports_outdated(config, version)
        steps.outcome = RunFields(
            outcome=NO_NEW_DATA, decision=describe_no_new_data(check, version if outdated else None)
        )
        if not outdated:
            waiting = new.waiting_files
            note = f"; {len(waiting)} file(s) wait for more rows to test for drift" if waiting else ""
            note += f"; still changing, read on a later run: {', '.join(new.arriving)}" if new.arriving else ""
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
        writer.save(record_of(steps))
        after_deployment(config, steps)
        return
    log.info(
        "%d new or edited file(s) in %s: %s%s",
        len(new.files),
        describe_sources(config.input_folder_path, config.database),
        ", ".join(f"{item.name} ({item.status})" for item in new.files),
        describe_stray(new.stray),
    )
    if version is None:
        deploy_first_model(config, steps, check)
    else:
        assess_new_data(config, connection, writer.run_id, steps, check)
    outcome = steps.outcome or RunFields()
    if outcome.outcome in (DEPLOYED, FIRST_DEPLOYMENT):
        writer.save(record_of(steps))  # the report made next shows this run in its trends
        writer.keep_timings(config.output_model_path, steps.clock.timings)  # and the diagnostics its stages' timings
        after_deployment(config, steps)
    log.info("decision: %s", outcome.decision)


def alert_kind(fields: RunFields) -> str | None:
    """What a run's end is worth telling people: a deployment, a failure, or drift no challenger could fix."""
    outcome = fields.outcome
    if outcome in (DEPLOYED, FIRST_DEPLOYMENT):
        return "deployed"
    if outcome == FAILED:
        return "failed"
    if outcome == KEPT and fields.drift_trigger:
        return "unresolved_drift"
    if outcome == QUARANTINED:
        return "integrity"
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
    config: Config, steps: RunSteps, writer: RunWriter, clock: float, failure: BaseException | None
) -> RunRecord:
    """Record how the run ended (and its stages' timings), then alert; return the record.

    A run that cannot be recorded fails (StageFailed("history")).
    """
    steps.end = RunEnd(utc_now(), round(time.perf_counter() - clock, 3), current_version(config.prod_deployment_path))
    record = record_of(steps)
    if record.fields.outcome != NO_NEW_DATA:
        writer.keep_timings(config.output_model_path, steps.clock.timings)
    unrecorded: StageFailed | None = None
    alerted = record.fields
    try:
        writer.save(record)
    except PipelineError as exc:
        unrecorded = StageFailed("history", str(exc))
        if failure is None:  # the alert says the run failed, as its exit code will
            alerted = alerted.updated(describe_failure(unrecorded, alerted, alerted.model_version_after))
    send_alert(config, alerted, writer.run_id, None if unrecorded else writer.connection)
    if unrecorded is not None:
        if failure is None:
            raise unrecorded from None
        log.error("the run could not be recorded: %s", unrecorded.message)
    return record


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
        steps = RunSteps(RunFields(started_at=started, model_version_before=version, model_version_after=version))
        writer = RunWriter(connection, run_id)
        failure: BaseException | None = None
        try:
            run_once(config, connection, steps, writer)
        except (StageFailed, KeyboardInterrupt) as exc:  # KeyboardInterrupt: Ctrl-C, or SIGTERM (see main)
            failure = exc
            so_far = record_of(steps).fields
            steps.failure = describe_failure(exc, so_far, current_version(config.prod_deployment_path))
            raise
        finally:
            record = finish_run(config, steps, writer, clock, failure)
    return record.fields


def accept_run(config: Config, run_id: int) -> str:
    """Record that an operator accepted the batch run ``run_id`` raised a data integrity alarm on; say what that
    changes. Raises PipelineError in one sentence when there is nothing to accept."""
    with contextlib.closing(open_history(config.history_path)) as connection:
        first, last = accept_quarantined(connection, run_id, utc_now())
    if first is None:
        return f"accepted the rows of run {run_id}: they have no outcomes, so they are ranked and never trained on"
    batches = f"batch {first}" if first == last else f"batches {first}-{last}"
    return f"accepted {batches} of run {run_id}: later runs may train on their rows"


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
    action.add_argument(
        "--accept-run",
        type=int,
        metavar="RUN",
        help="accept the batch run RUN raised a data integrity alarm on (later runs may train on it) and exit",
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
        if args.accept_run is not None:
            log.info("%s", accept_run(config, args.accept_run))
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
