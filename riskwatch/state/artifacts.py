"""Names of the files the stages hand to each other, and reading and writing them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

from riskwatch.core.errors import PipelineError
from riskwatch.core.files import atomic_path, current_umask, fsync_dir, sha256_file, write_text_atomic
from riskwatch.core.files import utc_now as utc_now  # the stages import it from here
from riskwatch.core.imports import sklearn_without_pandas
from riskwatch.state.records import (
    Metrics,
    ModelInfo,
    VersionInfo,
    read_metrics,
    read_model_info,
    read_sections,
    read_version_info,
    write_model_info,
    write_record,
)
from riskwatch.state.records import read_json_file as read_json_file  # the stages import it from here

log = logging.getLogger(__name__)

FINAL_DATA = "finaldata.csv"
# The latest row of each client whose outcome is not known yet, beside finaldata.csv (never trained on).
UNLABELLED_CLIENTS = "unlabelledclients.csv"
INGESTED_FILES = "ingestedfiles.txt"
# Beside ingestedfiles.txt (one file name a line, as in the classic project): what identifies each file's content.
INGESTED_RECORD = "ingestedfiles.json"
INGESTION_REPORT = "ingestionreport.json"
MODEL_FILE = "trainedmodel.pkl"
MODEL_INFO_FILE = "trainedmodel.json"
LATEST_SCORE_FILE = "latestscore.txt"
METRICS_FILE = "metrics.json"
DIAGNOSTICS_FILE = "diagnostics.json"
DEPENDENCY_CACHE_FILE = "dependencycache.json"
MISSING_CACHE_FILE = "missingcache.json"  # missing-cell counts per source file, by content hash
# The data-drift reference's sorted log1p values per feature, keyed by the reference rows' content (fullprocess.py).
DRIFT_REFERENCE_FILE = "driftreference.npz"
CONFUSION_MATRIX_FILE = "confusionmatrix.png"
REPORT_FILE = "summaryreport.pdf"
# Written by reporting.py after the PDF: which model version the report describes.
REPORT_RECORD_FILE = "summaryreport.json"
TRENDS_PLOT_FILE = "trends.png"
CALIBRATION_PLOT_FILE = "calibration.png"
API_RETURNS_FILE = "apireturns.txt"
# The serving model's scores on the rolling window of recent held-out rows (written by fullprocess.py).
EVALUATION_WINDOW_FILE = "evaluationwindow.json"

# The deployment folder: versions/vNNNN/ holds each published version, ``current`` links to one.
VERSIONS_FOLDER = "versions"
CURRENT_LINK = "current"
VERSION_INFO_FILE = "version.json"
# Held by every command that changes the deployment (fullprocess.py, deployment.py), one at a time.
DEPLOYMENT_LOCK_FILE = ".fullprocess.lock"


class Classifier(Protocol):
    """What every model the pipeline saves, loads and serves answers: scikit-learn's classifier methods, one row
    per client, exit the second column of ``predict_proba``."""

    def predict_proba(self, features: Any) -> Any: ...

    def predict(self, features: Any) -> Any: ...


def decision_threshold(model: Classifier) -> float:
    """The probability from which a model predicts an exit: its own threshold (every family's has one), else
    scikit-learn's 0.5 (a classic pipeline's)."""
    threshold = getattr(model, "threshold", None)
    return 0.5 if threshold is None else float(threshold)


def save_model(model: Classifier, info: ModelInfo, folder: Path) -> ModelInfo:
    """Write the model and its metadata atomically; return the metadata with the model's hash."""
    payload = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    info = replace(info, model_sha256=hashlib.sha256(payload).hexdigest())
    with atomic_path(folder / MODEL_FILE) as tmp:
        tmp.write_bytes(payload)
    write_model_info(folder / MODEL_INFO_FILE, info)
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
        with sklearn_without_pandas():  # unpickling imports scikit-learn
            model = pickle.loads(payload)
    except Exception as exc:  # any unpickling fault means the same thing to the user
        raise PipelineError(
            f"model file {path} is corrupt or was written by incompatible library versions "
            f"({type(exc).__name__}); retrain with training.py or roll back the deployment"
        ) from None
    if not callable(getattr(model, "predict_proba", None)):
        raise PipelineError(f"model file {path} does not hold a classifier with predict_proba")
    return model


