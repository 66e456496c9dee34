"""The stakeholders' API: predictions, scores, summary statistics and diagnostics, as JSON.

Serve it with a real WSGI server, never Flask's development server::

    .venv/bin/python app.py --port 8000 --workers 2          # gunicorn, started from here
    RISK_CONFIG=config.json .venv/bin/gunicorn -w 2 -b 127.0.0.1:8000 'app:create_app()'
    .venv/bin/gunicorn app:app                               # as the classic project's wsgi.py expects

The deployed model is loaded once per worker and swapped when ``production_deployment/current``
changes: each request reads that one link, so a newly deployed version is picked up without a
restart, and since a version is complete before the link points at it, no request ever sees a
half-published one. A version that fails to load is logged and the previous one keeps serving.

Endpoints: ``GET``/``POST /prediction``, ``GET /scoring``, ``GET /summarystats``, ``GET /diagnostics``,
``GET /history`` (the fullprocess.py runs), ``GET /health``, ``GET /version``. Bad input gets a
4xx JSON error naming the problem. When the environment variable named by ``api.token_env``
(default ``RISK_API_TOKEN``) is set, every endpoint but ``/health`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import argparse
import errno
import hmac
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import orjson
from flask import Flask, Response, request
from scipy.special import expit
from werkzeug.exceptions import (
    BadRequest,
    Forbidden,
    HTTPException,
    NotFound,
    RequestEntityTooLarge,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)

from common.artifacts import (
    CURRENT_LINK,
    DIAGNOSTICS_FILE,
    EVALUATION_WINDOW_FILE,
    FINAL_DATA,
    DeployedVersion,
    load_deployed_version,
    read_json_file,
)
from common.cli import add_logging_flags
from common.config import CONFIG_ENV_VAR, Config, load_config
from common.datastats import read_numeric_columns, summary_statistics
from common.errors import PipelineError
from common.files import DATA_SUFFIXES, find_test_files, sha256_file
from common.history import read_runs
from common.logs import setup_logging
from common.schema import (
    FEATURES,
    BadFileError,
    FeatureBatch,
    features_from_records,
    normalise_keys,
    read_feature_bytes,
    read_feature_csv,
)
from dashboard import DASHBOARD_STATE
from dashboard import bp as dashboard_bp

log = logging.getLogger("app")

MIB = 1024 * 1024
CSV_TYPES = ("text/csv", "application/csv", "text/plain")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# The names classic clients give the data file, in the query string, a JSON body or a form; the first found is used.
LOCATION_KEYS = (
    "filelocation",
    "file_location",
    "filename",
    "file_name",
    "filepath",
    "file_path",
    "data_path",
    "dataset_path",
    "data_file",
    "inputdata",
    "input_data",
    "data",
)
ACCEPTED_KEYS = ", ".join(LOCATION_KEYS)
RETRY_SECONDS = 30.0  # how soon a version that failed to load is tried again
MAX_LOCATION = 1024  # longest filelocation looked at
MAX_SHOWN = 200  # longest piece of a client's input echoed in an error
CACHED_FILES = 8  # parsed data files kept per worker, for repeated requests by location
CACHED_FILE_BYTES = 16 * MIB  # larger files are parsed on every request
HISTORY_DEFAULT_RUNS = 50
HISTORY_MAX_RUNS = 1000
METRIC_KEYS = ("f1", "precision", "recall", "roc_auc", "accuracy", "brier_score", "log_loss", "confusion", "rows")
_PROBE_ROWS = np.array(
    [[0, 0, 1], [1, 10, 2], [37, 412, 18], [250, 3000, 90], [5000, 60000, 800], [0, 120000, 4000], [44507, 0, 1]],
    dtype=np.float64,
)


class LinearRiskModel:
    """The trained pipeline's arithmetic on plain arrays: log1p, standardise, logistic, threshold.

    scikit-learn's ``predict_proba`` spends most of its time on input validation; for one row
    that is ~20 times the arithmetic. The same operations in the same order give identical
    numbers, and ``for_model`` checks that on probe rows before the shortcut is used.
    """

    def __init__(self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: np.ndarray, threshold: float):
        self.mean, self.scale, self.coef_t, self.intercept, self.threshold = mean, scale, coef.T, intercept, threshold

    @classmethod
    def for_model(cls, model: Any) -> LinearRiskModel | None:
        """The shortcut for a model of the shape training.py writes, if it matches exactly; else None."""
        try:
            steps = model.estimator.named_steps
            if steps["log_counts"].func is not np.log1p or getattr(model, "response_method", "") != "predict_proba":
                return None
            scaler, classifier = steps["scale"], steps["classifier"]
            if list(classifier.classes_) != [0, 1] or classifier.coef_.shape[0] != 1:
                return None
            mean = scaler.mean_ if scaler.with_mean else np.zeros(classifier.coef_.shape[1])
            scale = scaler.scale_ if scaler.with_std else np.ones(classifier.coef_.shape[1])
            shortcut = cls(mean, scale, classifier.coef_, classifier.intercept_, float(model.threshold))
        except (AttributeError, KeyError, TypeError):
            return None
        probabilities, labels = shortcut.predict(_PROBE_ROWS)
        if np.array_equal(probabilities, model.predict_proba(_PROBE_ROWS)[:, 1]) and np.array_equal(
            labels, model.predict(_PROBE_ROWS)
        ):
            return shortcut
        return None

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(exit probabilities, labels 0/1) for float64 features, one row per client."""
        scaled = np.log1p(features)
        scaled -= self.mean
        scaled /= self.scale
        scores = (scaled @ self.coef_t + self.intercept).reshape(-1)
        probabilities = expit(scores, out=scores)
        return probabilities, (probabilities >= self.threshold).astype(np.int64)


