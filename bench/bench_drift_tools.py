"""This project's drift tests beside NannyML's: fit seconds, seconds per 200,000-row batch, verdicts.

    python -m bench.bench_drift_tools [--nannyml-python PATH] [--repeats 5] [--old PATH]
    make bench-drift-tools NANNYML_PYTHON=/work/nannyml-venv/bin/python [OLD=path]

The data, from the project's generator (``riskwatch.data.generator``): a 1,000,000-row reference and three
200,000-row batches: stable (the reference's world), shifted (``WORLDS["shifted"]``) and a faulty join
(``break_join`` on ``lastyear_activity``: every column's values as in the stable world, their pairing gone).
They are saved as ``.npz`` files in a temporary folder, which every tool reads.

This project's tests run in this process, on ``log1p`` counts:

* ``feature_drift``: the per-feature test (Kolmogorov-Smirnov up to ``ks_max_rows`` rows, else the
  Wasserstein distance over the reference's standard deviation), which sorts the reference at every call;
* ``fit_drift_reference`` then ``judge_feature_drift``: the same statistics, the reference sorted once;
* ``judge_data_drift`` as a monitoring run calls it, the sorted reference kept in a models folder: its fit
  is a first run (sort and keep), its batch a later run (the rows' digest, the file read, the batch's sort);
* the data integrity test: ``fit_joint_structure`` on the reference, ``judge_integrity(structure, batch,
  tolerance=0.2)``, reporting ``multivariate_drift`` and ``broken``;
* both on a batch as a monitoring run tests it: the batch's columns sorted once, for both tests.

With ``--old PATH`` (a checkout of earlier code: ``git worktree add /tmp/drift-before <commit>``) that
checkout's ``judge_data_drift`` (which compared with a random 200,000 of the reference rows) and
``feature_drift`` (SciPy on every reference row) run first, in a process of their own, on the same files;
their statistics are compared with this checkout's.

NannyML (``bench/nannyml_drift.py``: its univariate calculator binned by default and exact, and its data
reconstruction drift) runs with ``--nannyml-python``, the python of a virtual environment of its own, never
the project's:

    python3.11 -m venv /work/nannyml-venv
    /work/nannyml-venv/bin/pip install nannyml 'pandas<3' statsmodels

Without it the NannyML rows are left out, with a note. Seconds are medians: a fit of ``--fit-repeats``,
a batch of every batch ``--repeats`` times.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from riskwatch.core.config import MonitoringSettings
from riskwatch.core.rowhash import hash_rows
from riskwatch.core.schema import FEATURES, SCHEMA
from riskwatch.data.batches import IngestedData
from riskwatch.data.generator import STABLE, WORLDS, break_join, generate_clients
from riskwatch.monitoring.decision import judge_data_drift
from riskwatch.state.artifacts import DRIFT_REFERENCE_FILE
from riskwatch.state.runs import FeatureDrift
from riskwatch.stats.drift import feature_drift, fit_drift_reference, judge_feature_drift
from riskwatch.stats.integrity import IntegrityVerdict, fit_joint_structure, judge_integrity

ROOT = Path(__file__).resolve().parent.parent
BATCHES = ("stable", "shifted", "faulty join")
SHORT = {"lastmonth_activity": "month", "lastyear_activity": "year", "number_of_employees": "employees"}
INTEGRITY_TOLERANCE = 0.2

# Run by the python of this process in an earlier checkout (cwd and PYTHONPATH): its own judge_data_drift, which
# took (settings, data, reference_rows, new_features), and feature_drift. Prints one JSON object.
OLD_CHECKOUT_SCRIPT = """
import json, statistics, sys, time, logging
from pathlib import Path
import numpy as np, pyarrow as pa
from riskwatch.core.config import MonitoringSettings
from riskwatch.core.rowhash import hash_rows
from riskwatch.core.schema import FEATURES, SCHEMA
from riskwatch.data.batches import IngestedData
from riskwatch.monitoring.decision import judge_data_drift
from riskwatch.stats.drift import feature_drift

logging.disable(logging.CRITICAL)
folder, repeats, names = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
with np.load(folder / "reference.npz", allow_pickle=False) as stored:
    table = pa.table({name: stored[name] for name in SCHEMA.names}, schema=SCHEMA)