@dataclass(frozen=True, kw_only=True)
class IngestionReport:
    """``ingestionreport.json``: what the last ingestion did, and the hash of the ``finaldata.csv`` it wrote.

    Every field has a default: reports written by earlier versions hold fewer keys.
    """

    finished_at: str | None = None
    source: str | None = None  # the input folder, the database table, or both
    files: list[IngestedFile] = field(default_factory=list)
    unlabelled_files: list[str] = field(default_factory=list)
    unlabelled_clients: int = 0
    rejected: dict[str, str] = field(default_factory=dict)  # file name: why it was left out
    ignored: list[str] = field(default_factory=list)
    kept_from_history: list[str] = field(default_factory=list)
    arriving: list[str] = field(default_factory=list)
    rows_merged: int = 0
    duplicates_removed: int = 0
    rows_written: int = 0
    appended: bool = False
    unchanged: bool = False
    batch: int = 0
    seconds: float = 0.0
    finaldata_sha256: str | None = None


def write_ingestion_report(folder: Path, report: IngestionReport) -> Path:
    """Write ``ingestionreport.json`` in ``folder``, atomically; return its path."""
    return write_record(Path(folder) / INGESTION_REPORT, report)


def read_ingestion_report(path: Path) -> IngestionReport:
    """The ``ingestionreport.json`` at ``path``; PipelineError naming the file when it is not JSON.

    A field that does not read is left out (logged) and takes its default, as does a ``files``
    entry that does not, so one odd field never hides the hash the report vouches for.
    """
    data = read_json_file(path, "ingestion report")
    values = read_sections(IngestionReport, {key: value for key, value in data.items() if key != "files"}, path)
    if "source" not in values and isinstance(data.get("input_folder"), str):  # reports before 2026-11-23
        values["source"] = data["input_folder"]
    return IngestionReport(**values, files=read_report_files(data.get("files"), path))


def read_report_files(entries: object, path: Path) -> list[IngestedFile]:
    """The ``files`` of an ingestion report; an entry that is not one is left out and logged."""
    files = []
    for entry in entries if isinstance(entries, list) else []:
        try:
            files.append(IngestedFile.from_json(entry))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s: an entry of 'files' is left out: %s", path, exc)
    return files


def check_final_data(output_folder_path: Path) -> str:
    """The hash of ``finaldata.csv``, after checking it is the file the last ingestion wrote.

    Raises PipelineError when it is missing, or is not the file the ingestion report vouches for
    (cut short by a full disk, a crash or an edit): nothing should train on or describe such a file.
    """
    data_path = Path(output_folder_path) / FINAL_DATA
    if not data_path.exists():
        raise PipelineError(f"{data_path} does not exist; run ingestion.py first")
    data_hash = sha256_file(data_path)
    report_path = Path(output_folder_path) / INGESTION_REPORT
    if report_path.exists():  # classic layouts have no report
        vouched = read_ingestion_report(report_path).finaldata_sha256
        if vouched not in (None, data_hash):
            raise PipelineError(
                f"{data_path} is not the file the last ingestion wrote (interrupted, or edited by hand); "
                "run ingestion.py again"
            )
    return data_hash


VERSION_NAME = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True, order=True)
class VersionNumber:
    """A deployed version's number, ordered as versions are published: ``v0007`` is 7 and comes before ``v0010``."""

    number: int

    @classmethod
    def parse(cls, name: str) -> VersionNumber | None:
        """The number of a version name (``v0007``); None for any other name."""
        match = VERSION_NAME.match(name)
        return None if match is None else cls(int(match.group(1)))

    def next(self) -> VersionNumber:
        return VersionNumber(self.number + 1)

    @property
    def name(self) -> str:
        return f"v{self.number:04d}"


