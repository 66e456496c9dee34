"""A fullprocess.py run as typed values: what a run writes to the run history and what its readers get back.

``RunFields`` holds the columns a run fills as it goes (each ``None`` until it is known);
``StoredRun`` is a run read back, with its files (``RunFile``) and per-feature drift tests
(``FeatureDrift``). ``riskwatch/state/history.py`` stores them; ``StoredRun.to_json`` is the run as the
API's ``/history`` shows it. Columns that hold JSON are decoded here, and a damaged or
misshapen cell reads as ``None`` rather than hiding the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from riskwatch.core.formatting import format_grouped

JsonObject = dict[str, Any]  # a free-form JSON object, as stored (the run's details, its stage timings)

# INTEGER columns read back as booleans; /history shows the other flags 0/1 as stored.
BOOLEAN_COLUMNS = ("model_drift", "data_drift", "test_data_drift")


@dataclass(frozen=True)
class RunFile:
    """A data file a run saw: new, edited, stray, rejected (left out as bad), unlabelled or arriving."""

    name: str
    status: str
    sha256: str | None = None
    note: str | None = None

    def to_json(self) -> JsonObject:
        return {"name": self.name, "sha256": self.sha256, "status": self.status, "note": self.note}


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's data-drift test: ks (p-value below the threshold) or wasserstein (distance above it)."""

    feature: str
    test: str
    statistic: float
    p_value: float | None  # KS only
    threshold: float
    drifted: bool

    def to_json(self) -> JsonObject:
        return {
            "feature": self.feature,
            "test": self.test,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "threshold": self.threshold,
            "drifted": self.drifted,
        }


@dataclass(frozen=True)
class CandidateScore:
    """One challenger a run trained: its training window and model family, and its F1 on the held-out rows, test
    data and window."""

    window: str
    describe: str
    rows: int | None
    first_batch: int | None
    last_batch: int | None
    recent_f1: float
    test_f1: float
    window_f1: float | None = None  # runs before the rolling evaluation window did not record it
    family: str | None = None  # runs before there were model families trained the linear one only

    def to_json(self) -> JsonObject:
        stored: JsonObject = {
            "window": self.window,
            "describe": self.describe,
            "rows": self.rows,
            "first_batch": self.first_batch,
            "last_batch": self.last_batch,
            "recent_f1": self.recent_f1,
            "test_f1": self.test_f1,
        }
        optional = {"window_f1": self.window_f1, "family": self.family}
        return {**stored, **{key: value for key, value in optional.items() if value is not None}}


@dataclass(frozen=True)
class WebhookDelivery:
    """What became of an alert at one webhook: delivered (a 2xx answer), not delivered, or not known yet (None)."""

    url: str  # as it may be shown: scheme, host and the end of the path only
    delivered: bool | None
    attempts: int = 0
    status: int | None = None  # the last HTTP answer
    error: str | None = None

    def to_json(self) -> JsonObject:
        return {
            "url": self.url,
            "delivered": self.delivered,
            "attempts": self.attempts,
            "status": self.status,
            "error": self.error,
        }


@dataclass(frozen=True)
class AlertRecord:
    """The alert a run sent: its kind, how many webhooks it went to, the log of their answers, and each one's
    delivery (empty for runs recorded before deliveries were; ``delivered`` None until the sender reports)."""

    kind: str
    webhooks: int
    log: str
    deliveries: tuple[WebhookDelivery, ...] = ()

    def to_json(self) -> JsonObject:
        stored: JsonObject = {"kind": self.kind, "webhooks": self.webhooks, "log": self.log}
        if self.deliveries:
            stored["deliveries"] = [delivery.to_json() for delivery in self.deliveries]
        return stored


