"""Benchmark the dashboard's pages: 10,000 active clients and 500 monitoring runs in the history.

Builds a scratch project (nothing under the project's own folders is touched): generated clients
enough for about 10,000 active ones, ingested, trained, scored, deployed twice (so the overview
compares with a previous version), diagnostics stored, and 500 runs written straight into the run
history with their files and drift tests. Then each page is requested through Flask's test client:
the first request (which scores the clients) is timed on its own, then ``--requests`` more, and
the median and 90th percentile are printed in milliseconds. Then the same pages again over HTTP
from ``app.py`` (gunicorn, 2 workers), one request at a time with ``requests``.

    .venv/bin/python -m bench.bench_dashboard [--requests 50] [--clients 13400]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from riskwatch.core.config import PROJECT_ROOT, load_config
from riskwatch.core.schema import FEATURES
from riskwatch.data.generator import format_csv, generate_clients, rows_of
from riskwatch.state.history import open_history, save_run, start_run
from riskwatch.state.runs import CandidateScore, FeatureDrift, RunFields, RunFile
from riskwatch.web.dashboard import URL_PREFIX
from tests.helpers import write_config

log = logging.getLogger("bench_dashboard")

RUNS = 500
OUTCOMES = ("kept", "kept", "kept", "waiting", "deployed", "kept", "no_new_data", "kept", "kept", "failed")


def build_project(root: Path, clients: int) -> Path:
    """A deployed scratch project with ``clients`` generated client rows; returns its config path."""
    rng = np.random.default_rng(7)
    (root / "sourceddata").mkdir()
    (root / "testdata").mkdir()
    half = clients // 2
    generated = generate_clients(clients, rng)
    for name, part in (("clients_a.csv", np.arange(half)), ("clients_b.csv", np.arange(half, clients))):
        chosen = {key: values[part] for key, values in generated.items()}
        (root / "sourceddata" / name).write_text(format_csv(rows_of(chosen)), encoding="utf-8")
    shutil.copy(PROJECT_ROOT / "testdata" / "testdata.csv", root / "testdata" / "testdata.csv")
    diagnostics = {"package_index": "http://127.0.0.1:9/pypi", "index_timeout_seconds": 1}
    path = write_config(root, model={"C": 0.05}, diagnostics=diagnostics)
    stages = ("ingestion", "training", "scoring", "deployment")
    for stage in (*stages, "training", "scoring", "deployment", "diagnostics"):
        if stage == "training" and (root / "production_deployment" / "current").exists():
            write_config(root, model={"C": 1.0}, diagnostics=diagnostics)
        subprocess.run([sys.executable, str(PROJECT_ROOT / f"{stage}.py"), "--config", str(path), "-q"], check=True)
    return path


def add_runs(config_path: Path, count: int = RUNS) -> None:
    """``count`` runs in the history, every kind of outcome, with files and drift tests (written directly)."""
    config = load_config(config_path)
    rng = np.random.default_rng(11)
    connection = open_history(config.history_path)
    try:
        version = 1
        for number in range(count):
            outcome = OUTCOMES[number % len(OUTCOMES)]
            started = np.datetime64("2026-01-01T00:00:00") + np.timedelta64(number * 600, "s")
            run = start_run(connection, f"{started}Z", 1000 + number, f"v{version:04d}")
            version += outcome == "deployed"
            fields = RunFields(
                finished_at=f"{started + np.timedelta64(9, 's')}Z",
                seconds=float(rng.uniform(0.2, 12)),
                outcome=outcome,
                decision=f"{outcome.replace('_', ' ')} after run {number}, in one sentence",
                model_version_after=f"v{version:04d}",
            )
            drift: list[FeatureDrift] = []
            if outcome != "no_new_data":
                fields = fields.updated(
                    RunFields(
                        new_rows=2000,
                        new_data_f1=float(rng.uniform(0.5, 0.75)),
                        drift_threshold=0.58,
                        missing_percent=float(rng.uniform(0, 0.5)),
                        first_batch=number + 2,
                        last_batch=number + 2,
                        drift_trigger="model drift" if outcome == "deployed" else None,
                        data_drift_reference="the rows ingested before",
                        timings={"ingestion": 0.1, "training": 0.4, "scoring": 0.01},
                        candidates=(CandidateScore("all", "all rows", 9000, None, None, 0.7, 0.62),),
                    )
                )
                drift = [
                    FeatureDrift(name, "wasserstein", float(rng.uniform(0, 0.3)), None, 0.1, False) for name in FEATURES
                ]
            files = [RunFile(f"batch_{number:04d}.csv", "new", f"{number:064x}")]
            save_run(connection, run, fields, files=files, feature_drift=drift)
    finally:
        connection.close()


def list_pages(config_path: Path) -> list[str]:
    from riskwatch.web.app import create_app

    client = create_app(config_path, token="").test_client()
    csv_rows = client.get(f"{URL_PREFIX}/clients.csv?sort=corporation&order=asc").get_data(as_text=True).splitlines()
    some_client = csv_rows[1].split(",")[1]
    pages = [
        "/",
        "/clients",
        "/clients?q=ab",
        "/clients?sort=number_of_employees&order=asc&page=40",
        "/clients.csv",
        f"/clients/{some_client}",
        "/model-health",
        "/runs",
        "/runs?all=1&page=5",
        "/system",
    ]
    return [f"{URL_PREFIX}{page}" for page in pages]


def time_pages(config_path: Path, requests: int) -> list[tuple[str, float, float, float, int]]:
    """(page, first request ms, median ms, 90th percentile ms, bytes) for each page, through the test client."""
    from riskwatch.web.app import create_app

    fresh = create_app(config_path, token="").test_client()
    found = []
    for page in list_pages(config_path):
        start = time.perf_counter()
        answer = fresh.get(page)
        answer.get_data()  # a streamed answer (the CSV) is written as it is read
        first = (time.perf_counter() - start) * 1000
        assert answer.status_code == 200, (page, answer.status_code)
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            answer = fresh.get(page)
            answer.get_data()
            times.append((time.perf_counter() - start) * 1000)
        times.sort()
        found.append((page, first, statistics.median(times), times[int(0.9 * (len(times) - 1))], len(answer.data)))
    return found


def time_pages_over_http(config_path: Path, requests: int) -> list[tuple[str, float, float, float, int]]:
    """The same figures from app.py under gunicorn (2 workers), one request at a time."""
    import requests as http

    from tests.helpers import free_port, wait_until_healthy

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "app.py"), "--config", str(config_path), "--port", str(port), "-q"],
        stderr=subprocess.PIPE,
        text=True,
        env={key: value for key, value in os.environ.items() if key != "RISK_API_TOKEN"},
    )
    url = f"http://127.0.0.1:{port}"
    found = []
    try:
        wait_until_healthy(url, server)
        with http.Session() as session:
            for page in list_pages(config_path):
                start = time.perf_counter()
                answer = session.get(url + page, timeout=30)
                first = (time.perf_counter() - start) * 1000
                assert answer.status_code == 200, (page, answer.status_code)
                for _ in range(4):  # each of the two workers warms up (templates, the mapped client table)
                    session.get(url + page, timeout=30)
                times = []
                for _ in range(requests):
                    start = time.perf_counter()
                    answer = session.get(url + page, timeout=30)
                    times.append((time.perf_counter() - start) * 1000)
                times.sort()
                found.append(
                    (page, first, statistics.median(times), times[int(0.9 * (len(times) - 1))], len(answer.content))
                )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    return found


def print_table(title: str, rows: list[tuple[str, float, float, float, int]]) -> None:
    print(title)
    print(f"{'page':<55} {'first ms':>9} {'median ms':>10} {'p90 ms':>8} {'bytes':>9}")
    for page, first, median, p90, size in rows:
        print(f"{page:<55} {first:>9.1f} {median:>10.1f} {p90:>8.1f} {size:>9,}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50, help="timed requests per page (default 50)")
    parser.add_argument("--clients", type=int, default=13_400, help="client rows generated (default 13,400)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    try:
        config_path = build_project(root, args.clients)
        add_runs(config_path)
        from riskwatch.web.app import create_app

        with create_app(config_path, token="").test_request_context():
            from riskwatch.web.dashboard.views import read_clients, read_serving

            active = len(read_clients(read_serving()).ids)
        print(f"{active:,} active clients, {RUNS} runs in the history; {args.requests} requests per page")
        print_table("Flask test client, in process:", time_pages(config_path, args.requests))
        print_table(
            "app.py under gunicorn (2 workers), one request at a time:",
            time_pages_over_http(config_path, args.requests),
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
