"""Benchmark the current-client table behind ``/clients`` and the dashboard: time and memory per gunicorn worker.

Builds a scratch project (nothing under the project's own folders is touched): ``--rows`` generated
client rows in two files plus ``--repeats`` later rows of clients already seen (so some clients have
several rows), ingested, trained, scored and deployed. Then, for this code and, with ``--old PATH``, an
earlier checkout of it (``git worktree add /tmp/old-clients <commit>``), alternating, ``--rounds`` times:
``app.py`` (gunicorn, 2 gevent workers) is started; each worker is sent ``/health`` (so both have the
model loaded); then ``GET /clients`` is sent to one worker and then to the other (the other is held with
SIGSTOP meanwhile, so the request cannot go elsewhere); each worker's VmRSS, RssAnon, RssFile and Pss
(``/proc/<pid>/status``, ``smaps_rollup``) are read before and after; then 20 more ``/clients`` and 3
``/dashboard/clients.csv`` downloads (all clients) are timed. With this code the table file is removed
before each round, so each round builds it; one more start, with the file there, times a restart.

    .venv/bin/python -m bench.bench_clients [--rows 715000] [--repeats 40000] [--rounds 3] [--old /tmp/old-clients]

RssAnon is a worker's private heap; mapped file pages count in VmRSS (as RssFile) but are shared by every
process that maps the file, which Pss divides among them.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from riskwatch.core.config import PROJECT_ROOT, load_config
from riskwatch.data.generator import format_csv, generate_clients, rows_of
from tests.helpers import free_port, wait_until_healthy, write_config

log = logging.getLogger("bench_clients")

MEMORY_FIELDS = ("VmRSS", "RssAnon", "RssFile")
LATER_REQUESTS = 20
CSV_DOWNLOADS = 3
TABLES_FOLDER = "clienttables"


def build_project(root: Path, rows: int, repeats: int) -> Path:
    """A deployed scratch project; returns its config path."""
    rng = np.random.default_rng(7)
    (root / "sourceddata").mkdir()
    (root / "testdata").mkdir()
    generated = generate_clients(rows, rng)
    half = rows // 2
    for name, part in (("clients_a.csv", np.arange(half)), ("clients_b.csv", np.arange(half, rows))):
        chosen = {key: values[part] for key, values in generated.items()}
        (root / "sourceddata" / name).write_text(format_csv(rows_of(chosen)), encoding="utf-8")
    later = generate_clients(repeats, rng)
    later["corporation"] = generated["corporation"][rng.choice(rows, repeats, replace=False)]
    (root / "sourceddata" / "clients_c.csv").write_text(format_csv(rows_of(later)), encoding="utf-8")
    shutil.copy(PROJECT_ROOT / "testdata" / "testdata.csv", root / "testdata" / "testdata.csv")
    path = write_config(root, model={"families": ["linear"]})
    for stage in ("ingestion", "training", "scoring", "deployment"):
        subprocess.run([sys.executable, str(PROJECT_ROOT / f"{stage}.py"), "--config", str(path), "-q"], check=True)
    return path


def count_current_clients(config_path: Path) -> int:
    from riskwatch.data.batches import read_final_data, read_unlabelled_clients, select_current_clients

    folder = load_config(config_path).output_folder_path
    return len(select_current_clients(read_final_data(folder / "finaldata.csv"), read_unlabelled_clients(folder)).ids)


@dataclass(frozen=True)
class Memory:
    """One process's memory in MiB: VmRSS, RssAnon, RssFile (from /proc/<pid>/status) and Pss (smaps_rollup)."""

    rss: float
    anon: float
    file: float
    pss: float

    def minus(self, other: Memory) -> Memory:
        return Memory(self.rss - other.rss, self.anon - other.anon, self.file - other.file, self.pss - other.pss)


def read_memory(pid: int) -> Memory:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in MEMORY_FIELDS:
            fields[name] = int(value.split()[0]) / 1024
    pss = 0.0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1]) / 1024
    return Memory(fields["VmRSS"], fields["RssAnon"], fields["RssFile"], pss)


