"""Names of the files the stages hand to each other, and reading and writing them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.errors import PipelineError
from common.files import atomic_path, sha256_file, write_text_atomic
from common.files import utc_now as utc_now  # the stages import it from here

log = logging.getLogger(__name__)

FINAL_DATA = "finaldata.csv"
INGESTED_FILES = "ingestedfiles.txt"
INGESTION_REPORT = "ingestionreport.json"
MODEL_FILE = "trainedmodel.pkl"
MODEL_INFO_FILE = "trainedmodel.json"
LATEST_SCORE_FILE = "latestscore.txt"
METRICS_FILE = "metrics.json"
DIAGNOSTICS_FILE = "diagnostics.json"
DEPENDENCY_CACHE_FILE = "dependencycache.json"
MISSING_CACHE_FILE = "missingcache.json"  # missing-cell counts per source file, by content hash
CONFUSION_MATRIX_FILE = "confusionmatrix.png"
REPORT_FILE = "summaryreport.pdf"
# Written by reporting.py after the PDF: which model version the report describes.
REPORT_RECORD_FILE = "summaryreport.json"
TRENDS_PLOT_FILE = "trends.png"
API_RETURNS_FILE = "apireturns.txt"
# The serving model's scores on the rolling window of recent held-out rows (written by fullprocess.py).
EVALUATION_WINDOW_FILE = "evaluationwindow.json"

# The deployment folder: versions/vNNNN/ holds each published version, ``current`` links to one.
VERSIONS_FOLDER = "versions"
CURRENT_LINK = "current"
VERSION_INFO_FILE = "version.json"
# Held by every command that changes the deployment (fullprocess.py, deployment.py), one at a time.
DEPLOYMENT_LOCK_FILE = ".fullprocess.lock"


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


@dataclass
class IngestedFile:
    """One line of ``ingestedfiles.txt``: the file name first, then what identifies its content."""

    name: str
    sha256: str
    rows_kept: int
    rows_dropped: int
    ingested_at: str

    def to_line(self) -> str:
        fields = [self.name] + [f"{key}={value}" for key, value in asdict(self).items() if key != "name"]
        return "\t".join(fields)


def read_ingested_files(path: Path) -> dict[str, IngestedFile]:
    """Parse ``ingestedfiles.txt``; lines without a content hash (classic layout) are skipped."""
    entries: dict[str, IngestedFile] = {}
    if not path.exists():
        return entries
    for line in path.read_text(encoding="utf-8").splitlines():
        name, *pairs = line.split("\t")
        values = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
        try:
            entries[name] = IngestedFile(
                name=name,
                sha256=values["sha256"],
                rows_kept=int(values["rows_kept"]),
                rows_dropped=int(values["rows_dropped"]),
                ingested_at=values["ingested_at"],
            )
        except (KeyError, ValueError):
            log.info("%s: line %r carries no content hash; treating that file as not ingested", path.name, name)
    return entries


@dataclass(frozen=True)
class DeployedVersion:
    """One published version, loaded: the model and its records, all read from one version folder."""

    folder: Path
    model: Any
    metrics: dict[str, Any]  # metrics.json: the scores on the test data
    model_info: dict[str, Any]  # trainedmodel.json
    version_info: dict[str, Any]  # version.json

    @property
    def version(self) -> str:
        return self.folder.name


def load_deployed_version(folder: Path) -> DeployedVersion:
    """Load a version folder; raise PipelineError when its model is not the one its scores describe."""
    folder = Path(folder)
    metrics = read_json_file(folder / METRICS_FILE, METRICS_FILE)
    model_info = read_json_file(folder / MODEL_INFO_FILE, MODEL_INFO_FILE)
    version_info = read_json_file(folder / VERSION_INFO_FILE, VERSION_INFO_FILE)
    try:
        model_hash = sha256_file(folder / MODEL_FILE)
    except OSError as exc:
        raise PipelineError(f"model file {folder / MODEL_FILE} cannot be read ({exc.strerror})") from None
    if model_hash != metrics.get("model_sha256"):
        raise PipelineError(f"{folder / MODEL_FILE} is not the model its {METRICS_FILE} describes")
    return DeployedVersion(
        folder=folder,
        model=load_model(folder / MODEL_FILE),
        metrics=metrics,
        model_info=model_info,
        version_info=version_info,
    )
