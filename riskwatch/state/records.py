"""The JSON records the stages hand to each other, typed: ``metrics.json``, ``trainedmodel.json``, ``version.json``,
``diagnostics.json``, ``evaluationwindow.json`` and ``summaryreport.json``.

Each has one reader and one writer here. The files on disk keep the layout earlier versions
wrote, so their folders keep loading: a reader ignores keys it does not know, and a key older
versions did not write takes the field's default (None, an empty list, 0).
"""

from __future__ import annotations

import json
import logging
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from riskwatch.core.errors import PipelineError
from riskwatch.core.files import write_text_atomic
from riskwatch.state.runs import FeatureDrift

log = logging.getLogger(__name__)

Record = TypeVar("Record")

# A key that writers only sometimes add is left out of the file when it is None, as before.
OMITTED_WHEN_NONE = {"omit_when_none": True}
# The names of the fields a file left out, so that writing the record again leaves them out too.
ABSENT_KEYS = {"absent_keys": True}


@dataclass(frozen=True)
class TrainingWindow:
    """Which ingested rows a model was trained on, as its ``trainedmodel.json`` records it."""

    name: str  # "all", "recent", "weighted", or "recalibrated" (a serving model's log-odds refitted)
    first_batch: int
    last_batch: int
    rows: int  # "recalibrated": the rows the log-odds were refitted on
    # Rows held out to judge models come from batches from this one on; earlier ones were all trained on.
    held_out_from_batch: int
    half_life: float | None = None  # "weighted": weights halve every half_life batches or days
    half_life_unit: str | None = None
    # "recalibrated": the first batch of the rows refitted on (left out of the file for the other windows)
    recalibrated_from_batch: int | None = field(default=None, metadata=OMITTED_WHEN_NONE)

    def describe(self) -> str:
        span = (
            f"batch {self.first_batch}"
            if self.first_batch == self.last_batch
            else (f"batches {self.first_batch}-{self.last_batch}")
        )
        if self.name == "recalibrated":
            return f"the serving model recalibrated on {self.rows} rows from batch {self.recalibrated_from_batch}"
        if self.name == "weighted":
            return f"all rows weighted by recency (halving every {self.half_life:g} {self.half_life_unit}), {span}"
        return f"{'all rows' if self.name == 'all' else 'recent rows'}, {span} ({self.rows} rows)"


@dataclass(frozen=True)
class Confusion:
    """Counts of true negatives, false positives, false negatives and true positives."""

    tn: int
    fp: int
    fn: int
    tp: int


@dataclass(frozen=True, kw_only=True)
class Metrics:
    """``metrics.json``: a model's scores on the test data, and which model and test data they belong to."""

    f1: float
    precision: float | None = None
    recall: float | None = None
    roc_auc: float | None = None  # undefined when the test data holds one class
    accuracy: float | None = None
    brier_score: float | None = None
    log_loss: float | None = None
    confusion: Confusion | None = None
    rows: int | None = None
    exit_rate: float | None = None
    mean_predicted_risk: float | None = None
    scored_at: str | None = None
    model: str | None = None
    model_sha256: str | None = None
    test_data: list[str] = field(default_factory=list)
    test_data_sha256: dict[str, str] | None = None


@dataclass(frozen=True)
class TrainingSettings:
    """The model settings a model was trained with."""

    C: float | None = None
    max_iter: int | None = None
    class_weight: str | None = None
    decision_threshold: str | float | None = None  # "f1" or a fixed threshold


@dataclass(frozen=True)
class FamilyScore:
    """One family's cross-validated F1 and, for all but the first, how it fared against the family kept before it."""

    family: str
    f1: float  # of the out-of-fold labels of every row compared on
    fold_f1: list[float]
    calibration_error: float  # of the out-of-fold probabilities, equal-count bins
    compared_with: str | None = None
    gain: float | None = None
    p_no_gain: float | None = None
    better: bool | None = None


