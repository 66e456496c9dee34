"""How often the label-free estimate's 95% interval holds the F1 the labels then show.

A model is trained as training trains the classic one, on 10,000 clients of the shipped world; its
calibration is fitted on 3,000 more (the test data). Then, for each world, ``--batches`` fresh
batches of ``--rows`` clients are estimated before their labels are looked at, and the interval is
checked against the F1 measured on the labels: with the labels' draw only, and with the calibration's
doubt counted too (what the monitoring job reports). A changed relationship (the drifted world) is
printed as a reminder of what no label-free estimate can see.

    python -m bench.bench_estimate [--batches 50] [--rows 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from riskwatch.core.config import ModelSettings
from riskwatch.core.schema import FEATURES
from riskwatch.data.generator import WORLDS, generate_clients
from riskwatch.model.riskmodels import fit_risk_model
from riskwatch.stats.calibration import fit_calibration
from riskwatch.stats.comparison import labels_f1
from riskwatch.stats.estimate import estimate_performance


def sample(world: str, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    clients = generate_clients(rows, np.random.default_rng(seed), WORLDS[world])
    return np.column_stack([clients[name] for name in FEATURES]).astype(np.float64), clients["exited"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--rows", type=int, default=1000)
    args = parser.parse_args(argv)
    model = fit_risk_model("linear", *sample("stable", 10_000, 1), ModelSettings())
    test_features, test_labels = sample("stable", 3_000, 2)
    fit = fit_calibration(test_labels, model.predict_proba(test_features)[:, 1])
    assert fit is not None
    print(f"calibration on the test data: intercept {fit.intercept:+.3f}, slope {fit.slope:.3f} ({fit.rows} rows)\n")
    print(
        "| world | batches of rows | covered, labels' draw only | covered, calibration's doubt counted "
        "| median width (only / counted) | median \\|error\\| | ms per estimate |"
    )
    print("|---|---|---|---|---|---|---|")
    for world in ("stable", "shifted", "drifted"):
        only, counted, widths, counted_widths, errors, times = [], [], [], [], [], []
        for seed in range(1_000, 1_000 + args.batches):
            features, labels = sample(world, args.rows, seed)
            probabilities, predicted = model.predict_proba(features)[:, 1], model.predict(features)
            measured = labels_f1(labels, predicted)
            plain = estimate_performance(probabilities, predicted)
            started = time.perf_counter()
            honest = estimate_performance(probabilities, predicted, fit)
            times.append((time.perf_counter() - started) * 1000)
            only.append(plain.f1_low <= measured <= plain.f1_high)
            counted.append(honest.f1_low <= measured <= honest.f1_high)
            widths.append(plain.f1_high - plain.f1_low)
            counted_widths.append(honest.f1_high - honest.f1_low)
            errors.append(abs(honest.f1 - measured))
        print(
            f"| {world} | {args.batches} of {args.rows:,} | {sum(only)} ({np.mean(only):.0%}) "
            f"| {sum(counted)} ({np.mean(counted):.0%}) | {statistics.median(widths):.4f} / "
            f"{statistics.median(counted_widths):.4f} | {statistics.median(errors):.4f} "
            f"| {statistics.median(times):.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
