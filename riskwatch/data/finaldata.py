"""``finaldata.csv`` made from the parsed caches of the ingested files, a batch at a time.

Each ingested file's valid rows are cached by content hash under ``parsed/`` (Arrow IPC files,
written a batch at a time as the file is read). ``finaldata.csv`` is their rows in arrival
order without exact duplicates (the first of each kept). It is written by streaming the caches
twice: once to hash every row (8 bytes a row), once to write the rows that are not duplicates.
Only rows whose hash repeats are compared exactly, so the result is exact and the memory is a
batch plus the hashes.

The row index (``parsed/rowindex-v2.npz``) keeps the sorted hashes of the rows written and how
many rows each file contributed, so new files are appended: their rows are compared with the
earlier ones by hash, and exactly (read back from the caches) only where a hash is already there.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.feather as feather

from riskwatch.core.arrays import write_npz
from riskwatch.core.files import atomic_path, file_signature
from riskwatch.core.rowhash import hash_rows, unique_hashes
from riskwatch.core.schema import COLUMNS, ID_COLUMN, SCHEMA
from riskwatch.state.artifacts import FINAL_DATA

log = logging.getLogger(__name__)

PARSED_FOLDER = "parsed"
# Bump when the rules that turn a file into rows change, so cached parses are redone.
PARSE_VERSION = "v1"
# v2: the sorted row hashes and each file's kept rows (v1 kept a position per row as well).
ROW_INDEX_FILE = "rowindex-v2.npz"
_HASH_CHUNK = 1 << 20  # rows looked up at once: bounds the temporary arrays of a lookup


def parsed_path(output_folder_path: Path, sha256: str) -> Path:
    return output_folder_path / PARSED_FOLDER / f"{PARSE_VERSION}-{sha256}.arrow"


def pending_path(output_folder_path: Path, sha256: str) -> Path:
    """The cached rows of a labelled file whose outcome is blank (clients not decided yet)."""
    return output_folder_path / PARSED_FOLDER / f"{PARSE_VERSION}-{sha256}-pending.arrow"


def cached_batches(paths: list[Path], schema: pa.Schema = SCHEMA) -> Iterator[pa.Table]:
    """The rows of these cache files in order, a stored batch at a time, read (not mapped) so that only a batch is
    held in memory."""
    for path in paths:
        with pa.OSFile(str(path), "rb") as source:
            reader = pa.ipc.open_file(source)
            for number in range(reader.num_record_batches):
                yield pa.Table.from_batches([reader.get_batch(number)]).cast(schema)


def cached_rows(path: Path) -> int:
    """How many rows a cache file holds, from its footer."""
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        return sum(reader.get_batch(number).num_rows for number in range(reader.num_record_batches))


def merge_tables(output_folder_path: Path, digests: list[str], schema: pa.Schema = SCHEMA) -> pa.Table:
    """Concatenate the cached rows of the files with these content hashes, in order (memory-mapped)."""
    tables = [feather.read_table(parsed_path(output_folder_path, digest), memory_map=True) for digest in digests]
    return pa.concat_tables(tables).cast(schema) if tables else schema.empty_table()


@dataclass
class RowIndex:
    """The 64-bit hashes of the rows in ``finaldata.csv``, sorted, and how many rows each file added."""

    hashes: np.ndarray  # uint64, sorted
    kept: dict[str, int] = field(default_factory=dict)  # content hash -> rows of that file written, in file order
    rows_merged: int = 0  # the counts of the ingestion report, kept with the rows they count
    duplicates_removed: int = 0
    quoted: bool = False  # whether finaldata.csv quotes its ids


@dataclass
class MergeResult:
    """What writing ``finaldata.csv`` did."""

    index: RowIndex
    written_hashes: np.ndarray  # the hashes of the rows written now, in file order
    appended: bool


def find_duplicates(table: pa.Table, hashes: np.ndarray) -> np.ndarray:
    """A mask of the rows that repeat an earlier row of ``table`` exactly.

    Rows are sorted by hash; only rows whose hash repeats are compared exactly, so the result
    is exact and the cost is one sort of 64-bit numbers.
    """
    duplicate = np.zeros(table.num_rows, dtype=bool)
    if table.num_rows < 2:
        return duplicate
    repeated = repeated_hashes(np.sort(hashes))
    if repeated.size == 0:
        return duplicate
    candidates = np.flatnonzero(contains(repeated, hashes))
    return first_occurrences(table.take(candidates), candidates, duplicate)


def repeated_hashes(ordered: np.ndarray) -> np.ndarray:
    """The values that occur more than once in a sorted array, each once."""
    return unique_hashes(ordered[1:][ordered[1:] == ordered[:-1]])


def contains(ordered: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per value, whether the sorted ``ordered`` holds it (looked up a chunk at a time)."""
    found = np.zeros(values.size, dtype=bool)
    if ordered.size == 0:
        return found
    for start in range(0, values.size, _HASH_CHUNK):
        chunk = values[start : start + _HASH_CHUNK]
        where = np.minimum(np.searchsorted(ordered, chunk), ordered.size - 1)
        found[start : start + chunk.size] = ordered[where] == chunk
    return found