@dataclass(frozen=True)
class FamilyChoice:
    """The family chosen, why, and every family's scores (empty when no comparison was made)."""

    family: str
    reason: str
    rows: int  # compared on
    folds: int
    scores: list[FamilyScore]

    def score_of(self, family: str) -> FamilyScore | None:
        return next((score for score in self.scores if score.family == family), None)


@dataclass(frozen=True)
class CalibrationCheck:
    """How well a model's probabilities matched the exit rates on rows it was not fitted on: the expected
    calibration error over ten bins of equal row counts, and which rows."""

    error: float
    rows: int
    measured_on: str


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """``trainedmodel.json``: how and on what data a model was trained."""

    trained_at: str | None = None
    model: str | None = None
    family: str | None = field(default=None, metadata=OMITTED_WHEN_NONE)  # None: written before there were families
    features: list[str] = field(default_factory=list)
    target: str | None = None
    decision_threshold: float | None = None
    coefficients: dict[str, float] = field(default_factory=dict)
    intercept: float | None = None
    settings: TrainingSettings = field(default_factory=TrainingSettings)
    training_data: str | None = None
    training_data_sha256: str | None = None
    ingested_files_sha256: str | None = None
    ingested_record_sha256: str | None = None
    training_window: TrainingWindow | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    family_choice: FamilyChoice | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    calibration: CalibrationCheck | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    trees: int | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    held_out_recent_rows: int | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    retrained_because: str | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    training_rows: int | None = None
    training_exit_rate: float | None = None
    fit_seconds: float | None = None
    python: str | None = None
    libraries: dict[str, str] = field(default_factory=dict)
    model_sha256: str | None = None


@dataclass(frozen=True, kw_only=True)
class VersionInfo:
    """``version.json``: when and after what a version was deployed. All None: its details are unknown."""

    version: str | None = None
    deployed_at: str | None = None
    previous_version: str | None = None
    model_sha256: str | None = None
    f1: float | None = None
    roc_auc: float | None = None
    trained_at: str | None = None
    sources: dict[str, str] = field(default_factory=dict)


def read_metrics(path: Path) -> Metrics:
    """Read ``metrics.json``; raise PipelineError naming the file when it is missing, unreadable or malformed."""
    return read_record(path, Metrics, "scores")


def write_metrics(path: Path, metrics: Metrics) -> Path:
    """Write ``metrics.json`` atomically."""
    return write_record(path, metrics)


def read_model_info(path: Path) -> ModelInfo:
    """Read ``trainedmodel.json``; raise PipelineError naming the file when it is missing, unreadable or malformed."""
    return read_record(path, ModelInfo, "model metadata")


def write_model_info(path: Path, info: ModelInfo) -> Path:
    """Write ``trainedmodel.json`` atomically."""
    return write_record(path, info)


def read_version_info(path: Path) -> VersionInfo:
    """Read ``version.json``; raise PipelineError naming the file when it is missing, unreadable or malformed."""
    return read_record(path, VersionInfo, "version record")


def write_version_info(path: Path, info: VersionInfo) -> Path:
    """Write ``version.json`` atomically."""
    return write_record(path, info)


# ---------------------------------------------------------------- diagnostics.json


@dataclass(frozen=True, kw_only=True)
class Predictions:
    """The deployed model's label and exit probability for each row of a data file, in file order."""

    dataset: str | None = None
    rows: int | None = None
    corporation: list[str | None] | None = None  # None when the file has no corporation column
    label: list[int] = field(default_factory=list)
    probability: list[float] = field(default_factory=list)
    predicted_exits: int | None = None


@dataclass(frozen=True, kw_only=True)
class ColumnStatistics:
    """One numeric column: count, mean, median, sample standard deviation, min, quartiles and max."""

    count: int | None = None
    mean: float | None = None
    median: float | None = None
    std: float | None = None
    min: float | None = None
    q1: float | None = None
    q3: float | None = None
    max: float | None = None


