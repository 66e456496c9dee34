"""Which batch each ingested row arrived in: the one answer training, the drift tests and scoring ask.

A batch is one ingestion that added rows to ``finaldata.csv``. Beside it, ingestion keeps
``rowbatches.npz``: the 64-bit hash of every row it ever wrote with the number of the batch the
row first arrived in, and the list of batches (number, time, files, rows). Rows find their
batch by hash, so a rebuild of ``finaldata.csv`` in another order (after a file was edited or
removed) keeps each row's batch, and a row that leaves and comes back keeps its first batch.

``read_ingested_data`` returns the ingested rows with their batch numbers; everything that asks
"which rows are new", "which rows did this model train on" or "which rows are recent" asks it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from riskwatch.core.arrays import write_npz
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import file_signature
from riskwatch.core.rowhash import hash_rows, hash_strings, insert_sorted, unique_hashes
from riskwatch.core.schema import COLUMNS, FEATURES, ID_COLUMN, SCHEMA, TARGET, UNLABELLED_SCHEMA
from riskwatch.data.datafiles import read_data_file
from riskwatch.state.artifacts import FINAL_DATA, UNLABELLED_CLIENTS
from riskwatch.state.records import TrainingWindow as TrainingWindow  # its home was here

log = logging.getLogger(__name__)

ROW_BATCHES_FILE = "rowbatches.npz"
# In unlabelledclients.csv: how many rows of finaldata.csv arrived before the row (its place in arrival order).
ARRIVED_AFTER_COLUMN = "arrived_after_row"
HOLDOUT_BUCKETS = 1_000_000


@dataclass(frozen=True)
class Batch:
    """One ingestion that added rows."""

    number: int
    ingested_at: str
    rows: int
    files: tuple[str, ...]


@dataclass(frozen=True)
class BatchBook:
    """Every row hash ingestion ever wrote (sorted) with the batch it first arrived in."""

    hashes: np.ndarray  # uint64, sorted
    numbers: np.ndarray  # int32, aligned with hashes
    batches: tuple[Batch, ...]
    # Each row's batch in finaldata.csv's order, valid while the file has this signature.
    row_batches: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    finaldata: list[int] | None = None

    @classmethod
    def empty(cls) -> BatchBook:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.int32), ())

    def aligned(self, row_batches: np.ndarray, finaldata: list[int]) -> BatchBook:
        """The book with each row's batch in the order of the ``finaldata.csv`` that has this signature."""
        return replace(self, row_batches=row_batches.astype(np.int32, copy=False), finaldata=finaldata)

    @property
    def latest(self) -> int:
        return self.batches[-1].number if self.batches else 0

    def batch_of(self, hashes: np.ndarray) -> np.ndarray:
        """The batch of each row hash; 0 for a hash the book does not hold."""
        if self.hashes.size == 0:
            return np.zeros(hashes.shape, np.int32)
        where = np.minimum(np.searchsorted(self.hashes, hashes), self.hashes.size - 1)
        return np.where(self.hashes[where] == hashes, self.numbers[where], 0).astype(np.int32)

    def first_batch(self, ordered: np.ndarray, files: list[str], ingested_at: str) -> BatchBook:
        """The book of a first batch made of the rows with these sorted hashes (no copy when they are distinct)."""
        if ordered.size > 1 and bool((ordered[1:] == ordered[:-1]).any()):
            ordered = unique_hashes(ordered)
        number = self.latest + 1
        return BatchBook(
            ordered,
            np.full(ordered.size, number, np.int32),
            (Batch(number, ingested_at, int(ordered.size), tuple(files)),),
        )

    def with_rows(self, hashes: np.ndarray, files: list[str], ingested_at: str) -> BatchBook:
        """The book with the rows it does not hold yet added as a new batch (itself when all are known)."""
        unknown = unique_hashes(hashes[self.batch_of(hashes) == 0])
        if unknown.size == 0:
            return self
        number = self.latest + 1
        hashes, numbers = insert_sorted(self.hashes, self.numbers, unknown, np.full(unknown.size, number, np.int32))
        return BatchBook(hashes, numbers, (*self.batches, Batch(number, ingested_at, int(unknown.size), tuple(files))))


def read_batch_book(folder: Path) -> BatchBook:
    """The batch book of an ingested-data folder; empty when there is none (or it cannot be read, with a warning)."""
    path = Path(folder) / ROW_BATCHES_FILE
    if not path.exists():
        return BatchBook.empty()
    try:
        # numpy leaves a file it opened itself open when the archive is damaged: open it here instead
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            batches = tuple(
                Batch(item["number"], item["ingested_at"], item["rows"], tuple(item["files"]))
                for item in meta["batches"]
            )
            book = BatchBook(
                stored["hashes"].astype(np.uint64),
                stored["numbers"].astype(np.int32),
                batches,
                stored["row_batches"].astype(np.int32),
                meta["finaldata"],
            )
    except Exception as exc:  # a damaged book: rows are then told apart as if it had never been kept
        log.warning(
            "%s cannot be read (%s: %s); the rows it described count as one earlier batch",
            path,
            type(exc).__name__,
            exc,
        )
        return BatchBook.empty()
    if book.hashes.shape != book.numbers.shape:
        log.warning("%s is inconsistent; the rows it described count as one earlier batch", path)
        return BatchBook.empty()
    return book


