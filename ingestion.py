"""Ingestion: merge every data file in the input folder into ``finaldata.csv``.

Each file is checked against the schema; a bad file is named with its fault and left out,
while the good files go on. Rows are merged in file-name order, exact duplicate rows are
removed (the first kept), and the result is written atomically with ``ingestedfiles.txt``.

What was ingested before is kept: a file that has since turned bad or left the input folder
keeps its earlier rows (parsed once, cached by content hash under ``parsed/``), so a run never
overwrites the output with less. ``--fresh`` starts over from the files present now.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.feather as feather

from common.artifacts import FINAL_DATA, INGESTED_FILES, INGESTION_REPORT, IngestedFile, read_ingested_files, utc_now
from common.cli import build_parser, run_stage
from common.errors import PipelineError
from common.files import atomic_path, folder_lock, list_data_files, sha256_file, write_text_atomic
from common.schema import COLUMNS, ID_COLUMN, SCHEMA, BadFileError, read_data_file

log = logging.getLogger("ingestion")

PARSED_FOLDER = "parsed"
# Bump when the rules that turn a file into rows change, so cached parses are redone.
PARSE_VERSION = "v1"

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FNV_PRIME = np.uint64(0x100000001B3)


@dataclass
class IngestionResult:
    """What one ingestion run did."""

    files: list[IngestedFile]
    rejected: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    kept_from_history: list[str] = field(default_factory=list)
    rows_merged: int = 0
    duplicates_removed: int = 0
    rows_written: int = 0
    seconds: float = 0.0
    final_data: Path | None = None


def parsed_path(output_folder: Path, sha256: str) -> Path:
    return output_folder / PARSED_FOLDER / f"{PARSE_VERSION}-{sha256}.arrow"


def parse_new_file(path: Path, sha256: str, output_folder: Path) -> IngestedFile:
    """Read and check one data file, cache its valid rows by content hash, and describe it."""
    parsed = read_data_file(path)
    with atomic_path(parsed_path(output_folder, sha256)) as tmp:
        feather.write_feather(parsed.table, tmp, compression="uncompressed")
    detail = ", ".join(f"{count} {reason}" for reason, count in parsed.dropped.items())
    log.info(
        "%s: %d rows kept, %d dropped%s",
        path.name,
        parsed.rows_kept,
        parsed.rows_dropped,
        f" ({detail})" if detail else "",
    )
    return IngestedFile(path.name, sha256, parsed.rows_kept, parsed.rows_dropped, utc_now())


def collect_files(input_folder: Path, output_folder: Path, history: dict[str, IngestedFile]) -> IngestionResult:
    """Decide, file by file, which rows make up the ingested data (new, unchanged or kept)."""
    if not input_folder.is_dir():
        raise PipelineError(f"input folder {input_folder} does not exist")
    data_files, ignored = list_data_files(input_folder)
    for path in ignored:
        log.info("%s: not a data file (only .csv, .json, .jsonl are read); ignored", path.name)
    cached = {entry.sha256: entry for entry in history.values() if parsed_path(output_folder, entry.sha256).exists()}
    result = IngestionResult(files=[], ignored=[path.name for path in ignored])
    seen_hashes = set()
    for path in data_files:
        digest = sha256_file(path)
        seen_hashes.add(digest)
        if digest in cached:
            previous = cached[digest]
            result.files.append(
                IngestedFile(path.name, digest, previous.rows_kept, previous.rows_dropped, previous.ingested_at)
            )
            log.debug("%s: unchanged since %s", path.name, previous.ingested_at)
            continue
        try:
            result.files.append(parse_new_file(path, digest, output_folder))
        except BadFileError as exc:
            result.rejected[path.name] = str(exc)
            earlier = history.get(path.name)
            if earlier is None:
                log.warning("left out %s", exc)
                continue
            if earlier.sha256 not in cached:
                raise PipelineError(
                    f"{exc}; its rows ingested on {earlier.ingested_at} are missing from "
                    f"{output_folder / PARSED_FOLDER}; fix the file, or run with --fresh to ingest only the good files"
                ) from None
            log.warning(
                "left out %s; keeping the %d rows ingested from it on %s", exc, earlier.rows_kept, earlier.ingested_at
            )
            result.files.append(earlier)
            result.kept_from_history.append(path.name)
            seen_hashes.add(earlier.sha256)
    present = {entry.name for entry in result.files} | set(result.rejected)
    for name, entry in sorted(history.items()):
        if name in present or entry.sha256 in seen_hashes:
            continue
        if entry.sha256 not in cached:
            raise PipelineError(
                f"{name} was ingested before but is no longer in {input_folder} and its parsed rows are missing "
                f"from {output_folder / PARSED_FOLDER}; run with --fresh to ingest only the files present now"
            )
        log.warning("%s is no longer in %s; keeping the %d rows ingested from it", name, input_folder, entry.rows_kept)
        result.files.append(entry)
        result.kept_from_history.append(name)
    result.files.sort(key=lambda entry: entry.name)
    return result


def merge_tables(output_folder: Path, files: list[IngestedFile]) -> pa.Table:
    """Concatenate the cached rows of ``files`` in order; files with the same content count once."""
    digests = list(dict.fromkeys(entry.sha256 for entry in files))
    tables = [feather.read_table(parsed_path(output_folder, digest), memory_map=True) for digest in digests]
    return pa.concat_tables(tables).cast(SCHEMA) if tables else SCHEMA.empty_table()


def _mix(values: np.ndarray) -> np.ndarray:
    values = values ^ (values >> np.uint64(30))
    values = values * _MIX1
    values = values ^ (values >> np.uint64(27))
    values = values * _MIX2
    return values ^ (values >> np.uint64(31))


def hash_strings(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A 64-bit hash per string, computed on Arrow's buffers without Python objects.

    FNV-1a over the bytes, one byte position at a time for all rows at once (ids are short);
    once some strings have ended, only the longer ones are carried on.
    """
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    array = array.cast(pa.string())
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8) if array.buffers()[2] else np.zeros(0, np.uint8)
    starts = offsets[:-1].astype(np.int64)
    lengths = np.diff(offsets)
    hashes = lengths.astype(np.uint64)
    rows = None  # None while every string is still longer than the position
    for position in range(int(lengths.max(initial=0))):
        if rows is None:
            longer = lengths > position
            if longer.all():
                hashes = (hashes ^ data[starts + position]) * _FNV_PRIME
                continue
            rows = np.flatnonzero(longer)
        else:
            rows = rows[lengths[rows] > position]
        hashes[rows] = (hashes[rows] ^ data[starts[rows] + position]) * _FNV_PRIME
    return _mix(hashes)


