"""The current clients ranked by exit probability, and what drives each one's risk.

A current client is a corporation whose latest row by arrival is labelled with ``exited`` = 0, or
is not labelled yet (``unlabelledclients.csv``): see ``riskwatch.data.batches.select_current_clients``.
What drives a client's risk comes from riskwatch/model/drivers.py, as in the API and the report.

The table is columns of Arrow arrays (``CLIENT_SCHEMA``): the ids, the counts, the probabilities,
the ranks, the sort orders and each client's rows as they arrived. ``build_client_columns`` makes
them; riskwatch/model/clientstore.py keeps them in a file that every worker maps, so a worker's
``ClientTable`` holds views into shared pages rather than its own copies.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from riskwatch.core.schema import FEATURES, ID_COLUMN, TARGET
from riskwatch.data.batches import CurrentClients, IngestedData
from riskwatch.model.drivers import explain_clients

if TYPE_CHECKING:
    from riskwatch.model.riskmodels import RiskModel

SORT_KEYS = ("probability", ID_COLUMN, *FEATURES)

LOWER_COLUMN = "corporation_lower"  # each id as Python's str.lower() gives it, for the search
COUNTS_COLUMN = "counts"  # the features, one fixed-size list of float64 per client (a (clients, features) matrix)
HISTORY_COLUMN = "history"
ORDER_PREFIX = "order_"  # order_<sort key>: the rows in ascending order of that key (stable)
TABLE_METADATA = b"client_table"  # the schema's metadata: JSON of TableFacts
UNKNOWN_OUTCOME = -1  # ``exited`` of a history row whose outcome is not known yet

HISTORY_TYPE = pa.struct(
    [pa.field("batch", pa.int32(), nullable=False)]
    + [pa.field(name, pa.int64(), nullable=False) for name in FEATURES]
    + [pa.field(TARGET, pa.int8(), nullable=False)]
)
CLIENT_SCHEMA = pa.schema(
    [
        pa.field(ID_COLUMN, pa.string(), nullable=False),
        pa.field(LOWER_COLUMN, pa.string(), nullable=False),
        pa.field(COUNTS_COLUMN, pa.list_(pa.float64(), len(FEATURES)), nullable=False),
        pa.field("probability", pa.float64(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("unlabelled", pa.bool_(), nullable=False),
        *(pa.field(f"{ORDER_PREFIX}{key}", pa.int32(), nullable=False) for key in SORT_KEYS),
        pa.field(HISTORY_COLUMN, pa.list_(HISTORY_TYPE), nullable=False),
    ]
)


@dataclass(frozen=True)
class ClientRow:
    """One row of a client as it arrived: the batch, its time, the counts and the label (None: not known yet)."""

    batch: int
    ingested_at: str
    values: dict[str, int]
    exited: int | None


@dataclass(frozen=True)
class ClientDetail:
    corporation: str
    rank: int
    probability: float
    at_risk: bool
    values: dict[str, int]
    rows: list[ClientRow]
    baseline: float | None
    contributions: dict[str, float] | None
    log_odds: float | None
    driver_sentence: str


@dataclass(frozen=True)
class TableFacts:
    """What the columns' metadata records: the batch times (for the history rows) and the cache file's key."""

    batch_times: dict[int, str]
    key: str = ""  # the cache file's key (riskwatch/model/clientstore.py); "" for columns never stored

    def to_metadata(self) -> dict[bytes, bytes]:
        facts = {"batch_times": {str(number): time for number, time in self.batch_times.items()}, "key": self.key}
        return {TABLE_METADATA: json.dumps(facts).encode()}

    @classmethod
    def from_columns(cls, columns: pa.Table) -> TableFacts:
        """The facts in the columns' metadata; ValueError when there are none or they do not read."""
        stored = (columns.schema.metadata or {}).get(TABLE_METADATA)
        if stored is None:
            raise ValueError("the columns carry no client-table metadata")
        facts = json.loads(stored)
        times = {int(number): str(time) for number, time in facts["batch_times"].items()}
        return cls(times, str(facts["key"]))


