"""Names of the files the stages hand to each other, and reading and writing them."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.errors import PipelineError
from common.files import atomic_path, write_text_atomic

FINAL_DATA = "finaldata.csv"
INGESTED_FILES = "ingestedfiles.txt"
INGESTION_REPORT = "ingestionreport.json"
MODEL_FILE = "trainedmodel.pkl"
MODEL_INFO_FILE = "trainedmodel.json"
LATEST_SCORE_FILE = "latestscore.txt"
METRICS_FILE = "metrics.json"
DIAGNOSTICS_FILE = "diagnostics.json"
DEPENDENCY_CACHE_FILE = "dependencycache.json"
CONFUSION_MATRIX_FILE = "confusionmatrix.png"
REPORT_FILE = "summaryreport.pdf"
API_RETURNS_FILE = "apireturns.txt"

# The deployment folder: versions/vNNNN/ holds each published version, ``current`` links to one.
VERSIONS_FOLDER = "versions"
CURRENT_LINK = "current"
VERSION_INFO_FILE = "version.json"


def utc_now() -> str:
    """The current UTC time as ISO 8601 with a Z, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def save_model(model: Any, info: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Write the model and its metadata atomically; return the metadata with the model's hash."""
    payload = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    info = {**info, "model_sha256": hashlib.sha256(payload).hexdigest()}
    with atomic_path(folder / MODEL_FILE) as tmp:
        tmp.write_bytes(payload)
    write_text_atomic(folder / MODEL_INFO_FILE, json.dumps(info, indent=2) + "\n")
    return info


def load_model(path: Path) -> Any:
    """Unpickle a model file; raise PipelineError naming the file when it is missing or unusable.

    Only load model files this pipeline wrote: unpickling runs code from the file.
    """
    path = Path(path)
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise PipelineError(f"model file {path} does not exist; run training.py first") from None
    except OSError as exc:
        raise PipelineError(f"model file {path} cannot be read ({exc.strerror})") from None
    try:
        model = pickle.loads(payload)
    except Exception as exc:  # any unpickling fault means the same thing to the user
        raise PipelineError(
            f"model file {path} is corrupt or was written by incompatible library versions "
            f"({type(exc).__name__}); retrain with training.py or roll back the deployment"
        ) from None
    if not callable(getattr(model, "predict_proba", None)):
        raise PipelineError(f"model file {path} does not hold a classifier with predict_proba")
    return model


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


def current_version(deploy_root: Path) -> str | None:
    """The name of the version ``current`` points at, or None before the first deployment."""
    try:
        return Path(os.readlink(Path(deploy_root) / CURRENT_LINK)).name
    except FileNotFoundError:
        return None


def current_version_folder(deploy_root: Path) -> Path:
    """The folder of the serving version, resolved once so its files all belong together."""
    version = current_version(deploy_root)
    if version is None:
        raise PipelineError(f"nothing is deployed in {deploy_root}; run deployment.py first")
    return Path(deploy_root) / VERSIONS_FOLDER / version
