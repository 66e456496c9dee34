"""The current clients ranked by exit probability, and what drives each one's risk.

A current client is a corporation whose latest row by arrival is labelled with ``exited`` = 0, or
is not labelled yet (``unlabelledclients.csv``): see ``common.batches.select_current_clients``.
What drives a client's risk comes from common/drivers.py, as in the API and the report.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from common.batches import CurrentClients, IngestedData
from common.drivers import explain_clients
from common.schema import FEATURES, ID_COLUMN

if TYPE_CHECKING:
    from common.riskmodels import RiskModel

SORT_KEYS = ("probability", ID_COLUMN, *FEATURES)


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
class ClientTable:
    """Every current client, scored once per deployed version and version of the ingested data."""

    version: str
    threshold: float
    ids: list[str]
    unlabelled: np.ndarray  # bool: the client's state is a row whose outcome is not known yet
    features: np.ndarray  # float64, one column per feature
    probabilities: np.ndarray
    drivers_model: RiskModel | None  # None for a model whose risk cannot be split into drivers
    orders: dict[str, np.ndarray]  # sort key -> row order, ascending
    position: dict[str, int]  # corporation -> row
    rank: np.ndarray  # 1 for the highest probability
    history: dict[str, list[ClientRow]]

    @property
    def at_risk(self) -> int:
        return int(np.count_nonzero(self.probabilities >= self.threshold))

    @property
    def expected_exits(self) -> float:
        return float(self.probabilities.sum())

    def select(self, query: str, sort: str, descending: bool) -> np.ndarray:
        """The rows whose id contains ``query`` (any case), in the order asked for."""
        order = self.orders[sort]
        if descending:
            order = order[::-1]
        query = query.strip().lower()
        if not query:
            return order
        matching = np.fromiter((query in name.lower() for name in self.ids), dtype=bool, count=len(self.ids))
        return order[matching[order]]

    def detail(self, corporation: str) -> ClientDetail | None:
        row = self.position.get(corporation)
        if row is None:
            return None
        values = {name: int(self.features[row, j]) for j, name in enumerate(FEATURES)}
        contributions = baseline = log_odds = None
        sentence = "This model's arithmetic cannot be split into per-feature contributions."
        if self.drivers_model is not None:
            drivers = explain_clients(self.drivers_model, self.features[row : row + 1])
            baseline, (client,) = drivers.baseline_log_odds, drivers.clients
            contributions, log_odds, sentence = client.contributions, client.log_odds, client.reason
        return ClientDetail(
            corporation=corporation,
            rank=int(self.rank[row]),
            probability=float(self.probabilities[row]),
            at_risk=bool(self.probabilities[row] >= self.threshold),
            values=values,
            rows=self.history.get(corporation, []),
            baseline=baseline,
            contributions=contributions,
            log_odds=log_odds,
            driver_sentence=sentence,
        )


def client_histories(ids: list[str], data: IngestedData, wanted: set[str]) -> dict[str, list[ClientRow]]:
    """Every row of each wanted corporation, in the order they were written, with its batch."""
    times = {batch.number: batch.ingested_at for batch in data.batches}
    features = data.features()
    labels = data.labels()
    found: dict[str, list[ClientRow]] = defaultdict(list)
    for row, name in enumerate(ids):
        if name in wanted:
            number = int(data.batch[row])
            values = {feature: int(features[row, j]) for j, feature in enumerate(FEATURES)}
            found[name].append(ClientRow(number, times.get(number, ""), values, int(labels[row])))
    return dict(found)


def build_client_table(
    version: str,
    drivers_model: RiskModel | None,
    threshold: float,
    predict: Any,
    data: IngestedData,
    current: CurrentClients,
) -> ClientTable:
    """Score the current clients with ``predict`` (features -> probabilities) and index them for the pages.

    ``drivers_model``: the served model's arithmetic, to tell what drives each client's risk (None when it has none).
    ``data``: the labelled rows, for each client's rows as they arrived.
    """
    ids = current.ids
    features = np.ascontiguousarray(current.features)
    probabilities = np.asarray(predict(features), dtype=np.float64)
    orders = {"probability": np.argsort(probabilities, kind="stable")}
    orders[ID_COLUMN] = np.argsort(np.array(ids, dtype=object), kind="stable")
    for j, name in enumerate(FEATURES):
        orders[name] = np.argsort(features[:, j], kind="stable")
    rank = np.empty(len(ids), dtype=np.int64)
    rank[orders["probability"][::-1]] = np.arange(1, len(ids) + 1)
    return ClientTable(
        version=version,
        threshold=threshold,
        ids=ids,
        unlabelled=current.unlabelled,
        features=features,
        probabilities=probabilities,
        drivers_model=drivers_model,
        orders=orders,
        position={name: row for row, name in enumerate(ids)},
        rank=rank,
        history=add_unlabelled_rows(client_histories(data.table[ID_COLUMN].to_pylist(), data, set(ids)), current),
    )


def add_unlabelled_rows(history: dict[str, list[ClientRow]], current: CurrentClients) -> dict[str, list[ClientRow]]:
    """Each client's rows with, last, the unlabelled row that is its current state (when it is one)."""
    for row in np.flatnonzero(current.unlabelled).tolist():
        values = {name: int(current.features[row, j]) for j, name in enumerate(FEATURES)}
        history.setdefault(current.ids[row], []).append(ClientRow(0, "", values, None))
    return history


# A cell starting with one of these is a formula to a spreadsheet (OWASP's list for CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: str) -> str:
    """A text cell a spreadsheet shows as text: one that would start a formula gets a leading apostrophe."""
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


def clients_csv(table: ClientTable, rows: np.ndarray) -> str:
    """The chosen clients as CSV: rank, id, probability (full precision), at risk, and the counts.

    The ids are the only text: one that a spreadsheet would run as a formula is neutralised; the other
    cells are numbers this function makes (the counts are non-negative whole numbers).
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", ID_COLUMN, "probability", "at_risk", *FEATURES])
    for row in rows.tolist():
        counts = [int(value) for value in table.features[row]]
        probability = float(table.probabilities[row])
        writer.writerow(
            [
                int(table.rank[row]),
                spreadsheet_text(table.ids[row]),
                repr(probability),
                int(probability >= table.threshold),
                *counts,
            ]
        )
    return out.getvalue()