class IdColumn(Sequence[str]):
    """The ids as a read-only sequence of str over an Arrow string array (no Python list of them is kept)."""

    def __init__(self, array: pa.StringArray, find: Callable[[str], int | None]):
        self._array = array
        self._find = find

    def __len__(self) -> int:
        return len(self._array)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return list(self._array[index].to_pylist())
        return str(self._array[int(index)].as_py())

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and self._find(value) is not None

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self._array), 65_536):
            yield from self._array[start : start + 65_536].to_pylist()


# The request paths convert between Arrow and numpy through buffers: pyarrow's to_numpy and pa.array of a numpy
# array import pandas (0.6 s and 20 MiB in a worker), which nothing here needs.


def single_array(column: pa.ChunkedArray) -> pa.Array:
    """A column as one array: its only chunk (no copy), or its chunks joined."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def numeric_view(array: pa.Array, dtype: type[np.generic]) -> np.ndarray:
    """A numeric array without nulls as a numpy array over the same memory (read-only when mapped)."""
    if len(array) == 0:
        return np.empty(0, dtype)
    size = np.dtype(dtype).itemsize
    return np.frombuffer(array.buffers()[1], dtype, count=len(array), offset=array.offset * size)


def bool_values(array: pa.BooleanArray) -> np.ndarray:
    """A boolean array without nulls as numpy bools (unpacked from its bits: a copy, a byte per value)."""
    if len(array) == 0:
        return np.zeros(0, bool)
    bits = np.frombuffer(array.buffers()[1], np.uint8)
    return np.unpackbits(bits, count=array.offset + len(array), bitorder="little")[array.offset :].astype(bool)


def index_array(rows: np.ndarray) -> pa.Array:
    """Row numbers as an Arrow array, for ``take``."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(rows), [None, pa.py_buffer(rows)])


class ClientTable:
    """Every current client, scored once per deployed version and version of the ingested data.

    ``columns`` (``CLIENT_SCHEMA``) usually live in a memory-mapped file: the arrays here are views
    into it. ``version``, ``threshold`` and ``drivers_model`` are the served model's.
    """

    def __init__(self, columns: pa.Table, version: str, threshold: float, drivers_model: RiskModel | None):
        self.columns = columns
        self.version = version
        self.threshold = threshold
        self.drivers_model = drivers_model  # None for a model whose risk cannot be split into drivers
        self.facts = TableFacts.from_columns(columns)
        self._ids = single_array(columns[ID_COLUMN])
        self._lower = single_array(columns[LOWER_COLUMN])
        self._history = single_array(columns[HISTORY_COLUMN])
        self.ids = IdColumn(self._ids, self.row_of)
        counts = single_array(columns[COUNTS_COLUMN]).flatten()
        self.features = numeric_view(counts, np.float64).reshape(-1, len(FEATURES))
        self.probabilities = numeric_view(single_array(columns["probability"]), np.float64)
        self.rank = numeric_view(single_array(columns["rank"]), np.int32)  # 1 for the highest probability
        self.orders = {key: numeric_view(single_array(columns[f"{ORDER_PREFIX}{key}"]), np.int32) for key in SORT_KEYS}

    @cached_property
    def unlabelled(self) -> np.ndarray:
        """bool per client: its state is a row whose outcome is not known yet."""
        return bool_values(single_array(self.columns["unlabelled"]))

    @cached_property
    def at_risk(self) -> int:
        return int(np.count_nonzero(self.probabilities >= self.threshold))

    @cached_property
    def expected_exits(self) -> float:
        return float(self.probabilities.sum())

    def ids_of(self, rows: np.ndarray) -> list[str]:
        """The ids of these rows, in their order."""
        return list(self._ids.take(index_array(rows)).to_pylist())

    def row_of(self, corporation: str) -> int | None:
        """The row of a client by its id (a binary search over the ids in sorted order), or None."""
        order = self.orders[ID_COLUMN]

        def id_at(place: int) -> str:
            return self.ids[int(order[place])]

        found = bisect.bisect_left(range(len(order)), corporation, key=id_at)
        return int(order[found]) if found < len(order) and id_at(found) == corporation else None

    def select(self, query: str, sort: str, descending: bool) -> np.ndarray:
        """The rows whose id contains ``query`` (any case), in the order asked for."""
        order = self.orders[sort]
        if descending:
            order = order[::-1]
        query = query.strip().lower()
        if not query:
            return order
        try:
            query.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no id holds one
            return order[:0]
        matching = bool_values(pc.match_substring(self._lower, query))
        return np.asarray(order[matching[order]])

    def history(self, row: int) -> list[ClientRow]:
        """The client's rows as they arrived, then its unlabelled current state when it is one."""
        found = []
        for item in self._history[row].values.to_pylist():
            values = {name: int(item[name]) for name in FEATURES}
            if item[TARGET] == UNKNOWN_OUTCOME:
                found.append(ClientRow(0, "", values, None))
            else:
                number = int(item["batch"])
                found.append(ClientRow(number, self.facts.batch_times.get(number, ""), values, int(item[TARGET])))
        return found

    def detail(self, corporation: str) -> ClientDetail | None:
        row = self.row_of(corporation)
        if row is None:
            return None
        features = self.features[[row]]
        values = {name: int(features[0, j]) for j, name in enumerate(FEATURES)}
        contributions = baseline = log_odds = None
        sentence = "This model's arithmetic cannot be split into per-feature contributions."
        if self.drivers_model is not None:
            drivers = explain_clients(self.drivers_model, features)
            baseline, (client,) = drivers.baseline_log_odds, drivers.clients
            contributions, log_odds, sentence = client.contributions, client.log_odds, client.reason
        return ClientDetail(
            corporation=corporation,
            rank=int(self.rank[row]),
            probability=float(self.probabilities[row]),
            at_risk=bool(self.probabilities[row] >= self.threshold),
            values=values,
            rows=self.history(row),
            baseline=baseline,
            contributions=contributions,
            log_odds=log_odds,
            driver_sentence=sentence,
        )