FIRST_VERSION = VersionNumber(1)


def version_number(name: str) -> VersionNumber:
    """The number of a kept version's name (``list_versions`` gives only such names)."""
    number = VersionNumber.parse(name)
    if number is None:
        raise ValueError(f"{name!r} is not a version name (v0001, v0002, ...)")
    return number


def list_versions(prod_deployment_path: Path) -> list[str]:
    """Kept versions, oldest first."""
    folder = Path(prod_deployment_path) / VERSIONS_FOLDER
    if not folder.is_dir():
        return []
    names = [entry.name for entry in folder.iterdir() if VERSION_NAME.match(entry.name) and entry.is_dir()]
    return sorted(names, key=version_number)


def current_version(prod_deployment_path: Path) -> str | None:
    """The name of the version ``current`` points at, or None before the first deployment."""
    try:
        return Path(os.readlink(Path(prod_deployment_path) / CURRENT_LINK)).name
    except FileNotFoundError:
        return None


def current_version_folder(prod_deployment_path: Path) -> Path:
    """The folder of the serving version, resolved once so its files all belong together."""
    version = current_version(prod_deployment_path)
    if version is None:
        raise PipelineError(f"nothing is deployed in {prod_deployment_path}; run deployment.py first")
    return Path(prod_deployment_path) / VERSIONS_FOLDER / version


@dataclass
class IngestedFile:
    """One ingested file: its name (a line of ``ingestedfiles.txt``) and what identifies its content."""

    name: str
    sha256: str
    rows_kept: int
    rows_dropped: int
    ingested_at: str
    labelled: bool = True  # False: no outcome in any row; its rows describe current clients and are never trained on
    # Of a labelled file, the rows whose exited cell is blank: clients whose outcome is not known yet, kept
    # (cached apart) with the unlabelled clients, never trained on.
    rows_pending: int = 0
    source: ClassVar[str] = ""  # a file; see IngestedFetch

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> IngestedFile:
        """An entry of ``ingestedfiles.json``; KeyError, TypeError or ValueError when it is not one."""
        entry = IngestedFile(
            name=str(item["name"]),
            sha256=str(item["sha256"]),
            rows_kept=int(item["rows_kept"]),
            rows_dropped=int(item["rows_dropped"]),
            ingested_at=str(item["ingested_at"]),
            labelled=item.get("labelled", True) is not False,
            rows_pending=int(item.get("rows_pending", 0)),
        )
        if not item.get("source"):
            return entry
        return IngestedFetch(
            **vars(entry),
            source=str(item["source"]),
            watermark_from=item.get("watermark_from"),
            watermark_to=item["watermark_to"],
        )


@dataclass
class IngestedFetch(IngestedFile):
    """One fetch from a database, ingested as a file is: the source (URL masked, table, watermark column)
    and the watermark range it covered, above ``watermark_from`` (None: from the start) up to ``watermark_to``."""

    source: str = ""  # type: ignore[misc]
    watermark_from: int | str | None = None
    watermark_to: int | str | None = None


@dataclass(frozen=True)
class IngestionRecord:
    """What ``ingestedfiles.json`` holds: the input folder the files came from, and the files in arrival order."""

    input_folder_path: str | None
    files: list[IngestedFile]


def record_path(ingested_files: Path) -> Path:
    """The ``ingestedfiles.json`` that goes with an ``ingestedfiles.txt``."""
    return Path(ingested_files).with_name(INGESTED_RECORD)


def write_ingestion_record(folder: Path, record: IngestionRecord) -> Path:
    """Write ``ingestedfiles.json`` then ``ingestedfiles.txt`` (names only), each atomically; return the latter.

    The record goes first: a crash between the two leaves names the record describes, or
    names it does not (those read as not ingested, so the next run parses them again).
    """
    payload = {"input_folder_path": record.input_folder_path, "files": [asdict(entry) for entry in record.files]}
    write_text_atomic(folder / INGESTED_RECORD, json.dumps(payload, indent=2) + "\n")
    return write_text_atomic(folder / INGESTED_FILES, "".join(f"{entry.name}\n" for entry in record.files))


