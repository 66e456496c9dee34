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

When the only change is new files, their rows are appended: a sorted index of the row hashes
already written (``parsed/rowindex-*.npz``) finds the duplicates, so the parsing and the
deduplication cost what the new data costs; only copying ``finaldata.csv`` and the index
still touches every row, at disk speed. The result is the same file a full rebuild would write.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.feather as feather

from common.artifacts import (
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
from common.batches import (
    ARRIVED_AFTER_COLUMN,
    BatchBook,
    latest_rows,
    read_batch_book,
    read_final_data,
    write_batch_book,
)
from common.cli import build_parser, run_stage
from common.config import load_config
from common.databases import (
    DatabaseSource,
    RecordedState,
    describe_sources,
    read_recorded_state,
    write_recorded_state,
)
from common.errors import PipelineError, says_disk_full
from common.files import (
    atomic_path,
    changed_within,
    file_signature,
    folder_lock,
    list_source_files,
    sha256_file,
    shown_name,
)
from common.rowhash import hash_rows, insert_sorted, unique_hashes
from common.schema import COLUMNS, ID_COLUMN, SCHEMA, UNLABELLED_SCHEMA, BadFileError, read_data_file

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("ingestion")

PARSED_FOLDER = "parsed"
# Bump when the rules that turn a file into rows change, so cached parses are redone.
PARSE_VERSION = "v1"
ROW_INDEX_FILE = f"rowindex-{PARSE_VERSION}.npz"


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
    # hashes of the rows this run wrote (all of them after a rebuild)
    written_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
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


def parsed_path(output_folder_path: Path, sha256: str) -> Path:
    return output_folder_path / PARSED_FOLDER / f"{PARSE_VERSION}-{sha256}.arrow"


def parse_new_file(path: Path, sha256: str, output_folder_path: Path) -> IngestedFile:
    """Read and check one data file, cache its valid rows by content hash, and describe it."""
    parsed = read_data_file(path, allow_unlabelled=True)
    try:
        with atomic_path(parsed_path(output_folder_path, sha256)) as tmp:
            feather.write_feather(parsed.table, tmp, compression="uncompressed")
    except (OSError, pa.ArrowException) as exc:  # the output side: the file itself is fine
        why = "the disk is full; free some space and run again" if says_disk_full(exc) else str(exc)
        raise PipelineError(
            f"cannot keep the parsed rows of {path.name} in {output_folder_path / PARSED_FOLDER} ({why})"
        ) from None
    detail = ", ".join(f"{count} {reason}" for reason, count in parsed.dropped.items())
    log.info(
        "%s: %d %srows kept, %d dropped%s",
        path.name,
        parsed.rows_kept,
        "" if parsed.labelled else "unlabelled ",
        parsed.rows_dropped,
        f" ({detail})" if detail else "",
    )
    return IngestedFile(path.name, sha256, parsed.rows_kept, parsed.rows_dropped, utc_now(), parsed.labelled)


def usable_cache(output_folder_path: Path, sha256: str) -> bool:
    """Whether the cached rows of a file can be read; a damaged cache is named, set aside, and rebuilt from its file."""
    path = parsed_path(output_folder_path, sha256)
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


def read_new_file(path: Path, digest: str, output_folder_path: Path, signature: list[int]) -> IngestedFile:
    """``parse_new_file``, with whatever else goes wrong in reading one file turned into BadFileError naming it.

    ``signature``: the file's size and modification time before its hash was taken; a file that
    no longer has them was written to while being read, and raises StillArriving.
    """
    try:
        parsed = parse_new_file(path, digest, output_folder_path)
        if file_signature(path) != signature:
            parsed_path(output_folder_path, digest).unlink(missing_ok=True)
            raise StillArriving(f"{shown_name(path.name)} changed while it was read")
        return parsed
    except (BadFileError, StillArriving):
        raise
    except (OSError, ValueError, UnicodeError, OverflowError, RecursionError, pa.ArrowException) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise BadFileError(f"{path.name}: cannot be read ({detail})") from None


def collect_files(
    input_folder_path: Path, output_folder_path: Path, history: dict[str, IngestedFile], settle_seconds: float = 0.0
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

    def __init__(self, output_folder_path: Path, history: dict[str, IngestedFile], result: IngestionResult):
        self.output_folder_path, self.history, self.result = output_folder_path, history, result
        self.cached = {
            entry.sha256: entry for entry in history.values() if usable_cache(output_folder_path, entry.sha256)
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
            self.result.files.append(read_new_file(path, digest, self.output_folder_path, signature))
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


def merge_tables(output_folder_path: Path, digests: list[str], schema: pa.Schema = SCHEMA) -> pa.Table:
    """Concatenate the cached rows of the files with these content hashes, in order."""
    tables = [feather.read_table(parsed_path(output_folder_path, digest), memory_map=True) for digest in digests]
    return pa.concat_tables(tables).cast(schema) if tables else schema.empty_table()


@dataclass
class RowIndex:
    """The 64-bit hashes of the rows in ``finaldata.csv``, sorted, and where each row came from.

    ``positions`` are row numbers in the merged parsed tables (before duplicates were removed),
    so a row can be fetched back from its cached parse to compare exactly.
    """

    hashes: np.ndarray  # uint64, sorted
    positions: np.ndarray  # int64, aligned with hashes
    rows_merged: int = 0  # the counts of the ingestion report, kept with the rows they count
    duplicates_removed: int = 0
    quoted: bool = False  # whether finaldata.csv quotes its ids

    @classmethod
    def empty(cls) -> RowIndex:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.int64))

    def add(self, hashes: np.ndarray, positions: np.ndarray, merged: int, duplicates: int, quoted: bool) -> RowIndex:
        """A new index with these rows added (of ``merged`` rows read, ``duplicates`` left out)."""
        order = np.argsort(hashes, kind="stable")
        hashes, positions = insert_sorted(self.hashes, self.positions, hashes[order], positions[order])
        return RowIndex(
            hashes,
            positions,
            self.rows_merged + merged,
            self.duplicates_removed + duplicates,
            quoted,
        )


def find_duplicates(table: pa.Table, hashes: np.ndarray) -> np.ndarray:
    """A mask of the rows that repeat an earlier row of ``table`` exactly.

    Rows are sorted by hash; only rows whose hash repeats are compared exactly, so the result
    is exact and the cost is one sort of 64-bit numbers.
    """
    duplicate = np.zeros(table.num_rows, dtype=bool)
    if table.num_rows < 2:
        return duplicate
    ordered = np.sort(hashes)
    repeated = unique_hashes(ordered[1:][ordered[1:] == ordered[:-1]])
    if repeated.size == 0:
        return duplicate
    candidates = np.flatnonzero(np.isin(hashes, repeated))
    firsts = (
        table.take(candidates)
        .append_column("_row", pa.array(candidates))
        .group_by(list(COLUMNS), use_threads=False)
        .aggregate([("_row", "min")])["_row_min"]
        .to_numpy()
    )
    duplicate[candidates] = True
    duplicate[firsts] = False
    return duplicate


def deduplicate(table: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """(the rows without exact duplicates, the first of each kept in order; their positions; their hashes)."""
    hashes = hash_rows(table)
    duplicate = find_duplicates(table, hashes)
    if not duplicate.any():
        return table, np.arange(table.num_rows, dtype=np.int64), hashes
    kept = np.flatnonzero(~duplicate).astype(np.int64)
    return table.take(kept), kept, hashes[kept]


def drop_duplicate_rows(table: pa.Table) -> tuple[pa.Table, int]:
    """Remove exact duplicate rows, keeping the first of each, in the original order."""
    rows, _, _ = deduplicate(table)
    return rows, table.num_rows - rows.num_rows


def ids_need_quotes(table: pa.Table) -> bool:
    """Whether some id holds a quote, comma or line break, so the CSV must quote ids."""
    return table.num_rows > 0 and bool(pc.any(pc.match_substring_regex(table[ID_COLUMN], r'[",\r\n]')).as_py())


def csv_options(quoted: bool, header: bool = True) -> pa_csv.WriteOptions:
    """CSV options: ids quoted (every one, as pyarrow does) or not at all."""
    return pa_csv.WriteOptions(
        include_header=header, quoting_style="needed" if quoted else "none", quoting_header="none"
    )


def write_csv_table(table: pa.Table, target: Path, quoted: bool | None = None) -> Path:
    """Write ``table`` as CSV atomically, quoting ids only when some id needs it (``quoted``, when known)."""
    with atomic_path(target) as tmp:
        pa_csv.write_csv(table, tmp, csv_options(ids_need_quotes(table) if quoted is None else quoted))
    return target


def append_csv_rows(source: Path, table: pa.Table, target: Path, quoted: bool) -> Path:
    """Write ``target`` atomically as ``source`` followed by the rows of ``table`` (no header)."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
        if table.num_rows:
            with open(tmp, "ab") as handle:
                pa_csv.write_csv(table, handle, csv_options(quoted, header=False))
    return target


def save_row_index(output_folder_path: Path, index: RowIndex, files: list[IngestedFile]) -> None:
    """Write the row index, tied to the ``finaldata.csv`` just written and the files it holds."""
    meta = {
        "finaldata": file_signature(output_folder_path / FINAL_DATA),
        "files": [entry.sha256 for entry in files],  # by content: a renamed file changes nothing
        "rows_merged": index.rows_merged,
        "duplicates_removed": index.duplicates_removed,
        "quoted": index.quoted,
    }
    with atomic_path(output_folder_path / PARSED_FOLDER / ROW_INDEX_FILE) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, hashes=index.hashes, positions=index.positions, meta=np.array(json.dumps(meta)))


def load_row_index(output_folder_path: Path, files: list[IngestedFile]) -> RowIndex | None:
    """The row index, when it describes the ``finaldata.csv`` on disk made from exactly ``files``; else None."""
    path = output_folder_path / PARSED_FOLDER / ROW_INDEX_FILE
    try:
        # numpy leaves a file it opened itself open when the archive is damaged: open it here instead
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            if meta["finaldata"] != file_signature(output_folder_path / FINAL_DATA):
                return None
            if meta["files"] != [entry.sha256 for entry in files]:
                return None
            return RowIndex(
                stored["hashes"],
                stored["positions"],
                int(meta["rows_merged"]),
                int(meta["duplicates_removed"]),
                bool(meta["quoted"]),
            )
    except Exception as exc:  # only a cache: any fault in it (a truncated zip included) means rebuild
        log.info("the row index %s cannot be used (%s: %s); rebuilding", path.name, type(exc).__name__, exc)
        return None


def unique_digests(files: list[IngestedFile]) -> list[str]:
    """The content hashes of ``files`` in order, each once: files with the same content count once."""
    return list(dict.fromkeys(entry.sha256 for entry in files))


def prune_parsed(output_folder_path: Path, files: list[IngestedFile], keep: frozenset[str] = frozenset()) -> None:
    """Delete cached parses no entry refers to any more, except those of the ``keep`` hashes."""
    folder = output_folder_path / PARSED_FOLDER
    wanted = {parsed_path(output_folder_path, digest).name for digest in {entry.sha256 for entry in files} | keep}
    for path in folder.glob("*.arrow") if folder.is_dir() else ():
        if path.name not in wanted:
            path.unlink(missing_ok=True)


def ingest_folder(
    input_folder_path: Path | None,
    output_folder_path: Path,
    fresh: bool = False,
    keep_parsed: frozenset[str] = frozenset(),
    settle_seconds: float = 0.0,
    database: DatabaseSource | None = None,
) -> IngestionResult:
    """Ingest ``input_folder_path`` into ``output_folder_path``; return what was done.

    ``settle_seconds``: new files modified more recently than this are still arriving and wait
    for a later run (fullprocess.py, which runs unattended, waits for them first).

    ``keep_parsed``: content hashes whose cached rows are kept even when no file holds them
    any more (the files the deployed model was trained on, which the drift tests read).
    ``database``: a table read beside (or, when ``input_folder_path`` is None, instead of) the folder;
    the rows past its watermark are one more cached "file" (see ``common/database_rows.py``).
    Raises PipelineError, leaving earlier outputs untouched, when no usable data remains,
    the database cannot be read, or another ingestion into the same folder is running.
    """
    with folder_lock(output_folder_path, "ingestion"):
        return ingest_locked(input_folder_path, output_folder_path, fresh, keep_parsed, settle_seconds, database)


def rebuild_final_data(output_folder_path: Path, result: IngestionResult) -> RowIndex:
    """Merge every file's rows, remove duplicates, write ``finaldata.csv``; return its row index."""
    merged = merge_tables(output_folder_path, unique_digests(result.labelled))
    final, kept, hashes = deduplicate(merged)
    result.rows_merged, result.rows_written = merged.num_rows, final.num_rows
    result.duplicates_removed = merged.num_rows - final.num_rows
    quoted = ids_need_quotes(final)
    result.final_data = write_csv_table(final, output_folder_path / FINAL_DATA, quoted)
    result.written_hashes = hashes
    return RowIndex.empty().add(hashes, kept, merged.num_rows, result.duplicates_removed, quoted)


def rows_equal(left: pa.Table, right: pa.Table) -> np.ndarray:
    """Per row, whether two tables of the same length hold the same values in every column."""
    same = np.ones(left.num_rows, dtype=bool)
    for name in COLUMNS:
        same &= pc.equal(left[name], right[name]).to_numpy(zero_copy_only=False).astype(bool)
    return same


def find_in_index(earlier_rows: pa.Table, index: RowIndex, table: pa.Table, hashes: np.ndarray) -> np.ndarray:
    """A mask of the rows of ``table`` already in the index, compared exactly with the rows they hash like."""
    left = np.searchsorted(index.hashes, hashes, side="left")
    right = np.searchsorted(index.hashes, hashes, side="right")
    found = np.zeros(table.num_rows, dtype=bool)
    candidates = np.flatnonzero(right > left)
    if candidates.size == 0:
        return found
    same = rows_equal(table.take(candidates), earlier_rows.take(index.positions[left[candidates]]))
    found[candidates[same]] = True
    for row in candidates[~same]:  # a hash shared by different rows: compare with each row that has it
        wanted = table.slice(int(row), 1)
        for position in index.positions[left[row] + 1 : right[row]]:
            if rows_equal(wanted, earlier_rows.slice(int(position), 1))[0]:
                found[row] = True
                break
    return found


def append_final_data(
    output_folder_path: Path, result: IngestionResult, earlier: list[IngestedFile], index: RowIndex
) -> RowIndex | None:
    """Append the rows of the files after ``earlier`` that are not in ``finaldata.csv`` yet; return the new index.

    Returns None, writing nothing, when the new rows need quoted ids and the earlier ones are not
    quoted: only a rebuild then writes what a rebuild would.
    """
    earlier_digests = unique_digests(earlier)
    new_digests = [digest for digest in unique_digests(result.labelled) if digest not in set(earlier_digests)]
    earlier_rows = merge_tables(output_folder_path, earlier_digests)  # memory-mapped: only fetched rows are read
    added = merge_tables(output_folder_path, new_digests)
    hashes = hash_rows(added)
    duplicate = find_duplicates(added, hashes) | find_in_index(earlier_rows, index, added, hashes)
    kept = np.flatnonzero(~duplicate)
    rows = added.take(kept)
    if ids_need_quotes(rows) and not index.quoted:
        return None
    final_data = output_folder_path / FINAL_DATA
    result.final_data = append_csv_rows(final_data, rows, final_data, index.quoted)
    result.appended = True
    result.written_hashes = hashes[kept]
    updated = index.add(
        hashes[kept], kept.astype(np.int64) + earlier_rows.num_rows, added.num_rows, int(duplicate.sum()), index.quoted
    )
    result.rows_merged, result.duplicates_removed = updated.rows_merged, updated.duplicates_removed
    result.rows_written = int(updated.hashes.size)
    return updated


def index_if_appendable(
    output_folder_path: Path, history: dict[str, IngestedFile], files: list[IngestedFile]
) -> RowIndex | None:
    """The row index of the earlier output when this run only adds files after it; else None."""
    earlier = list(history.values())
    if not earlier or len(files) <= len(earlier):
        return None
    if [entry.sha256 for entry in files[: len(earlier)]] != [entry.sha256 for entry in earlier]:
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
) -> IngestionResult:
    """``collect_files`` for the folder (when there is one), then the database's fetches, in arrival order."""
    files = {name: entry for name, entry in history.items() if not entry.source}
    result = IngestionResult(files=[], final_data=output_folder_path / FINAL_DATA)
    if input_folder_path is not None:
        result = collect_files(input_folder_path, output_folder_path, files, settle_seconds)
    if database is not None:
        from common.database_rows import read_database_source

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
) -> IngestionResult:
    started = time.perf_counter()
    history = {} if fresh else read_history(input_folder_path, output_folder_path)
    result = collect_sources(input_folder_path, output_folder_path, history, settle_seconds, database)
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
    index = index_if_appendable(output_folder_path, history, result.labelled)
    if index is not None:
        index = append_final_data(output_folder_path, result, list(history.values()), index)
    if index is None:
        index = rebuild_final_data(output_folder_path, result)
    save_row_index(output_folder_path, index, result.labelled)
    result.batch = record_batch(output_folder_path, result, history, before)
    return index


