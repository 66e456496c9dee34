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

Both statistics depend only on the two samples' sorted values, so the reference is sorted once
(``fit_drift_reference``) and each batch costs its own sort and a merge: the exact statistic and
p-value of SciPy's ``ks_2samp`` and ``wasserstein_distance``, computed from the two sorted
samples. A sample is kept as its distinct values with how many of its rows lie at or below each:
counts repeat, so a million reference rows take a few thousand values.

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


# scipy's ks_2samp (method "auto") computes the exact p-value when neither sample has more rows than this
KS_EXACT_MAX_ROWS = 10_000
# Whole-number counts up to this are counted rather than sorted (a table of this many rows, 32 MiB at most)
MAX_COUNTED_VALUE = 1 << 22


@dataclass(frozen=True)
class SortedSample:
    """A sample of one feature: its distinct values in increasing order, how many of its rows lie at or below
    each, and its standard deviation."""

    values: npt.NDArray[np.float64]
    at_or_below: npt.NDArray[np.int64]
    spread: float

    @property
    def size(self) -> int:
        return int(self.at_or_below[-1]) if self.at_or_below.size else 0

    def expand(self) -> npt.NDArray[np.float64]:
        """Every row's value, in increasing order."""
        return np.repeat(self.values, np.diff(self.at_or_below, prepend=0))

    def quantiles(self, levels: np.ndarray) -> npt.NDArray[np.float64]:
        """The sample's quantiles at these levels (between 0 and 1), as numpy's default ("linear") method places
        them: between the sorted rows at ``level * (size - 1)``, linearly."""
        positions = np.asarray(levels, dtype=np.float64) * (self.size - 1)
        below = np.floor(positions)
        low = self.values[np.searchsorted(self.at_or_below, below, side="right")]
        high = self.values[np.searchsorted(self.at_or_below, np.minimum(below + 1, self.size - 1), side="right")]
        result: npt.NDArray[np.float64] = low + (high - low) * (positions - below)
        return result


@dataclass(frozen=True)
class DriftReference:
    """The reference of the data-drift test: each feature's ``log1p`` values sorted, in ``FEATURES`` order."""

    columns: tuple[SortedSample, ...]

    @property
    def rows(self) -> int:
        return self.columns[0].size if self.columns else 0


def sort_sample(values: np.ndarray) -> SortedSample:
    """The sample of these values: one sort, then each distinct value's last place in it."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    if ordered.size == 0:
        return SortedSample(ordered, np.zeros(0, np.int64), 0.0)
    ends = np.append(np.flatnonzero(ordered[1:] != ordered[:-1]), ordered.size - 1)
    return SortedSample(ordered[ends], (ends + 1).astype(np.int64), float(np.std(values)))


def count_sample(counts: np.ndarray) -> SortedSample | None:
    """The sample of these raw counts on the ``log1p`` scale, by counting each value's rows rather than sorting
    them: the same sample ``sort_sample(np.log1p(counts))`` makes, several times faster for whole-number counts.
    None when the values are not whole numbers between 0 and ``MAX_COUNTED_VALUE`` (then sort them)."""
    values = np.asarray(counts, dtype=np.float64)
    if values.size == 0 or not (values.min() >= 0 and values.max() <= MAX_COUNTED_VALUE):
        return None
    whole = values.astype(np.int64)
    if not np.array_equal(whole, values):
        return None
    rows_at = np.bincount(whole)
    present = np.flatnonzero(rows_at)
    logged = np.log1p(values)
    return SortedSample(np.log1p(present.astype(np.float64)), np.cumsum(rows_at[present]), float(np.std(logged)))


def fit_drift_reference(reference: np.ndarray) -> DriftReference:
    """Rows (one column per feature, raw counts) sorted on the ``log1p`` scale, feature by feature: a reference,
    or a new batch whose sort the data-drift and data integrity tests share. Whole-number counts are counted
    (``count_sample``), anything else sorted."""
    samples = []
    for column in range(len(FEATURES)):
        counts = reference[:, column]
        samples.append(count_sample(counts) or sort_sample(np.log1p(counts)))
    return DriftReference(tuple(samples))


def shares_at_or_below(
    before: SortedSample, after: SortedSample
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Every distinct value of either sample in increasing order (one in both appears twice, side by side), with
    the share of each sample's rows at or below it: the two empirical distribution functions, by a merge."""
    if before.size == 0 or after.size == 0:
        raise ValueError("a data-drift test needs rows on both sides")
    a, b = before.values, after.values
    b_below = np.searchsorted(b, a, side="left")  # of b's values, how many lie below each of a's
    a_up_to = np.searchsorted(a, b, side="right")  # of a's values, how many lie at or below each of b's
    b_up_to = b_below + (b[np.minimum(b_below, b.size - 1)] == a)
    at_a, at_b = np.arange(a.size) + b_below, np.arange(b.size) + a_up_to
    merged = np.empty(a.size + b.size)
    merged[at_a], merged[at_b] = a, b
    before_rows, after_rows = np.empty(merged.size, np.int64), np.empty(merged.size, np.int64)
    before_rows[at_a] = before.at_or_below
    before_rows[at_b] = np.concatenate(([0], before.at_or_below))[a_up_to]
    after_rows[at_b] = after.at_or_below
    after_rows[at_a] = np.concatenate(([0], after.at_or_below))[b_up_to]
    return merged, before_rows / before.size, after_rows / after.size


