"""Benchmark a database source: fetching and ingesting 1,000,000 rows from PostgreSQL and SQLite, and the no-op check.

    python -m bench.bench_database [--rows 1000000] [--repeat 5]

Generates ``--rows`` clients with the project's generator, loads them into a SQLite file and
into a throwaway PostgreSQL server (Debian's postgresql, started as the tests start it), then
for each database, ``--repeat`` times:

* ingestion: ``ingestion.py`` as a whole process from an empty output folder: every row fetched
  past the watermark in one pass, checked, deduplicated and written (targets: PostgreSQL
  < 2.5 s, SQLite < 2 s); its CPU time (user and system, all its threads: steadier than wall
  time on a machine shared with other work) and the stage's own time (``seconds`` in its report)
  beside it;
* the check: one "is there a row past the watermark" query in a fresh interpreter, imports included;
* no-op: ``fullprocess.py`` with nothing new, whole process wall time, after a first run
  deployed a model on the rows (target < 0.5 s).

For scale on the machine at hand, the same rows are also ingested from a CSV file the same way.

Prints medians (with min and max).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.csv as pa_csv

from bench.bench_fullprocess import median
from bench.bench_pipeline import generate, run_measured
from riskwatch.core.schema import COLUMNS
from riskwatch.state.artifacts import INGESTION_REPORT, read_ingestion_report
from tests.postgres_server import PASSWORD, PASSWORD_ENV, USER, PostgresServer

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"postgresql": 2.5, "sqlite": 2.0}
NO_OP_TARGET = 0.5
TABLE = "client_activity"
CREATE_TABLE = (
    f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, corporation TEXT, lastmonth_activity BIGINT, "
    "lastyear_activity BIGINT, number_of_employees BIGINT, exited BIGINT)"
)


def load_sqlite(path: Path, csv: Path) -> None:
    """The generated rows into a SQLite table, in one transaction."""
    table = pa_csv.read_csv(csv)
    with sqlite3.connect(path) as connection:
        connection.execute(CREATE_TABLE)
        connection.executemany(
            f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?)",
            zip(*(table[name].to_pylist() for name in COLUMNS), strict=True),
        )
    connection.close()


def load_postgres(server: PostgresServer, csv: Path) -> str:
    """The generated rows into a PostgreSQL table with COPY; return the database's URL."""
    import psycopg

    url = server.create_database("bench")
    with psycopg.connect(host="127.0.0.1", port=server.port, user=USER, password=PASSWORD, dbname="bench") as db:
        db.execute(CREATE_TABLE.replace("id INTEGER PRIMARY KEY", "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"))
        with db.cursor().copy(f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT csv, HEADER)") as copy:
            copy.write(csv.read_bytes())
        db.execute(f"ANALYZE {TABLE}")
    return url


def write_config(folder: Path, url: str | None, test_data: Path) -> Path:
    """A config reading the table at ``url`` (None: the CSV files in ``folder``/source)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = {"input_folder_path": "source"}
    if url is not None:
        source = {"input_database_url": url, "input_database_table": TABLE, "input_database_watermark": "id"}
    config = {
        **source,
        "output_folder_path": "ingested",
        "test_data_path": str(test_data),
        "output_model_path": "model",
        "prod_deployment_path": "deployment",
        "diagnostics": {"package_index": "http://127.0.0.1:9/pypi", "index_timeout_seconds": 1},
        "api": {"url": "http://127.0.0.1:9"},
    }
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def check_probe(config: Path, rows: int) -> str:
    """Python code that runs the cheap check (nothing past the last row) and prints its seconds, imports included."""
    return (
        "import time; started = time.perf_counter()\n"
        "from riskwatch.core.config import load_config\n"
        "from riskwatch.core.databases import has_rows_past\n"
        f"assert not has_rows_past(load_config({str(config)!r}).database, {rows})\n"
        "print(time.perf_counter() - started)\n"
    )


def run_ingestion(config: Path) -> tuple[float, float]:
    """Run ``ingestion.py`` once: (wall seconds, CPU seconds, user and system, of its process and threads)."""
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a chatty stage cannot block
        started = time.perf_counter()
        command = [sys.executable, "ingestion.py", "--config", str(config), "-q"]
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            raise SystemExit(f"ingestion.py failed: {errors.read().decode(errors='replace')}")
    return seconds, usage.ru_utime + usage.ru_stime


def measure_ingestion(config: Path, rows: int, repeat: int) -> tuple[list[float], list[float], list[float]]:
    """``ingestion.py`` from an empty output folder, ``repeat`` times: whole-process seconds, CPU seconds, stage's."""
    ingested = config.parent / "ingested"
    process, cpu, stage = [], [], []
    for _ in range(repeat):
        shutil.rmtree(ingested, ignore_errors=True)
        seconds, cpu_seconds = run_ingestion(config)
        report = read_ingestion_report(ingested / INGESTION_REPORT)
        assert report.files[0].rows_kept == rows, report.files[0]
        process.append(seconds)
        cpu.append(cpu_seconds)
        stage.append(report.seconds)
    return process, cpu, stage