def first_occurrences(candidates: pa.Table, rows: np.ndarray, duplicate: np.ndarray) -> np.ndarray:
    """``duplicate`` with every candidate row marked except the first of each group of equal rows."""
    firsts = (
        candidates.append_column("_row", pa.array(rows))
        .group_by(list(COLUMNS), use_threads=False)
        .aggregate([("_row", "min")])["_row_min"]
        .to_numpy()
    )
    duplicate[rows] = True
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


def save_row_index(output_folder_path: Path, index: RowIndex, digests: list[str]) -> None:
    """Write the row index, tied to the ``finaldata.csv`` just written and the files (by content) it holds."""
    meta = {
        "finaldata": file_signature(output_folder_path / FINAL_DATA),
        "files": digests,  # by content: a renamed file changes nothing
        "kept": [index.kept.get(digest, 0) for digest in digests],
        "rows_merged": index.rows_merged,
        "duplicates_removed": index.duplicates_removed,
        "quoted": index.quoted,
    }
    write_npz(
        output_folder_path / PARSED_FOLDER / ROW_INDEX_FILE,
        {"hashes": index.hashes, "meta": np.array(json.dumps(meta))},
    )


def load_row_index(output_folder_path: Path, digests: list[str]) -> RowIndex | None:
    """The row index, when it describes the ``finaldata.csv`` on disk made from exactly these files; else None."""
    path = output_folder_path / PARSED_FOLDER / ROW_INDEX_FILE
    try:
        # numpy leaves a file it opened itself open when the archive is damaged: open it here instead
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            if meta["finaldata"] != file_signature(output_folder_path / FINAL_DATA) or meta["files"] != digests:
                return None
            return RowIndex(
                stored["hashes"],
                dict(zip(digests, map(int, meta["kept"]), strict=True)),
                int(meta["rows_merged"]),
                int(meta["duplicates_removed"]),
                bool(meta["quoted"]),
            )
    except Exception as exc:  # only a cache: any fault in it (a truncated zip included) means rebuild
        log.info("the row index %s cannot be used (%s: %s); rebuilding", path.name, type(exc).__name__, exc)
        return None


def hash_cached_rows(paths: list[Path], rows: int) -> tuple[np.ndarray, bool]:
    """The hash of every cached row in order, and whether some id needs quotes in CSV: one streamed pass."""
    hashes = np.empty(rows, np.uint64)
    quoted, start = False, 0
    for batch in cached_batches(paths):
        hashes[start : start + batch.num_rows] = hash_rows(batch)
        quoted = quoted or ids_need_quotes(batch)
        start += batch.num_rows
    return hashes[:start], quoted


def streamed_duplicates(paths: list[Path], hashes: np.ndarray, ordered: np.ndarray) -> np.ndarray | None:
    """A mask of the rows that repeat an earlier one exactly (None: no hash repeats, so none does).

    Only the rows whose hash repeats are gathered from the caches and compared.
    """
    repeated = repeated_hashes(ordered)
    if repeated.size == 0:
        return None
    candidate = contains(repeated, hashes)
    rows = np.flatnonzero(candidate)
    parts, start = [], 0
    for batch in cached_batches(paths):
        inside = candidate[start : start + batch.num_rows]
        if inside.any():
            parts.append(batch.filter(pa.array(inside)))
        start += batch.num_rows
    return first_occurrences(pa.concat_tables(parts), rows, np.zeros(hashes.size, dtype=bool))


def rebuild(output_folder_path: Path, digests: list[str]) -> MergeResult:
    """Write ``finaldata.csv`` from the caches of these files (by content hash, in arrival order), streamed."""
    paths = [parsed_path(output_folder_path, digest) for digest in digests]
    sizes = [cached_rows(path) for path in paths]
    hashes, quoted = hash_cached_rows(paths, sum(sizes))
    ordered = np.sort(hashes)
    duplicate = streamed_duplicates(paths, hashes, ordered)
    with (
        atomic_path(output_folder_path / FINAL_DATA) as tmp,
        pa_csv.CSVWriter(str(tmp), SCHEMA, write_options=csv_options(quoted)) as writer,
    ):
        kept = write_kept_rows(writer, dict(zip(digests, paths, strict=True)), duplicate)
    removed = 0 if duplicate is None else int(duplicate.sum())
    if duplicate is not None:
        hashes = hashes[~duplicate]
        ordered = np.sort(hashes)
    return MergeResult(RowIndex(ordered, kept, int(sum(sizes)), removed, quoted), hashes, appended=False)


