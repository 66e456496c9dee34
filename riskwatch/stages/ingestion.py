"""Ingestion: merge every data file in the input folder into ``finaldata.csv``.

Each file is checked against the schema; a bad file is named with its fault and left out,
while the good files go on. Rows are merged in arrival order (files ingested before keep
their place; new files follow, by name), exact duplicate rows are removed (the first kept),
and the result is written atomically with ``ingestedfiles.txt`` (one file name a line, as in the
classic project) and ``ingestedfiles.json`` beside it (each file's content hash, row counts and
time, and the input folder).

What was ingested before is kept: a file that has since turned bad or left the input folder
keeps its earlier rows (parsed once, cached by content hash under ``parsed/``), so a run never
overwrites the output with less. ``--fresh`` starts over from the files present now, and so does
a run whose input folder is not the one the output was ingested from.

Files are read a batch at a time (``riskwatch/data/datafiles.py``) and ``finaldata.csv`` is written
from the caches in streamed passes (``riskwatch/data/finaldata.py``), so memory is a batch plus the row
hashes, whatever the size of a file. When the only change is new files, their rows are
appended: the sorted hashes of the rows already written (``parsed/rowindex-v2.npz``) find the
duplicates, so the parsing and the deduplication cost what the new data costs; only copying
``finaldata.csv`` and the index still touches every row, at disk speed. The result is the same
file a full rebuild would write.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather

from riskwatch.core.cli import build_parser, run_stage
from riskwatch.core.config import load_config
from riskwatch.core.databases import (
    DatabaseSource,
    RecordedState,
    describe_sources,
    read_recorded_state,
    write_recorded_state,
)
from riskwatch.core.errors import PipelineError, says_disk_full
from riskwatch.core.files import (
    atomic_path,
    changed_within,
    file_signature,
    folder_lock,
    list_source_files,
    sha256_file,
    shown_name,
)
from riskwatch.core.rowhash import hash_rows
from riskwatch.core.schema import SCHEMA, UNLABELLED_SCHEMA, BadFileError
from riskwatch.data.batches import (
    ARRIVED_AFTER_COLUMN,
    BatchBook,
    latest_rows,
    read_batch_book,
    read_final_data,
    write_batch_book,
)
from riskwatch.data.datafiles import stream_data_file
from riskwatch.data.finaldata import (
    PARSED_FOLDER,
    ROW_INDEX_FILE,
    MergeResult,
    RowIndex,
    append,
    cached_batches,
    load_row_index,
    parsed_path,
    pending_path,
    rebuild,
    save_row_index,
    write_csv_table,
)
from riskwatch.state.artifacts import (
    FINAL_DATA,
    INGESTED_FILES,
    UNLABELLED_CLIENTS,
    IngestedFile,
    IngestionRecord,
    IngestionReport,
    read_ingestion_record,
    utc_now,
    write_ingestion_record,
    write_ingestion_report,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("ingestion")

# New rows beyond this many are merged by a streamed rebuild rather than appended in memory.
MAX_APPEND_ROWS = 1_000_000


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


@dataclass
class FileCounts:
    """What reading one file found, batch by batch."""

    read: int = 0
    labelled: int = 0
    pending: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def add(self, read: int, labelled: int, pending: int, dropped: dict[str, int]) -> None:
        self.read, self.labelled, self.pending = self.read + read, self.labelled + labelled, self.pending + pending
        for reason, count in dropped.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + count


def write_parsed_batches(
    path: Path, labelled_target: Path, pending_target: Path, block_bytes: int | None
) -> FileCounts:
    """Stream a data file's checked rows into its two caches (with and without an outcome); return the counts."""
    counts = FileCounts()
    with atomic_path(labelled_target) as labelled_tmp, atomic_path(pending_target) as pending_tmp:
        with (
            pa.ipc.new_file(str(labelled_tmp), SCHEMA) as labelled_sink,
            pa.ipc.new_file(str(pending_tmp), UNLABELLED_SCHEMA) as pending_sink,
        ):
            for batch in stream_data_file(path, block_bytes):
                if batch.labelled.num_rows:
                    labelled_sink.write_table(batch.labelled)
                if batch.pending.num_rows:
                    pending_sink.write_table(batch.pending)
                counts.add(batch.rows_read, batch.labelled.num_rows, batch.pending.num_rows, batch.dropped)
        check_rows_found(path.name, counts)
    return counts


