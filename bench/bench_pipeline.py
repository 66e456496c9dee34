"""Benchmark ingestion, training and scoring as whole processes on generated data.

    python -m bench.bench_pipeline [--rows 1000000] [--files 10] [--repeat 7]

Writes ``--rows`` clients in ``--files`` files (and as many test rows in one file) with the
project's generator into a scratch folder, then runs each stage script ``--repeat`` times as
a separate process. Prints, per stage, the median wall time (with min and max), rows per
second at the median, and the largest peak resident memory of the runs. Ingestion starts
from an empty output folder every run; "ingestion, unchanged" re-runs it over its own outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TARGETS = {"ingestion": 1.5, "training": 3.5}
MEMORY_LIMIT_MIB = 1024


def run_measured(command: list[str]) -> tuple[float, float]:
    """Run ``command``; return (wall seconds, peak resident MiB of that process)."""
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a chatty stage cannot block
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"{' '.join(command)} failed: {errors.read().decode(errors='replace')}")
    return seconds, usage.ru_maxrss / 1024


def generate(out: Path, rows: int, seed: int, files: int = 1) -> None:
    # In a child process: a child's peak-memory figure starts from its parent's size at fork,
    # so this process must stay small for the stage figures to be the stages' own.
    command = ["generate_data.py", "-q", "batch", "--out", str(out), "--rows", str(rows), "--seed", str(seed)]
    subprocess.run([sys.executable, *command, "--files", str(files)], cwd=ROOT, check=True)


def prepare(workdir: Path, rows: int, files: int, test_rows: int | None = None, **settings: object) -> Path:
    """Generate the data (``test_rows`` test rows, default ``rows``) and a config with ``settings``; return its path."""
    generate(workdir / "source", rows, seed=11, files=files)
    generate(workdir / "test" / "testdata.csv", test_rows or rows, seed=12)
    config = {
        "input_folder_path": "source",
        "output_folder_path": "ingested",
        "test_data_path": "test",
        "output_model_path": "model",
        "prod_deployment_path": "deployment",
        **settings,
    }
    path = workdir / "config.json"
    path.write_text(json.dumps(config))
    return path


def bench_stage(script: str, config: Path, repeat: int, before_each=None) -> dict:
    times, memory = [], []
    for _ in range(repeat):
        if before_each:
            before_each()
        seconds, mib = run_measured([sys.executable, script, "--config", str(config), "-q"])
        times.append(seconds)
        memory.append(mib)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "peak_mib": max(memory)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--workdir", type=Path, help="keep the scratch data here (default: a temporary folder)")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="risk-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        config = prepare(workdir, args.rows, args.files)
        ingested = workdir / "ingested"
        results = {
            "ingestion": bench_stage(
                "ingestion.py", config, args.repeat, lambda: shutil.rmtree(ingested, ignore_errors=True)
            ),
            "ingestion, unchanged": bench_stage("ingestion.py", config, args.repeat),
            "training": bench_stage("training.py", config, args.repeat),
            "scoring": bench_stage("scoring.py", config, args.repeat),
        }
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"{args.rows:,} rows in {args.files} files; {args.repeat} runs per stage; {os.cpu_count()} cores")
    print("| stage | median s | min–max s | rows/s (median) | peak memory MiB | target |")
    print("|---|---|---|---|---|---|")
    failed = False
    for stage, result in results.items():
        target = TARGETS.get(stage)
        ok = (target is None or result["median"] < target) and result["peak_mib"] < MEMORY_LIMIT_MIB
        failed |= not ok
        target_text = (f"< {target} s, < 1 GiB" if target else "< 1 GiB") + (": met" if ok else ": MISSED")
        print(
            f"| {stage} | {result['median']:.2f} | {result['min']:.2f}–{result['max']:.2f} "
            f"| {args.rows / result['median']:,.0f} | {result['peak_mib']:.0f} | {target_text} |"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
