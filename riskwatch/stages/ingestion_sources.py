"""Ingestion's bookkeeping of the sources: which files are new, edited, restored, removed or still arriving,
against the ingestion history and the folder the project was in."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from riskwatch.core.databases import (
    DatabaseSource,
    RecordedState,
    read_recorded_state,
)
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import (
    changed_within,
    file_signature,
    list_source_files,
    sha256_file,
    shown_name,
)
from riskwatch.core.schema import BadFileError
from riskwatch.data.finaldata import (
    PARSED_FOLDER,
    ROW_INDEX_FILE,
    parsed_path,
    pending_path,
)
from riskwatch.state.artifacts import (
    FINAL_DATA,
    INGESTED_FILES,
    IngestedFile,
    read_ingestion_record,
)

if TYPE_CHECKING:
    pass

from riskwatch.stages.ingestion_reading import StillArriving, read_new_file, usable_cache

log = logging.getLogger("ingestion")


@dataclass
class IngestionResult:
    """What one ingestion run did."""

    files: list[IngestedFile]
    final_data: Path  # finaldata.csv, written or kept as it was
    rejected: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    kept_from_history: list[str] = field(default_factory=list)
    arriving: list[str] = field(default_factory=list)  # files still being written: read on a later run
    rows_merged: int = 0
    duplicates_removed: int = 0
    rows_written: int = 0
    appended: bool = False  # True when the new rows were appended to the earlier output
    unchanged: bool = False  # True when finaldata.csv was left as it was (no labelled file changed)
    batch: int = 0  # the batch the rows new in this run arrived in (0: no new rows)
    seconds: float = 0.0
    unlabelled_clients: int = 0  # clients whose latest unlabelled row is kept in unlabelledclients.csv
    # what a person should know about the sources (a table that went back, late or bad rows): logged as warnings
    warnings: list[str] = field(default_factory=list)
    source_state: RecordedState | None = None  # the database source's, kept once the record is written

    @property
    def labelled(self) -> list[IngestedFile]:
        """The files with outcomes: the ones ``finaldata.csv`` is made of."""
        return [entry for entry in self.files if entry.labelled]

    @property
    def unlabelled(self) -> list[IngestedFile]:
        return [entry for entry in self.files if not entry.labelled]


def collect_files(
    input_folder_path: Path,
    output_folder_path: Path,
    history: dict[str, IngestedFile],
    settle_seconds: float = 0.0,
    block_bytes: int | None = None,
) -> IngestionResult:
    """Decide, file by file, which rows make up the ingested data (new, unchanged or kept).

    One bad file is one bad file: whatever is wrong with it (its name, its encoding, its values,
    its permissions, a link out of the folder) it is named and left out, and the others go on.
    A file is read only once it has stopped changing: new content modified in the last
    ``settle_seconds``, or changed while read, waits for a later run (its earlier rows, if any, kept).
    """
    if not input_folder_path.is_dir():
        raise PipelineError(f"input folder {input_folder_path} does not exist")
    data_files, ignored, refused = list_source_files(input_folder_path)
    for path in ignored:
        log.info("%s: not a data file (only .csv, .json, .jsonl are read); ignored", shown_name(path.name))
    collection = FileCollection(
        output_folder_path,
        history,
        IngestionResult(
            files=[], final_data=output_folder_path / FINAL_DATA, ignored=[shown_name(p.name) for p in ignored]
        ),
        block_bytes,
    )
    for name, reason in refused.items():
        collection.leave_out(name, f"{name}: not read: {reason}")
    for path in data_files:
        collection.take(path, settle_seconds)
    collection.keep_files_gone_from(input_folder_path)
    collection.result.files.sort(key=arrival_order(list(history.values())))
    return collection.result


class FileCollection:
    """The files of one ingestion as they are decided on: taken, left out (keeping earlier rows), or kept."""

    def __init__(
        self,
        output_folder_path: Path,
        history: dict[str, IngestedFile],
        result: IngestionResult,
        block_bytes: int | None = None,
    ):
        self.output_folder_path, self.history, self.result = output_folder_path, history, result
        self.block_bytes = block_bytes
        self.cached = {
            entry.sha256: entry
            for entry in history.values()
            if usable_cache(output_folder_path, entry.sha256, entry.rows_pending > 0)
        }
        self.seen_hashes: set[str] = set()

    def take(self, path: Path, settle_seconds: float) -> None:
        """Decide on one data file: unchanged (its cached rows), still arriving, new, or bad."""
        try:
            signature = file_signature(path)
            digest = sha256_file(path)
        except OSError as exc:
            self.leave_out(path.name, f"{path.name}: cannot be read ({exc.strerror})")
            return
        if digest in self.cached:
            self.seen_hashes.add(digest)
            previous = self.cached[digest]
            self.result.files.append(replace(previous, name=path.name))
            log.debug("%s: unchanged since %s", path.name, previous.ingested_at)
            return
        if changed_within(signature, settle_seconds):
            message = f"{shown_name(path.name)}: changed in the last {settle_seconds:g} s; read once it stops changing"
            self.leave_out(path.name, message, arriving=True)
            return
        try:
            self.result.files.append(read_new_file(path, digest, self.output_folder_path, signature, self.block_bytes))
            self.seen_hashes.add(digest)
        except StillArriving as exc:
            self.leave_out(path.name, f"{exc}; read once it stops changing", arriving=True)
        except BadFileError as exc:
            self.seen_hashes.add(digest)
            self.leave_out(path.name, str(exc))

    def leave_out(self, name: str, message: str, arriving: bool = False) -> None:
        """Leave a file out, keeping the rows ingested from it before (by its name) if there are any."""
        if arriving:
            self.result.arriving.append(name)
        else:
            self.result.rejected[name] = message
        earlier = self.history.get(name)
        if earlier is None:
            log.warning("left out %s", message)
            return
        if earlier.sha256 not in self.cached:
            raise PipelineError(
                f"{message}; its rows ingested on {earlier.ingested_at} are missing from "
                f"{self.output_folder_path / PARSED_FOLDER}; fix the file, "
                "or run with --fresh to ingest only the good files"
            )
        log.warning(
            "left out %s; keeping the %d rows ingested from it on %s", message, earlier.rows_kept, earlier.ingested_at
        )
        self.result.files.append(earlier)
        self.result.kept_from_history.append(name)
        self.seen_hashes.add(earlier.sha256)

    def keep_files_gone_from(self, input_folder_path: Path) -> None:
        """Keep the rows of files ingested before that are no longer in the folder (nothing is lost that way)."""
        result = self.result
        present = {entry.name for entry in result.files} | set(result.rejected) | set(result.arriving)
        for name, entry in sorted(self.history.items()):
            if name in present or entry.sha256 in self.seen_hashes:
                continue
            if entry.sha256 not in self.cached:
                raise PipelineError(
                    f"{name} was ingested before but is no longer in {input_folder_path} and its parsed rows are "
                    f"missing from {self.output_folder_path / PARSED_FOLDER}; "
                    "run with --fresh to ingest only the files present now"
                )
            log.warning(
                "%s is no longer in %s; keeping the %d rows ingested from it", name, input_folder_path, entry.rows_kept
            )
            result.files.append(entry)
            result.kept_from_history.append(name)


def arrival_order(earlier: list[IngestedFile]) -> Callable[[IngestedFile], tuple[int, int, str]]:
    """A sort key: files ingested before in their order (a renamed file found by content), then new ones by name."""
    position = {entry.sha256: index for index, entry in enumerate(earlier)}
    position.update({entry.name: index for index, entry in enumerate(earlier)})

    def key(entry: IngestedFile) -> tuple[int, int, str]:
        known = position.get(entry.name, position.get(entry.sha256))
        return (1, 0, entry.name) if known is None else (0, known, entry.name)

    return key


def unique_digests(files: list[IngestedFile]) -> list[str]:
    """The content hashes of ``files`` in order, each once: files with the same content count once."""
    return list(dict.fromkeys(entry.sha256 for entry in files))


def prune_parsed(output_folder_path: Path, files: list[IngestedFile], keep: frozenset[str] = frozenset()) -> None:
    """Delete cached parses no entry refers to any more, except those of the ``keep`` hashes, and row indexes of
    an earlier layout."""
    folder = output_folder_path / PARSED_FOLDER
    digests = {entry.sha256 for entry in files} | keep
    wanted = {path(output_folder_path, digest).name for digest in digests for path in (parsed_path, pending_path)}
    for stale in folder.glob("*.arrow") if folder.is_dir() else ():
        if stale.name not in wanted:
            stale.unlink(missing_ok=True)
    for stale in folder.glob("rowindex-*.npz") if folder.is_dir() else ():
        if stale.name != ROW_INDEX_FILE:
            stale.unlink(missing_ok=True)


def read_history(input_folder_path: Path | None, output_folder_path: Path) -> dict[str, IngestedFile]:
    """The files ingested before into ``output_folder_path``, by name; none when they came from another input folder.

    The course's workflow runs the practice config, then points ``input_folder_path`` at the
    source data with the same output folder, and expects the output to hold the source data
    only; files that leave the *same* input folder keep their rows.
    """
    record = read_ingestion_record(output_folder_path / INGESTED_FILES)
    if record.files and not same_folder(record.input_folder_path, input_folder_path, output_folder_path):
        log.info(
            "the input folder is now %s (was %s); starting from its files, without the %d file(s) ingested from there",
            input_folder_path,
            os.path.normpath(output_folder_path / record.input_folder_path) if record.input_folder_path else None,
            len(record.files),
        )
        return {}
    return {entry.name: entry for entry in record.files}


def stored_folder(input_folder_path: Path | None, output_folder_path: Path) -> str | None:
    """The input folder as the ingestion record keeps it: relative to the output folder, so a moved project
    (both folders moved together) keeps its history."""
    if input_folder_path is None:
        return None
    return os.path.relpath(input_folder_path, output_folder_path)


def same_folder(stored: str | None, input_folder_path: Path | None, output_folder_path: Path) -> bool:
    """Whether the record's input folder is ``input_folder_path``: a relative one resolved against the output folder;
    an absolute one (written before) equal, or gone with a folder of the same name in its place (a moved project)."""
    if stored is None:
        return True
    if input_folder_path is None:
        return False
    path = Path(stored)
    if not path.is_absolute():
        return Path(os.path.normpath(output_folder_path / path)) == Path(os.path.normpath(input_folder_path))
    return path == input_folder_path or (not path.exists() and path.name == input_folder_path.name)


def collect_sources(
    input_folder_path: Path | None,
    output_folder_path: Path,
    history: dict[str, IngestedFile],
    settle_seconds: float,
    database: DatabaseSource | None,
    block_bytes: int | None = None,
) -> IngestionResult:
    """``collect_files`` for the folder (when there is one), then the database's fetches, in arrival order."""
    files = {name: entry for name, entry in history.items() if not entry.source}
    result = IngestionResult(files=[], final_data=output_folder_path / FINAL_DATA)
    if input_folder_path is not None:
        result = collect_files(input_folder_path, output_folder_path, files, settle_seconds, block_bytes)
    if database is not None:
        from riskwatch.data.database_rows import read_database_source

        read = read_database_source(
            database,
            list(history.values()),
            lambda digest: parsed_path(output_folder_path, digest),
            lambda digest: usable_cache(output_folder_path, digest),
            read_recorded_state(output_folder_path, database) if history else None,
        )
        result.files = sorted([*result.files, *read.entries], key=arrival_order(list(history.values())))
        result.warnings += read.warnings
        result.source_state = read.state
    return result