@dataclass(frozen=True, kw_only=True)
class SummaryStatistics:
    """Summary statistics of each numeric column of the ingested data."""

    dataset: str | None = None
    columns: dict[str, ColumnStatistics] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class FileMissing:
    """Rows of one source file and percent of missing values in each column."""

    rows: int | None = None
    percent: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class MissingData:
    """Percent of missing values per column in the source, overall and per file, and the files that cannot be read."""

    dataset: str | None = None
    rows: int | None = None
    percent: dict[str, float] = field(default_factory=dict)
    files: dict[str, FileMissing] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class StageSpread:
    """Seconds one stage took: the spread of the timings kept, the timings, and the latest (when recorded)."""

    mean: float | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    std: float | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    median: float | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    min: float | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    max: float | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    values: list[float] | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    latest: float | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    latest_at: str | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    latest_source: str | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    count: int | None = field(default=None, metadata=OMITTED_WHEN_NONE)

    @property
    def latest_seconds(self) -> float | None:
        """The latest timing: recorded as such, else the last of the timings."""
        if self.latest is not None:
            return self.latest
        return self.values[-1] if self.values else None

    @property
    def timings(self) -> int:
        """How many timings the spread is over."""
        return self.count if self.count is not None else len(self.values or [])


@dataclass(frozen=True, kw_only=True)
class StageTimings:
    """Seconds per stage, and where the timings come from (the stages' own records, or runs made to time them).

    Fields left out of the file stay left out when the record is written again (``absent``).
    """

    runs: int | None = None
    unit: str | None = None
    source: str | None = None
    stages: dict[str, StageSpread] = field(default_factory=dict)
    absent: frozenset[str] = field(default=frozenset(), repr=False, compare=False, metadata=ABSENT_KEYS)


@dataclass(frozen=True, kw_only=True)
class KnownVersion:
    """The latest version of a package the index gave last time, and when."""

    latest: str | None = None
    checked_at: str | None = None


@dataclass(frozen=True, kw_only=True)
class DependencyStatus:
    """One requirement: required, installed and latest version, where the latest came from, and the verdict.

    Fields left out of the file stay left out when the record is written again (``absent``).
    """

    package: str | None = None
    required: str | None = None
    installed: str | None = None
    latest: str | None = None
    source: str | None = None  # "index", "cache", or None when the latest version is unknown
    checked_at: str | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    reason: str | None = field(default=None, metadata=OMITTED_WHEN_NONE)  # why the latest version is unknown
    last_known: KnownVersion | None = field(default=None, metadata=OMITTED_WHEN_NONE)
    status: str | None = None  # "current", "outdated", "unknown" or "not installed"
    absent: frozenset[str] = field(default=frozenset(), repr=False, compare=False, metadata=ABSENT_KEYS)


@dataclass(frozen=True, kw_only=True)
class Diagnostics:
    """``diagnostics.json``: what diagnostics.py measured, for which model and when. A section is None when absent."""

    generated_at: str | None = None
    model_version: str | None = None
    model_trained_at: str | None = None
    predictions: Predictions | None = None
    summary_statistics: SummaryStatistics | None = None
    missing_data: MissingData | None = None
    timing: StageTimings | None = None
    dependencies: list[DependencyStatus] | None = None
    seconds: float | None = None


def read_diagnostics_record(path: Path) -> Diagnostics:
    """Read ``diagnostics.json``; raise PipelineError naming the file when it is missing or not a JSON object.

    A section that does not hold what it should reads as absent (and is logged), as one that is missing.
    """
    data = read_json_file(path, "diagnostics file")
    return Diagnostics(**read_sections(Diagnostics, data, path))


def read_model_version(path: Path) -> str | None:
    """The ``model_version`` a diagnostics or report record names, without reading the rest into a record
    (diagnostics.json holds a prediction for every test row); None when the file or the key is missing or bad."""
    import orjson

    try:
        data = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    version = data.get("model_version") if isinstance(data, dict) else None
    return version if isinstance(version, str) else None


