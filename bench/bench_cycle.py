"""Benchmark the monitoring cycle as whole processes: drift -> retrain -> deploy -> diagnostics -> report.

    python -m bench.bench_cycle [--repeat 5] [--big] [--old PATH]

Measurements, each on a scratch project, medians of ``--repeat`` runs:

* shipped: the shipped 10,000 clients deployed by a first ``fullprocess.py`` run, then a
  3,000-row batch of a changed world (``generate_data.py batch --drift``): the whole
  ``fullprocess.py`` process that finds the drift, retrains, deploys, and makes the diagnostics
  and the report (target < 4 s);
* big (``--big``): the same with 1,000,000 clients in 10 files and 100,000 test rows, then
  200,000 changed rows (target < 10 s, every model family trained on every window);
* make run: the six stage scripts ``make run`` runs, in a row, on the shipped data from nothing,
  with the install done (target < 10 s).

With ``--old PATH`` (a checkout of an earlier commit: ``git worktree add /tmp/old <commit>``),
every measurement alternates between that code and this checkout, so both are measured in one
run on the same machine state. Each checkout runs with its own ``config.json`` (paths moved to
the scratch project), no package index and no API.
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

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"shipped": 4.0, "big": 10.0, "make run": 10.0}
MAKE_RUN = ("ingestion", "training", "scoring", "deployment", "diagnostics", "reporting")
STATE = ("ingesteddata", "models", "production_deployment")


def run(code: Path, script: str, config: Path, *args: str) -> float:
    """Run ``script`` of the checkout ``code`` as a process; return its wall seconds."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, script, "--config", str(config), "-q", *args], cwd=code, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{code}/{script} failed: {result.stderr[-2000:]}")
    return seconds


def write_config(code: Path, project: Path) -> Path:
    """The checkout's own config.json, with the project's paths, no package index and no API."""
    config = json.loads((code / "config.json").read_text())
    config.update(
        input_folder_path="sourceddata",
        output_folder_path="ingesteddata",
        test_data_path="testdata",
        output_model_path="models",
        prod_deployment_path="production_deployment",
    )
    config["diagnostics"] = {
        **config.get("diagnostics", {}),
        "package_index": "http://127.0.0.1:9/pypi",
        "index_timeout_seconds": 1,
    }
    config["api"] = {**config.get("api", {}), "url": "http://127.0.0.1:9"}
    # The changed batch is copied in just before the run: measure the cycle, not the wait for files to settle.
    config["monitoring"] = {**config.get("monitoring", {}), "settle_seconds": 0}
    path = project / "config.json"
    path.write_text(json.dumps(config))
    return path


def generate(args: list[str]) -> None:
    subprocess.run([sys.executable, "generate_data.py", "-q", *args], cwd=ROOT, check=True)


def make_data(target: Path, big: bool) -> Path:
    """The shipped data, or 1,000,000 clients in 10 files with 100,000 test rows."""
    if big:
        generate(["batch", "--out", str(target / "sourceddata"), "--rows", "1000000", "--files", "10", "--seed", "11"])
        generate(["batch", "--out", str(target / "testdata" / "testdata.csv"), "--rows", "100000", "--seed", "12"])
    else:
        generate(["shipped", "--root", str(target)])
        shutil.rmtree(target / "practicedata", ignore_errors=True)
    return target


def last_outcome(project: Path) -> str:
    with sqlite3.connect(project / "models" / "runhistory.sqlite") as connection:
        return connection.execute("SELECT outcome FROM runs ORDER BY id DESC LIMIT 1").fetchone()[0]


class Cycle:
    """A project of one checkout with its first model deployed, restored before each measured run."""

    def __init__(self, code: Path, data: Path, workdir: Path, drift_rows: int):
        self.code, self.project = code, workdir / f"cycle-{code.name}"
        shutil.copytree(data, self.project)
        self.config = write_config(code, self.project)
        run(code, "fullprocess.py", self.config)
        assert last_outcome(self.project) == "first_deployment"
        self.snapshot = workdir / f"snapshot-{code.name}"
        for name in STATE:
            shutil.copytree(self.project / name, self.snapshot / name, symlinks=True)
        self.drift_file = workdir / f"drift-{drift_rows}.csv"
        if not self.drift_file.exists():
            generate(["batch", "--out", str(self.drift_file), "--rows", str(drift_rows), "--seed", "32", "--drift"])

    def measure(self) -> float:
        for name in STATE:
            shutil.rmtree(self.project / name, ignore_errors=True)
            shutil.copytree(self.snapshot / name, self.project / name, symlinks=True)
        shutil.copyfile(self.drift_file, self.project / "sourceddata" / "changed.csv")
        seconds = run(self.code, "fullprocess.py", self.config)
        outcome = last_outcome(self.project)
        assert outcome == "deployed", f"{self.code}: the changed batch ended {outcome}, not deployed"
        return seconds


def measure_make_run(code: Path, data: Path, workdir: Path) -> float:
    project = workdir / f"makerun-{code.name}"
    shutil.rmtree(project, ignore_errors=True)
    shutil.copytree(data, project)
    config = write_config(code, project)
    return sum(run(code, f"{stage}.py", config) for stage in MAKE_RUN)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}–{max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--big", action="store_true", help="also 1,000,000 rows plus 200,000 changed rows")
    parser.add_argument("--old", type=Path, help="a checkout of earlier code to measure alternately with this one")
    args = parser.parse_args(argv)
    codes = [path.resolve() for path in (args.old, ROOT) if path is not None]
    workdir = Path(tempfile.mkdtemp(prefix="risk-bench-cycle-"))
    results: dict[str, dict[Path, list[float]]] = {}
    try:
        shipped = make_data(workdir / "shipped", big=False)
        plans = [("shipped", shipped, 3_000)]
        if args.big:
            plans.append(("big", make_data(workdir / "big", big=True), 200_000))
        for name, data, drift_rows in plans:
            cycles = [Cycle(code, data, workdir, drift_rows) for code in codes]
            results[name] = {code: [] for code in codes}
            for _ in range(args.repeat):
                for cycle in cycles:
                    results[name][cycle.code].append(cycle.measure())
            for cycle in cycles:
                shutil.rmtree(cycle.project)
                shutil.rmtree(cycle.snapshot)
        results["make run"] = {code: [] for code in codes}
        for _ in range(args.repeat):
            for code in codes:
                results["make run"][code].append(measure_make_run(code, shipped, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"{os.cpu_count()} cores; medians of {args.repeat} runs (min–max), whole processes")
    header = "| measurement | " + " | ".join("earlier code" if code != ROOT else "this code" for code in codes)
    print(header + " | target |")
    print("|---" * (len(codes) + 2) + "|")
    met = True
    for name, by_code in results.items():
        now = statistics.median(by_code[ROOT])
        ok = now < TARGETS[name]
        met &= ok
        cells = " | ".join(summary(by_code[code]) for code in codes)
        print(f"| {name} | {cells} | < {TARGETS[name]:g} s: {'met' if ok else 'MISSED'} |")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