# ---------------------------------------------------------------- building the columns (arrays in, arrays out)


def riskiest_first(probabilities: np.ndarray) -> np.ndarray:
    """The rows from the highest exit probability to the lowest; of equal ones, the later row first. The one
    ranking of clients: the client table's probability order read backwards (``/clients``, the dashboard), and
    the report's top clients."""
    return ascending_risk(probabilities)[::-1]


def ascending_risk(probabilities: np.ndarray) -> np.ndarray:
    return np.argsort(probabilities, kind="stable")


def sort_orders(ids: pa.StringArray, features: np.ndarray, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Each sort key's row order, ascending and stable (ids are unique; Arrow orders them by code point, as
    Python does); read backwards for a descending sort, so the probability's is ``riskiest_first``."""
    orders = {"probability": ascending_risk(probabilities)}
    orders[ID_COLUMN] = np.asarray(pc.sort_indices(ids).to_numpy())
    for j, name in enumerate(FEATURES):
        orders[name] = np.argsort(features[:, j], kind="stable")
    return orders


def history_entries(data: IngestedData, ids: pa.StringArray, current: CurrentClients) -> tuple[np.ndarray, pa.Array]:
    """Each client's rows: every row of ``finaldata.csv`` with its id, in the order written, then its unlabelled
    current state when it is one. Returns (the row offsets per client, the rows as ``HISTORY_TYPE``)."""
    final = data.table
    owner = pc.index_in(final[ID_COLUMN], value_set=ids)  # the client each row belongs to; null: not current
    found = np.flatnonzero(np.asarray(owner.is_valid().to_numpy(zero_copy_only=False)))
    owners = np.asarray(pc.drop_null(owner).to_numpy(), dtype=np.int64)
    unlabelled = np.flatnonzero(current.unlabelled)
    # Labelled rows first, then the unlabelled ones: a stable sort by client keeps that order within each client.
    order = np.argsort(np.concatenate([owners, unlabelled]), kind="stable")
    batch = np.concatenate([data.batch[found].astype(np.int32), np.zeros(unlabelled.size, np.int32)])[order]
    exited = np.concatenate(
        [final[TARGET].to_numpy()[found].astype(np.int8), np.full(unlabelled.size, UNKNOWN_OUTCOME, np.int8)]
    )[order]
    fields = [pa.array(batch, pa.int32())]
    for j, name in enumerate(FEATURES):
        labelled = np.asarray(final[name].to_numpy(), dtype=np.int64)[found]
        pending = current.features[unlabelled, j].astype(np.int64)
        fields.append(pa.array(np.concatenate([labelled, pending])[order], pa.int64()))
    fields.append(pa.array(exited, pa.int8()))
    entries = pa.StructArray.from_arrays(fields, fields=list(HISTORY_TYPE))
    per_client = np.bincount(np.concatenate([owners, unlabelled]), minlength=len(ids))
    offsets = np.zeros(len(ids) + 1, np.int32)
    np.cumsum(per_client, out=offsets[1:])
    return offsets, entries


