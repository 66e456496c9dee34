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
from scipy.stats import norm

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
        return expit(self.intercept + self.slope * log_odds(probabilities))


def expit(values: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow for large log-odds of either sign."""
    result: np.ndarray = np.exp(-np.logaddexp(0.0, -values))
    return result


def log_likelihood(design: np.ndarray, labels: np.ndarray, coefficients: np.ndarray) -> float:
    eta = design @ coefficients
    return float(np.sum(labels * eta - np.logaddexp(0.0, eta)))


def fit_calibration(labels: np.ndarray, probabilities: np.ndarray) -> CalibrationFit | None:
    """Maximum-likelihood intercept and slope of the outcomes on the log-odds (Newton's method, each step
    halved until the likelihood rises), with their covariance (the inverse of the information); None when the
    rows cannot pin them down (one class only, all the same probability, outcomes the log-odds separate)."""
    labels = np.asarray(labels, dtype=float)
    z = log_odds(probabilities)
    if labels.size < 3 or np.unique(labels).size < 2 or np.ptp(z) == 0:
        return None
    design = np.column_stack([np.ones_like(z), z])
    coefficients = np.array([0.0, 1.0])
    likelihood = log_likelihood(design, labels, coefficients)
    for _ in range(NEWTON_STEPS):
        fitted = expit(design @ coefficients)
        information = design.T @ (design * (fitted * (1 - fitted))[:, None])
        try:
            step = np.linalg.solve(information, design.T @ (labels - fitted))
        except np.linalg.LinAlgError:
            return None
        for _ in range(30):  # halve the step until the likelihood does not fall
            trial = coefficients + step
            trial_likelihood = log_likelihood(design, labels, trial)
            if trial_likelihood >= likelihood - 1e-12:
                break
            step = step / 2
        coefficients, likelihood = trial, trial_likelihood
        if np.max(np.abs(step)) < 1e-10:
            break
    fitted = expit(design @ coefficients)
    information = design.T @ (design * (fitted * (1 - fitted))[:, None])
    try:
        covariance = np.linalg.inv(information)
    except np.linalg.LinAlgError:
        return None
    if not (np.all(np.isfinite(covariance)) and np.all(np.isfinite(coefficients)) and abs(coefficients[1]) < 1e3):
        return None
    return CalibrationFit(
        float(coefficients[0]),
        float(coefficients[1]),
        ((float(covariance[0, 0]), float(covariance[0, 1])), (float(covariance[1, 0]), float(covariance[1, 1]))),
        int(labels.size),
    )


@dataclass(frozen=True)
class CalibrationVerdict:
    """The calibration test on labelled rows: the exits the probabilities expect against those observed, and
    the calibration slope; miscalibrated when either is off both beyond its sampling error and by more than its
    tolerance (a statistically clear but negligible gap on a large batch is no alarm)."""

    rows: int
    expected_exits: float
    observed_exits: int
    expected_low: float  # the central ``confidence`` of the exits a calibrated model would see on these rows
    expected_high: float
    slope: float | None  # None when the rows cannot pin it down
    slope_low: float | None
    slope_high: float | None
    confidence: float
    miscalibrated: bool

    @property
    def gap(self) -> float:
        """The observed exits relative to the expected, minus one: +0.37 is 37% more exits than expected."""
        return self.observed_exits / self.expected_exits - 1 if self.expected_exits > 0 else 0.0

    def describe(self) -> str:
        """In words, e.g. ``expected 1,105 exits (1,030-1,180), observed 1,513 (+37%); calibration slope 0.99
        (0.93-1.05)``."""
        exits = (
            f"expected {self.expected_exits:,.0f} exits ({self.expected_low:,.0f}-{self.expected_high:,.0f} at "
            f"{self.confidence:.0%}), observed {self.observed_exits:,} ({self.gap:+.0%})"
        )
        if self.slope is None:
            return exits
        return f"{exits}; calibration slope {self.slope:.2f} ({self.slope_low:.2f}-{self.slope_high:.2f})"


def judge_calibration(
    labels: np.ndarray, probabilities: np.ndarray, confidence: float, tolerance: float, slope_tolerance: float
) -> CalibrationVerdict:
    """Test the probabilities against the outcomes: the observed exits against the expected with their sampling
    interval (each row an independent draw), and the calibration slope with its interval (``fit_calibration``).

    Miscalibrated when the exits fall outside their interval and differ from the expected by more than
    ``tolerance`` (relative), or the slope's interval excludes 1 and the slope is off by more than
    ``slope_tolerance``.
    """
    labels = np.asarray(labels, dtype=float)
    probabilities = np.asarray(probabilities, dtype=float)
    z = float(norm.ppf(0.5 + confidence / 2))
    expected = float(probabilities.sum())
    spread = z * float(np.sqrt(np.sum(probabilities * (1 - probabilities))))
    observed = int(labels.sum())
    outside = not expected - spread <= observed <= expected + spread
    off = expected > 0 and abs(observed / expected - 1) > tolerance
    fit = fit_calibration(labels, probabilities)
    slope = low = high = None
    slope_off = False
    if fit is not None:
        error = z * float(np.sqrt(fit.covariance[1][1]))
        slope, low, high = fit.slope, fit.slope - error, fit.slope + error
        slope_off = not low <= 1.0 <= high and abs(fit.slope - 1) > slope_tolerance
    return CalibrationVerdict(
        rows=int(labels.size),
        expected_exits=expected,
        observed_exits=observed,
        expected_low=max(0.0, expected - spread),
        expected_high=expected + spread,
        slope=slope,
        slope_low=low,
        slope_high=high,
        confidence=confidence,
        miscalibrated=(outside and off) or slope_off,
    )