def merge_sorted(ordered: np.ndarray, more: np.ndarray) -> np.ndarray:
    """Two sorted arrays as one sorted array."""
    if ordered.size == 0:
        return more
    return np.insert(ordered, np.searchsorted(ordered, more, side="right"), more)


def write_kept_rows(writer: pa_csv.CSVWriter, paths: dict[str, Path], duplicate: np.ndarray | None) -> dict[str, int]:
    """Write the cached rows of each file (content hash -> cache) that are not duplicates; return how many of each."""
    kept: dict[str, int] = {}
    start = 0
    for digest, path in paths.items():
        kept[digest] = 0
        for batch in cached_batches([path]):
            rows = batch
            if duplicate is not None:
                rows = batch.filter(pa.array(~duplicate[start : start + batch.num_rows]))
            writer.write_table(rows)
            kept[digest] += rows.num_rows
            start += batch.num_rows
    return kept


def rows_equal(left: pa.Table, right: pa.Table) -> np.ndarray:
    """Per row, whether two tables of the same length hold the same values in every column."""
    same = np.ones(left.num_rows, dtype=bool)
    for name in COLUMNS:
        same &= pc.equal(left[name], right[name]).to_numpy(zero_copy_only=False).astype(bool)
    return same


def rows_with_hashes(paths: list[Path], wanted: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """The cached rows whose hash is in the sorted ``wanted``, with their hashes: one streamed pass."""
    parts, found = [], []
    for batch in cached_batches(paths):
        hashes = hash_rows(batch)
        inside = contains(wanted, hashes)
        if inside.any():
            parts.append(batch.filter(pa.array(inside)))
            found.append(hashes[inside])
    if not parts:
        return SCHEMA.empty_table(), np.zeros(0, np.uint64)
    return pa.concat_tables(parts), np.concatenate(found)


def find_in_index(paths: list[Path], index: RowIndex, table: pa.Table, hashes: np.ndarray) -> np.ndarray:
    """A mask of the rows of ``table`` already written: looked up by hash, then compared exactly with the earlier
    rows of that hash, read back from the caches (``paths``) only when some hash is found."""
    found = np.zeros(table.num_rows, dtype=bool)
    hits = np.flatnonzero(contains(index.hashes, hashes))
    if hits.size == 0:
        return found
    earlier, earlier_hashes = rows_with_hashes(paths, unique_hashes(hashes[hits]))
    order = np.argsort(earlier_hashes, kind="stable")
    earlier, earlier_hashes = earlier.take(order), earlier_hashes[order]
    left = np.searchsorted(earlier_hashes, hashes[hits], side="left")
    right = np.searchsorted(earlier_hashes, hashes[hits], side="right")
    present = right > left
    hits, left, right = hits[present], left[present], right[present]
    same = rows_equal(table.take(hits), earlier.take(left))  # each with the first earlier row of its hash
    found[hits[same]] = True
    for row, start, stop in zip(hits[~same], left[~same], right[~same], strict=True):  # a hash shared by others
        wanted = table.slice(int(row), 1)
        found[row] = any(rows_equal(wanted, earlier.slice(int(at), 1))[0] for at in range(start + 1, stop))
    return found


def append(output_folder_path: Path, index: RowIndex, earlier: list[str], new: list[str]) -> MergeResult | None:
    """Append the rows of the files ``new`` (content hashes) that are not in ``finaldata.csv`` yet.

    Returns None, writing nothing, when the new rows need quoted ids and the earlier ones are not
    quoted: only a rebuild then writes what a rebuild would.
    """
    added = merge_tables(output_folder_path, new)
    hashes = hash_rows(added)
    earlier_paths = [parsed_path(output_folder_path, digest) for digest in earlier]
    duplicate = find_duplicates(added, hashes) | find_in_index(earlier_paths, index, added, hashes)
    rows = added.filter(pa.array(~duplicate))
    if ids_need_quotes(rows) and not index.quoted:
        return None
    final_data = output_folder_path / FINAL_DATA
    append_csv_rows(final_data, rows, final_data, index.quoted)
    written = hashes[~duplicate]
    kept = dict(index.kept)
    start = 0
    for digest in new:
        size = cached_rows(parsed_path(output_folder_path, digest))
        kept[digest] = int(np.count_nonzero(~duplicate[start : start + size]))
        start += size
    updated = RowIndex(
        merge_sorted(index.hashes, np.sort(written)),
        kept,
        index.rows_merged + added.num_rows,
        index.duplicates_removed + int(duplicate.sum()),
        index.quoted,
    )
    return MergeResult(updated, written, appended=True)
