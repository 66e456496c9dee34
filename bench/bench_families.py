"""The model families side by side: F1 against the Bayes-optimal F1, calibration, fit and prediction time.

For each world (the shipped, log-linear one and the project's non-linear one) and training size,
each family is fitted as training fits it (threshold chosen for F1 on the training rows) and
measured on a fresh 20,000-row sample of the same world, whose Bayes-optimal F1 is known because
the world's true exit probability is: the best F1 of any threshold on the true probabilities.
Fit times are medians of ``--repeats`` fits on one thread (as the monitoring job trains its
challengers); single-row prediction is the family's own arithmetic (the API's fast path), median
of 2,000 calls. Also printed: what training chose, by cross-validation, at each size.

    python -m bench.bench_families [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from riskwatch.core.config import MODEL_FAMILIES, ModelSettings, MonitoringSettings
from riskwatch.core.schema import FEATURES
from riskwatch.data.generator import WORLDS, exit_probability, generate_clients
from riskwatch.model.familychoice import choose_family
from riskwatch.model.riskmodels import equal_count_calibration_error, fit_risk_model
from riskwatch.stats.comparison import labels_f1

FRESH_ROWS = 20_000
SIZES = (10_000, 50_000)


def sample(world: str, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    clients = generate_clients(rows, np.random.default_rng(seed), WORLDS[world])
    features = np.column_stack([clients[name] for name in FEATURES]).astype(np.float64)
    return features, clients["exited"], exit_probability(WORLDS[world], *features.T)


def bayes_f1(labels: np.ndarray, truth: np.ndarray) -> float:
    order = np.argsort(-truth, kind="stable")
    hits = np.cumsum(labels[order])
    return float(np.max(2 * hits / (np.arange(1, labels.size + 1) + labels.sum())))


def time_single_row(model: object, row: np.ndarray, calls: int = 2000) -> float:
    score = model.score  # type: ignore[attr-defined]
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        score(row)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(world: str, rows: int, repeats: int) -> list[str]:
    features, labels, _ = sample(world, rows, seed=1)
    fresh_features, fresh_labels, fresh_truth = sample(world, FRESH_ROWS, seed=99)
    best = bayes_f1(fresh_labels, fresh_truth)
    lines = []
    for family in MODEL_FAMILIES:
        seconds = []
        with threadpool_limits(1):
            for _ in range(repeats):
                started = time.perf_counter()
                model = fit_risk_model(family, features, labels, ModelSettings())
                seconds.append(time.perf_counter() - started)
        probabilities, predicted = model.score(fresh_features)
        lines.append(
            f"| {world} | {rows:,} | {family} | {labels_f1(fresh_labels, predicted) / best:.3f} | "
            f"{equal_count_calibration_error(fresh_labels, probabilities):.4f} | {statistics.median(seconds):.2f} | "
            f"{time_single_row(model, fresh_features[:1]) * 1e6:.0f} |"
        )
    choice = choose_family(features, labels, ModelSettings(), MonitoringSettings())
    lines.append(f"|   | | chosen by training: **{choice.family}** | | | | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"fresh sample {FRESH_ROWS:,} rows per world; fit: median of {args.repeats} on one thread")
    print("| world | training rows | family | F1 / Bayes-optimal F1 | calibration error | fit s | one row µs |")
    print("|---|---|---|---|---|---|---|")
    for world in ("stable", "nonlinear"):
        for rows in SIZES:
            for line in measure(world, rows, args.repeats):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
