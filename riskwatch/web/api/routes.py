"""The JSON API as a blueprint: /prediction, /clients, /scoring, /summarystats, /diagnostics, /history,
/health, /version."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from flask import Blueprint, Response, after_this_request, current_app, request
from werkzeug.exceptions import BadRequest, NotFound, RequestEntityTooLarge, ServiceUnavailable

from riskwatch.core.cache import FileBackedValue
from riskwatch.core.config import MODEL_FAMILIES, Config
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import LockHeld, find_test_files
from riskwatch.core.schema import FeatureBatch
from riskwatch.data.datastats import read_numeric_columns, summary_statistics
from riskwatch.model.clients import ClientTable
from riskwatch.model.drivers import ClientDrivers, RiskDrivers, explain_clients
from riskwatch.model.riskmodels import RiskModel
from riskwatch.state.artifacts import DIAGNOSTICS_FILE, FINAL_DATA, check_final_data
from riskwatch.state.history import read_deploying_run, read_runs
from riskwatch.state.records import (
    EvaluationWindow,
    MissingData,
    read_diagnostics_record,
    record_to_json,
)
from riskwatch.web.api.inputs import read_flag, read_prediction_input
from riskwatch.web.api.locations import LocationReader
from riskwatch.web.api.memory import release_free_memory
from riskwatch.web.serving import DeploymentWatcher, ServedModel
from riskwatch.web.sources import app_sources

log = logging.getLogger("app")

bp = Blueprint("api", __name__)
API_STATE = "risk_api"

HISTORY_DEFAULT_RUNS = 50
HISTORY_MAX_RUNS = 1000
RANKING_DEFAULT_CLIENTS = 50
RANKING_MAX_CLIENTS = 1000
# A /prediction answer of more rows is made and sent this many rows at a time (explain: about 0.6 MB a part).
ANSWER_PART_ROWS = 2_000
TRIM_AFTER_ROWS = 100_000  # around a request of this many rows, the freed memory is given back to the system
PARAMETER_DIGITS = 9  # a longer number in a query parameter is refused before it is parsed
METRIC_KEYS = ("f1", "precision", "recall", "roc_auc", "accuracy", "brier_score", "log_loss", "confusion", "rows")
RECENT_WINDOW_KEYS = ("rows", "batches", "f1", "precision", "recall", "roc_auc", "updated_at", "test_data_drift")
MISSING_DATA_KEYS = ("dataset", "rows", "percent", "unreadable")


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status=status, mimetype="application/json"
    )


@dataclass(frozen=True)
class ScoredRows:
    """What a /prediction answer is made of: each row's id, probability and label and, with ``explain``, the model
    that splits the risk into drivers and the rows' features (None without: a streamed answer does not keep them)."""

    version: str
    ids: list[str | None] | pa.Array | None
    probabilities: np.ndarray
    labels: np.ndarray
    drivers_model: RiskModel | None = None
    features: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(self.probabilities)

    def ids_in(self, part: slice) -> list[str | None] | None:
        """The ids of one part of the rows; None when the rows have none."""
        if isinstance(self.ids, pa.Array):
            return self.ids[part].to_pylist()
        return None if self.ids is None else self.ids[part]


def answer_predictions(served: ServedModel, batch: FeatureBatch, explain: bool = False) -> Response:
    """Each row's probability and label; with ``explain``, also what drives its risk, and the baseline once.

    An answer of more than ``ANSWER_PART_ROWS`` rows is sent in parts as they are made (chunked), so a worker
    never holds a whole large answer, and a client that does not read holds back only the next part.
    """
    drivers_model = explainable(served) if explain else None  # a 400 before anything is sent
    if drivers_model is None and batch.rows == 1:  # most requests: one record, scored without arrays
        probability, label = served.predict_one(batch.features)
        return Response(
            encode_one_answer(served.version, batch.ids, probability, label), content_type="application/json"
        )
    probabilities, labels = served.predict(batch.features)
    streamed = batch.rows > ANSWER_PART_ROWS
    scored = ScoredRows(
        served.version,
        # While a large answer is sent, the ids are one Arrow array: about 13 bytes an id, 66 in a Python list.
        pa.array(batch.ids, pa.string()) if streamed and batch.ids is not None else batch.ids,
        probabilities,
        labels.astype(np.int8) if streamed else labels,  # 0 or 1: an eighth of the memory while sent in parts
        drivers_model,
        batch.features if explain else None,
    )
    if not streamed:
        return Response(encode_answer(scored), content_type="application/json")
    return Response(prediction_parts(scored), content_type="application/json")


