"""Which model family the data supports: the families compared by cross-validated F1 on the same folds.

Each family is fitted on all folds but one (its threshold chosen on those rows, as training
chooses it) and labels the fold left out, so every row gets an out-of-fold label from each
family. The simplest family is kept unless a more complex one is better by the gate's rule on
those labels (``riskwatch/stats/comparison.py``: a gain of at least ``min_gain`` in F1, and a gain at
all in at least ``gate_confidence`` of paired resamples); the families are tried simplest
first, each against the one kept so far, so a more complex family must earn its place.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
from threadpoolctl import threadpool_limits

from riskwatch.core.config import ModelSettings, MonitoringSettings
from riskwatch.model.riskmodels import equal_count_calibration_error, fit_risk_model, import_family_libraries
from riskwatch.state.records import FamilyChoice, FamilyScore
from riskwatch.stats.comparison import judge_gain, labels_f1


def choose_family(
    features: np.ndarray, labels: np.ndarray, settings: ModelSettings, gate: MonitoringSettings
) -> FamilyChoice:
    """The family the rows support (see the module docstring); the simplest listed when they are too few."""
    families, folds = settings.families, settings.cross_validation_folds
    simplest = families[0]
    positives = int(labels.sum())
    if labels.size < settings.min_selection_rows or min(positives, labels.size - positives) < 2 * folds:
        reason = (
            f"{labels.size} rows ({positives} exits) are too few to compare the families (model.min_selection_rows "
            f"is {settings.min_selection_rows}); the simplest listed, {simplest}, is trained"
        )
        return FamilyChoice(simplest, reason, labels.size, 0, [])
    if labels.size > settings.selection_rows:
        rows = np.sort(np.random.default_rng(0).choice(labels.size, settings.selection_rows, replace=False))
        features, labels = features[rows], labels[rows]
    fold = assign_folds(labels, folds)
    predicted = cross_validate(features, labels, fold, settings)
    return compare_families(labels, fold, predicted, settings, gate)


def assign_folds(labels: np.ndarray, folds: int) -> np.ndarray:
    """Each row's fold, stratified by label: every fold holds its share of exits (seeded, so runs agree)."""
    fold = np.empty(labels.size, dtype=np.int64)
    rng = np.random.default_rng(0)
    for value in (0, 1):
        rows = np.flatnonzero(labels == value)
        fold[rng.permutation(rows)] = np.arange(rows.size) % folds
    return fold


def cross_validate(
    features: np.ndarray, labels: np.ndarray, fold: np.ndarray, settings: ModelSettings
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each family's out-of-fold (probabilities, labels) for every row, two fits at a time on one thread each."""
    jobs = [(family, k) for family in settings.families for k in range(settings.cross_validation_folds)]

    def fit_fold(job: tuple[str, int]) -> tuple[np.ndarray, np.ndarray]:
        family, k = job
        held_out = fold == k
        model = fit_risk_model(family, features[~held_out], labels[~held_out], settings)
        return model.score(features[held_out])

    import_family_libraries(settings.families)
    with threadpool_limits(1), ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(fit_fold, jobs))
    predicted: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for family in settings.families:
        probabilities, chosen = np.empty(labels.size), np.empty(labels.size, dtype=np.int64)
        for (name, k), (p, label) in zip(jobs, results, strict=True):
            if name == family:
                probabilities[fold == k], chosen[fold == k] = p, label
        predicted[family] = (probabilities, chosen)
    return predicted


def compare_families(
    labels: np.ndarray,
    fold: np.ndarray,
    predicted: dict[str, tuple[np.ndarray, np.ndarray]],
    settings: ModelSettings,
    gate: MonitoringSettings,
) -> FamilyChoice:
    """The simplest family unless a more complex one passes the gate's rule against the one kept so far (one family
    listed: its cross-validated scores, no comparison)."""
    families, folds = settings.families, settings.cross_validation_folds
    kept = families[0]
    scores = [describe_family(kept, labels, fold, predicted[kept], folds)]
    if len(families) == 1:
        reason = (
            f"only {kept} is listed in model.families (cross-validated F1 {scores[0].f1:.4f} on {labels.size} rows)"
        )
        return FamilyChoice(kept, reason, labels.size, folds, scores)
    for family in families[1:]:
        verdict = judge_gain(labels, predicted[kept][1], predicted[family][1], gate.min_gain, gate.gate_confidence)
        score = describe_family(family, labels, fold, predicted[family], folds)
        scores.append(
            replace(
                score,
                compared_with=kept,
                gain=round(verdict.gain, 6),
                p_no_gain=round(verdict.p_no_gain, 6),
                better=verdict.passed,
            )
        )
        if verdict.passed:
            kept = family
    listed = ", ".join(f"{score.family} {score.f1:.4f}" for score in scores)
    reason = (
        f"cross-validated F1 on {labels.size} rows, {folds} folds: {listed}; {kept} kept "
        f"(a more complex family must gain {gate.min_gain:g} in F1 over the one kept before it, in at least "
        f"{gate.gate_confidence:.0%} of paired resamples)"
    )
    return FamilyChoice(kept, reason, labels.size, folds, scores)


def describe_family(
    family: str, labels: np.ndarray, fold: np.ndarray, predicted: tuple[np.ndarray, np.ndarray], folds: int
) -> FamilyScore:
    probabilities, chosen = predicted
    return FamilyScore(
        family=family,
        f1=round(labels_f1(labels, chosen), 6),
        fold_f1=[round(labels_f1(labels[fold == k], chosen[fold == k]), 6) for k in range(folds)],
        calibration_error=round(equal_count_calibration_error(labels, probabilities), 6),
    )