def read_ingestion_record(path: Path) -> IngestionRecord:
    """The record of the ``ingestedfiles.txt`` at ``path``: its files whose content is known, in its order.

    A name of ``ingestedfiles.txt`` that ``ingestedfiles.json`` does not describe (a classic file
    with no record beside it, or a name added by hand) is not ingested as far as the pipeline
    knows; the file is read again. Lines of the earlier layout, the name followed by tab-separated
    ``key=value`` pairs, are read as they were written.
    """
    path = Path(path)
    if not path.exists():
        return IngestionRecord(None, [])
    names = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    stored = _read_record_file(record_path(path))
    known = {entry.name: entry for entry in stored.files}
    entries: dict[str, IngestedFile] = {}
    for line in names:
        name, _, pairs = line.partition("\t")
        entry = _entry_from_pairs(name, pairs) if pairs else known.get(name)
        if entry is None:
            log.info("%s: %r carries no content hash; treating that file as not ingested", path.name, name)
            continue
        entries[name] = entry
    return IngestionRecord(stored.input_folder_path, list(entries.values()))


def read_ingested_files(path: Path) -> dict[str, IngestedFile]:
    """The files ``ingestedfiles.txt`` at ``path`` lists whose content is known, by name, in arrival order."""
    return {entry.name: entry for entry in read_ingestion_record(path).files}


