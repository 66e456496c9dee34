"""Drift tests: has the model's F1 fallen (model drift), and have the features moved (data drift)?

Model drift compares the deployed model's F1 on newly arrived labelled rows with a threshold
set by one of the tests the classic course teaches:

* ``raw``: drift when the new F1 is below the F1 the model was deployed with;
* ``parametric``: below the mean of earlier F1 scores minus k standard deviations;
* ``nonparametric``: below Q1 - 1.5 IQR of earlier F1 scores.

Earlier F1 scores are the ones the run history holds for the deployed model. Until it holds
enough of them, they are the deployed model's F1 on resamples of its test data, each the size
of the new batch: the spread F1 shows on a batch of that size when nothing has changed.

Data drift compares each feature of the new rows with the rows ingested before them (the data
the models were trained on), on the log scale the model uses: a two-sample Kolmogorov-Smirnov
test for small batches (drift when the p-value is below the threshold), and for larger ones the
Wasserstein distance divided by the reference's standard deviation (drift when above the
threshold), whose verdict, unlike a p-value, does not turn every negligible shift into "drift"
once samples are large.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from common.config import MonitoringSettings
from common.schema import FEATURES


@dataclass(frozen=True)
class ModelDrift:
    """The verdict of the model-drift test and the numbers behind it."""

    test: str
    new_f1: float
    deployed_f1: float
    threshold: float
    drifted: bool
    reference: str  # where the earlier F1 scores came from

    def describe(self) -> str:
        relation = "below" if self.drifted else "not below"
        return f"{self.test} test: F1 {self.new_f1:.4f} on the new rows is {relation} {self.threshold:.4f}"


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros(np.shape(tp), dtype=float), where=denominator > 0)


def bootstrap_f1(labels: np.ndarray, predicted: np.ndarray, size: int, samples: int, seed: int = 0) -> np.ndarray:
    """F1 on ``samples`` resamples (with replacement) of ``size`` rows of these predictions.

    Resampling rows only redraws the four confusion-matrix counts, so each resample is one
    multinomial draw: exact, and independent of how many rows there are.
    """
    labels, predicted = np.asarray(labels).astype(bool), np.asarray(predicted).astype(bool)
    cells = np.array(
        [np.sum(labels & predicted), np.sum(~labels & predicted), np.sum(labels & ~predicted)], dtype=float
    )
    shares = np.append(cells, labels.size - cells.sum()) / labels.size
    counts = np.random.default_rng(seed).multinomial(size, shares, size=samples)
    return f1_from_counts(counts[:, 0], counts[:, 1], counts[:, 2])


def drift_threshold(test: str, deployed_f1: float, earlier: np.ndarray, k: float) -> float:
    """The F1 below which ``test`` calls model drift."""
    if test == "raw":
        return float(deployed_f1)
    if test == "parametric":
        return float(np.mean(earlier) - k * np.std(earlier, ddof=1))
    if test == "nonparametric":
        q1, q3 = np.percentile(earlier, [25, 75])
        return float(q1 - 1.5 * (q3 - q1))
    raise ValueError(f"unknown model drift test {test!r}")


def check_model_drift(
    new_f1: float,
    deployed_f1: float,
    recorded: list[float],
    resampled: np.ndarray | None,
    settings: MonitoringSettings,
) -> ModelDrift:
    """Apply the configured test; ``recorded`` are earlier F1 scores from the history, ``resampled`` the fallback."""
    test = settings.model_drift_test
    if test == "raw":
        earlier, reference = np.array([deployed_f1]), "the F1 the model was deployed with"
    elif len(recorded) >= settings.min_history_scores:
        earlier, reference = np.array(recorded), f"{len(recorded)} earlier F1 scores in the run history"
    else:
        if resampled is None or resampled.size < 2:
            raise ValueError("resampled F1 scores are needed until the history holds enough earlier scores")
        earlier = resampled
        reference = (
            f"F1 on {resampled.size} resamples of the test data (the history holds {len(recorded)} "
            f"earlier scores, fewer than {settings.min_history_scores})"
        )
    threshold = drift_threshold(test, deployed_f1, earlier, settings.parametric_k)
    return ModelDrift(test, float(new_f1), float(deployed_f1), threshold, bool(new_f1 < threshold), reference)


def feature_drift(reference: np.ndarray, new: np.ndarray, settings: MonitoringSettings) -> list[dict[str, Any]]:
    """Per feature: the test used, its statistic, p-value (KS only), threshold and verdict.

    ``reference`` and ``new`` hold one column per feature (raw counts); both are compared on
    the ``log1p`` scale.
    """
    rows = []
    use_ks = new.shape[0] <= settings.ks_max_rows
    for column, name in enumerate(FEATURES):
        before, after = np.log1p(reference[:, column]), np.log1p(new[:, column])
        if use_ks:
            result = stats.ks_2samp(before, after)
            statistic, p_value = float(result.statistic), float(result.pvalue)
            drifted = p_value < settings.ks_p_value
            row = {"test": "ks", "statistic": statistic, "p_value": p_value, "threshold": settings.ks_p_value}
        else:
            distance = float(stats.wasserstein_distance(before, after))
            spread = float(np.std(before))
            statistic = distance / spread if spread > 0 else (0.0 if distance == 0 else float("inf"))
            drifted = statistic > settings.wasserstein_threshold
            row = {"test": "wasserstein", "statistic": statistic, "p_value": None}
            row["threshold"] = settings.wasserstein_threshold
        rows.append({"feature": name, **row, "drifted": bool(drifted)})
    return rows


def describe_feature_drift(row: dict[str, Any]) -> str:
    """One feature's verdict in words, e.g. ``number_of_employees: normalised Wasserstein 0.61 > 0.1``."""
    if row["test"] == "ks":
        relation = "<" if row["drifted"] else ">="
        return (
            f"{row['feature']}: Kolmogorov-Smirnov D {row['statistic']:.3f}, "
            f"p {row['p_value']:.2g} {relation} {row['threshold']:g}"
        )
    relation = ">" if row["drifted"] else "<="
    return f"{row['feature']}: normalised Wasserstein {row['statistic']:.3f} {relation} {row['threshold']:g}"
