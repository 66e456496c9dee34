"""Benchmark the API under gunicorn (2 workers) with wrk as the load, 8 connections.

Builds a scratch project from the shipped data (nothing under the project's own output folders
is touched), deploys it, runs diagnostics once, starts ``app.py`` and measures three loads:
``GET /diagnostics``, ``POST /prediction`` of a 2,000-row CSV by file location, and
``POST /prediction`` of one JSON record. Each load runs ``--repeats`` times after a warm-up;
the table gives the median requests/s and median latency over the repeats, and all errors.

    .venv/bin/python -m bench.bench_api [--seconds 10] [--repeats 3]
    .venv/bin/python -m bench.bench_api --families linear,boosted   # one JSON record, each family's model

With ``--families``, one scratch project per family (``model.families`` set to it alone) serves at
once, and the one-record load alternates between them run by run, so their requests per second
are compared on the same machine state.

Needs ``wrk`` (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from common.artifacts import MODEL_FILE, current_version_folder, load_model
from common.config import PROJECT_ROOT, load_config
from common.schema import read_feature_file
from tests.helpers import free_port

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


def build_project(root: Path, family: str | None = None) -> Path:
    """A scratch project reading the shipped source data; its test folder holds the 2,000-row file. ``family``:
    train that model family alone (default: the family training chooses)."""
    data = root / "data"
    data.mkdir(parents=True)
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
        **({"model": {"families": [family]}} if family else {}),
    }
    config_path = root / "config.json"
    config_path.write_text(json.dumps(config))
    for stage in ("ingestion", "training", "scoring", "deployment", "diagnostics"):
        subprocess.run(
            [sys.executable, str(PROJECT_ROOT / f"{stage}.py"), "--config", str(config_path), "-q"], check=True
        )
    return config_path


def start_server(config_path: Path, port: int, worker_class: str) -> subprocess.Popen:
    server = subprocess.Popen(
        [
            sys.executable,
            str(PROJECT_ROOT / "app.py"),
            "--config",
            str(config_path),
            "--port",
            str(port),
            "--worker-class",
            worker_class,
            "-q",
        ],
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
    model = load_model(current_version_folder(config.prod_deployment_path) / MODEL_FILE)
    batch = read_feature_file(config_path.parent / "data" / "bench2000.csv")  # testdata.csv is the test data
    response = requests.post(f"{url}/prediction", json={"filelocation": "data/bench2000.csv"}, timeout=10)
    if response.status_code != 200:
        raise SystemExit(f"the API refused the benchmark file: {response.text}")
    answer = response.json()
    served = np.array([row["probability"] for row in answer["predictions"]])
    # The linear family's fast path repeats scikit-learn's operations exactly; the others agree to rounding.
    if not np.allclose(served, model.predict_proba(batch.features)[:, 1], rtol=0, atol=1e-12):
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


def hold_slow_clients(port: int, count: int, stop: threading.Event) -> list[socket.socket]:
    """``count`` connections that send a request's headers a line every half second and never finish them."""
    connections = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: slow\r\n")
        connections.append(connection)

    def trickle() -> None:
        while not stop.wait(0.5):
            for connection in connections:
                with contextlib.suppress(OSError):
                    connection.sendall(b"X-Slow: 1\r\n")

    threading.Thread(target=trickle, daemon=True).start()
    return connections


def time_health_beside_slow_clients(port: int, slow: int, requests_made: int) -> tuple[list[float], int]:
    """Latencies (ms) of ``requests_made`` GET /health, one at a time, while ``slow`` slow clients hold connections;
    and how many got no answer within 5 s."""
    stop = threading.Event()
    connections = hold_slow_clients(port, slow, stop)
    latencies, timeouts = [], 0
    try:
        time.sleep(1)
        for _ in range(requests_made):
            started = time.perf_counter()
            try:
                requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
                latencies.append((time.perf_counter() - started) * 1000)
            except requests.RequestException:
                timeouts += 1
    finally:
        stop.set()
        for connection in connections:
            connection.close()
    return latencies, timeouts


