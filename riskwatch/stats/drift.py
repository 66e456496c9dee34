"""Drift tests: has the model's F1 fallen (model drift), have the features moved (data drift)?

Model drift compares the serving model's F1 on newly arrived labelled rows with its reference
scores (the score it was judged on when deployed, then its later scores without drift) by one
of the tests the classic course teaches:

* ``raw``: drift when the new F1 is below the F1 the model was judged on when deployed;
* ``parametric``: below the reference minus k standard deviations of the F1 a batch of this
  size would show if nothing had changed;
* ``nonparametric``: below Q1 - 1.5 IQR of that distribution.

That distribution is simulated exactly from the confusion counts: it counts the new batch's
sampling error at its size, the reference's own (it was measured on finitely many rows too),
and, once there are enough reference scores, any spread between them beyond sampling error.

Data drift compares each feature of the new rows with reference rows (the data the serving
model was trained on), on the log scale the model uses: a two-sample Kolmogorov-Smirnov test
for small batches (drift when the p-value is below the threshold), and for larger ones the
Wasserstein distance divided by the reference's standard deviation (drift when above the
threshold), whose verdict, unlike a p-value, does not turn every negligible shift into "drift"
once samples are large.

The label-free estimate is in ``estimate.py``, calibration in ``calibration.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from scipy import stats

from riskwatch.core.config import MonitoringSettings
from riskwatch.core.schema import FEATURES
from riskwatch.state.runs import FeatureDrift

if TYPE_CHECKING:
    from riskwatch.state.history import ReferenceScore


@dataclass(frozen=True)
class ModelDrift:
    """The verdict of the model-drift test and the numbers behind it."""

    test: str
    new_f1: float
    new_rows: int
    reference_f1: float  # the reference scores pooled, weighted by their rows
    reference_rows: int
    threshold: float
    spread: float  # standard deviation of the F1 a batch of this size shows when nothing has changed
    drifted: bool
    reference: str  # where the reference came from, in words

    def describe(self) -> str:
        relation = "below" if self.drifted else "not below"
        return f"{self.test} test: F1 {self.new_f1:.4f} on the new rows is {relation} {self.threshold:.4f}"


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> npt.NDArray[np.float64]:
    denominator = 2 * tp + fp + fn
    f1 = np.zeros(np.shape(tp), dtype=np.float64)
    np.divide(2 * tp, denominator, out=f1, where=denominator > 0)
    return f1


def confusion_shares(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The shares of true positives, false positives, false negatives and true negatives."""
    labels, predicted = np.asarray(labels).astype(bool), np.asarray(predicted).astype(bool)
    cells = np.array(
        [np.sum(labels & predicted), np.sum(~labels & predicted), np.sum(labels & ~predicted)], dtype=float
    )
    return np.append(cells, labels.size - cells.sum()) / max(labels.size, 1)