def encode_answer(scored: ScoredRows) -> bytes:
    """The whole answer's JSON at once (the bytes ``prediction_parts`` makes in parts)."""
    return orjson.dumps(
        {**answer_head(scored), "predictions": describe_rows(scored, slice(None))}, option=orjson.OPT_SERIALIZE_NUMPY
    )


def encode_one_answer(version: str, ids: list[str | None] | None, probability: float, label: int) -> bytes:
    """The answer for one row without drivers: the bytes ``encode_answer`` makes of it."""
    return orjson.dumps(
        {"model_version": version, "rows": 1, "predictions": describe_predictions(ids, [label], [probability])}
    )


def release_memory_when_sent(response: Response) -> Response:
    """Once ``response`` is sent (or its client gone), give the memory its request freed back to the system."""
    response.call_on_close(release_free_memory)
    return response


def release_memory_now_and_when_sent(response: Response) -> Response:
    """Give back what reading a large request's rows took (free once its view has returned, before the answer is
    sent, so a client that reads slowly does not keep it), and once the answer is sent what it held."""
    release_free_memory()
    return release_memory_when_sent(response)


def prediction_parts(scored: ScoredRows) -> Iterator[bytes]:
    """The answer's JSON, ``ANSWER_PART_ROWS`` rows at a time; joined, the bytes orjson makes of the whole answer
    ``{"model_version", "rows", ["baseline_log_odds",] "predictions": [...]}``."""
    yield orjson.dumps(answer_head(scored))[:-1] + b',"predictions":['
    for start in range(0, scored.rows, ANSWER_PART_ROWS):
        yield encode_rows(scored, slice(start, start + ANSWER_PART_ROWS), first=start == 0)
    yield b"]}"


def answer_head(scored: ScoredRows) -> dict[str, Any]:
    """What the answer says before its rows: the model's version, the number of rows and, with drivers, the
    baseline log-odds."""
    head: dict[str, Any] = {"model_version": scored.version, "rows": scored.rows}
    if scored.drivers_model is not None:
        head["baseline_log_odds"] = scored.drivers_model.baseline_log_odds
    return head


def encode_rows(scored: ScoredRows, part: slice, first: bool) -> bytes:
    """One part's rows as JSON, without the list's brackets, after a comma unless ``first``. Made in a function
    of its own, so the rows' objects are gone while the part waits for a slow client."""
    encoded = orjson.dumps(describe_rows(scored, part), option=orjson.OPT_SERIALIZE_NUMPY)
    return encoded[1:-1] if first else b"," + encoded[1:-1]


def describe_rows(scored: ScoredRows, part: slice) -> list[dict[str, Any]]:
    """The answer's rows for one part of the batch (what drives a row's risk depends on that row alone)."""
    rows = describe_predictions(scored.ids_in(part), scored.labels[part].tolist(), scored.probabilities[part].tolist())
    if scored.drivers_model is not None and scored.features is not None:
        drivers = explain_clients(scored.drivers_model, scored.features[part])
        for row, client in zip(rows, drivers.clients, strict=True):
            row.update(describe_drivers(client))
    return rows


def describe_predictions(
    ids: list[str | None] | None, labels: list[int], probabilities: list[float]
) -> list[dict[str, Any]]:
    """Each row's id (when the rows have ids), label and probability, as the answer lists them."""
    pairs = zip(labels, probabilities, strict=True)
    if ids is None:
        return [{"label": label, "probability": p} for label, p in pairs]
    return [
        {"corporation": corporation, "label": label, "probability": p}
        for corporation, (label, p) in zip(ids, pairs, strict=True)
    ]


