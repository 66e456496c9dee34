"""Diagnostics: predictions, data statistics, stage timings and dependency health, in one JSON file.

``main()`` writes ``diagnostics.json`` (with the time it was made) in the model output folder;
the API's ``/diagnostics`` serves it as stored, so a request never re-runs anything.

* predictions: labels and probabilities of the deployed model for a dataset (the test data);
* summary statistics of the ingested data: mean, median, standard deviation, min, quartiles, max;
* missing data: percent of missing values per column in the source files, before ingestion
  drops incomplete rows;
* timing: seconds each stage took when it really ran (every stage script and the monitoring job
  record them); only when asked (``--time-stages N``, ``diagnostics.timing_runs``) are ingestion,
  training and scoring run again as processes on a scratch copy of the outputs (the live ones are
  never written), N times each, as the classic project does;
* dependencies: installed and latest version of each package in ``requirements.txt``, asked of
  the package index with a bounded timeout; answers are cached, and an index that cannot be
  reached gives "unknown" with the reason instead of a wait.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from packaging.version import InvalidVersion, Version

from riskwatch.core.cli import build_parser, run_stage
from riskwatch.core.config import PROJECT_ROOT, Config, DiagnosticsSettings, dump_config
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import find_test_files, list_data_files, parse_utc, shown_path, write_text_atomic
from riskwatch.core.schema import BadFileError, read_feature_file
from riskwatch.core.timings import read_stage_timings, record_stage_timings
from riskwatch.data import datastats
from riskwatch.state.artifacts import (
    DEPENDENCY_CACHE_FILE,
    DIAGNOSTICS_FILE,
    FINAL_DATA,
    MISSING_CACHE_FILE,
    Classifier,
    check_final_data,
    current_version_folder,
    load_deployed_version,
    utc_now,
)
from riskwatch.state.records import (
    ColumnStatistics,
    DependencyStatus,
    Diagnostics,
    KnownVersion,
    MissingData,
    Predictions,
    StageSpread,
    StageTimings,
    SummaryStatistics,
    record_from_json,
    write_diagnostics_record,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger("diagnostics")

REQUIREMENTS_FILE = PROJECT_ROOT / "requirements.txt"
TIMED_STAGES = ("ingestion", "training", "scoring")
STAGE_TIMEOUT = 1800  # seconds; a stage stuck longer than this is reported, not waited for
SCRATCH_PREFIX = "risk-timing-"
RECORDED_RUNS = 10  # the spread of recorded timings is over this many latest records of each stage
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([=<>!~].*)?$")


def predict_data_file(model: Classifier, data_path: Path) -> Predictions:
    """Labels and exit probabilities of ``model`` for every row of a data file, in file order."""
    try:
        batch = read_feature_file(data_path)
    except BadFileError as exc:
        raise PipelineError(f"cannot predict for {data_path}: {exc}") from None
    probabilities = model.predict_proba(batch.features)[:, 1]
    labels = model.predict(batch.features)
    return Predictions(
        dataset=str(data_path),
        rows=batch.rows,
        corporation=batch.ids,
        label=[int(label) for label in labels],
        probability=[round(float(p), 6) for p in probabilities],
        predicted_exits=int(labels.sum()),
    )


def time_stages(config: Config, runs: int) -> StageTimings:
    """Time ingestion, training and scoring as processes, ``runs`` times each, on scratch outputs.

    Each run gets a fresh scratch folder whose config reads the live source and test data and
    writes only inside the scratch folder, so the live outputs are never touched.
    """
    seconds: dict[str, list[float]] = {stage: [] for stage in TIMED_STAGES}
    clean_stale_scratch()
    scratch_root = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    try:
        for run in range(runs):
            scratch = scratch_root / f"run{run + 1}"
            scratch.mkdir()
            scratch_config = write_scratch_config(config, scratch)
            for stage in TIMED_STAGES:
                seconds[stage].append(run_stage_process(stage, scratch_config))
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    record_stage_timings(
        config.output_model_path, {s: statistics.median(v) for s, v in seconds.items()}, "diagnostics.py"
    )
    return StageTimings(
        runs=runs,
        unit="seconds",
        source=f"each stage run again {runs} time(s) as a process on a scratch copy",
        stages={stage: describe_spread(values) for stage, values in seconds.items()},
    )


def recorded_timings(output_model_path: Path, last: int = RECORDED_RUNS) -> StageTimings:
    """The timing section from the stages' own records: per stage, the latest and the spread of the last ``last``."""
    records = read_stage_timings(output_model_path)
    order = [*TIMED_STAGES, *sorted(set(records) - set(TIMED_STAGES))]
    stages = {}
    for stage in order:
        kept = records.get(stage, [])[-last:]
        if kept:
            stages[stage] = dataclasses.replace(
                describe_spread([item.seconds for item in kept]),
                latest=kept[-1].seconds,
                latest_at=kept[-1].finished_at,
                latest_source=kept[-1].source,
                count=len(kept),
            )
    return StageTimings(runs=0, unit="seconds", source="recorded when each stage ran", stages=stages)