def hash_rows(table: pa.Table) -> np.ndarray:
    """A 64-bit hash of every row over all columns (ids and counts)."""
    hashes = hash_strings(table[ID_COLUMN])
    for name in COLUMNS[1:]:
        counts = table[name].to_numpy().astype(np.int64, copy=False).view(np.uint64)
        hashes = _mix(hashes ^ (counts + _GOLDEN))
    return hashes


def drop_duplicate_rows(table: pa.Table) -> tuple[pa.Table, int]:
    """Remove exact duplicate rows, keeping the first of each, in the original order.

    Rows are hashed and sorted by hash; only rows whose hash repeats are compared exactly,
    so the result is exact and the cost is one sort of 64-bit numbers.
    """
    if table.num_rows < 2:
        return table, 0
    hashes = hash_rows(table)
    ordered = np.sort(hashes)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if repeated.size == 0:
        return table, 0
    candidates = np.flatnonzero(np.isin(hashes, repeated))
    firsts = (
        table.take(candidates)
        .append_column("_row", pa.array(candidates))
        .group_by(list(COLUMNS), use_threads=False)
        .aggregate([("_row", "min")])["_row_min"]
        .to_numpy()
    )
    keep = np.ones(table.num_rows, dtype=bool)
    keep[candidates] = False
    keep[firsts] = True
    removed = table.num_rows - int(keep.sum())
    return table.filter(pa.array(keep)), removed