def explain_served(served: ServedModel, features: np.ndarray) -> RiskDrivers:
    """What drives each row's risk under the served model; 400 when its risk cannot be split into drivers."""
    return explain_clients(explainable(served), features)


def explainable(served: ServedModel) -> RiskModel:
    """The served model's own arithmetic, which splits its risk into drivers; 400 when it has none."""
    if served.shortcut is None:
        raise BadRequest(
            f"explain cannot be answered: the deployed model {served.version} is of none of the model families "
            "(linear, additive, boosted), so its risk cannot be split exactly into drivers"
        )
    return served.shortcut


def describe_drivers(client: ClientDrivers) -> dict[str, Any]:
    return {"drivers": client.contributions, "log_odds": client.log_odds, "reason": client.reason}


def describe_ranking(served: ServedModel, table: ClientTable, limit: int, offset: int = 0) -> dict[str, Any]:
    """The ``limit`` active clients most likely to leave after the first ``offset``, highest probability first,
    with what drives each risk."""
    rows = table.select("", "probability", descending=True)[offset : offset + limit]
    drivers = explain_served(served, table.features[rows])
    return {
        "model_version": served.version,
        "count": len(table.ids),
        "offset": offset,
        "baseline_log_odds": drivers.baseline_log_odds,
        "clients": [
            describe_client(table, row, client) for row, client in zip(rows.tolist(), drivers.clients, strict=True)
        ],
    }


def describe_client(table: ClientTable, row: int, drivers: ClientDrivers) -> dict[str, Any]:
    """One active client as ``/clients`` lists it: id, probability, label and what drives the risk."""
    return {
        "corporation": table.ids[row],
        "probability": float(table.probabilities[row]),
        "label": int(table.probabilities[row] >= table.threshold),
        **describe_drivers(drivers),
    }


def describe_one_client(served: ServedModel, table: ClientTable, corporation: str) -> dict[str, Any]:
    """``GET /clients/<corporation>``: the client as ``/clients`` lists it, with its rank; 404 for an unknown id."""
    row = table.row_of(corporation)
    if row is None:
        raise NotFound(f"no active client has the id {corporation[:100]!r}; it may have exited or never been ingested")
    drivers = explain_served(served, table.features[[row]])
    return {
        "model_version": served.version,
        "rank": int(table.rank[row]),
        "baseline_log_odds": drivers.baseline_log_odds,
        **describe_client(table, row, drivers.clients[0]),
    }


def describe_load_error(watcher: DeploymentWatcher) -> dict[str, str]:
    """When the deployed version could not be loaded: which one, and why (an older one is serving)."""
    error = watcher.load_error()
    if error is None:
        return {}
    return {"status": "degraded", "deployed_version": error[0], "load_error": error[1]}


def describe_version(served: ServedModel) -> dict[str, Any]:
    info, model_info, metrics = served.deployed.version_info, served.deployed.model_info, served.deployed.metrics
    return {
        "model_version": served.version,
        "deployed_at": info.deployed_at,
        "previous_version": info.previous_version,
        "trained_at": model_info.trained_at,
        "training_rows": model_info.training_rows,
        "training_data_sha256": model_info.training_data_sha256,
        "model_family": model_info.family or MODEL_FAMILIES[0],  # a model written before families: linear
        "model": model_info.model,
        "explained": served.shortcut is not None,
        "family_choice": None if model_info.family_choice is None else record_to_json(model_info.family_choice),
        "calibration": None if model_info.calibration is None else record_to_json(model_info.calibration),
        "decision_threshold": model_info.decision_threshold,
        "model_sha256": model_info.model_sha256,
        "metrics": {
            "f1": metrics.f1,
            "precision": metrics.precision,
            "recall": metrics.recall,
            "roc_auc": metrics.roc_auc,
        },
        "libraries": model_info.libraries,
    }


def describe_candidates(config: Config, served: ServedModel) -> list[dict[str, Any]] | None:
    """Every challenger of the run that deployed the serving version, with its window, family and F1 (None when the
    version was deployed by hand or the history cannot be read)."""
    try:
        run = read_deploying_run(config.history_path, served.version)
    except PipelineError as exc:
        log.warning("/version: %s", exc)
        return None
    if run is None or not run.candidates:
        return None
    return [candidate.to_json() for candidate in run.candidates]


