"""The gate's rules: is one model reliably better than another on the same rows?

By F1: a challenger is better when it gains at least a margin on these rows and gains at all in
at least ``confidence`` of paired resamples of them. The monitoring job's gate judges challengers
against the serving model with it; training judges the model families against each other with
it, on their cross-validated labels.

By calibration: a challenger is better calibrated when its log loss on these rows is lower in at
least ``confidence`` of paired resamples of them (the mean of the rows' paired differences, whose
resampling distribution is normal at these sizes, so it is computed rather than drawn). The gate
takes such a challenger when it also loses no more than the margin in F1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import norm

from riskwatch.stats.drift import f1_from_counts

PAIRED_RESAMPLES = 2000


@dataclass(frozen=True)
class GainVerdict:
    """The challenger's F1 gain over the champion on the rows, the share of resamples without a gain, and whether
    the gain passes the rule."""

    champion_f1: float
    challenger_f1: float
    p_no_gain: float
    passed: bool

    @property
    def gain(self) -> float:
        return self.challenger_f1 - self.champion_f1


def paired_gain_resamples(
    labels: np.ndarray, champion: np.ndarray, challenger: np.ndarray, samples: int, seed: int = 0
) -> np.ndarray:
    """The challenger's F1 gain over the champion on ``samples`` resamples of the same rows (paired).

    Each row falls in one of eight cells (label, champion's label, challenger's label); a
    resample redraws the eight counts, so it is one multinomial draw whatever the rows.
    """
    cells = labels.astype(int) * 4 + champion.astype(int) * 2 + challenger.astype(int)
    shares = np.bincount(cells, minlength=8) / labels.size
    counts = np.random.default_rng(seed).multinomial(labels.size, shares, size=samples)

    def f1(predicted_bit: int) -> npt.NDArray[np.float64]:
        positive = [cell for cell in range(8) if cell & predicted_bit]
        tp = counts[:, [cell for cell in positive if cell & 4]].sum(axis=1)
        fp = counts[:, [cell for cell in positive if not cell & 4]].sum(axis=1)
        fn = counts[:, [cell for cell in range(8) if cell & 4 and not cell & predicted_bit]].sum(axis=1)
        return f1_from_counts(tp, fp, fn)

    return f1(1) - f1(2)


def labels_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    """The F1 of predicted labels against true ones."""
    labels, predicted = np.asarray(labels).astype(bool), np.asarray(predicted).astype(bool)
    tp = np.sum(labels & predicted)
    return float(f1_from_counts(tp, np.sum(~labels & predicted), np.sum(labels & ~predicted)))


def judge_gain(
    labels: np.ndarray, champion: np.ndarray, challenger: np.ndarray, min_gain: float, confidence: float
) -> GainVerdict:
    """The rule on these rows: the challenger's labels gain ``min_gain`` in F1 over the champion's, and gain at
    all in at least ``confidence`` of paired resamples."""
    champion_f1, challenger_f1 = labels_f1(labels, champion), labels_f1(labels, challenger)
    p_no_gain = float(np.mean(paired_gain_resamples(labels, champion, challenger, PAIRED_RESAMPLES) <= 0))
    # A tolerance, so that a gain of exactly the margin counts despite rounding.
    passed = challenger_f1 - champion_f1 >= min_gain - 1e-9 and p_no_gain <= 1 - confidence
    return GainVerdict(champion_f1, challenger_f1, p_no_gain, passed)


@dataclass(frozen=True)
class LossVerdict:
    """The challenger's log loss against the champion's on the rows, the share of paired resamples in which it is
    not lower, and whether that is rare enough."""

    champion_loss: float
    challenger_loss: float
    p_no_gain: float
    passed: bool


def row_log_loss(labels: np.ndarray, probabilities: np.ndarray) -> npt.NDArray[np.float64]:
    """Each row's log loss (probabilities kept 1e-15 from 0 and 1, as scikit-learn's ``log_loss`` does)."""
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-15, 1 - 1e-15)
    exited = np.asarray(labels).astype(bool)
    return np.asarray(-np.where(exited, np.log(clipped), np.log1p(-clipped)), dtype=np.float64)


def judge_log_loss(labels: np.ndarray, champion: np.ndarray, challenger: np.ndarray, confidence: float) -> LossVerdict:
    """The calibration rule on these rows: the challenger's probabilities have a lower log loss than the
    champion's in at least ``confidence`` of paired resamples."""
    before, after = row_log_loss(labels, champion), row_log_loss(labels, challenger)
    differences = after - before
    spread = float(np.std(differences, ddof=1)) / np.sqrt(differences.size) if differences.size > 1 else 0.0
    mean = float(differences.mean())
    p_no_gain = float(norm.sf(-mean / spread)) if spread > 0 else float(mean >= 0)
    return LossVerdict(float(before.mean()), float(after.mean()), p_no_gain, p_no_gain <= 1 - confidence)