def write_batch_book(folder: Path, book: BatchBook) -> Path:
    """Write the batch book atomically."""
    path = Path(folder) / ROW_BATCHES_FILE
    meta = {
        "batches": [{**asdict(batch), "files": list(batch.files)} for batch in book.batches],
        "finaldata": book.finaldata,
    }
    write_npz(
        path,
        {
            "hashes": book.hashes,
            "numbers": book.numbers,
            "row_batches": book.row_batches,
            "meta": np.array(json.dumps(meta)),
        },
    )
    return path


@dataclass(frozen=True)
class IngestedData:
    """The rows of ``finaldata.csv`` with, for each, its hash and the batch it arrived in."""

    table: pa.Table
    hashes: np.ndarray
    batch: np.ndarray  # int32 per row
    batches: tuple[Batch, ...]

    @property
    def latest_batch(self) -> int:
        return int(self.batch.max(initial=0))

    @property
    def rows(self) -> int:
        return int(self.table.num_rows)

    @cached_property
    def _features(self) -> np.ndarray:
        return np.column_stack([self.table[name].to_numpy().astype(np.float64) for name in FEATURES])

    @cached_property
    def _labels(self) -> np.ndarray:
        labels: np.ndarray = self.table[TARGET].to_numpy().astype(np.int64)
        return labels

    def features(self, mask: np.ndarray | None = None) -> np.ndarray:
        """The features (float64, one column per feature) of every row, or of the rows in ``mask``."""
        return self._features if mask is None else self._features[mask]

    def labels(self, mask: np.ndarray | None = None) -> np.ndarray:
        return self._labels if mask is None else self._labels[mask]

    def in_batches(self, first: int, last: int | None = None) -> np.ndarray:
        """A mask of the rows that arrived in batches ``first`` to ``last`` (inclusive; None: the latest)."""
        selected = self.batch >= first
        return selected if last is None else selected & (self.batch <= last)

    def held_out(self, fraction: float) -> np.ndarray:
        """A mask of the rows chosen, by a hash of each row, to be held out of training: the same rows every run."""
        return (self.hashes % np.uint64(HOLDOUT_BUCKETS)) < np.uint64(round(fraction * HOLDOUT_BUCKETS))

    def newest(self, mask: np.ndarray, rows: int) -> np.ndarray:
        """Of the rows in ``mask``, the ``rows`` that arrived last (whole batches, newest first, the last one cut)."""
        chosen = np.zeros(self.rows, dtype=bool)
        if rows <= 0:
            return chosen
        candidates = np.flatnonzero(mask)
        order = candidates[np.argsort(-self.batch[candidates], kind="stable")]
        chosen[order[:rows]] = True
        return chosen

    def batch_weights(self, half_life: float, latest: int | None = None) -> np.ndarray:
        """Per row, a weight that halves every ``half_life`` batches back from the latest (1 for the latest)."""
        top = self.latest_batch if latest is None else latest
        return np.power(0.5, (top - self.batch) / half_life)

    def day_weights(self, half_life_days: float) -> np.ndarray:
        """Per row, a weight that halves every ``half_life_days`` days back from the latest batch's time."""
        stamps = {
            batch.number: np.datetime64(batch.ingested_at.rstrip("Z")) for batch in self.batches if batch.ingested_at
        }
        if not stamps:
            return np.ones(self.rows)
        latest = max(stamps.values())
        age_days = np.zeros(self.latest_batch + 1)
        for number, stamp in stamps.items():
            if number < age_days.size:
                age_days[number] = (latest - stamp) / np.timedelta64(1, "D")
        weights: np.ndarray = np.power(0.5, age_days[self.batch] / half_life_days)
        return weights


def read_final_data(path: Path) -> pa.Table:
    """The rows of ``finaldata.csv``: read as ingestion wrote them, or checked row by row if it was changed."""
    options = pa_csv.ConvertOptions(column_types=SCHEMA, include_columns=list(COLUMNS), strings_can_be_null=False)
    try:
        table = pa_csv.read_csv(path, convert_options=options)
        if table.schema.equals(SCHEMA) and all(table[name].null_count == 0 for name in COLUMNS):
            return table
    except (pa.ArrowInvalid, OSError):
        pass
    return read_data_file(path).table


