"""Memory of one API worker (gunicorn, gevent, ``--workers 1``) under requests that are small to send and large
to answer, or that name a large file.

    python -m bench.bench_api_memory [--old PATH] [--repeats 3] [--explain-rows 10000]

Builds a scratch project from the shipped data (as ``bench.bench_api`` does) and, for each scenario, starts a
fresh server, sends one small request (warm-up), reads the worker's resident memory (the baseline), resets its
peak (``/proc/<pid>/clear_refs``), then runs the scenario:

* ``explain at the limit, 4 unread``: 4 clients each send a CSV body of ``--explain-rows`` rows with
  ``?explain=1`` and never read the answer;
* ``explain of 1,000,000 rows, 4 unread``: the same with a 5.7 MiB body of 1,000,000 rows;
* ``1,000,000 rows, 4 unread``: that body without ``explain`` (the default ``api.max_rows``);
* ``1,000,000 rows with ids by location, 4 unread``: a 23 MB CSV in the data folder, named by location;
* ``a 250 MB file by location``: one client names a 250 MB CSV (11 million rows) in the data folder.

Once the worker has stopped using the CPU (it has answered, or blocks on clients that do not read), the table
gives its peak resident memory (``VmHWM``) and its resident memory (``VmRSS``) then, and again after the
clients have gone. With ``--old PATH`` (a checkout of earlier code: ``git worktree add /tmp/old-api <commit>``)
each scenario alternates between that code and this checkout, on the same project, so both are measured in one
run; before that, mid-size answers of both are checked to be the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import requests

from bench.bench_api import build_project
from riskwatch.core.config import PROJECT_ROOT
from riskwatch.core.schema import FEATURES
from tests.helpers import free_port

MIB = 1024 * 1024
CLIENTS = 4
BIG_ROWS = 1_000_000
BIG_FILE_BYTES = 250 * 1000 * 1000
MILLION_FILE_BYTES = 23_000_000  # 1,000,000 rows with ids
IDLE_SECONDS = 1.0  # the worker is done when its CPU time has not moved for this long
DEADLINE_SECONDS = 600.0
MEMORY_FIELDS = ("baseline", "peak", "held", "after")


@dataclass(frozen=True)
class Reading:
    """One scenario on one code: the worker's memory (MiB) and what the clients were answered."""

    baseline: float
    peak: float
    held: float
    after: float
    statuses: tuple[int, ...]
    seconds: float


def csv_body(rows: int, seed: int = 7) -> bytes:
    """A CSV body without ids: one-digit counts, about 6 bytes a row (1,000,000 rows: 5.7 MiB)."""
    counts = np.random.default_rng(seed).integers(0, 10, size=(rows, len(FEATURES)))
    lines = "\n".join(",".join(map(str, row)) for row in counts.tolist())
    return f"{','.join(FEATURES)}\n{lines}\n".encode()


def write_big_file(path: Path, target_bytes: int, seed: int = 11) -> int:
    """A CSV of client rows with ids, ``target_bytes`` long or a little more, written in blocks; its rows."""
    rng = np.random.default_rng(seed)
    written = rows = 0
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"corporation,{','.join(FEATURES)},exited\n")
        while written < target_bytes:
            block = 200_000
            numbers = rng.integers(0, 1000, size=(block, 3)).tolist()
            text = "".join(f"c{rows + i:08d},{a},{b},{c},0\n" for i, (a, b, c) in enumerate(numbers))
            handle.write(text)
            written += len(text)
            rows += block
    return rows


def worker_pid(master: int) -> int:
    """The one worker of a gunicorn master started with ``--workers 1``, once it has started."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if len(children) == 1:
            return int(children[0])
        time.sleep(0.1)
    raise SystemExit("the server's worker did not start")


def status_field(pid: int, name: str) -> float:
    """A ``/proc/<pid>/status`` memory field, in MiB; ProcessLookupError once the process has ended."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) / 1024
    raise ProcessLookupError(f"process {pid} has ended")  # a zombie has no memory fields


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def settle(pid: int) -> bool:
    """Wait until the worker has used no CPU for ``IDLE_SECONDS``; whether it is still running (gunicorn ends a
    worker that has missed its heartbeat for 30 s)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        last, since = cpu_ticks(pid), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            status_field(pid, "VmRSS")  # a zombie has none
            now = cpu_ticks(pid)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= IDLE_SECONDS:
                return True
    except (FileNotFoundError, ProcessLookupError):
        return False
    raise SystemExit("the worker did not settle in time")


class PeakWatch(threading.Thread):
    """Reads a process's peak resident memory (VmHWM) every 0.1 s until stopped or the process ends: the last value
    read is its peak, even when it ends before it can be asked."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stopped = pid, math.nan, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            try:
                self.peak = status_field(self.pid, "VmHWM")
            except (FileNotFoundError, ProcessLookupError):
                return

    def stop(self) -> float:
        self.stopped.set()
        self.join()
        return self.peak


