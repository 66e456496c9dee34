"""The monitoring run's record is made in one place from its steps' values, also for a run stopped part-way."""

from __future__ import annotations

import contextlib
from pathlib import Path

from riskwatch.cycle.newdata import NewData, SourceCheck, SourceFile
from riskwatch.cycle.runrecord import (
    IngestionStep,
    ReportMade,
    RunEnd,
    RunSteps,
    RunWriter,
    record_of,
    rejected_count,
    unlabelled_new,
)
from riskwatch.stages.ingestion_sources import IngestionResult
from riskwatch.state.artifacts import IngestedFetch, IngestedFile
from riskwatch.state.history import open_history, read_runs, start_run
from riskwatch.state.runs import FeatureDrift, RunFields

STARTED = RunFields(started_at="2026-12-07T10:00:00+00:00", model_version_before="v0003", model_version_after="v0003")
MISSING = {"overall": 1.5, "columns": {"lastmonth_activity": 3.0}, "rows": 40}


def entry(name: str, sha256: str, labelled: bool = True) -> IngestedFile:
    return IngestedFile(name, sha256, 10, 0, "2026-12-07T10:00:01+00:00", labelled=labelled)


def checked(*files: SourceFile, stray: tuple[str, ...] = (), warnings: tuple[str, ...] = ()) -> SourceCheck:
    new = NewData(files, stray=stray, arriving=("copying.csv",), fetched_before=frozenset({"f0"}))
    return SourceCheck(new, warnings)


def source(name: str, sha256: str | None, status: str = "new") -> SourceFile:
    return SourceFile(name, Path(name) if sha256 else None, sha256, status)


def ingested_steps() -> RunSteps:
    """A run whose check found four files and a database's new rows, and whose ingestion read them."""
    check = checked(
        source("good.csv", "a1"),
        source("edited.csv", "b2", "edited"),
        source("broken.csv", "c3"),
        source("pending.csv", "d4"),
        source("clients: rows past id 9", None),
        stray=("notes.txt",),
        warnings=("the table went back",),
    )
    fetch = IngestedFetch("clients ids 10-20", "e5", 11, 0, "2026-12-07T10:00:02+00:00", source="db", watermark_to=20)
    old_fetch = IngestedFetch("clients ids 1-9", "f0", 9, 0, "2026-12-07T09:00:00+00:00", source="db")
    result = IngestionResult(
        files=[entry("good.csv", "a1"), entry("edited.csv", "b2"), entry("pending.csv", "d4", False), old_fetch, fetch],
        final_data=Path("finaldata.csv"),
        rejected={"broken.csv": "broken.csv has no exited values that are 0 or 1"},
        warnings=["the table went back", "2 rows with a NULL id were skipped"],
    )
    steps = RunSteps(STARTED, check=check)
    steps.ingestion = IngestionStep(result, MISSING)
    return steps


def test_the_files_are_recorded_as_ingestion_read_them():
    record = record_of(ingested_steps())
    assert [(row.name, row.status, row.sha256) for row in record.files] == [
        ("good.csv", "new", "a1"),
        ("edited.csv", "edited", "b2"),
        ("broken.csv", "rejected", "c3"),
        ("pending.csv", "unlabelled", "d4"),
        ("copying.csv", "arriving", None),
        ("notes.txt", "stray", None),
        ("clients ids 10-20", "new", "e5"),  # the fetch made, in place of "rows past id 9"; not the one before
    ]
    assert record.files[2].note == "broken.csv has no exited values that are 0 or 1"
    assert record.fields.new_files == 5


def test_the_steps_values_say_what_was_left_out_and_what_has_no_outcomes():
    steps = ingested_steps()
    assert rejected_count(steps) == 1
    assert [item.name for item in unlabelled_new(steps)] == ["pending.csv"]


def test_the_details_hold_each_source_warning_once_and_the_missing_cells():
    details = record_of(ingested_steps()).fields.details
    assert details == {
        "source_warnings": ["the table went back", "2 rows with a NULL id were skipped"],
        "missing_data": MISSING,
    }


def test_a_run_stopped_after_ingestion_keeps_what_its_finished_steps_found():
    steps = ingested_steps()
    with steps.clock.stage("training"):
        pass
    steps.failure = RunFields(outcome="failed", failed_stage="training", error="no rows", decision="stopped: ...")
    steps.end = RunEnd("2026-12-07T10:01:00+00:00", 60.0, "v0003")
    record = record_of(steps)
    assert record.fields.outcome == "failed" and record.fields.failed_stage == "training"
    assert record.fields.model_version_before == "v0003" and record.fields.seconds == 60.0
    assert "training" in (record.fields.timings or {})
    assert len(record.files) == 7 and record.fields.details and "missing_data" in record.fields.details


def test_a_deployment_then_a_failure_keeps_the_deployment_and_adds_the_failure():
    steps = ingested_steps()
    steps.outcome = RunFields(outcome="deployed", model_version_after="v0004", decision="deployed v0004")
    steps.report = ReportMade("confusionmatrix2.png", "summary_report.pdf")
    steps.failure = RunFields(failed_stage="apicalls", error="401", decision="deployed v0004; then apicalls failed")
    steps.end = RunEnd("2026-12-07T10:01:00+00:00", 61.0, "v0004")
    fields = record_of(steps).fields
    assert (fields.outcome, fields.model_version_after, fields.failed_stage) == ("deployed", "v0004", "apicalls")
    assert fields.details and fields.details["report"] == {"plot": "confusionmatrix2.png", "pdf": "summary_report.pdf"}


def test_the_version_serving_at_the_end_is_recorded_even_when_nothing_serves():
    steps = RunSteps(RunFields(started_at="2026-12-07T10:00:00+00:00", model_version_after="v0001"))
    steps.end = RunEnd("2026-12-07T10:00:05+00:00", 5.0, None)
    assert record_of(steps).fields.model_version_after is None


def test_a_run_with_nothing_to_decide_lists_no_stray_files_and_no_details():
    check = checked(stray=("notes.txt",))
    record = record_of(RunSteps(STARTED, check=check, outcome=RunFields(outcome="no_new_data", decision="no new data")))
    assert [(row.name, row.status) for row in record.files] == [("copying.csv", "arriving")]
    assert record.fields.details is None and record.fields.new_files == 0


def test_the_writer_adds_the_files_and_drift_tests_once_and_updates_the_fields(tmp_path: Path):
    steps = ingested_steps()
    steps.feature_drift = (FeatureDrift("lastmonth_activity", "ks", 0.2, 0.001, 0.01, True),)
    with contextlib.closing(open_history(tmp_path / "history.sqlite")) as connection:
        writer = RunWriter(connection, start_run(connection, STARTED.started_at or "", 1, "v0003"))
        writer.save(record_of(steps))
        steps.outcome = RunFields(outcome="kept", decision="kept v0003")
        steps.end = RunEnd("2026-12-07T10:01:00+00:00", 60.0, "v0003")
        writer.save(record_of(steps))
    (run,) = read_runs(tmp_path / "history.sqlite")
    assert run.outcome == "kept" and run.decision == "kept v0003"
    assert len(run.files) == 7 and len(run.feature_drift) == 1