def write_csv_table(table: pa.Table, target: Path) -> Path:
    """Write ``table`` as CSV atomically; ids are quoted only when some id needs it."""
    ids = table[ID_COLUMN]
    needs_quotes = table.num_rows > 0 and pc.any(pc.match_substring_regex(ids, r'[",\r\n]')).as_py()
    options = pa_csv.WriteOptions(quoting_style="needed" if needs_quotes else "none", quoting_header="none")
    with atomic_path(target) as tmp:
        pa_csv.write_csv(table, tmp, options)
    return target


def prune_parsed(output_folder: Path, files: list[IngestedFile]) -> None:
    """Delete cached parses no entry refers to any more."""
    folder = output_folder / PARSED_FOLDER
    wanted = {parsed_path(output_folder, entry.sha256).name for entry in files}
    for path in folder.glob("*.arrow") if folder.is_dir() else ():
        if path.name not in wanted:
            path.unlink(missing_ok=True)


def ingest_folder(input_folder: Path, output_folder: Path, fresh: bool = False) -> IngestionResult:
    """Ingest ``input_folder`` into ``output_folder``; return what was done.

    Raises PipelineError, leaving earlier outputs untouched, when no usable data remains or
    another ingestion into the same folder is running.
    """
    with folder_lock(output_folder, "ingestion"):
        return ingest_locked(input_folder, output_folder, fresh)


def ingest_locked(input_folder: Path, output_folder: Path, fresh: bool) -> IngestionResult:
    started = time.perf_counter()
    history = {} if fresh else read_ingested_files(output_folder / INGESTED_FILES)
    result = collect_files(input_folder, output_folder, history)
    if not result.files:
        reasons = "; ".join(result.rejected.values()) or "no .csv, .json or .jsonl files"
        raise PipelineError(f"no usable data in {input_folder} ({reasons}); earlier outputs are untouched")
    merged = merge_tables(output_folder, result.files)
    deduplicated, result.duplicates_removed = drop_duplicate_rows(merged)
    result.rows_merged, result.rows_written = merged.num_rows, deduplicated.num_rows
    # finaldata.csv first: a crash before the other two leaves the old record, so the next
    # run redoes the work; the report, written last, vouches for finaldata.csv (training checks it).
    result.final_data = write_csv_table(deduplicated, output_folder / FINAL_DATA)
    write_text_atomic(output_folder / INGESTED_FILES, "".join(entry.to_line() + "\n" for entry in result.files))
    result.seconds = round(time.perf_counter() - started, 3)
    write_text_atomic(output_folder / INGESTION_REPORT, json.dumps(describe_result(result, input_folder), indent=2))
    prune_parsed(output_folder, result.files)
    log.info(
        "ingested %d file(s) from %s: %d rows merged, %d duplicates removed, %d rows written to %s in %.2fs",
        len(result.files),
        input_folder,
        result.rows_merged,
        result.duplicates_removed,
        result.rows_written,
        result.final_data,
        result.seconds,
    )
    if result.rejected:
        log.warning("%d file(s) left out: %s", len(result.rejected), ", ".join(result.rejected))
    return result


def describe_result(result: IngestionResult, input_folder: Path) -> dict:
    """The run as a JSON-ready report."""
    return {
        "finished_at": utc_now(),
        "input_folder": str(input_folder),
        "files": [asdict(entry) for entry in result.files],
        "rejected": result.rejected,
        "ignored": result.ignored,
        "kept_from_history": result.kept_from_history,
        "rows_merged": result.rows_merged,
        "duplicates_removed": result.duplicates_removed,
        "rows_written": result.rows_written,
        "seconds": result.seconds,
        "finaldata_sha256": sha256_file(result.final_data),
    }


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--fresh", action="store_true", help="forget earlier ingestions; use only the files present now"
    )
    args = parser.parse_args(argv)
    return run_stage(
        "ingestion", args, lambda config: ingest_folder(config.input_folder, config.output_folder, args.fresh)
    )


if __name__ == "__main__":
    raise SystemExit(main())