def check_rows_found(name: str, counts: FileCounts) -> None:
    """BadFileError for a file with no data rows or no valid one."""
    if counts.read == 0:
        raise BadFileError(f"{name}: the file has a header but no data rows")
    if counts.labelled + counts.pending == 0:
        reasons = ", ".join(f"{count} {reason}" for reason, count in counts.dropped.items())
        raise BadFileError(f"{name}: none of its {counts.read} rows is valid ({reasons})")


def parse_new_file(path: Path, sha256: str, output_folder_path: Path, block_bytes: int | None = None) -> IngestedFile:
    """Read and check one data file a batch at a time, cache its valid rows by content hash, and describe it.

    Rows whose outcome is blank are cached apart; a file all of whose rows are such is an unlabelled file.
    """
    labelled_target, pending_target = parsed_path(output_folder_path, sha256), pending_path(output_folder_path, sha256)
    try:
        counts = write_parsed_batches(path, labelled_target, pending_target, block_bytes)
        if counts.labelled == 0:
            os.replace(pending_target, labelled_target)  # no outcome anywhere: an unlabelled file
        elif counts.pending == 0:
            pending_target.unlink()
    except (OSError, pa.ArrowException) as exc:  # the output side: the file itself is fine
        why = "the disk is full; free some space and run again" if says_disk_full(exc) else str(exc)
        raise PipelineError(
            f"cannot keep the parsed rows of {path.name} in {output_folder_path / PARSED_FOLDER} ({why})"
        ) from None
    labelled = counts.labelled > 0
    detail = ", ".join(f"{count} {reason}" for reason, count in counts.dropped.items())
    pending = f" ({counts.pending} with the outcome not known yet)" if labelled and counts.pending else ""
    log.info(
        "%s: %d %srows kept%s, %d dropped%s",
        path.name,
        counts.labelled if labelled else counts.pending,
        "" if labelled else "unlabelled ",
        pending,
        sum(counts.dropped.values()),
        f" ({detail})" if detail else "",
    )
    return IngestedFile(
        path.name,
        sha256,
        counts.labelled if labelled else counts.pending,
        sum(counts.dropped.values()),
        utc_now(),
        labelled,
        counts.pending if labelled else 0,
    )


def usable_cache(output_folder_path: Path, sha256: str, pending: bool = False) -> bool:
    """Whether the cached rows of a file can be read; a damaged cache is named, set aside, and rebuilt from its file.

    ``pending``: the file has rows with a blank outcome, whose cache must be readable too.
    """
    if pending and not usable_cache_file(pending_path(output_folder_path, sha256)):
        return False
    return usable_cache_file(parsed_path(output_folder_path, sha256))