def measure(config: Path, rows: int, repeat: int) -> dict:
    process, cpu, stage = measure_ingestion(config, rows, repeat)
    probe = check_probe(config, rows)
    check = [
        float(
            subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        )
        for _ in range(repeat)
    ]
    run_measured([sys.executable, "fullprocess.py", "--config", str(config), "-q"])  # the first deployment
    no_op = [run_measured([sys.executable, "fullprocess.py", "--config", str(config), "-q"])[0] for _ in range(repeat)]
    return {"ingestion": process, "cpu": cpu, "stage": stage, "check": check, "no_op": no_op}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="risk-bench-db-"))
    server = None
    results = {}
    try:
        csv = workdir / "clients.csv"
        generate(csv, args.rows, seed=11)
        generate(workdir / "test" / "testdata.csv", 100_000, seed=12)
        load_sqlite(workdir / "clients.sqlite", csv)
        files_config = write_config(workdir / "files", None, workdir / "test")
        (workdir / "files" / "source").mkdir()
        shutil.copyfile(csv, workdir / "files" / "source" / "clients.csv")
        reference = measure_ingestion(files_config, args.rows, args.repeat)
        sqlite_config = write_config(workdir / "sqlite", f"sqlite:///{workdir / 'clients.sqlite'}", workdir / "test")
        server = PostgresServer.create()
        os.environ[PASSWORD_ENV] = PASSWORD
        postgres_config = write_config(workdir / "postgresql", load_postgres(server, csv), workdir / "test")
        for name, config in (("postgresql", postgres_config), ("sqlite", sqlite_config)):
            results[name] = measure(config, args.rows, args.repeat)
    finally:
        if server is not None:
            server.remove()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"{args.rows:,} rows; {args.repeat} runs each; {os.cpu_count()} cores; medians (min, max)")
    print(f"for scale, the same rows from a CSV file: ingestion.py {median(reference[0])}")
    print(f"  its CPU time: {median(reference[1])}")
    print(f"  in the stage: {median(reference[2])}")
    failed = False
    for name, result in results.items():
        ingestion_ok = statistics.median(result["ingestion"]) < TARGETS[name]
        no_op_ok = statistics.median(result["no_op"]) < NO_OP_TARGET
        failed |= not (ingestion_ok and no_op_ok)
        print(f"{name}:")
        verdict = "met" if ingestion_ok else "MISSED"
        print(f"  ingestion.py, whole process: {median(result['ingestion'])}; target < {TARGETS[name]} s: {verdict}")
        print(f"  its CPU time (user + system): {median(result['cpu'])}")
        print(f"  ingestion, in the stage:     {median(result['stage'])}")
        print(f"  the check, fresh interpreter: {median(result['check'])}")
        verdict = "met" if no_op_ok else "MISSED"
        print(f"  fullprocess.py no-op run:    {median(result['no_op'])}; target < {NO_OP_TARGET} s: {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