@dataclass(frozen=True)
class ServedModel:
    """The version a worker answers with: loaded once, with the fast arithmetic when it applies."""

    link_target: str  # what ``current`` pointed at when this version was loaded
    deployed: DeployedVersion
    shortcut: LinearRiskModel | None

    @property
    def version(self) -> str:
        return self.deployed.version

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.shortcut is not None:
            return self.shortcut.predict(features)
        model = self.deployed.model
        return model.predict_proba(features)[:, 1], np.asarray(model.predict(features), dtype=np.int64)


def load_served_model(deploy_root: Path, link_target: str) -> ServedModel:
    """Load the version ``current`` points at; raise PipelineError when its files do not hold together."""
    deployed = load_deployed_version(deploy_root / link_target)
    return ServedModel(link_target=link_target, deployed=deployed, shortcut=LinearRiskModel.for_model(deployed.model))


class DeploymentWatcher:
    """Holds the loaded model and swaps it when ``current`` points at another version.

    A version that fails to load is retried every ``RETRY_SECONDS``; meanwhile the one loaded
    before keeps answering, and ``load_error`` says what is wrong.
    """

    def __init__(self, deploy_root: Path):
        self.deploy_root = deploy_root
        self._served: ServedModel | None = None
        self._failed: tuple[str, str, float] | None = None  # (link target, why, when) of a failed load
        self._lock = threading.Lock()

    def served(self) -> ServedModel:
        """The model to answer with; raise ServiceUnavailable when none can be loaded."""
        target = self._read_link()
        served = self._served
        if served is not None and (served.link_target == target or target is None):
            return served
        with self._lock:
            return self._switch(target)

    def load_error(self) -> tuple[str, str] | None:
        """(deployed version, why) when the deployed version could not be loaded, else None."""
        failed = self._failed
        if failed is None or failed[0] != self._read_link():
            return None
        return Path(failed[0]).name, failed[1]

    def _read_link(self) -> str | None:
        try:
            return os.readlink(self.deploy_root / CURRENT_LINK)
        except FileNotFoundError:
            return None

    def _switch(self, target: str | None) -> ServedModel:
        served = self._served
        if served is not None and served.link_target == target:
            return served  # another thread switched while this one waited
        if target is None:
            raise ServiceUnavailable("no model is deployed; run deployment.py")
        failed = self._failed
        if failed is None or failed[0] != target or time.monotonic() - failed[2] >= RETRY_SECONDS:
            try:
                self._served = load_served_model(self.deploy_root, target)
                self._failed = None
                log.info("serving model %s", self._served.version)
                return self._served
            except (PipelineError, OSError) as exc:
                why = str(exc).replace(f"{self.deploy_root}/", "")  # clients see paths inside the deployment only
                self._failed = (target, why, time.monotonic())
                kept = f"; still serving {served.version}" if served else ""
                log.error("cannot serve %s: %s%s", Path(target).name, why, kept)
        if served is not None:
            return served
        raise ServiceUnavailable(f"the deployed model cannot be loaded: {self._failed[1]}")


