"""A run's record, made in one place from the values its steps returned.

Each step of a run returns a frozen value (the source check, ingestion, the decision's fields, what was made
after a deployment, how the run ended); ``RunSteps`` keeps them as they finish, each once, so that a run
stopped part-way still has the values of the steps it finished. ``record_of`` makes the history's record
from them: its fields, its files (with what ingestion did to each) and its details. ``RunWriter`` writes it.

Standard library only: the cron job's no-op run records itself too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from riskwatch.core.timings import record_stage_timings
from riskwatch.cycle.newdata import NewData, SourceCheck
from riskwatch.state.history import HistoryStore, save_run
from riskwatch.state.runs import FeatureDrift, JsonObject, RunFields, RunFile
from riskwatch.state.stages import StageClock

if TYPE_CHECKING:
    from riskwatch.stages.ingestion_sources import IngestionResult
    from riskwatch.state.artifacts import IngestedFile

UNDECIDED = ("new", "edited")  # the statuses of a file no step has said more about
UNLABELLED_NOTE = "no exited column: ranked as current clients, never trained on"


@dataclass(frozen=True)
class IngestionStep:
    """Ingestion's value: what it read, left out and fetched, and the new files' missing cells."""

    result: IngestionResult
    missing: JsonObject  # {"overall": percent, "columns": {name: percent}, "rows": n}

    @property
    def missing_overall(self) -> float:
        return float(self.missing["overall"])


@dataclass(frozen=True)
class ReportMade:
    """What the reporting stage wrote after a deployment."""

    plot: str
    pdf: str


@dataclass(frozen=True)
class RunEnd:
    """How the run ended: when, after how long, and the version serving then (None: nothing)."""

    finished_at: str
    seconds: float
    model_version_after: str | None


@dataclass
class RunSteps:
    """The values a run's steps returned, each kept once as the step finishes (``None``: not reached)."""

    start: RunFields  # when it started, and the version serving then
    clock: StageClock = field(default_factory=StageClock)
    check: SourceCheck | None = None
    ingestion: IngestionStep | None = None
    feature_drift: tuple[FeatureDrift, ...] = ()
    outcome: RunFields | None = None  # what the run decided, and the numbers behind the decision
    report: ReportMade | None = None
    apicalls: str | None = None  # the file of API answers written, or why the calls were skipped
    failure: RunFields | None = None  # the stage that failed, or the signal that stopped the run
    end: RunEnd | None = None

    @property
    def version_before(self) -> str | None:
        return self.start.model_version_before

    @property
    def new(self) -> NewData:
        """The new data the check found (none before the check)."""
        return self.check.new if self.check is not None else NewData(())


@dataclass(frozen=True)
class RunRecord:
    """What the run history keeps of one run."""

    fields: RunFields
    files: tuple[RunFile, ...]
    feature_drift: tuple[FeatureDrift, ...]


def record_of(steps: RunSteps) -> RunRecord:
    """The run's record, from the values of the steps it finished."""
    fields = steps.start
    if steps.check is not None:
        fields = fields.updated(RunFields(new_files=len(steps.check.new.files)))
    for found in (steps.outcome, steps.failure):
        if found is not None:
            fields = fields.updated(found)
    if steps.end is not None:
        fields = replace(
            fields,
            finished_at=steps.end.finished_at,
            seconds=steps.end.seconds,
            model_version_after=steps.end.model_version_after,
        )
    details = run_details(steps)
    fields = fields.updated(RunFields(timings=dict(steps.clock.timings), details=details or None))
    return RunRecord(fields, run_files(steps), steps.feature_drift)


def run_files(steps: RunSteps) -> tuple[RunFile, ...]:
    """The files the run saw, each with its status: as the check found them, then as ingestion read them."""
    if steps.check is None:
        return ()
    new = steps.check.new
    files = [RunFile(item.name, item.status, item.sha256) for item in new.files]
    files += [RunFile(name, "arriving", note="still changing; read later") for name in new.arriving]
    if not new.nothing_to_decide:
        files += [RunFile(name, "stray", note="not a data file; ignored") for name in new.stray]
    if steps.ingestion is None:
        return tuple(files)
    return tuple(as_ingested(files, steps.ingestion.result, new.fetched_before))


def as_ingested(files: list[RunFile], ingested: IngestionResult, fetched_before: frozenset[str]) -> list[RunFile]:
    """The run's files once ingestion has read them: the database fetches it made in place of "rows past the
    watermark", the files it left out as bad marked rejected, those without outcomes marked unlabelled."""
    files = [row for row in files if row.sha256 is not None or row.status != "new"]
    files += [
        RunFile(entry.name, "new", entry.sha256)
        for entry in ingested.files
        if entry.source and entry.sha256 not in fetched_before
    ]
    rejected = ingested.rejected
    unlabelled = {entry.sha256 for entry in ingested.unlabelled}
    return [mark_file(row, rejected, unlabelled) for row in files]


def mark_file(row: RunFile, rejected: Mapping[str, str], unlabelled: set[str]) -> RunFile:
    if row.status not in UNDECIDED:
        return row
    if row.name in rejected:
        return replace(row, status="rejected", note=rejected[row.name])
    if row.sha256 in unlabelled:
        return replace(row, status="unlabelled", note=UNLABELLED_NOTE)
    return row


def rejected_count(steps: RunSteps) -> int:
    """How many of the run's new files ingestion left out as bad."""
    return sum(row.status == "rejected" for row in run_files(steps))


def unlabelled_new(steps: RunSteps) -> list[IngestedFile]:
    """The ingestion entries of the run's new files that have no outcomes, in the order the run saw them."""
    if steps.ingestion is None:
        return []
    entries = {entry.sha256: entry for entry in steps.ingestion.result.unlabelled}
    return [entries[row.sha256] for row in run_files(steps) if row.status == "unlabelled" and row.sha256 in entries]


def source_warnings(steps: RunSteps) -> list[str]:
    """What the sources were worth a person's attention for, found by the check or by ingestion, each once."""
    found = list(steps.check.warnings) if steps.check is not None else []
    if steps.ingestion is not None:
        found += steps.ingestion.result.warnings
    return list(dict.fromkeys(found))


def run_details(steps: RunSteps) -> JsonObject:
    """The run's free-form details: source warnings, the new files' missing cells, the report and API calls made."""
    details: JsonObject = {}
    warnings = source_warnings(steps)
    if warnings:
        details["source_warnings"] = warnings
    if steps.ingestion is not None:
        details["missing_data"] = steps.ingestion.missing
    if steps.report is not None:
        details["report"] = {"plot": steps.report.plot, "pdf": steps.report.pdf}
    if steps.apicalls is not None:
        details["apicalls"] = steps.apicalls
    return details


@dataclass
class RunWriter:
    """Writes one run's record to the history (its fields each time, its files and drift tests once) and its
    stages' timings to the stage-timing records diagnostics reports (each stage once)."""

    connection: HistoryStore
    run_id: int
    rows_saved: bool = False
    timings_kept: set[str] = field(default_factory=set)

    def save(self, record: RunRecord) -> None:
        if self.rows_saved:
            save_run(self.connection, self.run_id, record.fields)
        else:
            save_run(self.connection, self.run_id, record.fields, record.files, record.feature_drift)
        self.rows_saved = True

    def keep_timings(self, output_model_path: Path, timings: Mapping[str, float]) -> None:
        fresh = {stage: seconds for stage, seconds in timings.items() if stage not in self.timings_kept}
        record_stage_timings(output_model_path, fresh, f"fullprocess.py run {self.run_id}")
        self.timings_kept.update(fresh)
