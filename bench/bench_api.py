"""Benchmark the API under gunicorn (2 workers) with wrk as the load, 8 connections.

Builds a scratch project from the shipped data (nothing under the project's own output folders
is touched), deploys it, runs diagnostics once, starts ``app.py`` and measures three loads:
``GET /diagnostics``, ``POST /prediction`` of a 2,000-row CSV by file location, and
``POST /prediction`` of one JSON record. Each load runs ``--repeats`` times after a warm-up;
the table gives the median requests/s and median latency over the repeats, and all errors.

    .venv/bin/python -m bench.bench_api [--seconds 10] [--repeats 3]

Needs ``wrk`` (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

from common.artifacts import MODEL_FILE, current_version_folder, load_model
from common.config import PROJECT_ROOT, load_config
from common.schema import read_feature_file

LOADS = {
    "GET /diagnostics": ("GET", "/diagnostics", None),
    "POST /prediction, 2,000-row CSV by filelocation": ("POST", "/prediction", {"filelocation": "data/bench2000.csv"}),
    "POST /prediction, 2,000-row CSV as the body": ("POST", "/prediction", "csv"),
    "POST /prediction, one JSON record": (
        "POST",
        "/prediction",
        {
            "records": [
                {"corporation": "abcdef", "lastmonth_activity": 37, "lastyear_activity": 412, "number_of_employees": 18}
            ]
        },
    ),
}
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def build_project(root: Path) -> Path:
    """A scratch project reading the shipped source data; its test folder holds the 2,000-row file."""
    data = root / "data"
    data.mkdir()
    shutil.copy(PROJECT_ROOT / "testdata" / "testdata.csv", data / "testdata.csv")
    lines = (data / "testdata.csv").read_text().splitlines()
    (data / "bench2000.csv").write_text("\n".join(lines[:2001]) + "\n")
    config = {
        "input_folder_path": str(PROJECT_ROOT / "sourceddata"),
        "output_folder_path": "ingesteddata",
        "test_data_path": "data",
        "output_model_path": "models",
        "prod_deployment_path": "production_deployment",
        "diagnostics": {"timing_runs": 0},
    }
    config_path = root / "config.json"
    config_path.write_text(json.dumps(config))
    for stage in ("ingestion", "training", "scoring", "deployment", "diagnostics"):
        subprocess.run(
            [sys.executable, str(PROJECT_ROOT / f"{stage}.py"), "--config", str(config_path), "-q"], check=True
        )
    return config_path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(config_path: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "app.py"), "--config", str(config_path), "--port", str(port), "-q"],
        cwd=PROJECT_ROOT,
    )
    for _ in range(200):
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("the API did not start")


def check_answers_equal_the_model(config_path: Path, url: str) -> None:
    """The file answer must equal the deployed model's own predict_proba, number for number."""
    config = load_config(config_path)
    model = load_model(current_version_folder(config.deployment_folder) / MODEL_FILE)
    batch = read_feature_file(config_path.parent / "data" / "bench2000.csv")  # testdata.csv is the test data
    response = requests.post(f"{url}/prediction", json={"filelocation": "data/bench2000.csv"}, timeout=10)
    if response.status_code != 200:
        raise SystemExit(f"the API refused the benchmark file: {response.text}")
    answer = response.json()
    served = np.array([row["probability"] for row in answer["predictions"]])
    if not np.array_equal(served, model.predict_proba(batch.features)[:, 1]):
        raise SystemExit("the API's probabilities differ from the model's predict_proba")
    print(f"check: {answer['rows']} probabilities equal the model's own predict_proba", file=sys.stderr)


def write_wrk_script(folder: Path, method: str, body: dict | str | None) -> Path:
    """A wrk script sending ``body``: JSON, or with "csv" the 2,000-row file as a text/csv body."""
    script = folder / f"{method.lower()}-{abs(hash(json.dumps(body)))}.lua"
    lines = [f'wrk.method = "{method}"']
    if body == "csv":
        csv_text = (folder / "data" / "bench2000.csv").read_text()
        lines += [f"wrk.body = {json.dumps(csv_text)}", 'wrk.headers["Content-Type"] = "text/csv"']
    elif body is not None:
        lines += [f"wrk.body = {json.dumps(json.dumps(body))}", 'wrk.headers["Content-Type"] = "application/json"']
    script.write_text("\n".join(lines) + "\n")
    return script


def run_wrk(url: str, script: Path, seconds: int) -> dict[str, float]:
    """One wrk run: requests/s, median latency (ms) and errors (socket errors + non-2xx answers)."""
    output = subprocess.run(
        ["wrk", "-t2", "-c8", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    value, unit = re.search(r"50%\s+([\d.]+)(us|ms|s)", output).groups()
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "rate": rate,
        "median_ms": float(value) * _UNITS[unit],
        "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each measured run (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per load (default 3)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed; on Debian: apt-get install wrk")
    root = Path(tempfile.mkdtemp(prefix="risk-bench-api-"))
    server = None
    try:
        config_path = build_project(root)
        port = free_port()
        server = start_server(config_path, port)
        url = f"http://127.0.0.1:{port}"
        check_answers_equal_the_model(config_path, url)
        print("| load | requests/s (median) | median latency | errors | runs (requests/s) |")
        print("|---|---|---|---|---|")
        for name, (method, path, body) in LOADS.items():
            script = write_wrk_script(root, method, body)
            run_wrk(url + path, script, 2)  # warm-up
            runs = [run_wrk(url + path, script, args.seconds) for _ in range(args.repeats)]
            rates = [run["rate"] for run in runs]
            latency = statistics.median(run["median_ms"] for run in runs)
            errors = sum(run["errors"] for run in runs)
            print(
                f"| {name} | {statistics.median(rates):,.0f} | {latency:.2f} ms | {errors} | "
                f"{', '.join(f'{rate:,.0f}' for rate in rates)} |",
                flush=True,
            )
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