def latest_rows(table: pa.Table) -> np.ndarray:
    """Row numbers of each corporation's last row (its latest state), in file order.

    Ids are told apart by their 64-bit hash (a sort of numbers, not of strings: 0.1 s for a
    million rows against 0.6 s for a group-by on the strings).
    """
    hashes = hash_strings(table[ID_COLUMN])[::-1]
    _, first_from_end = np.unique(hashes, return_index=True)
    return np.sort(table.num_rows - 1 - first_from_end)


def read_unlabelled_clients(folder: Path) -> pa.Table:
    """The latest unlabelled row of each client that has one, with ``arrived_after_row``; empty without any.

    Raises PipelineError naming the file when it cannot be read.
    """
    path = Path(folder) / UNLABELLED_CLIENTS
    schema = UNLABELLED_SCHEMA.append(pa.field(ARRIVED_AFTER_COLUMN, pa.int64()))
    if not path.exists():
        return schema.empty_table()
    options = pa_csv.ConvertOptions(column_types=schema, include_columns=schema.names, strings_can_be_null=False)
    try:
        table = pa_csv.read_csv(path, convert_options=options)
    except (pa.ArrowInvalid, OSError) as exc:
        raise PipelineError(
            f"{path} cannot be read ({str(exc).splitlines()[0][:120]}); run ingestion.py again"
        ) from None
    if any(table[name].null_count for name in schema.names):
        raise PipelineError(f"{path} has empty cells, which ingestion never writes; run ingestion.py again")
    return table


@dataclass(frozen=True)
class CurrentClients:
    """Each client's current state: its latest row by arrival, labelled and not exited, or not labelled yet."""

    ids: list[str]
    features: np.ndarray  # float64, one column per feature
    final_rows: np.ndarray  # the row of finaldata.csv holding the state; -1 for an unlabelled row

    @property
    def unlabelled(self) -> np.ndarray:
        return self.final_rows < 0


def select_current_clients(final: pa.Table, unlabelled: pa.Table) -> CurrentClients:
    """The latest row of each corporation over ``finaldata.csv`` and the unlabelled rows, in arrival order.

    A client whose latest row is labelled counts while it has not exited; one whose latest row is
    unlabelled counts (its outcome is not known yet). Clients come in the order their rows arrived.
    """
    rows = final.num_rows
    # Row r of finaldata.csv sits at 2r + 1; an unlabelled row after a rows of it, at 2a: between rows a - 1 and a.
    place = np.concatenate(
        [2 * np.arange(rows, dtype=np.int64) + 1, 2 * unlabelled[ARRIVED_AFTER_COLUMN].to_numpy().astype(np.int64)]
    )
    ids = pa.concat_arrays([final[ID_COLUMN].combine_chunks(), unlabelled[ID_COLUMN].combine_chunks()])
    order = np.argsort(place, kind="stable") if unlabelled.num_rows else np.arange(place.size)
    hashes = hash_strings(ids)[order][::-1]
    _, first_from_end = np.unique(hashes, return_index=True)
    chosen = np.sort(order[order.size - 1 - first_from_end])
    chosen = chosen[np.argsort(place[chosen], kind="stable")]
    labelled = chosen < rows
    keep = np.ones(chosen.size, dtype=bool)
    keep[labelled] = final[TARGET].to_numpy()[chosen[labelled]] == 0
    chosen = chosen[keep]
    features = np.column_stack(
        [
            np.concatenate([final[name].to_numpy(), unlabelled[name].to_numpy()]).astype(np.float64)[chosen]
            for name in FEATURES
        ]
    ).reshape(-1, len(FEATURES))
    return CurrentClients(
        ids=ids.take(pa.array(chosen)).to_pylist(),
        features=features,
        final_rows=np.where(chosen < rows, chosen, -1),
    )


def read_ingested_data(folder: Path) -> IngestedData:
    """``finaldata.csv`` of an ingested-data folder with each row's batch.

    Rows the batch book does not hold (written by an older version, or by an ingestion that
    died before it kept the book) count as one batch after the latest it knows; with no book
    at all, every row is batch 1.
    """
    path = Path(folder) / FINAL_DATA
    if not path.exists():
        raise PipelineError(f"{path} does not exist; run ingestion.py first")
    table = read_final_data(path)
    hashes = hash_rows(table)
    book = read_batch_book(folder)
    if book.finaldata == file_signature(path) and book.row_batches.size == table.num_rows:
        batch = book.row_batches.copy()
    else:
        batch = book.batch_of(hashes)
    unknown = batch == 0
    batches = book.batches
    if unknown.any():
        number = book.latest + 1
        batch[unknown] = number
        batches = (*batches, Batch(number, "", int(unknown.sum()), ()))
        if book.batches:
            log.warning("%d row(s) of %s have no recorded batch; they count as batch %d", unknown.sum(), path, number)
    return IngestedData(table, hashes, batch, batches)


WINDOW_NAMES = ("all", "recent", "weighted")