def resampled_f1(shares: np.ndarray, size: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """F1 on ``samples`` batches of ``size`` rows drawn from these confusion shares.

    Drawing rows only redraws the four confusion-matrix counts, so each batch is one multinomial
    draw: exact, and independent of how many rows there are.
    """
    counts = rng.multinomial(max(int(size), 1), shares, size=samples)
    return f1_from_counts(counts[:, 0], counts[:, 1], counts[:, 2])


def bootstrap_f1(labels: np.ndarray, predicted: np.ndarray, size: int, samples: int, seed: int = 0) -> np.ndarray:
    """F1 on ``samples`` resamples (with replacement) of ``size`` rows of these predictions."""
    return resampled_f1(confusion_shares(labels, predicted), size, samples, np.random.default_rng(seed))


def null_f1(
    shares: np.ndarray, new_rows: int, reference: list[ReferenceScore], settings: MonitoringSettings, seed: int = 0
) -> tuple[float, int, np.ndarray]:
    """The F1 a batch of ``new_rows`` rows would show if nothing had changed since the reference.

    Returns (the pooled reference F1, its rows, simulated F1 scores). The spread counts the new
    batch's sampling error at its size, the reference's own (it was measured on a finite number of
    rows too), and, once there are ``min_history_scores`` reference scores, whatever spread between
    batches they show beyond their sampling error.
    """
    rng = np.random.default_rng(seed)
    rows = np.array([score.rows for score in reference], dtype=float)
    scores = np.array([score.f1 for score in reference], dtype=float)
    reference_rows = int(rows.sum())
    pooled = float(np.sum(scores * rows) / rows.sum())
    samples = settings.bootstrap_samples
    new_error = resampled_f1(shares, new_rows, samples, rng)
    reference_error = resampled_f1(shares, reference_rows, samples, rng)
    simulated = pooled + (new_error - new_error.mean()) + (reference_error - reference_error.mean())
    if len(reference) >= settings.min_history_scores:
        probe = 10_000
        per_row_variance = float(np.var(resampled_f1(shares, probe, samples, rng), ddof=1)) * probe
        between = float(np.var(scores, ddof=1)) - float(np.mean(per_row_variance / rows))
        if between > 0:
            simulated = simulated + rng.normal(0.0, np.sqrt(between), samples)
    return pooled, reference_rows, simulated


def drift_threshold(test: str, deployed_f1: float, simulated: np.ndarray, k: float) -> float:
    """The F1 below which ``test`` calls model drift."""
    if test == "raw":
        return float(deployed_f1)
    if test == "parametric":
        return float(np.mean(simulated) - k * np.std(simulated, ddof=1))
    if test == "nonparametric":
        q1, q3 = np.percentile(simulated, [25, 75])
        return float(q1 - 1.5 * (q3 - q1))
    raise ValueError(f"unknown model drift test {test!r}")


def describe_reference(reference: list[ReferenceScore], pooled: float, rows: int) -> str:
    first, later = reference[0], reference[1:]
    text = f"F1 {first.f1:.4f} on {first.rows} rows ({first.source})"
    if later:
        text += f" and {len(later)} later score(s) on {sum(score.rows for score in later)} rows; pooled {pooled:.4f}"
        text += f" on {rows} rows"
    return text


def check_model_drift(
    new_f1: float, shares: np.ndarray, new_rows: int, reference: list[ReferenceScore], settings: MonitoringSettings
) -> ModelDrift:
    """Apply the configured test to the new F1 against the deployed model's reference scores.

    ``reference`` starts with the score the model was judged on when deployed (the gate, or the
    test data for a model deployed without one), followed by its scores on later batches that
    did not drift. ``raw`` compares with that first score, as the classic project compares with
    the deployed F1.
    """
    if not reference:
        raise ValueError("model drift needs at least one reference score")
    test = settings.model_drift_test
    pooled, rows, simulated = null_f1(shares, new_rows, reference, settings)
    threshold = drift_threshold(test, reference[0].f1, simulated, settings.parametric_k)
    return ModelDrift(
        test=test,
        new_f1=float(new_f1),
        new_rows=int(new_rows),
        reference_f1=pooled,
        reference_rows=rows,
        threshold=threshold,
        spread=float(np.std(simulated, ddof=1)),
        drifted=bool(new_f1 < threshold),
        reference=describe_reference(reference, pooled, rows),
    )


def feature_drift(reference: np.ndarray, new: np.ndarray, settings: MonitoringSettings) -> list[FeatureDrift]:
    """Per feature: the test used, its statistic, p-value (KS only), threshold and verdict.

    ``reference`` and ``new`` hold one column per feature (raw counts); both are compared on
    the ``log1p`` scale.
    """
    use_ks = new.shape[0] <= settings.ks_max_rows
    test = judge_by_ks if use_ks else judge_by_wasserstein
    return [
        test(name, np.log1p(reference[:, column]), np.log1p(new[:, column]), settings)
        for column, name in enumerate(FEATURES)
    ]


def judge_by_ks(name: str, before: np.ndarray, after: np.ndarray, settings: MonitoringSettings) -> FeatureDrift:
    """The two-sample Kolmogorov-Smirnov test: drift when its p-value falls below ``ks_p_value``."""
    result = stats.ks_2samp(before, after)
    p_value = float(result.pvalue)
    return FeatureDrift(
        name, "ks", float(result.statistic), p_value, settings.ks_p_value, bool(p_value < settings.ks_p_value)
    )


def judge_by_wasserstein(
    name: str, before: np.ndarray, after: np.ndarray, settings: MonitoringSettings
) -> FeatureDrift:
    """The Wasserstein distance over the reference's spread: drift when it passes ``wasserstein_threshold``."""
    distance = float(stats.wasserstein_distance(before, after))
    spread = float(np.std(before))
    statistic = distance / spread if spread > 0 else (0.0 if distance == 0 else float("inf"))
    threshold = settings.wasserstein_threshold
    return FeatureDrift(name, "wasserstein", statistic, None, threshold, bool(statistic > threshold))


def describe_feature_drift(row: FeatureDrift) -> str:
    """One feature's verdict in words, e.g. ``number_of_employees: normalised Wasserstein 0.61 > 0.1``."""
    if row.test == "ks":
        relation = "<" if row.drifted else ">="
        return (
            f"{row.feature}: Kolmogorov-Smirnov D {row.statistic:.3f}, p {row.p_value:.2g} {relation} {row.threshold:g}"
        )
    relation = ">" if row.drifted else "<="
    return f"{row.feature}: normalised Wasserstein {row.statistic:.3f} {relation} {row.threshold:g}"
