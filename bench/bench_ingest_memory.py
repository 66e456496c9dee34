"""Peak memory and time of ingestion.py on one large file: 60 MB, 250 MB and 1 GB CSV, and a 60 MB JSON file.

    python -m bench.bench_ingest_memory [--sizes 60,250,1000] [--json 60] [--old PATH] [--repeat 1]

Each file is generated into a temporary folder (client rows as the shipped data has them, every
one distinct), then ``ingestion.py`` ingests it into an empty output folder in a child process;
the peak is that process's maximum resident set size. ``--old PATH`` runs the ingestion.py of
another checkout (an earlier commit) on the same files, alternating with this one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHUNK_ROWS = 250_000
MEASURE = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def client_chunk(start: int, rows: int, rng: np.random.Generator) -> pa.Table:
    """``rows`` distinct client rows numbered from ``start``."""
    numbers = np.arange(start, start + rows)
    return pa.table(
        {
            "corporation": pa.array([f"c{number:x}" for number in numbers]),
            "lastmonth_activity": rng.integers(0, 300, rows),
            "lastyear_activity": rng.integers(0, 3000, rows),
            "number_of_employees": rng.integers(1, 200, rows),
            "exited": rng.integers(0, 2, rows),
        }
    )


def write_csv_of_size(path: Path, megabytes: float, seed: int = 7) -> int:
    """Write a CSV of about ``megabytes`` MB of distinct client rows; return its rows."""
    rng = np.random.default_rng(seed)
    target = int(megabytes * 1_000_000)
    rows = 0
    with pa_csv.CSVWriter(str(path), client_chunk(0, 1, rng).schema) as writer:
        while path.stat().st_size < target:
            chunk = client_chunk(rows, CHUNK_ROWS, rng)
            writer.write_table(chunk)
            rows += chunk.num_rows
    return rows


def write_json_of_size(path: Path, megabytes: float, seed: int = 7) -> int:
    """Write a JSON array of client records of about ``megabytes`` MB; return its records."""
    rng = np.random.default_rng(seed)
    target = int(megabytes * 1_000_000)
    rows = 0
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("[")
        while handle.tell() < target:
            chunk = client_chunk(rows, 200_000, rng).to_pylist()
            text = ",".join(json.dumps(record) for record in chunk)
            handle.write(("," if rows else "") + text)
            rows += len(chunk)
        handle.write("]")
    return rows


def write_config(folder: Path, source: Path) -> Path:
    config = {
        "input_folder_path": str(source),
        "output_folder_path": str(folder / "ingested"),
        "test_data_path": str(folder / "test"),
        "output_model_path": str(folder / "models"),
        "prod_deployment_path": str(folder / "deployed"),
    }
    path = folder / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def ingest_measured(code: Path, config: Path) -> tuple[float, float]:
    """(seconds, peak MiB) of ``code``'s ingestion.py on ``config``, started afresh."""
    shutil.rmtree(config.parent / json.loads(config.read_text())["output_folder_path"], ignore_errors=True)
    started = time.perf_counter()
    output = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable, str(code / "ingestion.py"), "--config", str(config)],
        check=True,
        capture_output=True,
        text=True,
        cwd=code,
    ).stdout
    return time.perf_counter() - started, int(output.split()[-1]) / 1024


def peak_of_ingestion(folder: Path, config: Path) -> float:
    """Peak MiB of this checkout's ingestion on ``config`` (the memory test's measurement)."""
    return ingest_measured(PROJECT_ROOT, config)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="60,250,1000", help="CSV sizes in MB, comma-separated")
    parser.add_argument("--json", type=float, default=60, help="size of the JSON file in MB (0: none)")
    parser.add_argument("--old", type=Path, help="another checkout whose ingestion.py runs on the same files")
    parser.add_argument("--old-max-mb", type=float, default=300, help="the largest file the old code is run on")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    files = [(float(size), ".csv") for size in args.sizes.split(",") if size]
    if args.json:
        files.append((args.json, ".json"))
    print(f"ingestion.py on one file; {args.repeat} run(s) each; {os.cpu_count()} cores")
    print("| file | rows | code | seconds (median) | peak MiB (median) |")
    print("|---|---|---|---|---|")
    for size, suffix in files:
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            folder = Path(tmp)
            source = folder / "source"
            source.mkdir()
            path = source / f"clients{suffix}"
            rows = write_csv_of_size(path, size) if suffix == ".csv" else write_json_of_size(path, size)
            config = write_config(folder, source)
            codes = [("new", PROJECT_ROOT)]
            if args.old and size <= args.old_max_mb:
                codes.append(("old", args.old))
            results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in codes}
            for _ in range(args.repeat):
                for name, code in codes:
                    results[name].append(ingest_measured(code, config))
            label = f"{path.stat().st_size / 1e6:,.0f} MB {suffix[1:].upper()}"
            for name, measured in results.items():
                seconds = float(np.median([value[0] for value in measured]))
                peak = float(np.median([value[1] for value in measured]))
                print(f"| {label} | {rows:,} | {name} | {seconds:.1f} | {peak:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
