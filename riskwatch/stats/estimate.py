"""The F1 a model's probabilities alone promise before the labels arrive, with an interval that says how sure.

Confidence-based performance estimation: each row exits with its predicted probability, so the
expected true positives are the summed probabilities of the rows flagged, the false negatives those
of the rows not flagged. The interval counts two sources of doubt:

* the labels' draw: given the probabilities, the true positives and false negatives are sums of
  independent draws over disjoint rows (exact mean and variance, normal approximation);
* the estimate's own: the probabilities are only as good as the model's calibration, known from a
  finite set of labelled rows the model was not trained on. A recalibration ``intercept + slope ×
  log-odds`` fitted there has a covariance; moving the log-odds by it moves the expected counts
  (to first order, through each row's p(1 - p)), which adds a covariance of the two counts. Rows far
  out in log-odds, as in a shifted batch, are moved most by the slope's doubt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from riskwatch.stats.calibration import CalibrationFit, log_odds
from riskwatch.stats.drift import f1_from_counts


@dataclass(frozen=True)
class PerformanceEstimate:
    """Precision, recall and F1 expected from a calibrated model's probabilities alone, before labels arrive."""

    precision: float
    recall: float
    f1: float
    f1_low: float  # the central 95% of the F1 the labels could show, the calibration's doubt counted
    f1_high: float
    rows: int
    calibration_rows: int = 0  # the labelled rows whose calibration fit the interval counts (0: labels only)


def count_covariance(probabilities: np.ndarray, flagged: np.ndarray, calibration: CalibrationFit | None) -> np.ndarray:
    """The covariance of (true positives, false negatives): the labels' draw, plus the calibration's doubt."""
    variance = probabilities * (1 - probabilities)
    labels_only = np.diag([variance[flagged].sum(), variance[~flagged].sum()])
    if calibration is None:
        return labels_only
    z = log_odds(probabilities)
    # d(expected count)/d(intercept) and /d(slope), at the model's own probabilities
    gradient = np.array(
        [
            [variance[flagged].sum(), (variance * z)[flagged].sum()],
            [variance[~flagged].sum(), (variance * z)[~flagged].sum()],
        ]
    )
    combined: np.ndarray = labels_only + gradient @ calibration.covariance_matrix @ gradient.T
    return combined


def estimate_performance(
    probabilities: np.ndarray,
    predicted: np.ndarray,
    calibration: CalibrationFit | None = None,
    samples: int = 2000,
    seed: int = 0,
) -> PerformanceEstimate:
    """The expected precision, recall and F1 when each row exits with its probability, and the central 95% of
    the F1 (``calibration``: the model's recalibration fit on labelled rows, whose doubt widens it)."""
    probabilities = np.asarray(probabilities, dtype=float)
    flagged = np.asarray(predicted).astype(bool)
    tp, fn = probabilities[flagged].sum(), probabilities[~flagged].sum()
    fp = flagged.sum() - tp
    rng = np.random.default_rng(seed)
    draws = rng.multivariate_normal([tp, fn], count_covariance(probabilities, flagged, calibration), samples)
    tp_draws = np.clip(draws[:, 0], 0, flagged.sum())
    fn_draws = np.clip(draws[:, 1], 0, None)
    low, high = np.percentile(f1_from_counts(tp_draws, flagged.sum() - tp_draws, fn_draws), [2.5, 97.5])
    return PerformanceEstimate(
        precision=float(tp / flagged.sum()) if flagged.any() else 0.0,
        recall=float(tp / (tp + fn)) if tp + fn > 0 else 0.0,
        f1=float(f1_from_counts(tp, fp, fn)),
        f1_low=float(low),
        f1_high=float(high),
        rows=int(probabilities.size),
        calibration_rows=calibration.rows if calibration is not None else 0,
    )
