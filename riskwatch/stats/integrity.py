"""A multivariate test of the data's integrity: do the new rows' features still hang together as they did?

Per-feature tests see each column alone. A faulty join (one column paired with other clients' rows)
keeps every column's values and breaks only their relationship, so they see nothing. Here the
standardised log features of the reference (the rows the serving model was trained on) give
principal axes, kept up to ``VARIANCE_KEPT`` of the variance (as NannyML's data reconstruction
drift does); a row's reconstruction error is its distance from those axes.

The new rows' mean error is compared with two yardsticks:

* the reference's own mean error, plus three standard errors at the batch's size: above it (and by
  more than the tolerance), the batch drifted as a whole, **multivariate drift**, which a batch
  from a shifted population shows too;
* the error the batch's own marginals would give if the reference's joint structure still held:
  the reference rows' ranks mapped onto the batch's quantiles, column by column (the reference's
  copula with the batch's marginals). Above it, by three standard errors and the tolerance, the
  joint structure broke: a **data integrity** alarm. A shifted population moves the marginals
  and keeps most of the structure (measured: +9% over that yardstick); a faulty join breaks it
  (+43% to +62%).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from riskwatch.stats.drift import DriftReference, fit_drift_reference

VARIANCE_KEPT = 0.65
RANK_SAMPLE_ROWS = 10_000  # reference rows whose ranks carry the joint structure
SIGMAS = 3.0


@dataclass(frozen=True)
class JointStructure:
    """The reference's principal axes on standardised log features, its rows' errors, and a sample of its ranks."""

    mean: np.ndarray
    scale: np.ndarray
    axes: np.ndarray  # features x kept components
    error_mean: float
    error_sd: float
    ranks: np.ndarray  # sample rows x features, each column's ranks as quantile levels in (0, 1)
    rows: int

    def errors(self, log_features: np.ndarray) -> np.ndarray:
        """Each row's distance from the principal axes, in standardised units."""
        standardised = (log_features - self.mean) / self.scale
        residual = standardised - standardised @ self.axes @ self.axes.T
        distances: np.ndarray = np.sqrt(np.einsum("ij,ij->i", residual, residual))
        return distances

    def expected_error(self, columns: DriftReference) -> float:
        """The mean error rows with these marginals (each column's sorted log values) would have if the reference's
        joint structure held."""
        mapped = np.column_stack([column.quantiles(self.ranks[:, j]) for j, column in enumerate(columns.columns)])
        return float(self.errors(mapped).mean())


def fit_joint_structure(features: np.ndarray, seed: int = 0) -> JointStructure | None:
    """The joint structure of the reference rows (raw counts, one column per feature, taken on the ``log1p``
    scale); None with too few rows or a constant column."""
    log_features = np.log1p(np.asarray(features, dtype=np.float64))
    rows = log_features.shape[0]
    scale = log_features.std(axis=0)
    if rows < 10 or not np.all(scale > 0):
        return None
    mean = log_features.mean(axis=0)
    standardised = (log_features - mean) / scale
    values, vectors = np.linalg.eigh(np.cov(standardised, rowvar=False))
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    kept = int(np.searchsorted(np.cumsum(values) / values.sum(), VARIANCE_KEPT) + 1)
    sample = log_features
    if rows > RANK_SAMPLE_ROWS:
        sample = log_features[np.random.default_rng(seed).choice(rows, RANK_SAMPLE_ROWS, replace=False)]
    ranks = (np.argsort(np.argsort(sample, axis=0, kind="stable"), axis=0) + 0.5) / sample.shape[0]
    structure = JointStructure(mean, scale, vectors[:, :kept], 0.0, 0.0, ranks, rows)
    errors = structure.errors(log_features)
    return JointStructure(mean, scale, vectors[:, :kept], float(errors.mean()), float(errors.std()), ranks, rows)


@dataclass(frozen=True)
class IntegrityVerdict:
    """The new rows' mean reconstruction error against the reference's and against what their marginals imply."""

    rows: int
    error: float
    reference_error: float
    drift_threshold: float  # multivariate drift above this
    expected_error: float  # with the batch's marginals and the reference's joint structure
    integrity_threshold: float  # a data integrity alarm above this
    multivariate_drift: bool
    broken: bool

    def describe(self) -> str:
        """In words, e.g. ``reconstruction error 1.140 against 0.692 expected from the batch's own columns (alarm
        above 0.831; 0.687 on the reference rows)``."""
        return (
            f"reconstruction error {self.error:.3f} against {self.expected_error:.3f} expected from the batch's own "
            f"columns (alarm above {self.integrity_threshold:.3f}; {self.reference_error:.3f} on the reference rows)"
        )


def judge_integrity(
    structure: JointStructure, features: np.ndarray, tolerance: float, sorted_columns: DriftReference | None = None
) -> IntegrityVerdict:
    """The multivariate drift and data integrity verdicts on the new rows (raw counts, one column per feature;
    ``sorted_columns``: their log values sorted already, as the data-drift test sorts them); each needs the error
    past its yardstick by three standard errors at the batch's size and by ``tolerance`` (relative)."""
    features = np.asarray(features, dtype=np.float64)
    rows = features.shape[0]
    error = float(structure.errors(np.log1p(features)).mean())
    margin = SIGMAS * structure.error_sd / np.sqrt(max(rows, 1))
    drift_threshold = max(structure.error_mean + margin, structure.error_mean * (1 + tolerance))
    expected = structure.expected_error(sorted_columns or fit_drift_reference(features))
    integrity_threshold = max(expected + margin, expected * (1 + tolerance))
    return IntegrityVerdict(
        rows=rows,
        error=error,
        reference_error=structure.error_mean,
        drift_threshold=float(drift_threshold),
        expected_error=expected,
        integrity_threshold=float(integrity_threshold),
        multivariate_drift=error > drift_threshold,
        broken=error > integrity_threshold,
    )