def _read_record_file(path: Path) -> IngestionRecord:
    """``ingestedfiles.json``; an absent or unreadable one knows no file (the files are then read again)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = [IngestedFile.from_json(item) for item in data["files"]]
        folder = data.get("input_folder_path", data.get("input_folder"))  # "input_folder": before 2026-11-23
        return IngestionRecord(folder if isinstance(folder, str) else None, files)
    except FileNotFoundError:
        return IngestionRecord(None, [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s cannot be read (%s); the files it describes will be read again", path, exc)
        return IngestionRecord(None, [])


def _entry_from_pairs(name: str, pairs: str) -> IngestedFile | None:
    """An entry of the earlier ``ingestedfiles.txt`` layout: ``name<TAB>sha256=...<TAB>rows_kept=...``."""
    values = dict(pair.split("=", 1) for pair in pairs.split("\t") if "=" in pair)
    try:
        return IngestedFile.from_json({"name": name, **values})
    except (KeyError, ValueError):
        return None


# The files of a version folder, and those versions published before ingestedfiles.json existed lack.
VERSION_FILES = (MODEL_FILE, MODEL_INFO_FILE, LATEST_SCORE_FILE, METRICS_FILE, INGESTED_FILES, INGESTED_RECORD)
OPTIONAL_VERSION_FILES = (INGESTED_RECORD,)
# The version's report, put in its folder by reporting.py (after the deployment, so never checked with the model's
# files): the deployment folder links to the serving version's, as to its other files.
REPORT_VERSION_FILES = (REPORT_FILE, CONFUSION_MATRIX_FILE)


def point_link(link: Path, target: str) -> None:
    """Make ``link`` a symlink to ``target`` with one atomic rename."""
    temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, link)


def keep_report(prod_deployment_path: Path, version: str, made: dict[str, Path]) -> list[Path]:
    """Copy the report ``version``'s files were made into (name in the version folder: the file) into its version
    folder, each replaced atomically, and link the deployment folder's names to ``current``'s; return the copies.

    A version no longer kept (a later deployment removed it) gets nothing: its folder is never made again.
    """
    folder = Path(prod_deployment_path) / VERSIONS_FOLDER / version
    kept: list[Path] = []
    for name, source in made.items():
        try:  # in the folder as it is: atomic_path would make a removed version's folder again
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        except FileNotFoundError:
            log.warning("version %s is no longer kept in %s; its report stays in the model folder", version, folder)
            return kept
        tmp = Path(tmp_name)
        try:
            os.fchmod(fd, 0o666 & ~current_umask())
            with open(fd, "wb") as copy, open(source, "rb") as original:
                shutil.copyfileobj(original, copy)
                copy.flush()
                os.fsync(copy.fileno())
            os.replace(tmp, folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        kept.append(folder / name)
    fsync_dir(folder)
    for name in made:
        link, wanted = Path(prod_deployment_path) / name, f"{CURRENT_LINK}/{name}"
        if not (link.is_symlink() and os.readlink(link) == wanted):
            point_link(link, wanted)
    return kept


@dataclass(frozen=True)
class DeployedVersion:
    """One published version, loaded: the model and its records, all read from one version folder."""

    folder: Path
    model: Classifier
    metrics: Metrics  # the scores on the test data
    model_info: ModelInfo
    version_info: VersionInfo  # all None when version.json is damaged

    @property
    def version(self) -> str:
        return self.folder.name


def read_deployment_details(folder: Path) -> VersionInfo:
    """A version's ``version.json`` (when and after what it was deployed); unknown details when it is damaged.

    It only describes the deployment; the model's integrity rests on the model file's hash in
    ``metrics.json``, so a damaged ``version.json`` is logged and the version still serves.
    """
    try:
        return read_version_info(Path(folder) / VERSION_INFO_FILE)
    except PipelineError as exc:
        log.warning("%s; its deployment details are unknown", exc)
        return VersionInfo()


def check_version_folder(folder: Path) -> tuple[Any, Metrics, ModelInfo]:
    """Check that a version folder's files belong together and its model loads; return (model, scores, metadata).

    The scores, the model metadata, the score file and the ingestion record must all describe
    this model file. Messages name the files only; callers say which folder they were checking.
    """
    folder = Path(folder)
    missing = [name for name in VERSION_FILES if not (folder / name).is_file() and name not in OPTIONAL_VERSION_FILES]
    if missing:
        raise PipelineError(f"{', '.join(missing)} missing")
    model_hash = sha256_file(folder / MODEL_FILE)
    metrics = read_metrics(folder / METRICS_FILE)
    model_info = read_model_info(folder / MODEL_INFO_FILE)
    if metrics.model_sha256 != model_hash:
        raise PipelineError(f"{METRICS_FILE} holds the scores of another model; run scoring.py after training.py")
    if model_info.model_sha256 != model_hash:
        raise PipelineError(f"{MODEL_INFO_FILE} describes another model; run training.py")
    try:
        score = float((folder / LATEST_SCORE_FILE).read_text(encoding="utf-8"))
    except ValueError:
        score = None
    if score != metrics.f1:
        raise PipelineError(f"{LATEST_SCORE_FILE} does not match {METRICS_FILE}; run scoring.py")
    for name, trained_on in (
        (INGESTED_FILES, model_info.ingested_files_sha256),
        (INGESTED_RECORD, model_info.ingested_record_sha256),
    ):
        if trained_on is not None and (not (folder / name).is_file() or trained_on != sha256_file(folder / name)):
            raise PipelineError(
                f"{name} has changed since the model was trained (ingestion ran again); run training.py and scoring.py"
            )
    try:
        model = load_model(folder / MODEL_FILE)
    except PipelineError:
        raise PipelineError(f"{MODEL_FILE} is corrupt or cannot be loaded by the installed libraries") from None
    return model, metrics, model_info


def load_deployed_version(folder: Path) -> DeployedVersion:
    """Load a version folder; raise PipelineError naming the folder when its files do not belong together."""
    folder = Path(folder)
    try:
        model, metrics, model_info = check_version_folder(folder)
    except PipelineError as exc:
        raise PipelineError(f"{folder}: {exc}") from None
    return DeployedVersion(folder, model, metrics, model_info, read_deployment_details(folder))