def clean_stale_scratch(older_than: float = 3600.0) -> None:
    """Remove scratch folders of timing runs that were killed (older than an hour, so never a live one)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        try:
            if time.time() - folder.stat().st_mtime > older_than:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


def write_scratch_config(config: Config, scratch: Path) -> Path:
    """A config that reads the live inputs and writes every output under ``scratch``; other settings at defaults."""
    scratch_config = Config(
        path=scratch / "config.json",
        input_folder_path=config.input_folder_path,
        output_folder_path=scratch / "ingesteddata",
        test_data_path=config.test_data_path,
        output_model_path=scratch / "models",
        prod_deployment_path=scratch / "production_deployment",
        model=config.model,
    )
    return write_text_atomic(scratch_config.path, dump_config(scratch_config))


def run_stage_process(stage: str, config_path: Path) -> float:
    """Run ``<stage>.py --config config_path -q`` and return its wall time in seconds."""
    command = [sys.executable, str(PROJECT_ROOT / f"{stage}.py"), "--config", str(config_path), "-q"]
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=STAGE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise PipelineError(f"timing {stage}.py: it did not finish within {STAGE_TIMEOUT} s") from None
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise PipelineError(f"timing {stage}.py failed (exit {result.returncode}): {last_line}")
    return elapsed


def describe_spread(values: list[float]) -> StageSpread:
    """Mean, standard deviation, median, min and max of timings, with the runs themselves."""
    return StageSpread(
        mean=round(statistics.fmean(values), 4),
        std=round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        median=round(statistics.median(values), 4),
        min=round(min(values), 4),
        max=round(max(values), 4),
        values=[round(value, 4) for value in values],
    )


def read_requirements(path: Path = REQUIREMENTS_FILE) -> list[tuple[str, str]]:
    """(package name, version specifier) for each requirement line; comments and options skipped."""
    requirements = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = _REQUIREMENT.match(line)
        if match:
            requirements.append((match.group(1), (match.group(2) or "").strip()))
    return requirements


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def fetch_latest_version(name: str, index_url: str, timeout: float) -> str:
    """The newest release of ``name`` on a PyPI-style JSON index; raise OSError-like errors on failure."""
    response = requests.get(f"{index_url.rstrip('/')}/{name}/json", timeout=timeout)
    response.raise_for_status()
    return str(response.json()["info"]["version"])


def read_cache(path: Path) -> dict[str, dict[str, str]]:
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(cache, dict):
        return {}
    return {name: entry for name, entry in cache.items() if isinstance(entry, dict)}


def age_hours(stamp: str | None, now: datetime) -> float:
    """Hours since an ISO 8601 time; infinite when it is missing or unreadable."""
    then = parse_utc(stamp)
    return float("inf") if then is None else (now - then).total_seconds() / 3600


def describe_failure(exc: BaseException | None, timeout: float) -> str:
    """Why the index gave no version, in words; ``exc`` None means no answer before the deadline."""
    if exc is None or isinstance(exc, requests.Timeout):
        return f"the package index did not answer within {timeout:g} s"
    if isinstance(exc, requests.ConnectionError):
        return "the package index cannot be reached"
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        if exc.response.status_code == 404:
            return "the package index does not know this package"
        return f"the package index answered HTTP {exc.response.status_code}"
    return f"the package index gave an unusable answer ({type(exc).__name__})"


def look_up_latest(names: list[str], settings: DiagnosticsSettings, cache_path: Path) -> dict[str, dict[str, Any]]:
    """For each package: latest version, where it came from (index or cache) and when, or why unknown.

    Cached answers younger than ``index_cache_hours`` are reused without asking; the rest are
    asked in parallel, and the whole look-up never takes much more than ``index_timeout_seconds``.
    """
    now = datetime.now(UTC)
    cache = read_cache(cache_path)
    answers: dict[str, dict[str, Any]] = {}
    to_ask = []
    for name in names:
        entry = cache.get(name, {})
        if entry.get("latest") and age_hours(entry.get("checked_at"), now) < settings.index_cache_hours:
            answers[name] = {"latest": entry["latest"], "source": "cache", "checked_at": entry["checked_at"]}
        else:
            to_ask.append(name)
    if to_ask:
        asked = ask_index(to_ask, settings.package_index, settings.index_timeout_seconds)
        for name in to_ask:
            latest = asked.get(name)
            if isinstance(latest, str):
                answers[name] = {"latest": latest, "source": "index", "checked_at": utc_now()}
                cache[name] = {"latest": latest, "checked_at": utc_now()}
                continue
            answers[name] = {
                "latest": None,
                "source": None,
                "reason": describe_failure(latest, settings.index_timeout_seconds),
            }
            if cache.get(name, {}).get("latest"):
                answers[name]["last_known"] = cache[name]
        write_text_atomic(cache_path, json.dumps(cache, indent=2, sort_keys=True) + "\n")
    return answers


def ask_index(names: list[str], index_url: str, timeout: float) -> dict[str, str | BaseException]:
    """Ask for every package at once; return what came back within the deadline (a version or an error).

    Daemon threads: one stuck on a slow index neither delays the answer past the deadline nor
    keeps the process from exiting.
    """
    results: dict[str, str | BaseException] = {}

    def ask(name: str) -> None:
        try:
            results[name] = fetch_latest_version(name, index_url, timeout)
        except Exception as exc:  # any failure is reported per package, in words
            results[name] = exc

    threads = [threading.Thread(target=ask, args=(name,), daemon=True) for name in names]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout + 1
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return dict(results)


def dependency_status(
    settings: DiagnosticsSettings, cache_path: Path, requirements: Path = REQUIREMENTS_FILE
) -> list[DependencyStatus]:
    """One row per requirement: required, installed and latest version, and whether it is outdated."""
    wanted = read_requirements(requirements)
    latest = look_up_latest([name for name, _ in wanted], settings, cache_path)
    return [describe_dependency(name, specifier, latest[name]) for name, specifier in wanted]


def describe_dependency(name: str, specifier: str, answer: dict[str, Any]) -> DependencyStatus:
    """One requirement's versions and verdict, from the index's (or the cache's) ``answer``."""
    installed = installed_version(name)
    known = answer.get("last_known")
    return DependencyStatus(
        package=name,
        required=specifier or None,
        installed=installed,
        latest=answer["latest"],
        source=answer["source"],
        checked_at=answer.get("checked_at"),
        reason=answer.get("reason"),
        last_known=KnownVersion(latest=known.get("latest"), checked_at=known.get("checked_at")) if known else None,
        status=compare_versions(installed, answer["latest"]),
    )


def compare_versions(installed: str | None, latest: str | None) -> str:
    """ "not installed", "unknown", "outdated" or "current"."""
    if installed is None:
        return "not installed"
    if latest is None:
        return "unknown"
    try:
        return "outdated" if Version(installed) < Version(latest) else "current"
    except InvalidVersion:
        return "unknown"


def measure_missing_data(config: Config, cached: bool = True) -> MissingData:
    """Percent of missing values in the source: the input folder's data files, else the database table."""
    folder = config.input_folder_path
    source_files, _ = list_data_files(folder) if folder is not None and folder.is_dir() else ([], [])
    if not source_files and config.database is not None:
        from riskwatch.data.database_rows import count_missing_in_table

        return record_from_json(
            MissingData, {"dataset": config.database.shown, **count_missing_in_table(config.database)}
        )
    if not source_files or folder is None:
        raise PipelineError(f"the source folder {folder} holds no data files")
    cache = config.output_model_path / MISSING_CACHE_FILE if cached else None
    counted = datastats.missing_data(source_files, cache)
    return record_from_json(MissingData, {"dataset": shown_path(folder, config.path.parent), **counted})


def run_diagnostics(config: Config, runs: int) -> Diagnostics:
    """Everything diagnostics measures, as the record ``diagnostics.json`` holds."""
    started = time.perf_counter()
    missing = measure_missing_data(config)
    deployed = load_deployed_version(current_version_folder(config.prod_deployment_path))  # resolved once
    check_final_data(config.output_folder_path)  # a finaldata.csv cut short is not described as if whole
    report = Diagnostics(
        generated_at=utc_now(),
        model_version=deployed.version,
        model_trained_at=deployed.model_info.trained_at,
        predictions=predict_data_file(deployed.model, find_test_files(config.test_data_path)[0]),
        summary_statistics=describe_ingested_data(config),
        missing_data=missing,
        timing=time_stages(config, runs) if runs > 0 else recorded_timings(config.output_model_path),
        dependencies=dependency_status(config.diagnostics, config.output_model_path / DEPENDENCY_CACHE_FILE),
    )
    return dataclasses.replace(report, seconds=round(time.perf_counter() - started, 3))


def describe_ingested_data(config: Config) -> SummaryStatistics:
    """Summary statistics of each numeric column of ``finaldata.csv``."""
    data_path = config.output_folder_path / FINAL_DATA
    columns = datastats.summary_statistics(datastats.read_numeric_columns(data_path))
    return SummaryStatistics(
        dataset=shown_path(data_path, config.path.parent),
        columns={name: record_from_json(ColumnStatistics, values) for name, values in columns.items()},
    )


def write_diagnostics(config: Config, runs: int) -> Diagnostics:
    """Run the diagnostics and write ``diagnostics.json`` in the model folder; return what it holds."""
    report = run_diagnostics(config, runs)
    target = write_diagnostics_record(config.output_model_path / DIAGNOSTICS_FILE, report)
    log.info("wrote %s", target)
    return report


def log_diagnostics(report: Diagnostics) -> None:
    """The stage timings and the outdated and unknown packages, in the log."""
    timing = report.timing or StageTimings()
    log.info(
        "timings (%s): %s",
        timing.source,
        ", ".join(f"{stage} {values.median or 0.0:.2f} s" for stage, values in timing.stages.items())
        or "none recorded yet",
    )
    dependencies = report.dependencies or []
    outdated = [row.package or "" for row in dependencies if row.status == "outdated"]
    unknown = [row for row in dependencies if row.status == "unknown"]
    log.info(
        "dependencies: %d outdated%s, %d unknown%s",
        len(outdated),
        f" ({', '.join(outdated)})" if outdated else "",
        len(unknown),
        f" ({unknown[0].reason})" if unknown else "",
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--time-stages",
        "--runs",
        dest="runs",
        type=int,
        metavar="N",
        help="run ingestion, training and scoring again N times each to time them "
        "(default: diagnostics.timing_runs; 0 reports the timings the stages recorded when they ran)",
    )
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 0:
        parser.error("--time-stages must be 0 or more")

    def work(config: Config) -> Diagnostics:
        report = write_diagnostics(config, config.diagnostics.timing_runs if args.runs is None else args.runs)
        log_diagnostics(report)
        return report

    return run_stage("diagnostics", args, work)


if __name__ == "__main__":
    raise SystemExit(main())