def start_server(code: Path, config_path: Path) -> tuple[subprocess.Popen, str, int]:
    """``app.py`` of the checkout ``code``, one gevent worker, on a free port: (process, URL, worker pid). Its log
    goes to ``server.log`` beside the config."""
    port = free_port()
    with open(config_path.parent / "server.log", "ab") as log:
        server = subprocess.Popen(
            [sys.executable, str(code / "app.py"), "--config", str(config_path), "--port", str(port)]
            + ["--workers", "1", "-q"],
            cwd=code,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url, worker_pid(server.pid)
        except requests.RequestException:
            time.sleep(0.1)
    server.kill()
    raise SystemExit(f"the API of {code} did not start")


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def raw_request(path: str, body: bytes, content_type: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def send_unread(port: int, request: bytes) -> socket.socket:
    """A connection that sends ``request`` whole and then reads nothing (yet)."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_SECONDS)
    connection.sendall(request)
    return connection


def read_status(connection: socket.socket) -> int:
    """The status code of the answer on ``connection`` (its first line; the rest is left unread); 0 for none."""
    try:
        first = connection.recv(64)
    except OSError:
        return 0
    return int(first.split(b" ", 2)[1]) if first.startswith(b"HTTP/") else 0


def measure(code: Path, config_path: Path, requests_to_send: list[tuple[str, bytes, str]]) -> Reading:
    """One scenario on a fresh server: send every request at once, wait, read memory, close, read again."""
    server, url, pid = start_server(code, config_path)
    try:
        port = int(url.rsplit(":", 1)[1])
        requests.post(f"{url}/prediction", data=csv_body(10), headers={"Content-Type": "text/csv"}, timeout=10)
        settle(pid)
        baseline = status_field(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak from here on
        watch = PeakWatch(pid)
        watch.start()
        started = time.perf_counter()
        connections: list[socket.socket] = []
        senders = [
            threading.Thread(target=lambda r: connections.append(send_unread(port, r)), args=(raw_request(*asked),))
            for asked in requests_to_send
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        running = settle(pid)
        seconds = time.perf_counter() - started
        peak = status_field(pid, "VmHWM") if running else watch.stop()
        watch.stop()
        held = status_field(pid, "VmRSS") if running else math.nan
        statuses = tuple(sorted(read_status(connection) for connection in connections))
        for connection in connections:
            connection.close()
        after = math.nan
        if running and settle(pid):
            time.sleep(1)
            after = status_field(pid, "VmRSS")
    finally:
        stop_server(server)
    return Reading(baseline, peak, held, after, statuses, seconds)


def answer_digest(url: str, path: str, body: bytes, content_type: str) -> tuple[int, str, int]:
    """(status, sha256, length) of a whole answer."""
    response = requests.post(f"{url}{path}", data=body, headers={"Content-Type": content_type}, timeout=300)
    return response.status_code, hashlib.sha256(response.content).hexdigest(), len(response.content)


def check_same_answers(codes: list[Path], config_path: Path, checks: dict[str, tuple[str, bytes, str]]) -> None:
    """Each code answers each check request with the same bytes."""
    digests: dict[str, list[tuple[int, str, int]]] = {name: [] for name in checks}
    for code in codes:
        server, url, _ = start_server(code, config_path)
        try:
            for name, (path, body, content_type) in checks.items():
                digests[name].append(answer_digest(url, path, body, content_type))
        finally:
            stop_server(server)
    for name, found in digests.items():
        if len(set(found)) != 1:
            raise SystemExit(f"check failed: {name} is answered differently: {found}")
        print(f"check: {name}: status {found[0][0]}, {found[0][2]:,} bytes, the same from every code", file=sys.stderr)


def median_of(readings: list[Reading], pick: Callable[[Reading], float]) -> str:
    """The median over the runs where the worker lived to be measured ("-" when it never did)."""
    values = [pick(reading) for reading in readings if not math.isnan(pick(reading))]
    return f"{statistics.median(values):,.0f}" if values else "-"


def describe_answers(readings: list[Reading]) -> str:
    """The statuses the clients got, per distinct outcome, with how many runs had it (0: no answer)."""
    outcomes = [", ".join(str(status) for status in reading.statuses) for reading in readings]
    return " / ".join(f"{outcome} ({outcomes.count(outcome)} runs)" for outcome in dict.fromkeys(outcomes))


def print_table(results: dict[tuple[str, Path], list[Reading]], old: Path | None) -> None:
    """The medians of each scenario on each code, as a Markdown table, with every run's peak."""
    print("| scenario | code | baseline MiB | peak MiB | while held MiB | after MiB | answers | seconds | peaks, MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, code), readings in results.items():
        cells = [median_of(readings, lambda r, field=field: getattr(r, field)) for field in MEMORY_FIELDS]
        seconds = statistics.median(reading.seconds for reading in readings)
        peaks = ", ".join(f"{reading.peak:,.0f}" for reading in readings)
        label = "old" if code == old else "new"
        print(f"| {name} | {label} | {' | '.join(cells)} | {describe_answers(readings)} | {seconds:.1f} | {peaks} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, help="a checkout of earlier code to measure alternately with this one")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each scenario on each code (default 3)")
    parser.add_argument("--explain-rows", type=int, default=10_000, help="rows of the explain requests at the limit")
    parser.add_argument(
        "--scenarios",
        default="",
        help="some of explain-limit, explain-million, million, million-file, file, comma-separated (default: all)",
    )
    args = parser.parse_args(argv)
    codes = [path.resolve() for path in (args.old, PROJECT_ROOT) if path is not None]
    root = Path(tempfile.mkdtemp(prefix="risk-bench-api-memory-"))
    try:
        config_path = build_project(root)
        big_file = root / "data" / "big250.csv"
        big_rows = write_big_file(big_file, BIG_FILE_BYTES)
        print(f"{big_file.name}: {big_file.stat().st_size / 1e6:,.0f} MB, {big_rows:,} rows", file=sys.stderr)
        million_file = root / "data" / "million.csv"
        write_big_file(million_file, MILLION_FILE_BYTES)
        at_limit, million = csv_body(args.explain_rows), csv_body(BIG_ROWS)
        print(f"bodies: {len(at_limit) / MIB:.2f} MiB, {len(million) / MIB:.2f} MiB", file=sys.stderr)
        check_same_answers(
            codes,
            config_path,
            {
                f"{args.explain_rows:,} rows, explain": ("/prediction?explain=1", at_limit, "text/csv"),
                "50,000 rows": ("/prediction", csv_body(50_000, seed=3), "text/csv"),
                "testdata.csv by location, explain": (
                    "/prediction",
                    orjson.dumps({"filelocation": "data/testdata.csv", "explain": True}),
                    "application/json",
                ),
            },
        )
        location = orjson.dumps({"filelocation": f"data/{big_file.name}"})
        scenarios = {
            "explain-limit": (
                f"explain of {args.explain_rows:,} rows (the new limit), {CLIENTS} unread",
                [("/prediction?explain=1", at_limit, "text/csv")] * CLIENTS,
            ),
            "explain-million": (
                f"explain of {BIG_ROWS:,} rows, {CLIENTS} unread",
                [("/prediction?explain=1", million, "text/csv")] * CLIENTS,
            ),
            "million": (
                f"{BIG_ROWS:,} rows (api.max_rows), {CLIENTS} unread",
                [("/prediction", million, "text/csv")] * CLIENTS,
            ),
            "million-file": (
                f"{BIG_ROWS:,} rows with ids by location, {CLIENTS} unread",
                [("/prediction", orjson.dumps({"filelocation": f"data/{million_file.name}"}), "application/json")]
                * CLIENTS,
            ),
            "file": ("a 250 MB file by location, 1 client", [("/prediction", location, "application/json")]),
        }
        chosen = args.scenarios.split(",") if args.scenarios else list(scenarios)
        results: dict[tuple[str, Path], list[Reading]] = {}
        for key in chosen:
            name, asked = scenarios[key]
            for _ in range(args.repeats):
                for code in codes:
                    reading = measure(code, config_path, asked)
                    results.setdefault((name, code), []).append(reading)
                    print(f"{name} | {code} | {reading}", file=sys.stderr)
        print_table(results, codes[0] if args.old is not None else None)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