def usable_cache_file(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        table = feather.read_table(path, memory_map=True)
        if not (table.schema.equals(SCHEMA) or table.schema.equals(UNLABELLED_SCHEMA)):
            raise ValueError("its columns are not the schema's")
    except Exception as exc:  # only a cache: any fault in it means read the source again
        aside = path.with_name(path.name + ".damaged")
        path.replace(aside)
        log.warning(
            "the cached rows %s cannot be read (%s); set aside as %s, the file is read again", path, exc, aside.name
        )
        return False
    return True


class StillArriving(Exception):
    """A file that changed while it was read, or too recently: it is read once it has stopped changing."""


def read_new_file(
    path: Path, digest: str, output_folder_path: Path, signature: list[int], block_bytes: int | None = None
) -> IngestedFile:
    """``parse_new_file``, with whatever else goes wrong in reading one file turned into BadFileError naming it.

    ``signature``: the file's size and modification time before its hash was taken; a file that
    no longer has them was written to while being read, and raises StillArriving.
    """
    try:
        parsed = parse_new_file(path, digest, output_folder_path, block_bytes)
        if file_signature(path) != signature:
            parsed_path(output_folder_path, digest).unlink(missing_ok=True)
            pending_path(output_folder_path, digest).unlink(missing_ok=True)
            raise StillArriving(f"{shown_name(path.name)} changed while it was read")
        return parsed
    except (BadFileError, StillArriving):
        raise
    except (OSError, ValueError, UnicodeError, OverflowError, RecursionError, pa.ArrowException) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise BadFileError(f"{path.name}: cannot be read ({detail})") from None


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


def ingest_folder(
    input_folder_path: Path | None,
    output_folder_path: Path,
    fresh: bool = False,
    keep_parsed: frozenset[str] = frozenset(),
    settle_seconds: float = 0.0,
    database: DatabaseSource | None = None,
    block_bytes: int | None = None,
) -> IngestionResult:
    """Ingest ``input_folder_path`` into ``output_folder_path``; return what was done.

    ``settle_seconds``: new files modified more recently than this are still arriving and wait
    for a later run (fullprocess.py, which runs unattended, waits for them first).

    ``keep_parsed``: content hashes whose cached rows are kept even when no file holds them
    any more (the files the deployed model was trained on, which the drift tests read).
    ``block_bytes``: files are read this much at a time (``ingestion.batch_mb``; default 8 MiB).
    ``database``: a table read beside (or, when ``input_folder_path`` is None, instead of) the folder;
    the rows past its watermark are one more cached "file" (see ``riskwatch/data/database_rows.py``).
    Raises PipelineError, leaving earlier outputs untouched, when no usable data remains,
    the database cannot be read, or another ingestion into the same folder is running.
    """
    with folder_lock(output_folder_path, "ingestion"):
        return ingest_locked(
            input_folder_path, output_folder_path, fresh, keep_parsed, settle_seconds, database, block_bytes
        )


def index_if_appendable(
    output_folder_path: Path, history: dict[str, IngestedFile], files: list[IngestedFile]
) -> RowIndex | None:
    """The row index of the earlier output when this run only adds files after it; else None."""
    earlier = unique_digests(list(history.values()))
    digests = unique_digests(files)
    if not earlier or len(digests) <= len(earlier) or digests[: len(earlier)] != earlier:
        return None
    known = set(earlier)
    new_rows = sum(entry.rows_kept for entry in files if entry.sha256 not in known)
    if new_rows > MAX_APPEND_ROWS:  # a streamed rebuild holds a batch; an append holds the new rows
        return None
    return load_row_index(output_folder_path, earlier)


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


def refuse_without_labelled_data(result: IngestionResult, where: str) -> None:
    """Raise PipelineError, before anything is written, when the sources hold no labelled rows to ingest."""
    if not result.files and result.arriving:
        raise PipelineError(
            f"no data ready in {where}: {', '.join(result.arriving)} still changing; run again once copied"
        )
    if not result.files:
        reasons = "; ".join(result.rejected.values()) or "no .csv, .json or .jsonl files"
        raise PipelineError(f"no usable data in {where} ({reasons}); earlier outputs are untouched")
    if not result.labelled:
        raise PipelineError(
            f"no labelled data in {where}: every file lacks the exited column, and a model needs outcomes "
            "to learn from; earlier outputs are untouched"
        )


def ingest_locked(
    input_folder_path: Path | None,
    output_folder_path: Path,
    fresh: bool,
    keep_parsed: frozenset[str],
    settle_seconds: float,
    database: DatabaseSource | None = None,
    block_bytes: int | None = None,
) -> IngestionResult:
    started = time.perf_counter()
    history = {} if fresh else read_history(input_folder_path, output_folder_path)
    result = collect_sources(input_folder_path, output_folder_path, history, settle_seconds, database, block_bytes)
    where = describe_sources(input_folder_path, database)
    refuse_without_labelled_data(result, where)
    # finaldata.csv first: a crash before the record leaves the old record, so the next run
    # redoes the work; the report, written last, vouches for finaldata.csv (training checks it).
    labelled_history = {name: entry for name, entry in history.items() if entry.labelled}
    index = index_if_unchanged(output_folder_path, labelled_history, result)
    if index is None:
        index = write_final_data(output_folder_path, result, labelled_history)
    result.unlabelled_clients = write_unlabelled_clients(output_folder_path, result.files, index)
    write_ingestion_record(
        output_folder_path, IngestionRecord(stored_folder(input_folder_path, output_folder_path), result.files)
    )
    if database is not None and result.source_state is not None:
        write_recorded_state(output_folder_path, database, result.source_state)
    result.seconds = round(time.perf_counter() - started, 3)
    write_ingestion_report(output_folder_path, describe_result(result, where))
    prune_parsed(output_folder_path, result.files, keep_parsed)
    log.info(
        "ingested %d file(s) from %s: %d rows merged, %d duplicates removed, %d rows %s %s in %.2fs",
        len(result.files),
        where,
        result.rows_merged,
        result.duplicates_removed,
        result.rows_written,
        "in (new rows appended to)" if result.appended else "kept, unchanged, in" if result.unchanged else "written to",
        result.final_data,
        result.seconds,
    )
    if result.unlabelled:
        log.info(
            "%d unlabelled file(s), kept out of %s: the latest rows of %d client(s) in %s",
            len(result.unlabelled),
            FINAL_DATA,
            result.unlabelled_clients,
            UNLABELLED_CLIENTS,
        )
    if result.rejected:
        log.warning("%d file(s) left out: %s", len(result.rejected), ", ".join(result.rejected))
    return result


def write_final_data(output_folder_path: Path, result: IngestionResult, history: dict[str, IngestedFile]) -> RowIndex:
    """Append to or rebuild ``finaldata.csv`` from the labelled files, keep its row index and batches; return the index.

    ``history``: the labelled files ingested before.
    """
    final_data = output_folder_path / FINAL_DATA
    before = file_signature(final_data) if final_data.exists() else None
    if before is not None and read_batch_book(output_folder_path).latest == 0:
        start_batch_book(output_folder_path)
    digests = unique_digests(result.labelled)
    earlier = index_if_appendable(output_folder_path, history, result.labelled)
    merged = None
    if earlier is not None:
        known = unique_digests(list(history.values()))
        merged = append(output_folder_path, earlier, known, digests[len(known) :])
        del earlier
    if merged is None:
        merged = rebuild(output_folder_path, digests)
    index = merged.index
    result.final_data, result.appended = final_data, merged.appended
    result.rows_merged, result.duplicates_removed = index.rows_merged, index.duplicates_removed
    result.rows_written = int(index.hashes.size)
    save_row_index(output_folder_path, index, digests)
    result.batch = record_batch(output_folder_path, result, history, before, merged)
    return index


def index_if_unchanged(
    output_folder_path: Path, history: dict[str, IngestedFile], result: IngestionResult
) -> RowIndex | None:
    """The row index when the labelled files are the ones ``finaldata.csv`` already holds (it is then left as it is).

    Fills ``result`` with the counts of the data as it stands; None when ``finaldata.csv`` must be written.
    """
    earlier = unique_digests(list(history.values()))
    if not earlier or unique_digests(result.labelled) != earlier:
        return None
    index = load_row_index(output_folder_path, earlier)
    if index is None:
        return None
    result.rows_merged, result.duplicates_removed = index.rows_merged, index.duplicates_removed
    result.rows_written = int(index.hashes.size)
    result.unchanged = True
    return index


def write_unlabelled_clients(output_folder_path: Path, files: list[IngestedFile], index: RowIndex) -> int:
    """Write the latest unlabelled row of each client, with where it arrived, to ``unlabelledclients.csv``.

    ``files`` are in arrival order. Each row keeps ``arrived_after_row``: how many rows of
    ``finaldata.csv`` arrived before it, so a reader can tell which of a client's rows, labelled
    or not, is its latest. Returns the number of clients (0, and no file, without unlabelled files).
    """
    target = output_folder_path / UNLABELLED_CLIENTS
    if all(entry.labelled and not entry.rows_pending for entry in files):
        target.unlink(missing_ok=True)
        return 0
    written_before, seen, paths, after = 0, set(), [], []
    for entry in files:
        if entry.labelled and entry.sha256 not in seen:  # written once, as in finaldata.csv
            seen.add(entry.sha256)
            written_before += index.kept.get(entry.sha256, 0)
        if entry.labelled and not entry.rows_pending:
            continue
        # A file's rows with a blank outcome arrived after the rows it labels.
        paths.append((pending_path if entry.labelled else parsed_path)(output_folder_path, entry.sha256))
        after.append(np.full(entry.rows_pending if entry.labelled else entry.rows_kept, written_before, np.int64))
    table = pa.concat_tables(list(cached_batches(paths, UNLABELLED_SCHEMA)) or [UNLABELLED_SCHEMA.empty_table()])
    table = table.append_column(ARRIVED_AFTER_COLUMN, pa.array(np.concatenate(after)))
    latest = table.take(latest_rows(table))
    write_csv_table(latest, target)
    return latest.num_rows


def start_batch_book(output_folder_path: Path) -> None:
    """Count the rows of an earlier ``finaldata.csv`` (from before batches were kept, or a lost book) as batch 1."""
    final_data = output_folder_path / FINAL_DATA
    table = read_final_data(final_data)
    hashes = hash_rows(table)
    book = BatchBook.empty().with_rows(hashes, [], "")
    write_batch_book(output_folder_path, book.aligned(book.batch_of(hashes), file_signature(final_data)))
    log.info("the %d rows ingested before batches were kept count as batch 1", table.num_rows)


def record_batch(
    output_folder_path: Path,
    result: IngestionResult,
    history: dict[str, IngestedFile],
    before: list[int] | None,
    merged: MergeResult,
) -> int:
    """Add the rows written for the first time to the batch book as a new batch; return its number (0: none).

    The book also keeps each row's batch in ``finaldata.csv``'s order, tied to the file just
    written (``before``: the signature the file had before this run appended to it).
    """
    book = read_batch_book(output_folder_path)
    new_files = [
        entry.name for entry in result.labelled if getattr(history.get(entry.name), "sha256", None) != entry.sha256
    ]
    if book.hashes.size == 0 and not merged.appended:  # every row is new: the book is the index's hashes
        updated = BatchBook.empty().first_batch(merged.index.hashes, new_files, utc_now())
        written = np.broadcast_to(np.int32(updated.latest), (result.rows_written,))
        merged.written_hashes = np.zeros(0, np.uint64)
    else:
        known = book.batch_of(merged.written_hashes)  # 0: not in the book, so arriving in this run's batch
        updated = book.with_rows(merged.written_hashes, new_files, utc_now())
        written = np.where(known == 0, np.int32(updated.latest), known)
    if not merged.appended:
        in_order = written
    elif book.finaldata == before and book.row_batches.size == result.rows_written - written.size:
        in_order = np.concatenate([book.row_batches, written])
    else:  # the order of the earlier rows is not known: readers look each row up by its hash
        in_order = np.zeros(0, np.int32)
    write_batch_book(output_folder_path, updated.aligned(in_order, file_signature(output_folder_path / FINAL_DATA)))
    if updated is book:
        return 0
    log.info("batch %d: %d row(s) arrived", updated.latest, updated.batches[-1].rows)
    return updated.latest


def describe_result(result: IngestionResult, source: str) -> IngestionReport:
    """The run as its ``ingestionreport.json``: ``source`` says where the rows came from."""
    return IngestionReport(
        finished_at=utc_now(),
        source=source,
        files=list(result.files),
        unlabelled_files=[entry.name for entry in result.unlabelled],
        unlabelled_clients=result.unlabelled_clients,
        rejected=dict(result.rejected),
        ignored=list(result.ignored),
        kept_from_history=list(result.kept_from_history),
        arriving=list(result.arriving),
        rows_merged=result.rows_merged,
        duplicates_removed=result.duplicates_removed,
        rows_written=result.rows_written,
        appended=result.appended,
        unchanged=result.unchanged,
        batch=result.batch,
        seconds=result.seconds,
        finaldata_sha256=sha256_file(result.final_data),
    )


def merge_multiple_dataframe(config_path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The classic course function: ingest the configured input folder; return ``finaldata.csv`` as a DataFrame.

    Writes what ``ingestion.py`` writes. ``config_path``: default ``$RISK_CONFIG``, else config.json.
    """
    from riskwatch.data.frames import read_client_frame

    config = load_config(config_path)
    result = ingest_folder(
        config.input_folder_path,
        config.output_folder_path,
        database=config.database,
        block_bytes=config.ingestion.batch_bytes,
    )
    return read_client_frame(result.final_data)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--fresh", action="store_true", help="forget earlier ingestions; use only the files present now"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="leave out new files modified in the last SECONDS (still being copied); default 0",
    )
    args = parser.parse_args(argv)
    return run_stage(
        "ingestion",
        args,
        lambda config: ingest_folder(
            config.input_folder_path,
            config.output_folder_path,
            args.fresh,
            settle_seconds=args.settle,
            database=config.database,
            block_bytes=config.ingestion.batch_bytes,
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