def describe_scores(served: ServedModel, test_hashes: dict[str, str]) -> dict[str, Any]:
    """The deployed model's metrics on the test data, as scored before it was deployed."""
    metrics = served.deployed.metrics
    unchanged = metrics.test_data_sha256 == test_hashes
    stored = record_to_json(metrics)
    scores = {
        "model_version": served.version,
        **{key: stored[key] for key in METRIC_KEYS},
        "scored_at": metrics.scored_at,
        "test_data": [Path(path).name for path in metrics.test_data],
        "test_data_unchanged": unchanged,
    }
    if not unchanged:
        scores["note"] = "the test data has changed since this model was scored; the next pipeline run re-scores it"
    return scores


def describe_recent_window(served: ServedModel, recent: FileBackedValue) -> dict[str, Any] | None:
    """The served version's scores on the recent window, with the note on the test data; None when there are none."""
    try:
        stored: EvaluationWindow = recent.get()
    except (OSError, ValueError, PipelineError):
        return None
    if stored.of_version(served.version) is None:
        return None
    return {**{key: getattr(stored, key) for key in RECENT_WINDOW_KEYS}, "note": stored.test_data_note}


def read_summary(path: Path) -> dict[str, Any]:
    check_final_data(path.parent)  # a finaldata.csv cut short is not described as if whole
    columns = read_numeric_columns(path)
    rows = len(next(iter(columns.values())))
    return {"dataset": path.name, "rows": rows, "columns": summary_statistics(columns)}


def describe_stored_diagnostics(path: Path) -> dict[str, Any]:
    """What ``/diagnostics`` answers: timing, missing data and dependencies from ``diagnostics.json``."""
    stored = read_diagnostics_record(path)
    return {
        "generated_at": stored.generated_at,
        "model_version": stored.model_version,
        "timing": None if stored.timing is None else record_to_json(stored.timing),
        "missing_data": describe_missing_data(stored.missing_data),
        "dependencies": None if stored.dependencies is None else [record_to_json(row) for row in stored.dependencies],
    }


def describe_missing_data(missing: MissingData | None) -> dict[str, Any]:
    """The overall missing data as ``/diagnostics`` shows it (each key None when diagnostics.json holds none)."""
    if missing is None:
        return dict.fromkeys(MISSING_DATA_KEYS)
    stored = record_to_json(missing)
    return {key: stored[key] for key in MISSING_DATA_KEYS}


def read_limit(value: str | None, default: int = HISTORY_DEFAULT_RUNS, maximum: int = HISTORY_MAX_RUNS) -> int:
    """The ``limit`` query parameter: a whole number from 1 to ``maximum``; ``default`` when absent."""
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > PARAMETER_DIGITS or not 1 <= int(value) <= maximum:
        raise BadRequest(f"limit must be a whole number from 1 to {maximum}, not {value[:40]!r}")
    return int(value)


def read_offset(value: str | None) -> int:
    """The ``offset`` query parameter: how many of the riskiest clients to skip, a whole number from 0; 0 when
    absent."""
    if value is None:
        return 0
    if not (value.isascii() and value.isdigit()) or len(value) > PARAMETER_DIGITS:
        raise BadRequest(f"offset must be a whole number from 0 to {10**PARAMETER_DIGITS - 1}, not {value[:40]!r}")
    return int(value)


@dataclass(frozen=True)
class ApiState:
    """What the routes share in one worker: the config, the served model and the file-backed answers."""

    config: Config
    watcher: DeploymentWatcher
    files: LocationReader
    summary: FileBackedValue
    diagnostics: FileBackedValue
    test_hashes: FileBackedValue
    recent: FileBackedValue


def state() -> ApiState:
    return current_app.extensions[API_STATE]