def list_workers(master: int, count: int, timeout: float = 30) -> list[int]:
    """The pids of gunicorn's workers (the master's children), once there are ``count`` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if len(children) == count:
            return sorted(int(pid) for pid in children)
        time.sleep(0.1)
    raise RuntimeError("gunicorn did not start its workers")


@contextmanager
def only(worker: int, workers: list[int]) -> Iterator[None]:
    """The other workers stopped (SIGSTOP) for the block: a request on a new connection can only reach ``worker``."""
    others = [pid for pid in workers if pid != worker]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def timed(fetch: Callable[[], object]) -> float:
    start = time.perf_counter()
    fetch()
    return time.perf_counter() - start


def get(url: str) -> bytes:
    """One GET on a new connection; the body."""
    import requests

    answer = requests.get(url, timeout=300)
    answer.raise_for_status()
    return answer.content


def first_byte_and_total(url: str) -> tuple[float, float, int]:
    """(seconds to the first byte of the body, seconds to its end, bytes) of a download."""
    import requests

    start = time.perf_counter()
    with requests.get(url, timeout=300, stream=True) as answer:
        answer.raise_for_status()
        chunks = answer.iter_content(chunk_size=1 << 16)
        size = len(next(chunks, b""))
        first = time.perf_counter() - start
        size += sum(len(chunk) for chunk in chunks)
    return first, time.perf_counter() - start, size


@dataclass(frozen=True)
class Round:
    code: str
    first: list[float]  # the first /clients in each worker, in the order sent
    added: list[Memory]  # per worker: its memory after its first /clients minus before
    later: float  # median of LATER_REQUESTS /clients, seconds
    csv_first_byte: float
    csv_total: float
    csv_bytes: int
    after_csv: list[Memory]  # per worker: its memory after the downloads minus before the first /clients


def run_round(code: Path, name: str, config_path: Path) -> Round:
    """One start of ``code``'s app.py: the measurements above."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(code / "app.py"), "--config", str(config_path), "--port", str(port), "-q"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=code,
        env={key: value for key, value in os.environ.items() if key != "RISK_API_TOKEN"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server)
        workers = list_workers(server.pid, 2)
        for worker in workers:
            with only(worker, workers):
                get(f"{url}/health")
        before = [read_memory(pid) for pid in workers]
        first, added = [], []
        for index, worker in enumerate(workers):
            with only(worker, workers):
                first.append(timed(lambda: get(f"{url}/clients")))
            added.append(read_memory(worker).minus(before[index]))
        later = statistics.median(timed(lambda: get(f"{url}/clients")) for _ in range(LATER_REQUESTS))
        downloads = [first_byte_and_total(f"{url}/dashboard/clients.csv") for _ in range(CSV_DOWNLOADS)]
        after_csv = [read_memory(pid).minus(before[index]) for index, pid in enumerate(workers)]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    return Round(
        name,
        first,
        added,
        later,
        statistics.median(item[0] for item in downloads),
        statistics.median(item[1] for item in downloads),
        downloads[0][2],
        after_csv,
    )


def describe(memory: Memory) -> str:
    return f"VmRSS {memory.rss:+7.1f}  RssAnon {memory.anon:+7.1f}  RssFile {memory.file:+7.1f}  Pss {memory.pss:+7.1f}"


def print_round(found: Round) -> None:
    print(
        f"{found.code:<8} first /clients: worker 1 {found.first[0]:.2f} s, worker 2 {found.first[1]:.2f} s; "
        f"later {found.later * 1000:.1f} ms; CSV first byte {found.csv_first_byte:.2f} s, "
        f"whole {found.csv_total:.2f} s ({found.csv_bytes / 1e6:.1f} MB)"
    )
    for index, memory in enumerate(found.added):
        print(f"         worker {index + 1} after its first /clients, MiB: {describe(memory)}")
    for index, memory in enumerate(found.after_csv):
        print(f"         worker {index + 1} after the CSV downloads, MiB:  {describe(memory)}")


def print_medians(rounds: list[Round]) -> None:
    print("\nmedians over the rounds (seconds; MiB added per worker after its first /clients):")
    for code in dict.fromkeys(found.code for found in rounds):
        mine = [found for found in rounds if found.code == code]

        def median(pick: Callable[[Round], float], chosen: list[Round] = mine) -> float:
            return statistics.median(pick(found) for found in chosen)

        print(
            f"{code:<8} first /clients {median(lambda r: r.first[0]):.2f} / {median(lambda r: r.first[1]):.2f} s "
            f"(worker 1 / 2), later {median(lambda r: r.later) * 1000:.1f} ms, "
            f"CSV {median(lambda r: r.csv_total):.2f} s (first byte {median(lambda r: r.csv_first_byte):.2f} s)"
        )
        for index in range(2):
            print(
                f"         worker {index + 1}: VmRSS {median(lambda r, i=index: r.added[i].rss):+.1f}, "
                f"RssAnon {median(lambda r, i=index: r.added[i].anon):+.1f}, "
                f"RssFile {median(lambda r, i=index: r.added[i].file):+.1f}, "
                f"Pss {median(lambda r, i=index: r.added[i].pss):+.1f}; after the CSV downloads RssAnon "
                f"{median(lambda r, i=index: r.after_csv[i].anon):+.1f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=715_000, help="client rows generated (default 715,000)")
    parser.add_argument("--repeats", type=int, default=40_000, help="later rows of clients seen before")
    parser.add_argument("--rounds", type=int, default=3, help="starts of each code, alternating (default 3)")
    parser.add_argument("--old", type=Path, help="an earlier checkout of the project to compare with")
    parser.add_argument("--keep", type=Path, help="build the scratch project here and keep it (reused if there)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-clients-"))
    try:
        config_path = root / "config.json"
        if not config_path.exists():
            root.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            config_path = build_project(root, args.rows, args.repeats)
            print(f"project built in {time.perf_counter() - start:.0f} s")
        tables = load_config(config_path).output_folder_path / TABLES_FOLDER
        print(f"{count_current_clients(config_path):,} current clients; {args.rounds} rounds, 2 workers")
        codes = [("new", PROJECT_ROOT)] + ([("old", args.old.resolve())] if args.old else [])
        rounds = []
        for number in range(args.rounds):
            for name, code in codes if number % 2 == 0 else codes[::-1]:
                if name == "new":
                    shutil.rmtree(tables, ignore_errors=True)
                rounds.append(run_round(code, name, config_path))
                print_round(rounds[-1])
        if tables.is_dir():
            size = sum(path.stat().st_size for path in tables.glob("*.arrow"))
            print(f"the table file: {size / 1e6:.1f} MB")
        restart = run_round(PROJECT_ROOT, "restart", config_path)  # the file is there: mapped, not built
        print_round(restart)
        print_medians([*rounds, restart])
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
