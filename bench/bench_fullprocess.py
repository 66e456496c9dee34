"""Benchmark fullprocess.py on 1,000,000 ingested rows: a no-op run, a 10,000-row increment, a drift cycle.

    python -m bench.bench_fullprocess [--rows 1000000] [--files 10] [--repeat 7]

Builds a scratch project with ``--rows`` clients in ``--files`` files and 100,000 test rows,
lets fullprocess.py deploy the first model, and keeps that state as a snapshot. Then, each
measurement starting from the snapshot:

* no-op: ``fullprocess.py`` with nothing new, whole process wall time (target < 0.3 s);
* increment: one new 10,000-row file. Ingestion's own time (``seconds`` in the ingestion
  report: the files hashed and parsed, duplicates found, ``finaldata.csv`` written) against
  ingesting all the files from scratch the same way (target < 25 %); the whole
  ``ingestion.py`` processes and the whole ``fullprocess.py`` run (no drift: kept) as well;
* drift cycle: one new file of drifted clients; the whole ``fullprocess.py`` run: ingestion,
  drift tests, retraining on all rows, scoring, gate, deployment, diagnostics (one timing run)
  and the report.

Medians of ``--repeat`` runs (fewer for the long drift cycle), all in one process, one after another.
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
from pathlib import Path

from bench.bench_pipeline import generate, prepare, run_measured
from riskwatch.state.artifacts import INGESTION_REPORT, read_ingestion_report

ROOT = Path(__file__).resolve().parent.parent
NO_OP_TARGET = 0.3
INCREMENT_SHARE_TARGET = 0.25
TEST_ROWS = 100_000
STATE = ("ingested", "model", "deployment")


def prepare_project(workdir: Path, rows: int, files: int) -> Path:
    """The data and a config: one timing run in diagnostics, no package index, no API."""
    return prepare(
        workdir,
        rows,
        files,
        test_rows=TEST_ROWS,
        diagnostics={"package_index": "http://127.0.0.1:9/pypi", "index_timeout_seconds": 1},
        api={"url": "http://127.0.0.1:9"},
    )


def fullprocess(config: Path) -> float:
    seconds, _ = run_measured([sys.executable, "fullprocess.py", "--config", str(config), "-q"])
    return seconds


def restore(workdir: Path, snapshot: Path, extra: list[Path]) -> None:
    """Put the project back as the first deployment left it, without the extra source files."""
    for name in STATE:
        shutil.rmtree(workdir / name, ignore_errors=True)
        shutil.copytree(snapshot / name, workdir / name, symlinks=True)
    for path in extra:
        path.unlink(missing_ok=True)


def last_run(workdir: Path) -> dict:
    with sqlite3.connect(workdir / "model" / "runhistory.sqlite") as connection:
        connection.row_factory = sqlite3.Row
        return dict(connection.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone())


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--drift-rows", type=int, default=200_000)
    parser.add_argument("--drift-repeat", type=int, default=3)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="risk-bench-fullprocess-"))
    try:
        config = prepare_project(workdir, args.rows, args.files)
        first = fullprocess(config)
        assert last_run(workdir)["outcome"] == "first_deployment", last_run(workdir)
        snapshot = workdir / "snapshot"
        for name in STATE:
            shutil.copytree(workdir / name, snapshot / name, symlinks=True)

        no_op = []
        for _ in range(args.repeat):
            no_op.append(fullprocess(config))
            assert last_run(workdir)["outcome"] == "no_new_data"

        scratch_ingest, scratch_process = [], []
        scratch = workdir / "scratch"
        scratch_config = workdir / "scratch.json"
        scratch_config.write_text(
            json.dumps({**json.loads(config.read_text()), "output_folder_path": "scratch/ingested"})
        )
        for _ in range(args.repeat):
            shutil.rmtree(scratch, ignore_errors=True)
            seconds, _ = run_measured([sys.executable, "ingestion.py", "--config", str(scratch_config), "-q"])
            scratch_process.append(seconds)
            scratch_ingest.append(read_ingestion_report(scratch / "ingested" / INGESTION_REPORT).seconds)

        new_file = workdir / "source" / "increment.csv"
        increment_ingest, increment_process, increment_run = [], [], []
        for number in range(args.repeat):
            restore(workdir, snapshot, [new_file])
            generate(new_file, 10_000, seed=100 + number)
            seconds, _ = run_measured([sys.executable, "ingestion.py", "--config", str(config), "-q"])
            increment_process.append(seconds)
            report = read_ingestion_report(workdir / "ingested" / INGESTION_REPORT)
            assert report.appended, "the increment was not appended"
            increment_ingest.append(report.seconds)
            restore(workdir, snapshot, [])
            increment_run.append(fullprocess(config))
            run = last_run(workdir)
            assert run["outcome"] == "kept", run
            increment_timings = json.loads(run["timings"])

        drift_file = workdir / "source" / "drifted.csv"
        drift_run, drift_timings = [], {}
        for number in range(args.drift_repeat):
            restore(workdir, snapshot, [new_file, drift_file])
            subprocess.run(
                [sys.executable, "generate_data.py", "-q", "batch", "--out", str(drift_file)]
                + ["--rows", str(args.drift_rows), "--seed", str(200 + number), "--drift"],
                cwd=ROOT,
                check=True,
            )
            drift_run.append(fullprocess(config))
            run = last_run(workdir)
            assert run["outcome"] == "deployed", run
            drift_timings = json.loads(run["timings"])
            drift_decision = run["decision"]
            drift_trigger = run["drift_trigger"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    share = statistics.median(increment_ingest) / statistics.median(scratch_ingest)
    no_op_ok = statistics.median(no_op) < NO_OP_TARGET
    share_ok = share < INCREMENT_SHARE_TARGET
    print(f"{args.rows:,} rows in {args.files} files, {TEST_ROWS:,} test rows; {os.cpu_count()} cores")
    print(f"first deployment (whole run, once): {first:.2f} s")
    print(f"no-op run (whole process): {median(no_op)}; target < {NO_OP_TARGET} s: {'met' if no_op_ok else 'MISSED'}")
    print(f"ingestion from scratch, in the stage: {median(scratch_ingest)}; whole process {median(scratch_process)}")
    print(f"10,000-row increment, in the stage: {median(increment_ingest)}; whole process {median(increment_process)}")
    verdict = "met" if share_ok else "MISSED"
    print(f"increment / from scratch: {share:.1%}; target < {INCREMENT_SHARE_TARGET:.0%}: {verdict}")
    print(f"fullprocess run with the increment (no drift, kept): {median(increment_run)}")
    print(f"  its stages (last run): {increment_timings}")
    print(f"drift-retrain-deploy cycle, {args.drift_rows:,} drifted rows: {median(drift_run)}")
    print(f"  its stages (last run): {drift_timings}")
    print(f"  trigger: {drift_trigger}")
    print(f"  decision: {drift_decision}")
    return 0 if no_op_ok and share_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
