"""The gate's rule: is one model's F1 reliably better than another's on the same rows?

A challenger is better when it gains at least a margin on these rows and gains at all in at
least ``confidence`` of paired resamples of them. The monitoring job's gate judges challengers
against the serving model with it; training judges the model families against each other with
it, on their cross-validated labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

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
