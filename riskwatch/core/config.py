"""The one config loader: reads ``config.json`` (or the file named by ``$RISK_CONFIG``).

Paths in the file resolve against the config file's own folder, never the working directory,
so a config written for the classic course project works unchanged wherever it lives.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

from riskwatch.core.databases import (
    DEFAULT_PASSWORD_ENV,
    DatabaseSource,
    DatabaseUrl,
    check_identifier,
    parse_database_url,
)
from riskwatch.core.errors import PipelineError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "config.json"
CONFIG_ENV_VAR = "RISK_CONFIG"

PATH_KEYS = (
    "input_folder_path",
    "output_folder_path",
    "test_data_path",
    "output_model_path",
    "prod_deployment_path",
)
# A database as a source, beside or instead of the input folder (see riskwatch/core/databases.py).
DATABASE_KEYS = (
    "input_database_url",
    "input_database_table",
    "input_database_watermark",
    "input_database_password_env",
)
SECTION_KEYS = ("ingestion", "model", "deployment", "api", "diagnostics", "reporting", "monitoring")
SQLITE_URL_PREFIX = "sqlite:///"
DEFAULT_HISTORY_FILE = "runhistory.sqlite"
DEFAULT_LOG_FILE = "fullprocess.log"

log = logging.getLogger(__name__)


MODEL_FAMILIES = ("linear", "additive", "boosted")  # simplest first (riskwatch/model/riskmodels.py)


@dataclass(frozen=True)
class ModelSettings:
    """The model families to choose from, how they are compared, the logistic regression's hyperparameters and
    how the decision threshold is chosen."""

    C: float = 1.0
    max_iter: int = 1000
    class_weight: str | None = None
    # "f1": the threshold that maximises F1 on the training data; a number: that threshold.
    decision_threshold: str | float = "f1"
    # The families training compares by cross-validated F1 (and the monitoring job trains as challengers);
    # the simplest listed is kept unless another is better by the gate's rule (monitoring.min_gain and
    # monitoring.gate_confidence).
    families: tuple[str, ...] = field(default=MODEL_FAMILIES, metadata={"choices": MODEL_FAMILIES})
    cross_validation_folds: int = field(default=5, metadata={"min": 2})
    # The families are compared on at most this many rows (a seeded sample of them); with fewer than
    # min_selection_rows, the simplest listed family is trained without a comparison.
    selection_rows: int = 20_000
    min_selection_rows: int = 1_000
    # The additive and boosted families fit on at most this many rows (a seeded sample, weights kept): on
    # three features they gain nothing measurable beyond it, and a cycle on a million rows stays short.
    max_fit_rows: int = 50_000


@dataclass(frozen=True)
class IngestionSettings:
    """How ingestion reads its files."""

    # Files are read this many MiB at a time (pyarrow's CSV reader parses up to a few dozen such blocks ahead):
    # ingestion's memory is that plus about 16 bytes a row (the row hashes that find duplicates and tell batches
    # apart), whatever the size of a file. A line of a CSV file may be at most this long.
    batch_mb: float = field(default=1.0, metadata={"min": 1})

    @property
    def batch_bytes(self) -> int:
        return int(self.batch_mb * 1024 * 1024)


@dataclass(frozen=True)
class ApiSettings:
    """How the API is reached and what it accepts."""

    url: str = "http://127.0.0.1:8000"
    # The environment variable that holds the API token; when it is set, requests must carry it.
    token_env: str = "RISK_API_TOKEN"
    max_body_mb: float = 16.0
    max_file_mb: float = 256.0
    max_rows: int = 1_000_000
    # explain works out each row's contributions and a sentence (about 290 bytes of answer a row, against 45
    # without explain, and a second or so per 100,000 rows), so it is answered for fewer rows at once.
    max_explain_rows: int = 10_000
    timeout_seconds: float = 60.0
    # Host names (Host header, any port) the app answers besides the loopback ones; "*" answers any. Empty: any
    # host when a token is set, loopback only when none is (a page elsewhere cannot reach an open API by DNS).
    allowed_hosts: tuple[str, ...] = ()
    # A dashboard session not used for this long is signed out on the server.
    session_idle_hours: float = 8.0
    # How many proxies in front of the app set X-Forwarded-For: the client's address (which wrong tokens are
    # counted against) is read from it. 0: the connecting address, which behind a proxy is the proxy's for all.
    trusted_proxies: int = field(default=0, metadata={"min": 0})


@dataclass(frozen=True)
class DiagnosticsSettings:
    """How diagnostics times the stages and asks the package index."""

    # 0: report the timings the stages recorded when they ran; N: run ingestion, training and
    # scoring again N times each as processes to time them (the classic behaviour).
    timing_runs: int = field(default=0, metadata={"min": 0})
    package_index: str = "https://pypi.org/pypi"
    index_timeout_seconds: float = 3.0
    index_cache_hours: float = 24.0


@dataclass(frozen=True)
class ReportingSettings:
    """What the PDF report lists."""

    top_clients: int = 20


MODEL_DRIFT_TESTS = ("raw", "parametric", "nonparametric")
TRAINING_WINDOWS = ("all", "recent", "weighted")
RECENCY_UNITS = ("batches", "days")
RETRAIN_TRIGGERS = ("model_drift", "data_drift", "either")


@dataclass(frozen=True)
class MonitoringSettings:
    """How fullprocess.py decides on drift, retrains, gates, and where it keeps its record and log."""

    # A new source file is read once it has not changed for this long (it may still be being
    # copied in); a run waits at most this long for files that changed just before it.
    settle_seconds: float = field(default=30.0, metadata={"min": 0})
    # Model drift: "raw" (F1 on the new rows below the F1 the serving model was judged on when
    # deployed), "parametric" (below the reference minus k standard deviations of the F1 a batch of
    # that size shows when nothing has changed), "nonparametric" (below Q1 - 1.5 IQR of it).
    model_drift_test: str = field(default="parametric", metadata={"choices": MODEL_DRIFT_TESTS})
    # Fewer new rows than this are ingested untested and wait for the next batch (F1 on a handful
    # of rows says nothing); at least min_holdout_rows / holdout_fraction.
    min_new_rows: int = 100
    parametric_k: float = 2.0
    # Once the serving model has this many reference scores, the spread between them beyond their
    # sampling error widens the threshold too.
    min_history_scores: int = field(default=5, metadata={"min": 2})
    bootstrap_samples: int = field(default=2000, metadata={"min": 2})
    # Data drift per feature: a Kolmogorov-Smirnov test for batches of up to ks_max_rows rows,
    # else the Wasserstein distance over the training data's standard deviation.
    ks_max_rows: int = 1000
    ks_p_value: float = field(default=0.05, metadata={"below": 1})
    wasserstein_threshold: float = 0.1
    # What triggers retraining. "either" by default: F1 alone is slow to see clients change when
    # the model's F1 happens to stay close (a world that changes back, say); the gate keeps a
    # model that needs no change from being replaced.
    retrain_on: str = field(default="either", metadata={"choices": RETRAIN_TRIGGERS})
    # Share of the newly arrived rows kept out of training to compare challenger and champion.
    holdout_fraction: float = field(default=0.3, metadata={"below": 1})
    min_holdout_rows: int = 30
    # The challenger is deployed when its F1 on the held-out recent rows is at least the
    # champion's plus this margin.
    min_gain: float = field(default=0.01, metadata={"min": 0})
    # ... and the gain must hold in this share of paired resamples of the held-out recent rows.
    gate_confidence: float = field(default=0.95, metadata={"min": 0, "below": 1})
    # Challengers are trained on each of these windows and the best on the recent rows faces the
    # champion: all rows; the recent rows (since the change was first seen, or the last
    # recent_window_rows rows when that is set); all rows weighted by recency, halving every
    # recency_half_life batches or days.
    candidate_windows: tuple[str, ...] = field(default=TRAINING_WINDOWS, metadata={"choices": TRAINING_WINDOWS})
    recent_window_rows: int = field(default=0, metadata={"min": 0})
    recency_half_life: float = 1.0
    recency_unit: str = field(default="batches", metadata={"choices": RECENCY_UNITS})
    # The label-free estimate of F1 is flagged unreliable when the model's calibration error on
    # labelled new rows passes this.
    max_calibration_error: float = 0.05
    # The calibration test on labelled new rows: the exits the probabilities expect against those observed, and
    # the calibration slope against 1, each at this confidence; an alarm needs the gap past its tolerance too
    # (relative for the exits), so that a negligible gap on a large batch is no alarm.
    calibration_confidence: float = field(default=0.99, metadata={"below": 1})
    calibration_tolerance: float = field(default=0.1, metadata={"min": 0})
    calibration_slope_tolerance: float = field(default=0.2, metadata={"min": 0})
    # A miscalibrated serving model calls for retraining, with itself recalibrated (its log-odds refitted on the
    # recent rows, its threshold chosen again) among the challengers.
    recalibrate: bool = True
    # The data integrity test on every batch: the new rows' reconstruction error from the principal axes of the
    # serving model's training rows, against what their own columns imply; a batch past it by three standard
    # errors and this tolerance (relative) is a data integrity alarm, and nothing is trained on it until accepted.
    check_integrity: bool = True
    integrity_tolerance: float = field(default=0.2, metadata={"min": 0})
    # Held-out rows of the latest batches that make the rolling evaluation window.
    evaluation_window_rows: int = 5000
    # Alerts: a JSON event to each URL when a run deploys, fails or finds drift it cannot fix.
    webhooks: tuple[str, ...] = ()
    alert_timeout_seconds: float = 10.0
    # Empty: runhistory.sqlite and fullprocess.log in the model output folder, so each config's
    # runs keep their own record. A PostgreSQL URL lets several API hosts and the job share one
    # history; its password comes from the variable history_password_env names.
    history_url: str = ""
    history_password_env: str = DEFAULT_PASSWORD_ENV
    log_file: str = ""
    log_max_mb: float = 5.0
    log_backups: int = 5


@dataclass(frozen=True)
class Config:
    """Resolved settings; every path is absolute."""

    path: Path
    input_folder_path: Path | None  # None when only a database is the source
    output_folder_path: Path
    test_data_path: Path
    output_model_path: Path
    prod_deployment_path: Path
    ingestion: IngestionSettings = field(default_factory=IngestionSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    keep_versions: int = 5
    api: ApiSettings = field(default_factory=ApiSettings)
    diagnostics: DiagnosticsSettings = field(default_factory=DiagnosticsSettings)
    reporting: ReportingSettings = field(default_factory=ReportingSettings)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    database: DatabaseSource | None = None

    @property
    def history_path(self) -> Path | DatabaseUrl:
        """The run history: a SQLite file (``monitoring.history_url``, relative to the config folder) or a database."""
        url = self.monitoring.history_url
        if not url:
            return self.output_model_path / DEFAULT_HISTORY_FILE
        if not url.startswith(SQLITE_URL_PREFIX):
            return parse_database_url(
                url, self.path.parent, "monitoring.history_url", self.monitoring.history_password_env
            )
        return (self.path.parent / url[len(SQLITE_URL_PREFIX) :]).resolve()

    @property
    def log_path(self) -> Path:
        """The rotating log file of fullprocess.py: ``monitoring.log_file`` (relative to the config folder)."""
        if not self.monitoring.log_file:
            return self.output_model_path / DEFAULT_LOG_FILE
        return (self.path.parent / self.monitoring.log_file).resolve()


def resolve_config_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: the argument, else ``$RISK_CONFIG``, else the project's ``config.json``."""
    chosen = path or os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH
    return Path(chosen).expanduser().resolve()


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and check a config file; raise PipelineError naming the key or file at fault."""
    config_path = resolve_config_path(path)
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"config file {config_path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"config file {config_path} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise PipelineError(
            f"config file {config_path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(raw, dict):
        raise PipelineError(f"config file {config_path} must hold a JSON object")

    unknown = sorted(set(raw) - set(PATH_KEYS) - set(SECTION_KEYS) - set(DATABASE_KEYS))
    if unknown:
        log.warning("config file %s: ignoring unknown keys %s", config_path, ", ".join(unknown))

    base = config_path.parent
    database = _read_database_source(raw, config_path)
    optional = {"input_folder_path"} if database is not None and "input_folder_path" not in raw else set()
    paths = {key: _resolve_path(raw, key, base, config_path) for key in PATH_KEYS if key not in optional}
    _check_output_outside_input(paths, config_path)
    return Config(
        path=config_path,
        input_folder_path=paths.get("input_folder_path"),
        output_folder_path=paths["output_folder_path"],
        test_data_path=paths["test_data_path"],
        output_model_path=paths["output_model_path"],
        prod_deployment_path=paths["prod_deployment_path"],
        ingestion=_read_settings(IngestionSettings, raw, "ingestion", config_path),
        model=_read_model_settings(_section(raw, "model", config_path), config_path),
        keep_versions=_read_keep_versions(_section(raw, "deployment", config_path), config_path),
        api=_read_settings(ApiSettings, raw, "api", config_path),
        diagnostics=_read_settings(DiagnosticsSettings, raw, "diagnostics", config_path),
        reporting=_read_settings(ReportingSettings, raw, "reporting", config_path),
        monitoring=_read_monitoring_settings(raw, config_path),
        database=database,
    )


def _read_database_source(raw: dict[str, Any], config_path: Path) -> DatabaseSource | None:
    """The database source, when ``input_database_url`` is set; its table and watermark column checked."""
    if not any(key in raw for key in DATABASE_KEYS):
        return None
    values = {}
    for key in DATABASE_KEYS:
        value = raw.get(key, DEFAULT_PASSWORD_ENV if key == "input_database_password_env" else None)
        if not isinstance(value, str) or not value.strip():
            raise PipelineError(f"config file {config_path} needs '{key}' as a non-empty string with a database source")
        values[key] = value.strip()
    where = f"config file {config_path}: "
    password_env = check_identifier(values["input_database_password_env"], f"{where}input_database_password_env")
    url = parse_database_url(
        values["input_database_url"], config_path.parent, f"{where}input_database_url", password_env
    )
    table = check_identifier(values["input_database_table"], f"{where}input_database_table", qualified=True)
    watermark = check_identifier(values["input_database_watermark"], f"{where}input_database_watermark")
    return DatabaseSource(url, table, watermark, base=config_path.parent)


def dump_config(config: Config) -> str:
    """The config file (JSON) that ``load_config`` reads back as ``config`` from ``config.path``.

    Paths are written absolute; settings at their defaults are left out, as a person would write
    the file, so it keeps following the defaults.
    """
    paths: dict[str, Path | None] = {
        "input_folder_path": config.input_folder_path,
        "output_folder_path": config.output_folder_path,
        "test_data_path": config.test_data_path,
        "output_model_path": config.output_model_path,
        "prod_deployment_path": config.prod_deployment_path,
    }
    sections = {
        "ingestion": _changed_settings(config.ingestion),
        "model": _changed_settings(config.model),
        "deployment": {"keep_versions": config.keep_versions},
        "api": _changed_settings(config.api),
        "diagnostics": _changed_settings(config.diagnostics),
        "reporting": _changed_settings(config.reporting),
        "monitoring": _changed_settings(config.monitoring),
    }
    written: dict[str, Any] = {key: str(path) for key, path in paths.items() if path is not None}
    if config.database is not None:
        written |= {
            "input_database_url": config.database.url.url,
            "input_database_table": config.database.table,
            "input_database_watermark": config.database.watermark,
            "input_database_password_env": config.database.url.password_env,
        }
    return json.dumps({**written, **sections}, indent=2) + "\n"


def _changed_settings(settings: Any) -> dict[str, Any]:
    """A settings dataclass as its config section: the values that differ from its defaults (tuples as lists)."""
    defaults = asdict(type(settings)())
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in asdict(settings).items()
        if value != defaults[key]
    }


def _check_output_outside_input(paths: dict[str, Path], config_path: Path) -> None:
    """Refuse an output folder equal to or inside the input folder: ingestion would read its own output as data."""
    source, output = paths.get("input_folder_path"), paths["output_folder_path"]
    if source is not None and output.is_relative_to(source):
        raise PipelineError(
            f"config file {config_path}: 'output_folder_path' ({output}) must not be 'input_folder_path' ({source}) "
            "or a folder inside it, or ingestion would read its own output as source data"
        )


def _resolve_path(raw: dict[str, Any], key: str, base: Path, config_path: Path) -> Path:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PipelineError(f"config file {config_path} needs '{key}' as a non-empty path string")
    return (base / value).resolve()


def _section(raw: dict[str, Any], name: str, config_path: Path) -> dict[str, Any]:
    section = raw.get(name, {})
    if not isinstance(section, dict):
        raise PipelineError(f"config file {config_path}: '{name}' must be a JSON object")
    return section


def _read_model_settings(section: dict[str, Any], config_path: Path) -> ModelSettings:
    defaults = ModelSettings()
    unknown = sorted(set(section) - set(ModelSettings.__dataclass_fields__))
    if unknown:
        raise PipelineError(f"config file {config_path}: unknown model settings {', '.join(unknown)}")
    c_value = section.get("C", defaults.C)
    if isinstance(c_value, bool) or not isinstance(c_value, (int, float)) or c_value <= 0:
        raise PipelineError(f"config file {config_path}: model.C must be a positive number, not {c_value!r}")
    max_iter = section.get("max_iter", defaults.max_iter)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise PipelineError(f"config file {config_path}: model.max_iter must be a positive whole number")
    class_weight = section.get("class_weight", defaults.class_weight)
    if class_weight not in (None, "balanced"):
        raise PipelineError(f'config file {config_path}: model.class_weight must be null or "balanced"')
    threshold = section.get("decision_threshold", defaults.decision_threshold)
    if threshold != "f1" and (
        isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1
    ):
        raise PipelineError(
            f'config file {config_path}: model.decision_threshold must be "f1" or a number between 0 and 1'
        )
    # The families and how they are compared follow the generic rules (types of the defaults, fields' metadata).
    generic = {
        item.name: _check_setting(
            section[item.name],
            getattr(defaults, item.name),
            item.metadata,
            f"config file {config_path}: model.{item.name}",
        )
        for item in fields(ModelSettings)
        if item.name in section and item.name not in ("C", "max_iter", "class_weight", "decision_threshold")
    }
    return ModelSettings(
        C=float(c_value), max_iter=max_iter, class_weight=class_weight, decision_threshold=threshold, **generic
    )


def _read_keep_versions(section: dict[str, Any], config_path: Path) -> int:
    keep = section.get("keep_versions", 5)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 2:
        raise PipelineError(
            f"config file {config_path}: deployment.keep_versions must be a whole number of at least 2 "
            "(the current version and one to roll back to)"
        )
    return keep


def _read_monitoring_settings(raw: dict[str, Any], config_path: Path) -> MonitoringSettings:
    settings = _read_settings(MonitoringSettings, raw, "monitoring", config_path)
    if settings.min_new_rows * settings.holdout_fraction < settings.min_holdout_rows:
        raise PipelineError(
            f"config file {config_path}: monitoring.min_new_rows ({settings.min_new_rows}) times holdout_fraction "
            f"({settings.holdout_fraction:g}) must be at least min_holdout_rows ({settings.min_holdout_rows}), "
            "or a batch big enough to test could never be held out to compare models"
        )
    url = settings.history_url
    if url and (not url.startswith(SQLITE_URL_PREFIX) or url == SQLITE_URL_PREFIX):
        where = f"config file {config_path}: monitoring.history_url"
        parse_database_url(url, config_path.parent, where, settings.history_password_env)
    return settings


SettingsT = TypeVar("SettingsT", bound="DataclassInstance")


def _check_setting(value: Any, default: Any, rules: Mapping[str, Any], where: str) -> Any:
    """A setting's value, checked against the type of its default and its field's rules; ``where`` names it."""
    if isinstance(default, tuple):
        return _check_list_setting(value, rules, where)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise PipelineError(f"{where} must be true or false, not {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str) or not value.strip():
            raise PipelineError(f"{where} must be a non-empty string")
        if "choices" in rules and value not in rules["choices"]:
            raise PipelineError(f"{where} must be one of {', '.join(rules['choices'])}, not {value!r}")
        return value
    return _check_number_setting(value, isinstance(default, int), rules, where)


def _check_list_setting(value: Any, rules: Mapping[str, Any], where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise PipelineError(f"{where} must be a list of non-empty strings")
    wrong = [item for item in value if "choices" in rules and item not in rules["choices"]]
    if wrong or ("choices" in rules and not value):
        raise PipelineError(f"{where} must list some of {', '.join(rules['choices'])}, not {value!r}")
    return tuple(dict.fromkeys(value))


def _check_number_setting(value: Any, whole: bool, rules: Mapping[str, Any], where: str) -> int | float:
    """A number: positive unless the rules give a ``min``, below a ``below``, whole when its default is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PipelineError(f"{where} must be a number, not {value!r}")
    if "min" in rules and value < rules["min"]:
        raise PipelineError(f"{where} must be at least {rules['min']}, not {value!r}")
    if "min" not in rules and value <= 0:
        raise PipelineError(f"{where} must be a positive number, not {value!r}")
    if "below" in rules and value >= rules["below"]:
        raise PipelineError(f"{where} must be below {rules['below']}, not {value!r}")
    if whole and not isinstance(value, int):
        raise PipelineError(f"{where} must be a whole number, not {value!r}")
    return value


def _read_settings(kind: type[SettingsT], raw: dict[str, Any], name: str, config_path: Path) -> SettingsT:
    """Fill a settings dataclass from the config section ``name``: types as the defaults', numbers positive.

    A field's metadata can narrow that: ``choices`` for strings, ``min`` (a lowest allowed
    value instead of "positive") and ``below`` (an exclusive upper bound) for numbers.
    """
    section = _section(raw, name, config_path)
    defaults = kind()
    known = {setting.name: setting for setting in fields(kind)}
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise PipelineError(f"config file {config_path}: unknown {name} settings {', '.join(unknown)}")
    values = {
        key: _check_setting(
            value, getattr(defaults, key), known[key].metadata, f"config file {config_path}: {name}.{key}"
        )
        for key, value in section.items()
    }
    return kind(**values)