@dataclass(frozen=True)
class RunFields:
    """The run-history columns of one run; ``None`` is a column not known (and not written) yet."""

    started_at: str | None = None  # UTC, ISO 8601
    finished_at: str | None = None
    seconds: float | None = None
    outcome: str | None = None
    decision: str | None = None  # why, in one sentence
    failed_stage: str | None = None
    error: str | None = None
    model_version_before: str | None = None
    model_version_after: str | None = None
    new_files: int | None = None
    new_rows: int | None = None
    ingested_rows: int | None = None
    model_drift_test: str | None = None
    deployed_f1: float | None = None
    new_data_f1: float | None = None
    drift_threshold: float | None = None
    drift_reference: str | None = None
    model_drift: bool | None = None
    data_drift: bool | None = None
    drift_trigger: str | None = None
    champion_recent_f1: float | None = None
    challenger_recent_f1: float | None = None
    champion_test_f1: float | None = None
    challenger_test_f1: float | None = None
    missing_percent: float | None = None
    timings: dict[str, float] | None = None
    details: JsonObject | None = None
    first_batch: int | None = None
    last_batch: int | None = None
    reference_f1: float | None = None
    reference_rows: int | None = None
    drift_spread: float | None = None
    data_drift_reference: str | None = None
    holdout_rows: int | None = None
    candidates: tuple[CandidateScore, ...] | None = None
    winning_window: str | None = None
    window_rows: int | None = None
    window_f1: float | None = None
    test_data_drift: bool | None = None
    alerts: AlertRecord | None = None
    confirmed: bool | None = None
    estimated_f1: float | None = None
    estimated_f1_low: float | None = None
    estimated_f1_high: float | None = None
    calibration_error: float | None = None
    estimate_reliable: bool | None = None
    winning_family: str | None = None
    model_family: str | None = None
    data_reference_first_batch: int | None = None  # the batches of the rows the data-drift tests compared with
    data_reference_last_batch: int | None = None
    expected_exits: float | None = None  # the calibration test on the new labelled rows: exits the model expected,
    expected_exits_low: float | None = None  # the central interval a calibrated model would see,
    expected_exits_high: float | None = None
    observed_exits: int | None = None  # the exits observed,
    calibration_slope: float | None = None  # the outcomes' slope on the model's log-odds (1: calibrated),
    miscalibrated: bool | None = None  # and the verdict
    champion_recent_log_loss: float | None = None  # the gate's calibration rule, on the held-out recent rows
    challenger_recent_log_loss: float | None = None
    gate_rule: str | None = None  # "f1" or "calibration": the rule the best challenger passed, if any
    reconstruction_error: float | None = None  # the integrity test: the new rows' mean reconstruction error,
    reconstruction_reference: float | None = None  # the reference rows',
    reconstruction_expected: float | None = None  # the one the new rows' own columns imply,
    reconstruction_threshold: float | None = None  # the alarm's threshold,
    multivariate_drift: bool | None = None  # the batch moved as a whole,
    integrity_alarm: bool | None = None  # its columns no longer hang together,
    integrity_accepted_at: str | None = None  # accepted by an operator then (UTC)

    def updated(self, changes: RunFields) -> RunFields:
        """These fields with those ``changes`` knows (not ``None``) put in their place."""
        known = {name: value for name, value in column_values(changes).items() if value is not None}
        return RunFields(**{**column_values(self), **known})

    def to_columns(self) -> dict[str, object]:
        """The known columns as the database stores them: JSON as text, flags as 0 or 1."""
        return {name: store_value(value) for name, value in column_values(self).items() if value is not None}


def column_values(run: RunFields) -> dict[str, Any]:
    """Each RunFields column and its value (a StoredRun's id, pid, files and drift tests left out)."""
    return {field.name: getattr(run, field.name) for field in fields(RunFields)}


def store_value(value: object) -> object:
    """A column's value for the database: JSON for the structured ones, 0 or 1 for a flag."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, AlertRecord | tuple | dict):
        return json.dumps(json_value("", value))
    return value


@dataclass(frozen=True)
class StoredRun(RunFields):
    """One run read from the history, with the files it saw and its per-feature drift tests."""

    started_at: str = ""  # a stored run always has a start and an outcome ("running" until it ends)
    outcome: str = ""
    id: int = 0
    pid: int | None = None
    files: tuple[RunFile, ...] = ()
    feature_drift: tuple[FeatureDrift, ...] = ()

    def to_json(self) -> JsonObject:
        """The run as the API shows it: every column of the runs table in its order, then files and drift tests."""
        stored = {name: json_value(name, getattr(self, name)) for name in stored_columns()}
        return {
            **stored,
            "files": [file.to_json() for file in self.files],
            "feature_drift": [row.to_json() for row in self.feature_drift],
        }


def stored_columns() -> tuple[str, ...]:
    """The columns of the runs table in their order: the id, the RunFields columns, the pid before the versions."""
    names = [field.name for field in fields(RunFields)]
    at = names.index("model_version_before")
    return ("id", *names[:at], "pid", *names[at:])


def json_value(name: str, value: object) -> object:
    """A column's value as ``/history`` answers it: JSON decoded, model and data drift as booleans, other flags 0/1."""
    if isinstance(value, bool) and name not in BOOLEAN_COLUMNS:
        return int(value)
    if isinstance(value, AlertRecord):
        return value.to_json()
    if isinstance(value, tuple):
        return [candidate.to_json() for candidate in value]
    return value


