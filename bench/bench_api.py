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

    .venv/bin/python -m bench.bench_api --price-of-checks [--old /tmp/old]   # make bench-price OLD=/tmp/old
    .venv/bin/python -m bench.bench_api --health-per-start                  # make bench-health

With ``--price-of-checks``, the one-record load against a bare Flask app (bench/bare_app.py: the JSON body
parsed, a constant answered, the same gunicorn settings), the API's checks around that bare view, and the whole
API, each with no token and with one, for this code and, with ``--old``, an earlier checkout; all up at once,
loaded in turn round by round. Besides requests/s, the CPU time per request of each server's processes and of
wrk, which other work on the machine moves far less. With ``--health-per-start``, ``GET /health`` one request at
a time beside 50 slow clients, against a server started each way the documentation gives.

Needs ``wrk`` (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

from bench.bare_app import CONSTANT_ANSWER
from riskwatch.core.config import PROJECT_ROOT, ApiSettings, load_config
from riskwatch.core.schema import read_feature_file
from riskwatch.state.artifacts import MODEL_FILE, current_version_folder, load_model
from riskwatch.web.api.gunicorn_settings import DEFAULT_WORKERS
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
TOKEN_ENV = ApiSettings().token_env  # the scratch projects keep the default


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


def start_server(
    config_path: Path, port: int, worker_class: str, code: Path = PROJECT_ROOT, token: str | None = None
) -> subprocess.Popen:
    """``app.py`` of the checkout ``code`` serving ``config_path`` on ``port``, once /health answers; with ``token``,
    the API asks for it."""
    command = [str(code / "app.py"), "--config", str(config_path), "--port", str(port), "--worker-class", worker_class]
    process = subprocess.Popen([sys.executable, *command, "-q"], cwd=code, env=server_environment(token))
    return wait_for_health(process, port)


def wait_for_health(server: subprocess.Popen, port: int) -> subprocess.Popen:
    """``server`` once its /health answers 200; it is killed and the bench ends when it never does."""
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


def write_wrk_script(folder: Path, method: str, body: dict | str | None, token: str | None = None) -> Path:
    """A wrk script sending ``body``: JSON, or with "csv" the 2,000-row file as a text/csv body; with ``token``, in
    an Authorization header."""
    script = folder / f"{method.lower()}-{abs(hash(json.dumps([body, token])))}.lua"
    lines = [f'wrk.method = "{method}"']
    if token is not None:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {token}"')
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
        "requests": int(re.search(r"(\d+) requests in", output).group(1)),
        "median_ms": float(value) * _UNITS[unit],
        "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0),
    }


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU time (user and system) spent so far by ``pid`` and its descendants still running (Linux /proc)."""
    parents: dict[int, int] = {}
    seconds: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # ended meanwhile
        parents[int(entry.name)], seconds[int(entry.name)] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, of in parents.items() if of == parent and child not in tree]
        tree.update(children)
        frontier += children
    return sum(seconds.get(member, 0.0) for member in tree)


def run_wrk_measuring_cpu(url: str, script: Path, seconds: int, server: subprocess.Popen) -> dict[str, float]:
    """``run_wrk``, with the CPU time per request of the server's processes and of wrk itself (µs): unlike
    requests/s, these hardly move when other work shares the machine."""
    server_before = process_tree_cpu_seconds(server.pid)
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = run_wrk(url, script, seconds)
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_seconds = (wrk_after.ru_utime - wrk_before.ru_utime) + (wrk_after.ru_stime - wrk_before.ru_stime)
    server_seconds = process_tree_cpu_seconds(server.pid) - server_before
    return {**run, "server_us": server_seconds / run["requests"] * 1e6, "wrk_us": wrk_seconds / run["requests"] * 1e6}


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


# Every way docs/api.md and README.md give of starting the server (``make serve`` runs the first), by a short name.
DOCUMENTED_STARTS = ("app.py", "app:create_app()", "app:app", "app:app, elsewhere")


def documented_start(way: str, config_path: Path, port: int, elsewhere: Path) -> tuple[list[str], Path]:
    """The command line docs/api.md gives for ``way`` on ``port``, and the folder it is run from; the caller sets
    RISK_CONFIG to ``config_path``. "elsewhere": gunicorn started in another folder, given the project's
    gunicorn.conf.py by ``--config``."""
    workers = ["--workers", str(DEFAULT_WORKERS)]
    gunicorn = [sys.executable, "-m", "gunicorn", *workers, "--bind", f"127.0.0.1:{port}"]
    if way == "app.py":
        script = [sys.executable, str(PROJECT_ROOT / "app.py"), "--config", str(config_path), "--port", str(port)]
        return [*script, *workers], PROJECT_ROOT
    if way == "app:app, elsewhere":
        return [*gunicorn, "--config", str(PROJECT_ROOT / "gunicorn.conf.py"), "app:app"], elsewhere
    return [*gunicorn, way], PROJECT_ROOT


def describe_start(way: str) -> str:
    """``way`` as a person types it (docs/api.md's form)."""
    return {
        "app.py": "python app.py --port 8000 --workers 2",
        "app:create_app()": "RISK_CONFIG=config.json gunicorn --workers 2 --bind 127.0.0.1:8000 'app:create_app()'",
        "app:app": "gunicorn --workers 2 --bind 127.0.0.1:8000 app:app",
        "app:app, elsewhere": "cd elsewhere; gunicorn --config <project>/gunicorn.conf.py --workers 2 ... app:app",
    }[way]


def time_health_per_start(slow: int, requests_made: int, rounds: int) -> None:
    """GET /health one request at a time beside ``slow`` slow clients, against a server started each documented
    way; all servers up at once, the ways taken in turn, ``rounds`` times. Prints median, 90th percentile, maximum."""
    root = Path(tempfile.mkdtemp(prefix="risk-bench-starts-"))
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        config_path = build_project(root)
        (root / "elsewhere").mkdir()
        env = {**server_environment(None), "RISK_CONFIG": str(config_path)}
        for way in DOCUMENTED_STARTS:
            port = free_port()
            command, folder = documented_start(way, config_path, port, root / "elsewhere")
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            process = subprocess.Popen(command, cwd=folder, env=env, **quiet)
            servers[way] = (wait_for_health(process, port), port)
        latencies: dict[str, list[float]] = {way: [] for way in DOCUMENTED_STARTS}
        timeouts = dict.fromkeys(DOCUMENTED_STARTS, 0)
        for _ in range(rounds):
            for way, (_, port) in servers.items():
                times, missed = time_health_beside_slow_clients(port, slow, requests_made)
                latencies[way] += times
                timeouts[way] += missed
        total = rounds * requests_made
        print(f"GET /health, {total} requests one at a time per start command ({rounds} rounds, the commands in turn),")
        print(f"while {slow} slow clients hold connections")
        print("| start command | median | 90th percentile | maximum | no answer within 5 s |")
        print("|---|---|---|---|---|")
        for way in DOCUMENTED_STARTS:
            times = latencies[way]
            shown = "- | - | -"
            if len(times) > 1:
                p90 = statistics.quantiles(times, n=10)[-1]
                shown = f"{statistics.median(times):.1f} ms | {p90:.1f} ms | {max(times):.1f} ms"
            print(f"| `{describe_start(way)}` | {shown} | {timeouts[way]} of {total} |", flush=True)
    finally:
        for process, _ in servers.values():
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


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


@dataclass(frozen=True)
class PricedServer:
    """One server of the price-of-checks comparison: its name, process, URL and the token it asks for."""

    name: str
    process: subprocess.Popen
    url: str
    token: str | None


def server_environment(token: str | None) -> dict[str, str]:
    """This environment with ``token`` as the API token (none when None)."""
    env = {key: value for key, value in os.environ.items() if key != TOKEN_ENV}
    return env if token is None else {**env, TOKEN_ENV: token}


def start_yardstick(
    port: int, checks: Path | None = None, code: Path = PROJECT_ROOT, token: str | None = None
) -> subprocess.Popen:
    """bench/bare_app.py under the API's gunicorn settings, once /health answers: the bare app, or with ``checks``
    (a config) the API of the checkout ``code`` with the bare /prediction view."""
    command = [sys.executable, "-m", "bench.bare_app", "--port", str(port)]
    if checks is not None:
        command += ["--checks", str(checks), "--code", str(code)]
    return wait_for_health(subprocess.Popen(command, cwd=PROJECT_ROOT, env=server_environment(token)), port)


def start_priced_servers(config_path: Path, old: Path | None) -> list[PricedServer]:
    """The bare app; then, for this code and the checkout ``old``, with no token and with one: its checks around the
    bare view, and its whole API."""
    token = secrets.token_urlsafe(32)
    port = free_port()
    servers = [PricedServer("bare Flask app", start_yardstick(port), f"http://127.0.0.1:{port}", None)]
    codes = [("this code", PROJECT_ROOT)] + ([("old code", old.resolve())] if old is not None else [])
    for label, code in codes:
        for given in (None, token):
            named = label + (", token set" if given else "")
            port = free_port()
            checks = start_yardstick(port, config_path, code, given)
            servers.append(PricedServer(f"{named}: the checks only", checks, f"http://127.0.0.1:{port}", given))
            port = free_port()
            whole = start_server(config_path, port, "gevent", code, given)
            servers.append(PricedServer(named, whole, f"http://127.0.0.1:{port}", given))
    _, _, body = LOADS["POST /prediction, one JSON record"]
    for server in servers:
        headers = {"Authorization": f"Bearer {server.token}"} if server.token else {}
        answer = requests.post(f"{server.url}/prediction", json=body, headers=headers, timeout=10)
        if answer.status_code != 200:
            raise SystemExit(f"{server.name} answered {answer.status_code} to the one-record load: {answer.text}")
        if server.url == servers[0].url and answer.content != CONSTANT_ANSWER:
            raise SystemExit("the bare app did not answer its constant")
    return servers


def print_price_of_checks(runs: dict[str, list[dict[str, float]]], bare_name: str, repeats: int, seconds: int) -> None:
    """The table of ``price_checks``: requests/s and its share of the bare app's, per round too; the CPU time per
    request of the server and of wrk, and the share of the bare app's throughput that CPU time predicts."""

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    bare_rates = [run["rate"] for run in runs[bare_name]]
    bare_cpu = median(bare_name, "server_us") + median(bare_name, "wrk_us")
    print(f"POST /prediction, one JSON record; wrk -t2 -c8, {repeats} runs of {seconds} s per server, alternating")
    print(
        "| server | requests/s (median) | share of the bare app's | share per round | CPU µs per request: server "
        "| wrk | share by CPU time | errors | runs (requests/s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, own in runs.items():
        rates = [run["rate"] for run in own]
        shares = [rate / base for rate, base in zip(rates, bare_rates, strict=True)]
        server_us, wrk_us = median(name, "server_us"), median(name, "wrk_us")
        rate = statistics.median(rates)
        print(
            f"| {name} | {rate:,.0f} | {rate / statistics.median(bare_rates):.0%} "
            f"| {min(shares):.0%}–{max(shares):.0%} | {server_us:.0f} | {wrk_us:.0f} "
            f"| {bare_cpu / (server_us + wrk_us):.0%} | {sum(int(run['errors']) for run in own)} "
            f"| {', '.join(f'{rate:,.0f}' for rate in rates)} |",
            flush=True,
        )


def price_checks(seconds: int, repeats: int, old: Path | None) -> None:
    """One JSON record by POST /prediction: the API's requests/s as a share of the bare app's, all servers up at
    once and loaded in turn, round by round (the order rotating), so each share compares one machine state."""
    root = Path(tempfile.mkdtemp(prefix="risk-bench-price-"))
    servers: list[PricedServer] = []
    try:
        config_path = build_project(root)
        servers = start_priced_servers(config_path, old)
        method, path, body = LOADS["POST /prediction, one JSON record"]
        scripts = {server.token: write_wrk_script(root, method, body, server.token) for server in servers}
        for server in servers:
            run_wrk(server.url + path, scripts[server.token], 2)  # warm-up
        runs: dict[str, list[dict[str, float]]] = {server.name: [] for server in servers}
        for round_number in range(repeats):
            shift = round_number % len(servers)
            for server in servers[shift:] + servers[:shift]:
                measured = run_wrk_measuring_cpu(server.url + path, scripts[server.token], seconds, server.process)
                runs[server.name].append(measured)
        print_price_of_checks(runs, servers[0].name, repeats, seconds)
    finally:
        for server in servers:
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(timeout=60)
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
    parser.add_argument(
        "--price-of-checks",
        action="store_true",
        help="one JSON record: the API's requests/s as a share of a bare Flask app's, under the same gunicorn settings",
    )
    parser.add_argument("--old", type=Path, help="with --price-of-checks: a checkout of earlier code, measured too")
    parser.add_argument(
        "--health-per-start",
        action="store_true",
        help="GET /health beside the slow clients, against a server started each documented way",
    )
    parser.add_argument("--rounds", type=int, default=3, help="with --health-per-start: rounds (default 3)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed; on Debian: apt-get install wrk")
    if args.families:
        compare_families(args.families.split(","), args.seconds, args.repeats)
        return 0
    if args.price_of_checks:
        price_checks(args.seconds, args.repeats, args.old)
        return 0
    if args.health_per_start:
        time_health_per_start(args.slow_clients, 50, args.rounds)
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