def write_diagnostics_record(path: Path, diagnostics: Diagnostics) -> Path:
    """Write ``diagnostics.json`` atomically."""
    import orjson  # the predictions of every test row make this file large; the standard encoder takes 10x longer

    text = orjson.dumps(record_to_json(diagnostics), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    return write_text_atomic(Path(path), text.decode() + "\n")


# ---------------------------------------------------------------- evaluationwindow.json


@dataclass(frozen=True, kw_only=True)
class EvaluationWindow:
    """``evaluationwindow.json``: the serving model's scores on the rolling window of recent held-out rows."""

    model_version: str | None = None
    updated_at: str | None = None
    rows: int | None = None
    batches: list[int] | None = None  # the first and the last batch of the window
    f1: float | None = None
    precision: float | None = None
    recall: float | None = None
    roc_auc: float | None = None
    accuracy: float | None = None
    confusion: Confusion | None = None
    test_data_drift: bool | None = None  # the test data no longer looks like the recent rows
    test_data_note: str | None = None
    test_data_features: list[FeatureDrift] = field(default_factory=list)

    def of_version(self, version: str) -> EvaluationWindow | None:
        """This window when it scores ``version``; None when it belongs to another model."""
        return self if self.model_version == version else None

    @property
    def batch_span(self) -> str:
        """ "batch 3" or "batches 2–4"; "" when the batches are not recorded."""
        if not self.batches:
            return ""
        first, last = self.batches[0], self.batches[-1]
        return f"batch {first}" if first == last else f"batches {first}\u2013{last}"


def read_evaluation_window(path: Path) -> EvaluationWindow:
    """Read ``evaluationwindow.json``; raise PipelineError naming the file when missing, unreadable or malformed."""
    return read_record(path, EvaluationWindow, "evaluationwindow.json")


def write_evaluation_window(path: Path, window: EvaluationWindow) -> Path:
    """Write ``evaluationwindow.json`` atomically."""
    return write_record(path, window)


# ---------------------------------------------------------------- summaryreport.json


@dataclass(frozen=True, kw_only=True)
class ReportRecord:
    """``summaryreport.json``: which model the latest PDF report describes, when it was made, and its files."""

    model_version: str | None = None
    generated_at: str | None = None
    pdf: str | None = None
    plot: str | None = None


def read_report_record(path: Path) -> ReportRecord:
    """Read ``summaryreport.json``; raise PipelineError naming the file when it is missing, unreadable or malformed."""
    return read_record(path, ReportRecord, "report record")


def write_report_record(path: Path, record: ReportRecord) -> Path:
    """Write ``summaryreport.json`` atomically."""
    return write_record(path, record)


# ---------------------------------------------------------------- JSON <-> records


def read_json_file(path: Path, what: str) -> dict[str, Any]:
    """Read a JSON object written by a stage; raise PipelineError naming the file and the stage to run."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{what} {path} cannot be read ({exc})") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{what} {path} does not hold a JSON object")
    return data


def read_record(path: Path, kind: type[Record], what: str) -> Record:
    """A record of type ``kind`` (``what`` says it in words) from the JSON object at ``path``."""
    data = read_json_file(path, what)
    try:
        return record_from_json(kind, data)
    except ValueError as exc:
        raise PipelineError(f"{what} {path}: {exc}") from None


def write_record(path: Path, record: object) -> Path:
    """Write a record as indented JSON, atomically; return ``path``."""
    return write_text_atomic(Path(path), json.dumps(record_to_json(record), indent=2) + "\n")


def record_to_json(record: Any) -> dict[str, Any]:
    """A record as the JSON object its file holds."""
    absent = absent_keys(record)
    return {
        item.name: _value_to_json(getattr(record, item.name))
        for item in fields(record)
        if not (item.metadata.get("omit_when_none") and getattr(record, item.name) is None)
        and not item.metadata.get("absent_keys")
        and item.name not in absent
    }


def absent_keys(record: Any) -> frozenset[str]:
    """The names of the fields the file a record was read from left out (none for a record that keeps no such list)."""
    for item in fields(record):
        if item.metadata.get("absent_keys"):
            return frozenset(getattr(record, item.name))
    return frozenset()


def _value_to_json(value: Any) -> Any:
    if is_dataclass(value):
        return record_to_json(value)
    if isinstance(value, list):
        return [_value_to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _value_to_json(item) for key, item in value.items()}
    return value


def record_from_json(kind: type[Record], data: Any) -> Record:
    """A record of type ``kind`` from a JSON object; ValueError naming the field that is missing or of a wrong type."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    hints = typing.get_type_hints(kind)
    values: dict[str, Any] = {}
    for item in fields(kind):  # type: ignore[arg-type]
        if item.metadata.get("absent_keys"):
            values[item.name] = frozenset(other.name for other in fields(kind) if other.name not in data)  # type: ignore[arg-type]
            continue
        required = item.default is MISSING and item.default_factory is MISSING
        if item.name not in data:
            if required:
                raise ValueError(f"field {item.name!r} is missing")
            continue
        if data[item.name] is None and _allows_none(hints[item.name]):
            if required:  # written as null, read as None; otherwise the default stands
                values[item.name] = None
            continue
        try:
            values[item.name] = _convert(hints[item.name], data[item.name])
        except ValueError as exc:
            raise ValueError(f"field {item.name!r}: {exc}") from None
    return kind(**values)


def read_sections(kind: type[Any], data: dict[str, Any], path: Path) -> dict[str, Any]:
    """The fields of ``kind`` that ``data`` holds, converted; one that does not convert is left out and logged."""
    hints = typing.get_type_hints(kind)
    values = {}
    for item in fields(kind):
        if item.name not in data or data[item.name] is None:
            continue
        try:
            values[item.name] = _convert(hints[item.name], data[item.name])
        except ValueError as exc:
            log.warning("%s: %r is left out: %s", path, item.name, exc)
    return values


def _allows_none(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in hint.__args__


def _convert(hint: Any, value: Any) -> Any:
    """``value`` as the type ``hint`` names; ValueError when it is not one."""
    if isinstance(hint, types.UnionType):
        return _convert_union(hint, value)
    if isinstance(hint, type) and is_dataclass(hint):
        return record_from_json(hint, value)
    origin = typing.get_origin(hint)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        items = _expect(list, "a list", value)
        exact = _exact_types(item_type)
        if exact and all(type(item) in exact for item in items):  # a long list of plain values, as it is
            return list(items)
        return [_convert(item_type, item) for item in items]
    if origin is dict:
        _, value_type = typing.get_args(hint)
        return {str(key): _convert(value_type, item) for key, item in _expect(dict, "an object", value).items()}
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ValueError(f"expected {getattr(hint, '__name__', hint)}, found {type(value).__name__}")


def _exact_types(hint: Any) -> frozenset[type]:
    """The Python types a JSON value of type ``hint`` is already as it stands (none for records and containers)."""
    arms = hint.__args__ if isinstance(hint, types.UnionType) else (hint,)
    if not all(arm in (int, float, str, bool, type(None)) for arm in arms):
        return frozenset()
    return frozenset(arms)


def _convert_union(hint: types.UnionType, value: Any) -> Any:
    """``value`` as the first arm of ``hint`` it converts to (None when the union allows it)."""
    arms = [arm for arm in hint.__args__ if arm is not type(None)]
    if value is None and len(arms) < len(hint.__args__):
        return None
    if len(arms) == 1:
        return _convert(arms[0], value)
    for arm in arms:
        try:
            return _convert(arm, value)
        except ValueError:
            pass
    expected = " or ".join(arm.__name__ for arm in arms)
    raise ValueError(f"expected {expected}, found {type(value).__name__}")


def _expect(kind: type[Record], described: str, value: Any) -> Record:
    """``value`` when it is a ``kind``; ValueError naming what was ``described`` otherwise."""
    if not isinstance(value, kind):
        raise ValueError(f"expected {described}, found {type(value).__name__}")
    return value