def decode_json(text: str | None) -> Any:
    """A JSON column's value; None for an empty or damaged one (a damaged cell must not hide the run)."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def read_candidates(text: str | None) -> tuple[CandidateScore, ...] | None:
    """The challengers a run stored; None when there were none or the cell is damaged. An entry that is
    misshapen is left out, the others kept; None when none is left."""
    stored = decode_json(text)
    if not isinstance(stored, list):
        return None
    candidates = [candidate for candidate in map(read_candidate, stored) if candidate is not None]
    return tuple(candidates) or None


def read_candidate(item: object) -> CandidateScore | None:
    """One stored challenger; None when the entry is not one."""
    if not isinstance(item, dict):
        return None
    try:
        return CandidateScore(
            window=str(item["window"]),
            describe=str(item["describe"]),
            rows=item.get("rows"),
            first_batch=item.get("first_batch"),
            last_batch=item.get("last_batch"),
            recent_f1=float(item["recent_f1"]),
            test_f1=float(item["test_f1"]),
            window_f1=item.get("window_f1"),
            family=item.get("family"),
        )
    except (KeyError, TypeError, ValueError):
        return None


def read_alert(text: str | None) -> AlertRecord | None:
    """The alert a run stored; None when it sent none, or the cell is damaged or misshapen. A stored delivery
    that is misshapen is left out, the others kept; an alert stored before deliveries were has none."""
    stored = decode_json(text)
    try:
        deliveries = stored.get("deliveries")
        kept = tuple(filter(None, map(read_delivery, deliveries))) if isinstance(deliveries, list) else ()
        return AlertRecord(str(stored["kind"]), int(stored["webhooks"]), str(stored["log"]), kept)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def read_delivery(item: object) -> WebhookDelivery | None:
    """One stored webhook delivery; None when the entry is not one."""
    if not isinstance(item, dict):
        return None
    delivered, status = item.get("delivered"), item.get("status")
    try:
        return WebhookDelivery(
            url=str(item["url"]),
            delivered=None if delivered is None else bool(delivered),
            attempts=int(item.get("attempts") or 0),
            status=None if status is None else int(status),
            error=None if item.get("error") is None else str(item["error"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def read_object(text: str | None) -> JsonObject | None:
    """A JSON object column (timings, details); None when empty, damaged or not an object."""
    stored = decode_json(text)
    return stored if isinstance(stored, dict) else None


def read_flag(value: object) -> bool | None:
    return None if value is None else bool(value)


def read_stored_run(
    row: Mapping[str, Any], files: tuple[RunFile, ...], feature_drift: tuple[FeatureDrift, ...]
) -> StoredRun:
    """A runs-table row (any schema version this code writes) as a StoredRun."""
    values: dict[str, Any] = {name: row.get(name) for name in stored_columns()}
    values.update(
        timings=read_object(values["timings"]),
        details=read_object(values["details"]),
        candidates=read_candidates(values["candidates"]),
        alerts=read_alert(values["alerts"]),
    )
    values.update({name: read_flag(values[name]) for name in (*BOOLEAN_COLUMNS, "confirmed", "estimate_reliable")})
    return StoredRun(**values, files=files, feature_drift=feature_drift)


def latest_calibration_test(runs: Sequence[StoredRun], version: str) -> StoredRun | None:
    """The newest run that tested ``version``'s calibration on labelled rows (runs newest first); None if none."""
    return next((run for run in runs if run.model_version_before == version and run.observed_exits is not None), None)


def describe_calibration_test(run: StoredRun | None, version: str) -> str:
    """How far the expected exits of ``version`` can be trusted, in one sentence, from its latest calibration test
    (``latest_calibration_test``): the exits it expected on labelled rows against those observed."""
    if run is None or run.expected_exits is None or run.observed_exits is None:
        return f"No labelled batch has tested the calibration of {version} yet."
    expected, observed = run.expected_exits, run.observed_exits
    gap = f" ({observed / expected - 1:+.0%})" if expected > 0 else ""
    span = f"{format_grouped(run.expected_exits_low)}-{format_grouped(run.expected_exits_high)}"
    tested = (
        f"The latest calibration test of {version} (run {run.id}, {format_grouped(run.new_rows)} labelled rows): "
        f"{format_grouped(expected)} exits expected, {format_grouped(observed)} observed{gap}"
    )
    low, high = run.expected_exits_low or 0.0, run.expected_exits_high or 0.0
    if not low <= observed <= high:
        return f"{tested}, outside the range a calibrated model shows ({span}): its expected exits were that far off."
    held = f"{tested}, within the range a calibrated model shows ({span}): its expected exits held"
    slope = run.calibration_slope
    if run.miscalibrated and slope is not None:
        spread = "too flat" if slope > 1 else "too steep"
        return f"{held}, but its calibration slope, {slope:.2f}, says its probabilities are {spread}."
    return f"{held}."