def default_location() -> str:
    """The file a ``GET /prediction`` without parameters predicts for: the test data."""
    try:
        return str(find_test_files(state().config.test_data_path)[0])
    except PipelineError as exc:
        raise NotFound(f"no data file was named and there is no test data to predict for ({exc})") from None


@bp.route("/prediction", methods=["GET", "POST"])
def prediction() -> Response:
    api = state()
    served = api.watcher.served()
    try:
        asked = read_prediction_input(api.files, default_location, api.config.api)
    except RequestEntityTooLarge:
        after_this_request(release_memory_when_sent)  # the rows read until the limit was passed
        raise
    if asked.batch.rows >= TRIM_AFTER_ROWS:
        after_this_request(release_memory_now_and_when_sent)
    return answer_predictions(served, asked.batch, asked.explain)


def read_client_table(served: ServedModel) -> ClientTable:
    try:
        return app_sources(current_app).clients(served)
    except LockHeld as exc:  # another worker is still building the table this one waited for
        log.error("/clients: %s", exc)
        raise ServiceUnavailable(f"{exc}; try again in a minute") from None
    except (OSError, PipelineError) as exc:
        log.error("/clients: %s", exc)
        raise ServiceUnavailable(f"the ingested clients cannot be read ({exc}); run ingestion.py") from None


@bp.get("/clients")
def clients() -> Response:
    served = state().watcher.served()
    limit = read_limit(request.args.get("limit"), RANKING_DEFAULT_CLIENTS, RANKING_MAX_CLIENTS)
    offset = read_offset(request.args.get("offset"))
    return json_response(describe_ranking(served, read_client_table(served), limit, offset))


@bp.get("/clients/<path:corporation>")
def one_client(corporation: str) -> Response:
    served = state().watcher.served()
    return json_response(describe_one_client(served, read_client_table(served), corporation))


@bp.get("/scoring")
def scoring() -> Response:
    api = state()
    served = api.watcher.served()
    try:
        hashes = api.test_hashes.get()
    except (OSError, PipelineError):
        hashes = {}
    return json_response(
        {**describe_scores(served, hashes), "recent_window": describe_recent_window(served, api.recent)}
    )


@bp.get("/summarystats")
def summarystats() -> Response:
    try:
        return json_response(state().summary.get())
    except (OSError, PipelineError) as exc:
        log.error("/summarystats: %s", exc)
        raise ServiceUnavailable(
            f"{FINAL_DATA} is missing, unreadable or not the file the last ingestion wrote; run ingestion.py"
        ) from None


@bp.get("/diagnostics")
def diagnostics_endpoint() -> Response:
    try:
        return json_response(state().diagnostics.get())
    except FileNotFoundError:
        raise ServiceUnavailable("no diagnostics have been stored yet; run diagnostics.py") from None
    except (OSError, PipelineError) as exc:
        log.error("/diagnostics: %s", exc)
        raise ServiceUnavailable(f"the stored {DIAGNOSTICS_FILE} cannot be read; run diagnostics.py") from None


@bp.get("/history")
def history() -> Response:
    config = state().config
    limit = read_limit(request.args.get("limit"))
    include_no_op = read_flag(request.args.get("all"), "all")
    try:
        runs = read_runs(config.history_path, limit, with_no_op=include_no_op)
    except PipelineError as exc:
        log.error("/history: %s", exc)
        raise ServiceUnavailable(f"the run history cannot be read: {exc}") from None
    location = config.history_path
    name = location.name if isinstance(location, Path) else location.shown
    return json_response({"history": name, "count": len(runs), "runs": [run.to_json() for run in runs]})


@bp.get("/health")
def health() -> Response:
    watcher = state().watcher
    try:
        served = watcher.served()
    except ServiceUnavailable as exc:
        return json_response({"status": "unavailable", "error": exc.description}, 503)
    return json_response({"status": "ok", "model_version": served.version, **describe_load_error(watcher)})


@bp.get("/version")
def version() -> Response:
    api = state()
    served = api.watcher.served()
    return json_response(
        {
            **describe_version(served),
            "candidates": describe_candidates(api.config, served),
            "recent_window": describe_recent_window(served, api.recent),
            **describe_load_error(api.watcher),
        }
    )
