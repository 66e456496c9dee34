"""The run's first step, cheap: which source files and database rows neither the serving model nor an earlier
decision has seen.

Standard library only (with the project's light modules): a run that finds nothing new must not pay for
numpy, pyarrow, pandas or scikit-learn.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from riskwatch.core.databases import (
    DatabaseSource,
    describe_source_state,
    fetched_from,
    inspect_source,
    last_watermark,
    read_recorded_state,
    watermark_fits,
)
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import changed_within, file_signature, list_data_files, list_names, sha256_file
from riskwatch.state.artifacts import INGESTED_FILES, INGESTION_REPORT, read_ingestion_record, read_ingestion_report

log = logging.getLogger("fullprocess")


@dataclass(frozen=True)
class SourceFile:
    """A file in the source folder (or a fetch from the database) that the deployed model has not seen."""

    name: str
    path: Path | None  # None: rows of the database
    sha256: str | None  # None: rows past the watermark, not fetched yet
    status: str  # "new", or "edited" when a file of that name was trained on with other content


@dataclass(frozen=True)
class NewData:
    """What the sources hold that no run decided on yet."""

    files: tuple[SourceFile, ...]
    stray: tuple[str, ...] = ()  # files in the source folder that are not data
    known: int = 0  # data files seen before
    waiting: frozenset[str] = frozenset()  # hashes of files whose rows wait for more to be tested
    arriving: tuple[str, ...] = ()  # files still changing: read on a later run
    fetched_before: frozenset[str] = frozenset()  # hashes of the database fetches ingested before this run

    @property
    def waiting_files(self) -> tuple[SourceFile, ...]:
        return tuple(item for item in self.files if item.sha256 in self.waiting)

    @property
    def nothing_to_decide(self) -> bool:
        """No file is new but for those whose rows wait for more to be tested: the run has nothing to do."""
        return len(self.waiting_files) == len(self.files)


@dataclass(frozen=True)
class SourceCheck:
    """The first step's value: the new data, and what the sources are worth a person's attention for."""

    new: NewData
    warnings: tuple[str, ...] = ()


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
    return NewData(tuple(files), tuple(path.name for path in ignored), known)


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


def let_files_settle(new: NewData, settle_seconds: float) -> NewData:
    """Wait (at most ``settle_seconds``) for new files modified just now to stop changing; set aside any that did not.

    A file being copied in grows while it is copied: read then, its first rows would count as
    arrived in this batch and the rest in the next. The ones still changing are returned among
    ``arriving``, not ``files``, and are read on a later run, whole.
    """
    recent = {}
    for item in new.files:
        if item.path is None:  # rows of the database: fetched whole, up to the watermark of the moment
            continue
        signature = file_signature(item.path)
        if changed_within(signature, settle_seconds):
            recent[item.name] = signature
    if not recent:
        return new
    newest = max(signature[1] for signature in recent.values())
    wait = min(settle_seconds, max(0.0, settle_seconds - (time.time_ns() - newest) / 1e9))
    log.info("waiting %.1f s for %s to stop changing", wait, ", ".join(sorted(recent)))
    time.sleep(wait)
    changing = {item.name for item in new.files if item.name in recent and not unchanged_since(item, recent)}
    if not changing:
        return new
    arriving = tuple(item.name for item in new.files if item.name in changing)
    log.info("still changing, read on a later run: %s", ", ".join(arriving))
    kept = tuple(item for item in new.files if item.name not in changing)
    return replace(new, files=kept, arriving=new.arriving + arriving)


def unchanged_since(item: SourceFile, signatures: dict[str, list[int]]) -> bool:
    """Whether the file still has the signature (size, modification time) it had before the wait."""
    if item.path is None:
        return True
    try:
        return file_signature(item.path) == signatures[item.name]
    except OSError:
        return False


def describe_stray(stray: tuple[str, ...]) -> str:
    if not stray:
        return ""
    shown = list_names(stray)
    return f"; ignored {len(stray)} file(s) that are not data ({shown})"