def build_client_columns(probabilities: np.ndarray, data: IngestedData, current: CurrentClients) -> pa.Table:
    """The columns of the client table (``CLIENT_SCHEMA``) for the current clients scored with ``probabilities``.

    ``data``: the labelled rows, for each client's rows as they arrived.
    """
    count = len(current.ids)
    ids = pa.array(current.ids, pa.string())
    features = np.ascontiguousarray(current.features, dtype=np.float64).reshape(count, len(FEATURES))
    probabilities = np.asarray(probabilities, dtype=np.float64)
    orders = sort_orders(ids, features, probabilities)
    rank = np.empty(count, dtype=np.int32)
    rank[orders["probability"][::-1]] = np.arange(1, count + 1, dtype=np.int32)
    offsets, entries = history_entries(data, ids, current)
    counts = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1), pa.float64()), len(FEATURES))
    arrays = [
        ids,
        pa.array([name.lower() for name in current.ids], pa.string()),
        counts,
        pa.array(probabilities, pa.float64()),
        pa.array(rank, pa.int32()),
        pa.array(np.asarray(current.unlabelled, dtype=bool), pa.bool_()),
        *(pa.array(orders[key].astype(np.int32), pa.int32()) for key in SORT_KEYS),
        pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), entries),
    ]
    facts = TableFacts({batch.number: batch.ingested_at for batch in data.batches})
    return pa.Table.from_arrays(arrays, schema=CLIENT_SCHEMA.with_metadata(facts.to_metadata()))


# ---------------------------------------------------------------- the CSV download

# A cell starting with one of these is a formula to a spreadsheet (OWASP's list for CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_HEADER = ["rank", ID_COLUMN, "probability", "at_risk", *FEATURES]
CSV_CHUNK_ROWS = 20_000


def spreadsheet_text(value: str) -> str:
    """A text cell a spreadsheet shows as text: one that would start a formula gets a leading apostrophe."""
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


def stream_clients_csv(table: ClientTable, rows: np.ndarray, chunk_rows: int = CSV_CHUNK_ROWS) -> Iterator[str]:
    """The chosen clients as CSV, in pieces of ``chunk_rows`` rows: rank, id, probability (full precision), at
    risk, and the counts.

    The ids are the only text: one that a spreadsheet would run as a formula is neutralised; the other
    cells are numbers this function makes (the counts are non-negative whole numbers).
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    yield out.getvalue()
    for start in range(0, len(rows), chunk_rows):
        part = np.asarray(rows[start : start + chunk_rows], dtype=np.int64)
        out.seek(0)
        out.truncate()
        probabilities = table.probabilities[part]
        ids = table.ids_of(part)
        writer.writerows(
            zip(
                table.rank[part].tolist(),
                map(spreadsheet_text, ids),
                map(repr, probabilities.tolist()),
                (probabilities >= table.threshold).astype(np.int64).tolist(),
                *table.features[part].astype(np.int64).T.tolist(),
                strict=True,
            )
        )
        yield out.getvalue()