def index_if_unchanged(
    output_folder_path: Path, history: dict[str, IngestedFile], result: IngestionResult
) -> RowIndex | None:
    """The row index when the labelled files are the ones ``finaldata.csv`` already holds (it is then left as it is).

    Fills ``result`` with the counts of the data as it stands; None when ``finaldata.csv`` must be written.
    """
    earlier = list(history.values())
    if not earlier or [entry.sha256 for entry in result.labelled] != [entry.sha256 for entry in earlier]:
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
    if all(entry.labelled for entry in files):
        target.unlink(missing_ok=True)
        return 0
    written = np.sort(index.positions)  # positions in the merged labelled files of the rows finaldata.csv holds
    merged_before, seen, digests, after = 0, set(), [], []
    for entry in files:
        if entry.labelled:
            if entry.sha256 not in seen:  # merged once, as in finaldata.csv
                seen.add(entry.sha256)
                merged_before += entry.rows_kept
            continue
        digests.append(entry.sha256)
        after.append(np.full(entry.rows_kept, np.searchsorted(written, merged_before), np.int64))
    table = merge_tables(output_folder_path, digests, UNLABELLED_SCHEMA)
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
    output_folder_path: Path, result: IngestionResult, history: dict[str, IngestedFile], before: list[int] | None
) -> int:
    """Add the rows written for the first time to the batch book as a new batch; return its number (0: none).

    The book also keeps each row's batch in ``finaldata.csv``'s order, tied to the file just
    written (``before``: the signature the file had before this run appended to it).
    """
    book = read_batch_book(output_folder_path)
    new_files = [
        entry.name for entry in result.labelled if getattr(history.get(entry.name), "sha256", None) != entry.sha256
    ]
    known = book.batch_of(result.written_hashes)  # 0: not in the book, so arriving in this run's batch
    updated = book.with_rows(result.written_hashes, new_files, utc_now())
    written = np.where(known == 0, np.int32(updated.latest), known)
    if not result.appended:
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
    from common.frames import read_client_frame

    config = load_config(config_path)
    result = ingest_folder(config.input_folder_path, config.output_folder_path, database=config.database)
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
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