data = IngestedData(table, hash_rows(table), np.ones(table.num_rows, np.int32), ())
rows, settings = np.arange(table.num_rows), MonitoringSettings()
out = {}
for label, judge in (("judge_data_drift", lambda batch: judge_data_drift(settings, data, rows, batch)),
                     ("feature_drift", lambda batch: feature_drift(data.features(), batch, settings))):
    seconds, verdicts = [], {}
    for name in names:
        with np.load(folder / f"{name}.npz", allow_pickle=False) as stored:
            batch = np.column_stack([stored[feature] for feature in FEATURES]).astype(np.float64)
        for _ in range(repeats):
            started = time.perf_counter()
            result = judge(batch)
            seconds.append(time.perf_counter() - started)
        verdicts[name] = [[row.feature, row.statistic, row.drifted] for row in result]
    out[label] = {"batch": statistics.median(seconds), "verdicts": verdicts}
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Row:
    """One line of the table: a tool's test, its fit and per-batch seconds, and its verdict on each batch."""

    tool: str
    test: str
    fit: float | None
    batch: float
    verdicts: dict[str, str]


def file_name(batch: str) -> str:
    return batch.replace(" ", "_")


def generate_data(folder: Path, reference_rows: int, batch_rows: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """The reference and the batches, generated and saved in ``folder`` (with the feature and batch names)."""
    rng = np.random.default_rng(seed)
    clients = {
        "reference": generate_clients(reference_rows, rng, STABLE),
        "stable": generate_clients(batch_rows, rng, STABLE),
        "shifted": generate_clients(batch_rows, rng, WORLDS["shifted"]),
        "faulty join": break_join(generate_clients(batch_rows, rng, STABLE), "lastyear_activity", rng),
    }
    for name, columns in clients.items():
        np.savez(folder / f"{file_name(name)}.npz", **{column: np.asarray(columns[column]) for column in SCHEMA.names})
    (folder / "features.json").write_text(json.dumps(list(FEATURES)))
    (folder / "batches.json").write_text(json.dumps([file_name(name) for name in BATCHES]))
    return clients


def features_of(columns: dict[str, np.ndarray]) -> np.ndarray:
    return np.column_stack([columns[name] for name in FEATURES]).astype(np.float64)


def timed(call: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The median seconds of ``repeats`` calls, and the last call's answer."""
    seconds, answer = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        answer = call()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), answer


def per_batch(judge: Callable[[np.ndarray], Any], batches: dict[str, np.ndarray], repeats: int) -> tuple[float, dict]:
    """The median seconds of ``judge`` over every batch ``repeats`` times, and its answer on each batch."""
    seconds, answers = [], {}
    for name, batch in batches.items():
        for _ in range(repeats):
            started = time.perf_counter()
            answers[name] = judge(batch)
            seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), answers


def describe_features(rows: list[FeatureDrift]) -> str:
    drifted = [SHORT[row.feature] for row in rows if row.drifted]
    return "drift: " + ", ".join(drifted) if drifted else "no drift"


