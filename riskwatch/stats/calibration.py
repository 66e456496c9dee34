"""How far a model's probabilities can be trusted: binned calibration, and a logistic recalibration fit.

The binned view (ten equal-width bins) gives the calibration curve and the expected calibration error.
The recalibration fit regresses the outcomes on the model's log-odds, ``log-odds' = intercept + slope ×
log-odds``, by maximum likelihood: a calibrated model has intercept 0 and slope 1, and the fit's
covariance says how well a set of labelled rows pins that down. The label-free estimate counts that
uncertainty in its interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROBABILITY_FLOOR = 1e-9  # probabilities are kept this far from 0 and 1 before taking log-odds
NEWTON_STEPS = 50


@dataclass(frozen=True)
class CalibrationBins:
    """Per equal-width probability bin: how many rows, their summed predicted probability and their exits."""

    rows: np.ndarray
    predicted: np.ndarray  # sum of the predicted probabilities
    exits: np.ndarray  # sum of the labels

    @property
    def filled(self) -> np.ndarray:
        return self.rows > 0

    def mean_predicted(self) -> np.ndarray:
        """The mean predicted probability of each bin that holds rows."""
        means: np.ndarray = self.predicted[self.filled] / self.rows[self.filled]
        return means

    def observed_rate(self) -> np.ndarray:
        """The observed exit rate of each bin that holds rows."""
        rates: np.ndarray = self.exits[self.filled] / self.rows[self.filled]
        return rates


def calibration_bins(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> CalibrationBins:
    """Rows, predicted probability and exits in each of ``bins`` equal-width probability bins."""
    probabilities = np.asarray(probabilities, dtype=float)
    labels = np.asarray(labels, dtype=float)
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    return CalibrationBins(
        np.bincount(which, minlength=bins), np.bincount(which, probabilities, bins), np.bincount(which, labels, bins)
    )


def calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over ``bins`` equal-width probability bins: the row-weighted gap
    between the mean predicted probability and the observed exit rate in each bin."""
    binned = calibration_bins(labels, probabilities, bins)
    return float(np.abs(binned.predicted - binned.exits).sum() / max(binned.rows.sum(), 1))


def log_odds(probabilities: np.ndarray) -> np.ndarray:
    """The log-odds of probabilities kept ``PROBABILITY_FLOOR`` away from 0 and 1 (so finite)."""
    clipped = np.clip(np.asarray(probabilities, dtype=float), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    result: np.ndarray = np.log(clipped) - np.log1p(-clipped)
    return result


@dataclass(frozen=True)
class CalibrationFit:
    """The outcomes regressed on the model's log-odds: ``log-odds' = intercept + slope × log-odds``."""

    intercept: float
    slope: float
    covariance: tuple[tuple[float, float], tuple[float, float]]  # of (intercept, slope), from the likelihood
    rows: int

    @property
    def covariance_matrix(self) -> np.ndarray:
        return np.array(self.covariance, dtype=float)

    def recalibrate(self, probabilities: np.ndarray) -> np.ndarray:
        """The probabilities with their log-odds refitted."""
        fitted: np.ndarray = 1.0 / (1.0 + np.exp(-(self.intercept + self.slope * log_odds(probabilities))))
        return fitted


def fit_calibration(labels: np.ndarray, probabilities: np.ndarray) -> CalibrationFit | None:
    """Maximum-likelihood intercept and slope of the outcomes on the log-odds (Newton's method), with their
    covariance (the inverse of the information); None when the rows cannot pin them down (one class only,
    all the same probability, or the fit diverges)."""
    labels = np.asarray(labels, dtype=float)
    z = log_odds(probabilities)
    if labels.size < 3 or np.unique(labels).size < 2 or np.ptp(z) == 0:
        return None
    design = np.column_stack([np.ones_like(z), z])
    coefficients = np.array([0.0, 1.0])
    for _ in range(NEWTON_STEPS):
        fitted = 1.0 / (1.0 + np.exp(-(design @ coefficients)))
        weights = fitted * (1 - fitted)
        information = design.T @ (design * weights[:, None])
        try:
            step = np.linalg.solve(information, design.T @ (labels - fitted))
        except np.linalg.LinAlgError:
            return None
        coefficients = coefficients + step
        if not np.all(np.isfinite(coefficients)):
            return None
        if np.max(np.abs(step)) < 1e-8:
            break
    fitted = 1.0 / (1.0 + np.exp(-(design @ coefficients)))
    information = design.T @ (design * (fitted * (1 - fitted))[:, None])
    try:
        covariance = np.linalg.inv(information)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(covariance)):
        return None
    return CalibrationFit(
        float(coefficients[0]),
        float(coefficients[1]),
        ((float(covariance[0, 0]), float(covariance[0, 1])), (float(covariance[1, 0]), float(covariance[1, 1]))),
        int(labels.size),
    )
