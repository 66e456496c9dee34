"""What the pages read, each computed once per change of the files behind it.

The client table is keyed by the serving version (and its model file) and the ingested-data files'
signatures, and kept in a file every worker maps (riskwatch/model/clientstore.py); the run history by the
SQLite file's (and its write-ahead log's) signature; small JSON files by their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
from flask import Flask

from riskwatch.core.cache import Cached, files_signature
from riskwatch.core.config import Config
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import parse_utc
from riskwatch.data.batches import (
    ROW_BATCHES_FILE,
    IngestedData,
    read_ingested_data,
    read_unlabelled_clients,
    select_current_clients,
)
from riskwatch.model.clients import ClientTable, build_client_columns
from riskwatch.model.clientstore import CLIENT_TABLES_FOLDER, TableKey, open_client_columns
from riskwatch.state.artifacts import (
    DIAGNOSTICS_FILE,
    EVALUATION_WINDOW_FILE,
    FINAL_DATA,
    MODEL_FILE,
    UNLABELLED_CLIENTS,
    VERSIONS_FOLDER,
    decision_threshold,
    load_deployed_version,
)
from riskwatch.state.history import read_runs
from riskwatch.state.records import Diagnostics, EvaluationWindow, read_diagnostics_record, read_evaluation_window
from riskwatch.state.runs import StoredRun
from riskwatch.web.serving import ServedModel

log = logging.getLogger("dashboard")

HISTORY_RUNS = 1000  # runs the pages look back over
SOURCES = "risk_dashboard_sources"

Record = TypeVar("Record")


@dataclass(frozen=True)
class Comparison:
    """The previous version's view of today's active clients."""

    version: str
    at_risk: int
    expected_exits: float


class DashboardSources:
    """The pipeline's files as the pages see them, for one app."""

    def __init__(self, config: Config):
        self.config = config
        self._clients: Cached[ClientTable] = Cached()
        self._previous: Cached[Comparison | None] = Cached()
        self._runs: Cached[list[StoredRun]] = Cached()
        self._data: Cached[IngestedData] = Cached()
        self._json: dict[str, Cached[Any]] = {}

    @property
    def final_data(self) -> Path:
        return self.config.output_folder_path / FINAL_DATA

    @property
    def data_files(self) -> list[Path]:
        """The files the ingested data is read from: their signatures say when to read it again."""
        folder = self.config.output_folder_path
        return [self.final_data, folder / ROW_BATCHES_FILE, folder / UNLABELLED_CLIENTS]

    def ingested(self) -> IngestedData:
        key = files_signature(self.data_files[:2])
        return self._data.get(key, lambda: read_ingested_data(self.config.output_folder_path))

    @property
    def client_tables(self) -> Path:
        """The folder the client tables are kept in, beside the ingested data they are made of."""
        return self.config.output_folder_path / CLIENT_TABLES_FOLDER

    def clients(self, served: ServedModel) -> ClientTable:
        """The current clients scored by the serving model; PipelineError without ingested data."""
        key = TableKey(served.version, served.model_stamp, files_signature(self.data_files))

        def compute() -> ClientTable:
            threshold = decision_threshold(served.deployed.model)
            columns = open_client_columns(
                self.client_tables,
                key,
                lambda: self.score_clients(served),
                lambda: files_signature(self.data_files) == key.data,
            )
            return ClientTable(columns, served.version, threshold, served.shortcut)

        return self._clients.get(key, compute)

    def score_clients(self, served: ServedModel) -> pa.Table:
        """The client table's columns: the current clients of the ingested data scored by the serving model.

        The ingested data is read for this alone and not kept: the table holds what the pages need of it.
        """
        folder = self.config.output_folder_path
        data = read_ingested_data(folder)
        current = select_current_clients(data.table, read_unlabelled_clients(folder))
        probabilities = served.predict(np.ascontiguousarray(current.features))[0]
        columns = build_client_columns(probabilities, data, current)
        log.info(
            "scored %d current clients (%d not labelled yet) with %s",
            len(current.ids),
            int(current.unlabelled.sum()),
            served.version,
        )
        return columns

    def previous(self, served: ServedModel, table: ClientTable) -> Comparison | None:
        """The version deployed before the serving one, on the same clients; None when it is gone."""
        name = served.deployed.version_info.previous_version
        if not name:
            return None
        folder = self.config.prod_deployment_path / VERSIONS_FOLDER / name

        def compute() -> Comparison | None:
            try:
                model = load_deployed_version(folder).model
            except (PipelineError, OSError) as exc:
                log.info("previous version %s cannot be compared: %s", name, exc)
                return None
            probabilities = model.predict_proba(table.features)[:, 1]
            threshold = decision_threshold(model)
            return Comparison(name, int(np.count_nonzero(probabilities >= threshold)), float(probabilities.sum()))

        key = (name, served.version, files_signature([self.final_data]), files_signature([folder / MODEL_FILE]))
        return self._previous.get(key, compute)

    def runs(self) -> list[StoredRun]:
        """The run history, newest first; [] without one."""
        path = self.config.history_path
        # A shared database has no file to watch: its runs are read again every few seconds.
        key = files_signature([path, Path(f"{path}-wal")]) if isinstance(path, Path) else time.monotonic() // 5
        return self._runs.get(key, lambda: read_runs(path, HISTORY_RUNS))

    def runs_or_empty(self) -> list[StoredRun]:
        """The run history, or [] (logged) when it cannot be read: the pages still answer."""
        try:
            return self.runs()
        except PipelineError as exc:
            log.error("the run history cannot be read: %s", exc)
            return []

    def stored_record(self, name: str, read: Callable[[Path], Record]) -> Record | None:
        """A JSON record of the model folder, read by ``read``; None when missing or unreadable."""
        path = self.config.output_model_path / name
        cache = self._json.setdefault(name, Cached())

        def compute() -> Record | None:
            try:
                return read(path)
            except PipelineError as exc:
                log.info("%s", exc)
                return None

        found: Record | None = cache.get(files_signature([path]), compute)
        return found

    def recent_window(self, version: str) -> EvaluationWindow | None:
        stored = self.stored_record(EVALUATION_WINDOW_FILE, read_evaluation_window)
        return stored.of_version(version) if stored is not None else None

    def diagnostics(self) -> Diagnostics | None:
        return self.stored_record(DIAGNOSTICS_FILE, read_diagnostics_record)


def describe_age(text: str | None, now: datetime | None = None) -> str:
    """How long ago a UTC time was, in words: "12 minutes ago"."""
    moment = parse_utc(text)
    if moment is None:
        return "at an unknown time"
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    if seconds < 60:
        return "just now" if seconds >= 0 else "in the future (check the clock)"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"


def app_sources(app: Flask) -> DashboardSources:
    """The app's one DashboardSources, made on first use: the pages and the API share its scored client table."""
    found = app.extensions.get(SOURCES)
    if found is None:
        found = app.extensions.setdefault(SOURCES, DashboardSources(app.config["RISK_CONFIG"]))
    return found
