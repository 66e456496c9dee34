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
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from riskwatch.core.cli import build_parser, run_stage
from riskwatch.core.databases import (
    DatabaseSource,
    describe_sources,
    write_recorded_state,
)
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import (
    file_signature,
    folder_lock,
    sha256_file,
)
from riskwatch.core.rowhash import hash_rows
from riskwatch.core.schema import UNLABELLED_SCHEMA
from riskwatch.data.batches import (
    ARRIVED_AFTER_COLUMN,
    BatchBook,
    latest_rows,
    read_batch_book,
    read_final_data,
    write_batch_book,
)
from riskwatch.data.finaldata import (
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
    UNLABELLED_CLIENTS,
    IngestedFile,
    IngestionRecord,
    IngestionReport,
    utc_now,
    write_ingestion_record,
    write_ingestion_report,
)

if TYPE_CHECKING:
    pass

from riskwatch.stages.ingestion_sources import (
    IngestionResult,
    collect_sources,
    prune_parsed,
    read_history,
    stored_folder,
    unique_digests,
)

log = logging.getLogger("ingestion")


# New rows beyond this many are merged by a streamed rebuild rather than appended in memory.
MAX_APPEND_ROWS = 1_000_000


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