def ks_two_samples(before: SortedSample, after: SortedSample) -> tuple[float, float]:
    """The two-sided two-sample Kolmogorov-Smirnov statistic and p-value, as ``scipy.stats.ks_2samp`` gives them.

    Up to ``KS_EXACT_MAX_ROWS`` rows a side, scipy's exact p-value (compiled code of its own) is asked of
    ``ks_2samp`` itself, whose sort of so few sorted values costs microseconds; above, its asymptotic
    p-value, from the statistic and the two sizes alone.
    """
    if max(before.size, after.size) <= KS_EXACT_MAX_ROWS:
        result = stats.ks_2samp(before.expand(), after.expand())
        return float(result.statistic), float(result.pvalue)
    _, before_share, after_share = shares_at_or_below(before, after)
    gaps = before_share - after_share
    statistic = float(max(np.clip(-gaps.min(), 0, 1), gaps.max()))
    larger, smaller = sorted((float(before.size), float(after.size)), reverse=True)
    rows = np.round(larger * smaller / (larger + smaller))
    return statistic, float(np.clip(stats.kstwo.sf(statistic, rows), 0, 1))


def wasserstein_between(before: SortedSample, after: SortedSample) -> float:
    """The Wasserstein-1 distance between the two samples, as ``scipy.stats.wasserstein_distance`` gives it: the
    area between their empirical distribution functions."""
    merged, before_share, after_share = shares_at_or_below(before, after)
    return float(np.dot(np.abs(before_share[:-1] - after_share[:-1]), np.diff(merged)))


def feature_drift(reference: np.ndarray, new: np.ndarray, settings: MonitoringSettings) -> list[FeatureDrift]:
    """Per feature: the test used, its statistic, p-value (KS only), threshold and verdict.

    ``reference`` and ``new`` hold one column per feature (raw counts); both are compared on
    the ``log1p`` scale. Each call sorts the reference: to compare many batches with one, fit it once
    (``fit_drift_reference``) and call ``judge_feature_drift``.
    """
    return judge_feature_drift(fit_drift_reference(reference), new, settings)


def judge_feature_drift(
    reference: DriftReference, new: np.ndarray | DriftReference, settings: MonitoringSettings
) -> list[FeatureDrift]:
    """``feature_drift`` against a reference sorted beforehand: the new rows (or their sort, ``fit_drift_reference``)
    cost their own sort and a merge."""
    batch = new if isinstance(new, DriftReference) else fit_drift_reference(new)
    test = judge_by_ks if batch.rows <= settings.ks_max_rows else judge_by_wasserstein
    return [
        test(name, reference.columns[column], batch.columns[column], settings) for column, name in enumerate(FEATURES)
    ]


def judge_by_ks(name: str, before: SortedSample, after: SortedSample, settings: MonitoringSettings) -> FeatureDrift:
    """The two-sample Kolmogorov-Smirnov test: drift when its p-value falls below ``ks_p_value``."""
    statistic, p_value = ks_two_samples(before, after)
    return FeatureDrift(name, "ks", statistic, p_value, settings.ks_p_value, bool(p_value < settings.ks_p_value))


def judge_by_wasserstein(
    name: str, before: SortedSample, after: SortedSample, settings: MonitoringSettings
) -> FeatureDrift:
    """The Wasserstein distance over the reference's spread: drift when it passes ``wasserstein_threshold``."""
    distance = wasserstein_between(before, after)
    spread = before.spread
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
