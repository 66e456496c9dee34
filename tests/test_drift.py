"""Drift tests: the three model-drift rules, resampled F1, and per-feature data drift."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from common.config import MonitoringSettings
from common.drift import bootstrap_f1, check_model_drift, describe_feature_drift, drift_threshold, feature_drift
from common.schema import FEATURES
from generate_data import SHIFTED, STABLE, generate_clients

SCORES = np.array([0.60, 0.62, 0.61, 0.64, 0.63, 0.59, 0.65, 0.62])


def test_raw_test_compares_with_the_deployed_score():
    assert drift_threshold("raw", 0.63, SCORES, k=2) == 0.63
    verdict = check_model_drift(0.629, 0.63, [], None, MonitoringSettings(model_drift_test="raw"))
    assert verdict.drifted and verdict.threshold == 0.63


def test_parametric_test_uses_mean_minus_k_standard_deviations():
    expected = SCORES.mean() - 2 * SCORES.std(ddof=1)
    assert drift_threshold("parametric", 0.63, SCORES, k=2) == pytest.approx(expected)
    settings = MonitoringSettings(min_history_scores=5)
    assert check_model_drift(expected - 0.001, 0.63, list(SCORES), None, settings).drifted
    verdict = check_model_drift(expected + 0.001, 0.63, list(SCORES), None, settings)
    assert not verdict.drifted and verdict.reference == "8 earlier F1 scores in the run history"


def test_nonparametric_test_uses_q1_minus_one_and_a_half_iqr():
    q1, q3 = np.percentile(SCORES, [25, 75])
    assert drift_threshold("nonparametric", 0.63, SCORES, k=2) == pytest.approx(q1 - 1.5 * (q3 - q1))


def test_too_few_recorded_scores_fall_back_to_resampled_ones():
    resampled = np.array([0.5, 0.6, 0.7, 0.6])
    verdict = check_model_drift(0.4, 0.63, [0.6, 0.61], resampled, MonitoringSettings(min_history_scores=5))
    assert verdict.threshold == pytest.approx(resampled.mean() - 2 * resampled.std(ddof=1))
    assert "4 resamples of the test data" in verdict.reference and "holds 2 earlier scores" in verdict.reference


def test_bootstrap_f1_matches_resampling_rows():
    rng = np.random.default_rng(3)
    labels = rng.random(3000) < 0.25
    predicted = np.where(rng.random(3000) < 0.8, labels, ~labels)
    fast = bootstrap_f1(labels, predicted, size=500, samples=4000, seed=1)
    slow = [f1_score(labels[i], predicted[i]) for i in (rng.integers(0, 3000, 500) for _ in range(1000))]
    assert fast.mean() == pytest.approx(np.mean(slow), abs=0.005)
    assert fast.std() == pytest.approx(np.std(slow), rel=0.1)


def features(count: int, seed: int, world=STABLE) -> np.ndarray:
    clients = generate_clients(count, np.random.default_rng(seed), world)
    return np.column_stack([clients[name].astype(float) for name in FEATURES])


def test_same_population_shows_no_drift_in_either_test():
    reference = features(10_000, 1)
    large = feature_drift(reference, features(5_000, 2), MonitoringSettings())
    small = feature_drift(reference, features(400, 3), MonitoringSettings())
    assert [row["test"] for row in large] == ["wasserstein"] * 3 and [row["test"] for row in small] == ["ks"] * 3
    assert not any(row["drifted"] for row in large + small)


def test_a_shifted_population_drifts_and_is_described():
    reference = features(10_000, 1)
    large = {row["feature"]: row for row in feature_drift(reference, features(5_000, 2, SHIFTED), MonitoringSettings())}
    small = {row["feature"]: row for row in feature_drift(reference, features(400, 3, SHIFTED), MonitoringSettings())}
    assert large["number_of_employees"]["drifted"] and large["number_of_employees"]["statistic"] > 0.3
    assert small["number_of_employees"]["drifted"] and small["number_of_employees"]["p_value"] < 1e-6
    assert describe_feature_drift(large["number_of_employees"]).startswith(
        "number_of_employees: normalised Wasserstein 0."
    )
    assert " > 0.1" in describe_feature_drift(large["number_of_employees"])
    assert "Kolmogorov-Smirnov D" in describe_feature_drift(small["number_of_employees"])
