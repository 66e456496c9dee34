"""Helpers the tests share: a tiny project's files and config, training a model, running a script as a process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from riskwatch.core.config import Config, ModelSettings
from riskwatch.core.files import sha256_file
from riskwatch.core.imports import sklearn_without_pandas
from riskwatch.core.schema import FEATURES, ID_COLUMN, TARGET
from riskwatch.data.batches import read_ingested_data
from riskwatch.data.generator import format_csv, generate_clients, rows_of
from riskwatch.model.evaluation import score_model
from riskwatch.stages.deployment import Publication, publish_deployment
from riskwatch.stages.scoring import write_scores
from riskwatch.stages.training import train_from_folder
from riskwatch.state.artifacts import MODEL_FILE, MODEL_INFO_FILE, current_version_folder, load_model, save_model
from riskwatch.state.history import open_history, save_run, start_run
from riskwatch.state.records import read_model_info
from riskwatch.state.runs import CandidateScore, FeatureDrift, RunFields, RunFile

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PAUSED_STAGE = PROJECT_ROOT / "tests" / "paused_stage.py"
# The classic course's data, beside the project (shared/udacity-data).
UDACITY_DATA = PROJECT_ROOT.parent / "shared" / "udacity-data"
# Diagnostics that ask a package index nobody listens on, and give up quickly.
UNREACHABLE_INDEX = {"package_index": "http://127.0.0.1:9", "index_timeout_seconds": 0.5}


# CI sets this so that a missing PostgreSQL server or browser fails the tests that need it
# instead of skipping them.
REQUIRE_SERVICES_ENV = "RISK_TESTS_REQUIRE_SERVICES"


def skip_or_fail(reason: str) -> None:
    """Skip the test for want of a service, or fail it where $RISK_TESTS_REQUIRE_SERVICES is set."""
    if os.environ.get(REQUIRE_SERVICES_ENV):
        pytest.fail(f"{reason} (and ${REQUIRE_SERVICES_ENV} is set)")
    pytest.skip(reason)


def script_command(script: str, *arguments: str, pause_at: str | None = None) -> list[str]:
    """The command that runs a top-level script; with ``pause_at``, its deployment stops at that step."""
    if pause_at is None:
        return [sys.executable, str(PROJECT_ROOT / script), *arguments]
    return [sys.executable, str(PAUSED_STAGE), pause_at, script, *arguments]


def write_clients(path: Path, rows: int, seed: int) -> Path:
    """A CSV of ``rows`` generated clients."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_csv(rows_of(generate_clients(rows, np.random.default_rng(seed)))), encoding="utf-8")
    return path


def write_config(folder: Path, **overrides: object) -> Path:
    """A config.json in ``folder`` with the classic keys, relative paths and any overrides."""
    config = {
        "input_folder_path": "sourceddata",
        "output_folder_path": "ingesteddata",
        "test_data_path": "testdata",
        "output_model_path": "models",
        "prod_deployment_path": "production_deployment",
        "deployment": {"keep_versions": 3},
        **overrides,
    }
    # Tests write a file and run at once: no waiting for files to settle, unless a test asks for it.
    config["monitoring"] = {"settle_seconds": 0, **config.get("monitoring", {})}  # type: ignore[dict-item]
    path = folder / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def copy_project(template: Path, folder: Path) -> None:
    """Copy a project folder into ``folder`` as it is: links stay links (the deployment's are relative), files keep
    their times (ingestion knows a file by its size and time), and the absolute paths that its records hold of
    ``template`` name ``folder`` instead (in text files and in a SQLite run history's text; any other binary file
    that names the template is refused)."""
    shutil.copytree(template, folder, symlinks=True, dirs_exist_ok=True)
    old, new = str(template).encode(), str(folder).encode()
    for path in folder.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        content = path.read_bytes()
        if old not in content:
            continue
        times = path.stat()
        if content.startswith(b"SQLite format 3\x00"):
            rename_in_sqlite(path, old.decode(), new.decode())
        else:
            try:
                content.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path.name} names the template's folder but is not text: cannot copy it") from None
            path.write_bytes(content.replace(old, new))
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))