def compare_families(families: list[str], seconds: int, repeats: int) -> None:
    """The one-record load against one server per family, alternating run by run; requests/s and the ratio to the
    first family's."""
    root = Path(tempfile.mkdtemp(prefix="risk-bench-families-"))
    servers: dict[str, tuple[subprocess.Popen, str, Path]] = {}
    try:
        for family in families:
            config_path = build_project(root / family, family)
            port = free_port()
            servers[family] = (start_server(config_path, port, "gevent"), f"http://127.0.0.1:{port}", config_path)
            check_answers_equal_the_model(config_path, servers[family][1])
        method, path, body = LOADS["POST /prediction, one JSON record"]
        script = write_wrk_script(root, method, body)
        rates: dict[str, list[float]] = {family: [] for family in families}
        for family in families:
            run_wrk(servers[family][1] + path, script, 2)  # warm-up
        for _ in range(repeats):
            for family in families:
                rates[family].append(run_wrk(servers[family][1] + path, script, seconds)["rate"])
        first = statistics.median(rates[families[0]])
        print("| model family | requests/s (median) | share of the first | runs (requests/s) |")
        print("|---|---|---|---|")
        for family in families:
            median = statistics.median(rates[family])
            runs = ", ".join(f"{rate:,.0f}" for rate in rates[family])
            print(f"| {family} | {median:,.0f} | {median / first:.0%} | {runs} |")
    finally:
        for server, _, _ in servers.values():
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each measured run (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per load (default 3)")
    parser.add_argument(
        "--worker-classes", default="gevent,sync", help="gunicorn worker classes to compare (default gevent,sync)"
    )
    parser.add_argument("--slow-clients", type=int, default=50, help="slow clients held open (default 50)")
    parser.add_argument("--families", default="", help="compare these model families on one JSON record instead")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed; on Debian: apt-get install wrk")
    if args.families:
        compare_families(args.families.split(","), args.seconds, args.repeats)
        return 0
    root = Path(tempfile.mkdtemp(prefix="risk-bench-api-"))
    slow_rows = []
    try:
        config_path = build_project(root)
        print("| worker class | load | requests/s (median) | median latency | errors | runs (requests/s) |")
        print("|---|---|---|---|---|---|")
        for worker_class in args.worker_classes.split(","):
            port = free_port()
            server = start_server(config_path, port, worker_class)
            try:
                url = f"http://127.0.0.1:{port}"
                check_answers_equal_the_model(config_path, url)
                for name, (method, path, body) in LOADS.items():
                    script = write_wrk_script(root, method, body)
                    run_wrk(url + path, script, 2)  # warm-up
                    runs = [run_wrk(url + path, script, args.seconds) for _ in range(args.repeats)]
                    rates = [run["rate"] for run in runs]
                    latency = statistics.median(run["median_ms"] for run in runs)
                    errors = sum(run["errors"] for run in runs)
                    print(
                        f"| {worker_class} | {name} | {statistics.median(rates):,.0f} | {latency:.2f} ms | {errors} | "
                        f"{', '.join(f'{rate:,.0f}' for rate in rates)} |",
                        flush=True,
                    )
                slow_rows.append((worker_class, *time_health_beside_slow_clients(port, args.slow_clients, 50)))
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=60)
        print(f"\nGET /health, 50 requests one at a time, while {args.slow_clients} slow clients hold connections:")
        print("| worker class | median | 90th percentile | no answer within 5 s |")
        print("|---|---|---|---|")
        for worker_class, latencies, timeouts in slow_rows:
            median = f"{statistics.median(latencies):.1f} ms" if latencies else "-"
            p90 = f"{statistics.quantiles(latencies, n=10)[-1]:.1f} ms" if len(latencies) > 1 else "-"
            print(f"| {worker_class} | {median} | {p90} | {timeouts} of 50 |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