class FileBackedValue:
    """A value computed from some files, recomputed only when one of them changes (inode, size, mtime)."""

    def __init__(self, list_files: Callable[[], list[Path]], compute: Callable[[list[Path]], Any]):
        self.list_files, self.compute = list_files, compute
        self._signature: tuple[tuple[str, int, int, int], ...] | None = None
        self._value: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The value; OSError or PipelineError when the files are missing or unreadable."""
        with self._lock:
            files = self.list_files()
            stats = [(str(path), os.stat(path)) for path in files]
            signature = tuple((name, st.st_ino, st.st_size, st.st_mtime_ns) for name, st in stats)
            if signature != self._signature:
                self._value, self._signature = self.compute(files), signature
            return self._value


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status=status, mimetype="application/json"
    )


def allowed_data_places(config: Config) -> list[Path]:
    """The folders (or the one test file) whose files ``/prediction`` may read by location.

    A data folder that holds the config, the models or the deployment is left out, so a config
    such as ``"input_folder_path": "."`` never opens the whole project to requests.
    """
    protected = (config.path, config.model_folder, config.deployment_folder)
    places = []
    for place in (config.input_folder, config.output_folder, config.test_data_path):
        if place.is_dir() and any(path.is_relative_to(place) for path in protected):
            log.warning("/prediction will not read files in %s by location: it holds the config or models", place)
            continue
        places.append(place)
    return places


def open_data_location(location: object, base: Path, places: list[Path], max_bytes: int) -> tuple[int, Any, str]:
    """Open the file a ``filelocation`` names: (descriptor, its stat, its name). The caller closes the descriptor.

    A relative name is looked up in the project (config) folder, then in each data folder, so
    ``testdata.csv`` finds ``testdata/testdata.csv``; an absolute one is taken as it is. Either way
    the file must lie inside ``places`` (403 otherwise). The check is made on the opened file
    itself, so a file swapped for a link between check and read is caught too.
    """
    if not isinstance(location, str) or not location.strip():
        raise BadRequest("filelocation must be a non-empty string, such as testdata/testdata.csv")
    shown = location if len(location) <= MAX_SHOWN else location[:MAX_SHOWN] + "..."
    if len(location) > MAX_LOCATION or "\x00" in location:
        raise BadRequest(f"filelocation {shown!r} is not a usable file name")
    if "\\" in location:
        raise Forbidden("filelocation may not contain backslashes; separate folders with /")
    path = PurePosixPath(location.strip())
    if location.startswith("~") or (len(location) > 1 and location[1] == ":"):
        raise Forbidden(
            "filelocation must be a path relative to the project folder, such as testdata/testdata.csv, "
            "or an absolute path inside a data folder"
        )
    if ".." in path.parts:
        raise Forbidden("filelocation may not contain '..'")

    def outside() -> Forbidden:
        return Forbidden(f"{shown} is outside the data folders ({', '.join(_shown(place, base) for place in places)})")

    try:
        real = resolve_location(path, base, places)  # follows links: a link out of the data folders is caught
    except (OSError, RuntimeError, ValueError):
        raise BadRequest(f"filelocation {shown!r} is not a usable file name") from None
    if not _inside(real, places):
        raise outside()
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{shown} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise outside() from None  # it became a link after the check
        raise BadRequest(f"{shown} cannot be read ({exc.strerror})") from None
    try:
        opened = _opened_path(fd)
        if opened is not None and not _inside(opened, places):
            raise outside()  # a folder on the way was swapped for a link
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise BadRequest(f"{shown} is a folder; name a data file in it")
        if not stat.S_ISREG(info.st_mode):
            raise BadRequest(f"{shown} is not a regular file")
        name = os.path.basename(real)
        if not name.lower().endswith(DATA_SUFFIXES):
            raise BadRequest(f"{shown} is not a .csv, .json or .jsonl file")
        if info.st_size > max_bytes:
            raise RequestEntityTooLarge(f"{shown} is larger than the {max_bytes / MIB:g} MiB the API reads")
    except BaseException:
        os.close(fd)
        raise
    return fd, info, name


def resolve_location(path: PurePosixPath, base: Path, places: list[Path]) -> str:
    """The resolved path a location names: absolute as given; relative to ``base``, else to the first data folder
    that holds it (else relative to ``base``, for the error to name)."""
    if path.is_absolute():
        return os.path.realpath(path)
    first = os.path.realpath(os.path.join(base, path))
    if os.path.lexists(first):
        return first
    for place in places:
        candidate = os.path.join(place, path)
        if os.path.lexists(candidate):
            return os.path.realpath(candidate)
    return first


class LocationReader:
    """The rows of data files named by location, each version of a file parsed once.

    A file is the same when its device, inode, size and modification time are (an edit or an
    atomic replacement changes one of them); the last ``CACHED_FILES`` small files are kept.
    Every request still opens and checks the file.
    """

    def __init__(self, base: Path, places: list[Path], max_bytes: int):
        self.base, self.places, self.max_bytes = base, places, max_bytes
        self._parsed: OrderedDict[tuple[int, int, int, int], FeatureBatch] = OrderedDict()
        self._lock = threading.Lock()

    def rows(self, location: object) -> FeatureBatch:
        fd, info, name = open_data_location(location, self.base, self.places, self.max_bytes)
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        try:
            with self._lock:
                if key in self._parsed:
                    self._parsed.move_to_end(key)
                    return self._parsed[key]
            with open(fd, "rb", closefd=False) as handle:
                batch = read_feature_bytes(handle.read(self.max_bytes), name)
        finally:
            os.close(fd)
        if info.st_size <= CACHED_FILE_BYTES:
            batch.features.flags.writeable = False  # shared by later requests
            with self._lock:
                self._parsed[key] = batch
                while len(self._parsed) > CACHED_FILES:
                    self._parsed.popitem(last=False)
        return batch


def _inside(path: str, places: list[Path]) -> bool:
    """Whether a resolved path is one of ``places`` or lies under one (compared as strings: this is per request)."""
    return any(path == str(place) or path.startswith(f"{place}{os.sep}") for place in places)


def _opened_path(fd: int) -> str | None:
    """Where an open file really is (Linux's /proc), or None where that cannot be asked."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _shown(place: Path, base: Path) -> str:
    """A data place as a client may see it: relative to the project, else its name only."""
    return str(place.relative_to(base)) if place.is_relative_to(base) else place.name


def read_prediction_input(files: LocationReader, default_location: Callable[[], str]) -> FeatureBatch:
    """The rows a /prediction request asks about: by file location, JSON records, or a CSV body or upload.

    ``default_location``: the file a ``GET`` without parameters predicts for (the test data).
    """
    mimetype = request.mimetype
    try:
        if mimetype == "application/json" or mimetype.endswith("+json"):
            return read_json_request(files)
        upload = find_upload()
        if upload is not None:
            return read_feature_bytes(upload.read(), Path(upload.filename or "upload.csv").name)
        if mimetype in CSV_TYPES:
            return read_feature_csv(request.get_data(cache=False), "the CSV body")
        key = find_location_key(request.values)
        if key is not None:
            return files.rows(request.values[key])
        if request.method == "GET" and not request.values and not request.content_length:
            return files.rows(default_location())
    except BadFileError as exc:
        raise BadRequest(str(exc)) from None
    if not request.content_length and not request.values:
        raise BadRequest(
            'the request is empty; send JSON {"filelocation": "testdata/testdata.csv"} or {"records": [...]}, '
            "or a CSV body (Content-Type: text/csv)"
        )
    if not request.content_length or mimetype in FORM_TYPES:
        raise BadRequest(f"name the data file with one of {ACCEPTED_KEYS} (in the query string, JSON or a form)")
    raise UnsupportedMediaType(
        f"cannot read a body of type {mimetype or '(none given)'}; send application/json, text/csv "
        "or a multipart upload named 'file'"
    )


def find_location_key(values: Any) -> str | None:
    """The first of ``LOCATION_KEYS`` that ``values`` (the query, a form or a JSON object) holds."""
    return next((key for key in LOCATION_KEYS if key in values), None)


def find_upload() -> Any:
    """The uploaded file of a multipart request: the field ``file``, else the only file field; else None."""
    if request.mimetype != "multipart/form-data" or not request.files:
        return None
    if "file" in request.files:
        return request.files["file"]
    fields = list(request.files)
    if len(fields) > 1:
        raise BadRequest(f"the upload holds {len(fields)} files ({', '.join(fields[:5])}); send one, named 'file'")
    return request.files[fields[0]]


def read_json_request(files: LocationReader) -> FeatureBatch:
    data = request.get_data(cache=False)
    key = find_location_key(request.args)
    if not data.strip() and key is not None:  # a client that says JSON but names the file in the query
        return files.rows(request.args[key])
    body = parse_json(data, "the request body")
    if isinstance(body, list):
        return features_from_records(body, "the request body")
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object with 'filelocation' or 'records', or a list of records")
    if "records" in body:
        return features_from_records(body["records"], "records")
    key = find_location_key(body)
    if key is not None:
        value = body[key]
        if isinstance(value, (list, dict)):  # {"data": [records]} or {"data": {record}}
            return features_from_records(value if isinstance(value, list) else [value], key)
        return files.rows(value)
    if any(name in normalise_keys(body) for name in FEATURES):
        return features_from_records([body], "the request body")
    raise BadRequest(
        "the JSON body needs 'filelocation' (a data file; or one of "
        f"{ACCEPTED_KEYS.removeprefix('filelocation, ')}) or 'records' (a list of client records), or one record"
    )


def parse_json(data: bytes, what: str) -> Any:
    if not data.strip():
        raise BadRequest(f"{what} is empty")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON ({exc})") from None


def describe_predictions(served: ServedModel, batch: FeatureBatch) -> dict[str, Any]:
    probabilities, labels = served.predict(batch.features)
    if batch.ids is None:
        rows = [
            {"label": label, "probability": p} for label, p in zip(labels.tolist(), probabilities.tolist(), strict=True)
        ]
    else:
        rows = [
            {"corporation": corporation, "label": label, "probability": p}
            for corporation, label, p in zip(batch.ids, labels.tolist(), probabilities.tolist(), strict=True)
        ]
    return {"model_version": served.version, "rows": batch.rows, "predictions": rows}


def describe_load_error(watcher: DeploymentWatcher) -> dict[str, str]:
    """When the deployed version could not be loaded: which one, and why (an older one is serving)."""
    error = watcher.load_error()
    if error is None:
        return {}
    return {"status": "degraded", "deployed_version": error[0], "load_error": error[1]}


def describe_version(served: ServedModel) -> dict[str, Any]:
    info, model_info = served.deployed.version_info, served.deployed.model_info
    return {
        "model_version": served.version,
        "deployed_at": info.get("deployed_at"),
        "previous_version": info.get("previous_version"),
        "trained_at": model_info.get("trained_at"),
        "training_rows": model_info.get("training_rows"),
        "training_data_sha256": model_info.get("training_data_sha256"),
        "decision_threshold": model_info.get("decision_threshold"),
        "model_sha256": model_info.get("model_sha256"),
        "metrics": {key: served.deployed.metrics.get(key) for key in ("f1", "precision", "recall", "roc_auc")},
        "libraries": model_info.get("libraries"),
    }


def describe_scores(served: ServedModel, test_hashes: dict[str, str]) -> dict[str, Any]:
    """The deployed model's metrics on the test data, as scored before it was deployed."""
    unchanged = served.deployed.metrics.get("test_data_sha256") == test_hashes
    scores = {
        "model_version": served.version,
        **{key: served.deployed.metrics.get(key) for key in METRIC_KEYS},
        "scored_at": served.deployed.metrics.get("scored_at"),
        "test_data": [Path(path).name for path in served.deployed.metrics.get("test_data", [])],
        "test_data_unchanged": unchanged,
    }
    if not unchanged:
        scores["note"] = "the test data has changed since this model was scored; the next pipeline run re-scores it"
    return scores


RECENT_WINDOW_KEYS = ("rows", "batches", "f1", "precision", "recall", "roc_auc", "updated_at", "test_data_drift")


def read_recent_window(path: Path) -> dict[str, Any]:
    """The serving model's scores on the rolling window of recent held-out rows, as fullprocess.py stored them."""
    return read_json_file(path, EVALUATION_WINDOW_FILE)


def describe_recent_window(served: ServedModel, recent: FileBackedValue) -> dict[str, Any] | None:
    """The served version's scores on the recent window, with the note on the test data; None when there are none."""
    try:
        stored = recent.get()
    except (OSError, ValueError, PipelineError):
        return None
    if stored.get("model_version") != served.version:
        return None
    return {**{key: stored.get(key) for key in RECENT_WINDOW_KEYS}, "note": stored.get("test_data_note")}


def read_summary(path: Path) -> dict[str, Any]:
    columns = read_numeric_columns(path)
    rows = len(next(iter(columns.values())))
    return {"dataset": path.name, "rows": rows, "columns": summary_statistics(columns)}


def describe_stored_diagnostics(path: Path) -> dict[str, Any]:
    """What ``/diagnostics`` answers: timing, missing data and dependencies from ``diagnostics.json``."""
    stored = read_json_file(path, "diagnostics file")
    missing = stored.get("missing_data")
    missing = missing if isinstance(missing, dict) else {}
    return {
        "generated_at": stored.get("generated_at"),
        "model_version": stored.get("model_version"),
        "timing": stored.get("timing"),
        "missing_data": {key: missing.get(key) for key in ("dataset", "rows", "percent", "unreadable")},
        "dependencies": stored.get("dependencies"),
    }


def read_limit(value: str | None, default: int = HISTORY_DEFAULT_RUNS) -> int:
    """The ``limit`` query parameter: a whole number of runs from 1 to HISTORY_MAX_RUNS."""
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= HISTORY_MAX_RUNS:
        raise BadRequest(f"limit must be a whole number from 1 to {HISTORY_MAX_RUNS}, not {value[:40]!r}")
    return int(value)


def read_flag(value: str | None, name: str) -> bool:
    """A yes/no query parameter: absent, 0, false or no is no; 1, true or yes is yes."""
    if value is None or value.lower() in ("0", "false", "no"):
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    raise BadRequest(f"{name} must be 1 or 0 (true or false), not {value[:40]!r}")


def create_app(config: Config | str | os.PathLike[str] | None = None, token: str | None = None) -> Flask:
    """The Flask application. ``config``: a Config or a config file (default ``$RISK_CONFIG``, else config.json).

    ``token``: the API token; by default read from the environment variable ``api.token_env`` names.
    """
    if not isinstance(config, Config):
        config = load_config(config)
    if token is None:
        token = os.environ.get(config.api.token_env) or None
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(config.api.max_body_mb * MIB)
    app.config["RISK_CONFIG"] = config
    watcher = DeploymentWatcher(config.deployment_folder)
    files = LocationReader(config.path.parent, allowed_data_places(config), int(config.api.max_file_mb * MIB))
    summary = FileBackedValue(lambda: [config.output_folder / FINAL_DATA], lambda files: read_summary(files[0]))
    diagnostics = FileBackedValue(
        lambda: [config.model_folder / DIAGNOSTICS_FILE], lambda files: describe_stored_diagnostics(files[0])
    )
    test_hashes = FileBackedValue(
        lambda: find_test_files(config.test_data_path), lambda files: {path.name: sha256_file(path) for path in files}
    )
    recent = FileBackedValue(
        lambda: [config.model_folder / EVALUATION_WINDOW_FILE], lambda files: read_recent_window(files[0])
    )
    expected = token.encode() if token else None
    try:
        watcher.served()  # load the model now, not on a client's first request
    except ServiceUnavailable as exc:
        log.warning("%s", exc.description)

    app.extensions[DASHBOARD_STATE] = (watcher, token)  # the pages sign people in with the same token
    app.register_blueprint(dashboard_bp)

    @app.before_request
    def check_token() -> None:
        if expected is None or request.endpoint == "health" or request.blueprint == dashboard_bp.name:
            return  # the dashboard's pages keep their own signed session
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise Unauthorized("this API needs a token: send the header 'Authorization: Bearer <token>'")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        message = exc.description
        if isinstance(exc, RequestEntityTooLarge) and message == RequestEntityTooLarge.description:
            message = f"the request body is larger than the {config.api.max_body_mb:g} MiB the API accepts"
        response = json_response({"error": message, "status": exc.code}, exc.code or 500)
        if isinstance(exc, Unauthorized):
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return json_response(
            {"error": f"internal error ({type(exc).__name__}); see the server log", "status": 500}, 500
        )

    def default_location() -> str:
        try:
            return str(find_test_files(config.test_data_path)[0])
        except PipelineError as exc:
            raise NotFound(f"no data file was named and there is no test data to predict for ({exc})") from None

    @app.route("/prediction", methods=["GET", "POST"])
    def prediction() -> Response:
        served = watcher.served()
        batch = read_prediction_input(files, default_location)
        if batch.rows > config.api.max_rows:
            limit = config.api.max_rows
            raise RequestEntityTooLarge(f"{batch.rows:,} rows is more than the {limit:,} the API scores at once")
        return json_response(describe_predictions(served, batch))

    @app.get("/scoring")
    def scoring() -> Response:
        served = watcher.served()
        try:
            hashes = test_hashes.get()
        except (OSError, PipelineError):
            hashes = {}
        return json_response(
            {**describe_scores(served, hashes), "recent_window": describe_recent_window(served, recent)}
        )

    @app.get("/summarystats")
    def summarystats() -> Response:
        try:
            return json_response(summary.get())
        except (OSError, PipelineError) as exc:
            log.error("/summarystats: %s", exc)
            raise ServiceUnavailable(f"{FINAL_DATA} is missing or unreadable; run ingestion.py") from None

    @app.get("/diagnostics")
    def diagnostics_endpoint() -> Response:
        try:
            return json_response(diagnostics.get())
        except FileNotFoundError:
            raise ServiceUnavailable("no diagnostics have been stored yet; run diagnostics.py") from None
        except (OSError, PipelineError) as exc:
            log.error("/diagnostics: %s", exc)
            raise ServiceUnavailable(f"the stored {DIAGNOSTICS_FILE} cannot be read; run diagnostics.py") from None

    @app.get("/history")
    def history() -> Response:
        limit = read_limit(request.args.get("limit"))
        include_no_op = read_flag(request.args.get("all"), "all")
        try:
            runs = read_runs(config.history_path, limit, with_no_op=include_no_op)
        except PipelineError as exc:
            log.error("/history: %s", exc)
            raise ServiceUnavailable(f"the run history cannot be read: {exc}") from None
        return json_response({"history": config.history_path.name, "count": len(runs), "runs": runs})

    @app.get("/health")
    def health() -> Response:
        try:
            served = watcher.served()
        except ServiceUnavailable as exc:
            return json_response({"status": "unavailable", "error": exc.description}, 503)
        return json_response({"status": "ok", "model_version": served.version, **describe_load_error(watcher)})

    @app.get("/version")
    def version() -> Response:
        served = watcher.served()
        return json_response(
            {
                **describe_version(served),
                "recent_window": describe_recent_window(served, recent),
                **describe_load_error(watcher),
            }
        )

    return app


_built: Flask | None = None
_build_lock = threading.Lock()


def __getattr__(name: str) -> Flask:
    """``app.app``, built on first use: ``gunicorn app:app`` and a classic ``wsgi.py`` (``from app import app``).

    Importing this module builds nothing; the first access of ``app`` builds the application once,
    with the config ``$RISK_CONFIG`` names (else config.json).
    """
    global _built
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _build_lock:
        if _built is None:
            _built = create_app()
    return _built


def build_server(config_path: str | None, host: str, port: int, workers: int, access_log: bool = False) -> Any:
    """A gunicorn server for the app (gunicorn is imported here: the test client does not need it)."""
    from gunicorn.app.base import BaseApplication

    class RiskApiServer(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "sync")
            self.cfg.set("proc_name", "risk-api")
            self.cfg.set("control_socket_disable", True)
            if access_log:
                self.cfg.set("accesslog", "-")

        def load(self) -> Flask:
            return create_app(config_path)

    return RiskApiServer()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the API with gunicorn.")
    parser.add_argument("--config", metavar="PATH", help=f"config file (default: ${CONFIG_ENV_VAR}, else config.json)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2, one per core)")
    parser.add_argument("--access-log", action="store_true", help="log every request to stdout")
    args = add_logging_flags(parser).parse_args(argv)
    setup_logging(args.verbose - args.quiet)
    try:
        load_config(args.config)  # fail here, in one sentence, rather than in every worker
    except PipelineError as exc:
        log.error("app failed: %s", exc)
        return 1
    build_server(args.config, args.host, args.port, args.workers, args.access_log).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