def rename_in_sqlite(path: Path, old: str, new: str) -> None:
    """Replace ``old`` with ``new`` in every text column of every table of the SQLite database at ``path``."""
    with contextlib.closing(sqlite3.connect(path)) as database, database:
        tables = [name for (name,) in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in database.execute(f'PRAGMA table_info("{table}")').fetchall():
                name = column[1]
                database.execute(
                    f'UPDATE "{table}" SET "{name}" = replace("{name}", ?, ?) WHERE typeof("{name}") = \'text\'',
                    (old, new),
                )


def train_and_score(config: Config, C: float = 1.0) -> str:
    """Train with regularisation ``C`` (so each call can make a distinct model) and score it; return its hash."""
    # The linear family only: the shipped data chooses it anyway (tests/test_families.py checks the choice),
    # and the many tests built on this project need not pay for the comparison each time.
    train_from_folder(config.output_folder_path, config.output_model_path, ModelSettings(C=C, families=("linear",)))
    write_scores(score_model(config.output_model_path / MODEL_FILE, config.test_data_path), config.output_model_path)
    return sha256_file(config.output_model_path / MODEL_FILE)


def deploy(config: Config) -> Publication:
    return publish_deployment(
        config.output_model_path, config.output_folder_path, config.prod_deployment_path, config.keep_versions
    )


def run_script(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """Run a top-level script with this interpreter; return the CompletedProcess."""
    return subprocess.run(
        script_command(script, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=PROJECT_ROOT,
    )


def latest_active_rows(ids: list[str], exited: np.ndarray) -> np.ndarray:
    """Each corporation's latest row, for those whose latest row has not exited: a plain reference."""
    latest = {name: row for row, name in enumerate(ids)}
    rows = np.array(sorted(latest.values()), dtype=np.int64)
    return rows[exited[rows] == 0]


def write_database_config(folder: Path, url: str, folder_too: bool = False, **overrides: object) -> Path:
    """A config.json whose source is the table client_activity at ``url`` (and sourceddata/ when ``folder_too``)."""
    source = {"input_database_url": url, "input_database_table": "client_activity", "input_database_watermark": "id"}
    path = write_config(folder, **{**source, **overrides})
    if not folder_too:
        config = json.loads(path.read_text(encoding="utf-8"))
        del config["input_folder_path"]
        path.write_text(json.dumps(config), encoding="utf-8")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_healthy(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited early: {server.communicate()[1]}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or a worker still starting
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not become healthy in time")


def start_api(
    config_path: Path, *arguments: str, port: int | None = None, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """``app.py`` (gunicorn) serving ``config_path`` on ``port`` (a free one by default), once /health answers.

    Returns (the process, its URL); the caller stops it (``stop_server``). The server and its workers run in a
    session of their own, so that they can be stopped together.
    """
    port = port or free_port()
    process = subprocess.Popen(
        script_command("app.py", "--config", str(config_path), "--port", str(port), *arguments),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process)
    except BaseException:
        with process:
            process.kill()
        raise
    return process, url


@contextlib.contextmanager
def serving_api(
    config_path: Path, *arguments: str, port: int | None = None, env: dict[str, str] | None = None
) -> Iterator[str]:
    """``app.py`` serving ``config_path`` for the ``with`` block (see start_api); yields its URL, then stops it."""
    process, url = start_api(config_path, *arguments, port=port, env=env)
    try:
        yield url
    finally:
        stop_server(process)


def stop_server(process: subprocess.Popen) -> None:
    """End a server that ``start_api`` started, its workers with it, at once, and close its pipe.

    Not gunicorn's graceful stop, which waits for each worker's one-second loop: the tests that check a graceful
    stop send their own signal.
    """
    with process:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def served_model(config: Config):
    """The model the current deployed version serves."""
    return load_model(current_version_folder(config.prod_deployment_path) / MODEL_FILE)


def deploy_plain_logistic_regression(config: Config) -> None:
    """Deploy, as v0002, a plain LogisticRegression on the raw counts: a model of another shape."""
    with sklearn_without_pandas():
        from sklearn.linear_model import LogisticRegression

    data = read_ingested_data(config.output_folder_path)
    model = LogisticRegression(max_iter=1000).fit(data.features(), data.labels())
    save_model(model, read_model_info(config.output_model_path / MODEL_INFO_FILE), config.output_model_path)
    write_scores(score_model(config.output_model_path / MODEL_FILE, config.test_data_path), config.output_model_path)
    deploy(config)


def udacity_config(tmp_path: Path) -> Path:
    """A config in ``tmp_path`` reading the classic course data where it lies (skipped, or failed in CI, without it)."""
    if not UDACITY_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"the course data fixture {UDACITY_DATA} is missing")
        pytest.skip(f"the course data fixture {UDACITY_DATA} is not beside the project")
    config = {
        "input_folder_path": str(UDACITY_DATA / "sourcedata"),
        "output_folder_path": "ingesteddata",
        "test_data_path": str(UDACITY_DATA / "testdata"),
        "output_model_path": "models",
        "prod_deployment_path": "production_deployment",
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def add_runs(config: Config, count: int = 3) -> None:
    """Runs in the history as fullprocess.py records them: one deployment, kept ones, one without new data."""
    connection = open_history(config.history_path)
    try:
        for number in range(count):
            run = start_run(connection, f"2026-11-0{number + 1}T10:00:00Z", 100 + number, "v0001")
            save_run(
                connection,
                run,
                RunFields(
                    finished_at=f"2026-11-0{number + 1}T10:00:09Z",
                    seconds=9.0 + number,
                    outcome="deployed" if number == 1 else "kept",
                    decision=f"Decision number {number} in one sentence.",
                    model_version_after="v0002" if number == 1 else "v0001",
                    new_rows=500,
                    new_data_f1=0.6 - 0.05 * number,
                    drift_threshold=0.55,
                    missing_percent=0.5 * number,
                    drift_trigger="model_drift" if number == 1 else None,
                    timings={"ingestion": 1.5, "training": 4.0},
                    candidates=(CandidateScore("all", "all rows", 900, None, None, 0.61, 0.6),),
                ),
                files=[RunFile(f"batch_{number}.csv", "new", "ab" * 32)],
                feature_drift=[FeatureDrift(name, "ks", 0.1, 0.2, 0.01, False) for name in FEATURES],
            )
        start_run(connection, "2026-11-09T10:00:00Z", 200, "v0001")
        save_run(connection, count + 1, RunFields(outcome="no_new_data", decision="No new data.", seconds=0.2))
    finally:
        connection.close()


def add_monitored_runs(config: Config) -> None:
    """Two labelled runs after ``add_runs``'s, as fullprocess.py records the monitoring statistics: a batch whose
    exits and joint structure held, then one whose exits ran above the expected range and whose columns no longer
    hang together (quarantined, later accepted by an operator)."""
    connection = open_history(config.history_path)
    try:
        for number, broken in ((0, False), (1, True)):
            day = f"2026-11-1{number}"
            run = start_run(connection, f"{day}T10:00:00Z", 300 + number, "v0002")
            save_run(
                connection,
                run,
                RunFields(
                    finished_at=f"{day}T10:00:08Z",
                    seconds=8.0,
                    outcome="quarantined" if broken else "kept",
                    decision=f"Monitored decision number {number} in one sentence.",
                    model_version_after="v0002",
                    new_rows=3000,
                    new_data_f1=0.58 if broken else 0.61,
                    drift_threshold=0.55,
                    expected_exits=590.0 + number,
                    expected_exits_low=549.0 + number,
                    expected_exits_high=631.0 + number,
                    observed_exits=672 if broken else 604,
                    calibration_slope=0.71 if broken else 1.02,
                    miscalibrated=broken,
                    reconstruction_error=1.07 if broken else 0.70,
                    reconstruction_reference=0.69,
                    reconstruction_expected=0.71 if broken else 0.69,
                    reconstruction_threshold=0.85 if broken else 0.83,
                    multivariate_drift=broken,
                    integrity_alarm=broken,
                    integrity_accepted_at=f"{day}T12:30:00Z" if broken else None,
                ),
                files=[RunFile(f"monitored_{number}.csv", "new", "cd" * 32)],
                feature_drift=[FeatureDrift(name, "ks", 0.1, 0.2, 0.01, False) for name in FEATURES],
            )
    finally:
        connection.close()


def active_clients(config: Config) -> tuple[list[str], np.ndarray]:
    """The active clients (latest row per corporation, not exited) and their features, computed here directly."""
    data = read_ingested_data(config.output_folder_path)
    ids = data.table[ID_COLUMN].to_pylist()
    rows = latest_active_rows(ids, data.table[TARGET].to_numpy())
    return [ids[row] for row in rows], data.features()[rows]


# worlds added later come last
WORLD_ORDER = ("drifted", "nonlinear", "shifted", "stable", "riskier", *(f"ramp-{step}" for step in range(1, 9)))


def world_number(world: str) -> int:
    """A fixed number per generator world, for the seeds of its samples (stable as worlds are added)."""
    return WORLD_ORDER.index(world)