def measure_this_checkout(
    clients: dict[str, dict[str, np.ndarray]], scratch: Path, repeats: int, fit_repeats: int
) -> tuple[list[Row], dict[str, list[FeatureDrift]]]:
    """This checkout's tests, in this process; with ``feature_drift``'s rows per batch, for the comparison."""
    settings = MonitoringSettings()
    reference = features_of(clients["reference"])
    batches = {name: features_of(clients[name]) for name in BATCHES}
    rows: list[Row] = []
    tool = checkout_label(ROOT)

    seconds, plain = per_batch(lambda batch: feature_drift(reference, batch, settings), batches, repeats)
    verdicts = {name: describe_features(answer) for name, answer in plain.items()}
    rows.append(Row(tool, "per feature: `feature_drift` (sorts the reference at every call)", None, seconds, verdicts))

    fit, fitted = timed(lambda: fit_drift_reference(reference), fit_repeats)
    seconds, answers = per_batch(lambda batch: judge_feature_drift(fitted, batch, settings), batches, repeats)
    verdicts = {name: describe_features(answer) for name, answer in answers.items()}
    rows.append(Row(tool, "per feature: `fit_drift_reference`, `judge_feature_drift`", fit, seconds, verdicts))

    table = pa.table({name: clients["reference"][name] for name in SCHEMA.names}, schema=SCHEMA)
    data = IngestedData(table, hash_rows(table), np.ones(table.num_rows, np.int32), ())
    every = np.arange(table.num_rows)
    folders = iter(scratch / f"models-{number}" for number in range(fit_repeats))
    first = batches["stable"]
    fit, _ = timed(lambda: judge_data_drift(settings, data, every, first, next(folders)), fit_repeats)
    kept = scratch / "models-0"
    seconds, answers = per_batch(lambda batch: judge_data_drift(settings, data, every, batch, kept), batches, repeats)
    verdicts = {name: describe_features(answer) for name, answer in answers.items()}
    size = (kept / DRIFT_REFERENCE_FILE).stat().st_size
    test = f"per feature: `judge_data_drift`, a monitoring run (kept reference: {size / 1e6:.2f} MB)"
    rows.append(Row(tool, test, fit, seconds, verdicts))

    fit, structure = timed(lambda: fit_joint_structure(reference), fit_repeats)
    assert structure is not None
    seconds, judged = per_batch(lambda batch: judge_integrity(structure, batch, INTEGRITY_TOLERANCE), batches, repeats)
    verdicts = {name: describe_integrity(verdict) for name, verdict in judged.items()}
    rows.append(Row(tool, "data integrity: `fit_joint_structure`, `judge_integrity`", fit, seconds, verdicts))

    def both(batch: np.ndarray) -> tuple[list[FeatureDrift], IntegrityVerdict]:
        """What a monitoring run does with a batch: one sort, shared by the per-feature and integrity tests."""
        ordered = fit_drift_reference(batch)
        return judge_feature_drift(fitted, ordered, settings), judge_integrity(
            structure, batch, INTEGRITY_TOLERANCE, ordered
        )

    seconds, answered = per_batch(both, batches, repeats)
    verdicts = {
        name: f"{describe_features(drift)}; {describe_integrity(verdict)}"
        for name, (drift, verdict) in answered.items()
    }
    test = "per feature and data integrity, the batch sorted once for both (a monitoring run)"
    rows.append(Row(tool, test, None, seconds, verdicts))
    return rows, plain


def describe_integrity(verdict: IntegrityVerdict) -> str:
    found = (("multivariate drift", verdict.multivariate_drift), ("broken", verdict.broken))
    return ", ".join(text for text, flag in found if flag) or "holds"


def measure_old_checkout(old: Path, folder: Path, repeats: int) -> tuple[list[Row], dict[str, Any]]:
    """The earlier checkout's ``judge_data_drift`` and ``feature_drift``, in a process of their own."""
    names = [file_name(name) for name in BATCHES]
    result = subprocess.run(
        [sys.executable, "-c", OLD_CHECKOUT_SCRIPT, str(folder), str(repeats), *names],
        cwd=old,
        env={**os.environ, "PYTHONPATH": str(old)},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"the checkout {old} could not be measured: {result.stderr.strip().splitlines()[-1]}")
    measured = json.loads(result.stdout)
    tests = {
        "judge_data_drift": "per feature: `judge_data_drift` (at most 200,000 random reference rows, SciPy)",
        "feature_drift": "per feature: `feature_drift` (every reference row, SciPy)",
    }
    rows = []
    for key, test in tests.items():
        verdicts = {}
        for name in BATCHES:
            drifted = [SHORT[feature] for feature, _, found in measured[key]["verdicts"][file_name(name)] if found]
            verdicts[name] = "drift: " + ", ".join(drifted) if drifted else "no drift"
        rows.append(Row(f"{checkout_label(old)} (earlier)", test, None, measured[key]["batch"], verdicts))
    return rows, measured


def checkout_label(code: Path) -> str:
    """The checkout's commit (and whether its files differ from it), or its folder's name outside git."""
    result = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=code, capture_output=True, text=True)
    return f"riskwatch {result.stdout.strip()}" if result.returncode == 0 else f"riskwatch ({code.name})"


def largest_differences(measured: dict[str, Any], plain: dict[str, list[FeatureDrift]]) -> tuple[float, float]:
    """How far this checkout's statistics are from the earlier checkout's: the largest relative difference from
    its SciPy statistics on every reference row, and the largest absolute one from its statistics on a sample."""
    found = []
    for key in ("feature_drift", "judge_data_drift"):
        pairs = [
            (row.statistic, statistic)
            for name in BATCHES
            for row, (_, statistic, _) in zip(plain[name], measured[key]["verdicts"][file_name(name)], strict=True)
        ]
        if key == "feature_drift":
            found.append(max(abs(ours - theirs) / abs(theirs) for ours, theirs in pairs))
        else:
            found.append(max(abs(ours - theirs) for ours, theirs in pairs))
    return found[0], found[1]


def measure_nannyml(python: Path, folder: Path, repeats: int, fit_repeats: int) -> list[Row]:
    """NannyML's calculators, run by its own environment's python."""
    command = [str(python), str(ROOT / "bench" / "nannyml_drift.py"), str(folder)]
    command += ["--repeats", str(repeats), "--fit-repeats", str(fit_repeats)]
    result = subprocess.run(
        command, env={**os.environ, "NML_DISABLE_USAGE_LOGGING": "1"}, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"{python} could not run NannyML: {result.stderr.strip().splitlines()[-1]}")
    rows = []
    for line in result.stdout.splitlines():
        measured = json.loads(line)
        verdicts = {}
        for name in BATCHES:
            alerts = measured["alerts"][file_name(name)]
            named = [SHORT.get(alert, alert.replace("_", " ")) for alert in alerts]
            verdicts[name] = "alert: " + ", ".join(named) if named else "no alert"
        rows.append(Row(measured["tool"], measured["test"], measured["fit"], measured["batch"], verdicts))
    return rows


def print_table(rows: list[Row], batch_rows: int) -> None:
    print(f"| tool | test | fit (s) | s per {batch_rows:,}-row batch | stable | shifted | faulty join |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        fit = "-" if row.fit is None else f"{row.fit:.3f}"
        verdicts = " | ".join(row.verdicts[name] for name in BATCHES)
        print(f"| {row.tool} | {row.test} | {fit} | {row.batch:.3f} | {verdicts} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nannyml-python", type=Path, help="the python of a virtual environment with NannyML")
    parser.add_argument("--old", type=Path, help="a checkout of earlier code, measured first on the same data")
    parser.add_argument("--repeats", type=int, default=5, help="times each batch is judged (median)")
    parser.add_argument("--fit-repeats", type=int, default=3, help="times each reference is fitted (median)")
    parser.add_argument("--reference-rows", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the monitoring decision logs each feature's verdict
    with tempfile.TemporaryDirectory(prefix="bench-drift-tools-") as scratch:
        folder = Path(scratch)
        clients = generate_data(folder, args.reference_rows, args.batch_rows, args.seed)
        rows: list[Row] = []
        old: dict[str, Any] | None = None
        if args.old is not None:
            old_rows, old = measure_old_checkout(args.old.resolve(), folder, args.repeats)
            rows += old_rows
        ours, plain = measure_this_checkout(clients, folder, args.repeats, args.fit_repeats)
        rows += ours
        notes = []
        if args.nannyml_python is not None and args.nannyml_python.exists():
            rows += measure_nannyml(args.nannyml_python, folder, args.repeats, args.fit_repeats)
        else:
            notes.append(
                "NannyML left out: no --nannyml-python (NANNYML_PYTHON=path for make); the module docstring "
                "says how to make its environment."
            )
    print(
        f"{args.reference_rows:,} reference rows, {args.batch_rows:,}-row batches; medians of {args.fit_repeats} "
        f"fits and of {args.repeats} calls on each batch\n"
    )
    print_table(rows, args.batch_rows)
    if old is not None:
        exact, sampled = largest_differences(old, plain)
        notes.append(
            f"this checkout's statistics against the earlier checkout's: largest relative difference {exact:.1e} "
            f"from SciPy's on every reference row; largest absolute difference {sampled:.4f} from those on its "
            f"sample of at most 200,000 rows (the thresholds: 0.1 for the normalised Wasserstein distance)"
        )
    for note in notes:
        print(f"\n{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
