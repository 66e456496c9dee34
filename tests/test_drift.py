"""Drift tests: the three model-drift rules, resampled F1, and per-feature data drift."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score

from riskwatch.core.config import MonitoringSettings
from riskwatch.core.schema import FEATURES
from riskwatch.data.generator import SHIFTED, STABLE, generate_clients
from riskwatch.state.history import ReferenceScore
from riskwatch.stats.calibration import CalibrationVerdict, calibration_error, fit_calibration, judge_calibration
from riskwatch.stats.comparison import judge_log_loss
from riskwatch.stats.drift import (
    KS_EXACT_MAX_ROWS,
    bootstrap_f1,
    check_model_drift,
    count_sample,
    describe_feature_drift,
    drift_threshold,
    f1_from_counts,
    feature_drift,
    fit_drift_reference,
    judge_feature_drift,
    ks_two_samples,
    resampled_f1,
    sort_sample,
    wasserstein_between,
)
from riskwatch.stats.estimate import estimate_performance

SHARES = np.array([0.16, 0.10, 0.09, 0.65])  # tp, fp, fn, tn: F1 about 0.63, as the shipped model scores


def reference(*scores: tuple[float, int]) -> list[ReferenceScore]:
    return [ReferenceScore(f1, rows, f"score {index}") for index, (f1, rows) in enumerate(scores)]


def f1_spread(rows: int) -> float:
    return float(np.std(resampled_f1(SHARES, rows, 20_000, np.random.default_rng(5))))


def test_raw_test_compares_with_the_score_the_model_was_judged_on():
    assert drift_threshold("raw", 0.63, np.array([0.5, 0.6]), k=2) == 0.63
    verdict = check_model_drift(
        0.629, SHARES, 2000, reference((0.63, 3000)), MonitoringSettings(model_drift_test="raw")
    )
    assert verdict.drifted and verdict.threshold == 0.63


def test_the_threshold_counts_the_sampling_error_of_the_batch_and_of_the_reference():
    settings = MonitoringSettings()
    verdict = check_model_drift(0.6, SHARES, 2000, reference((0.63, 3000)), settings)
    expected = 0.63 - 2 * np.hypot(f1_spread(2000), f1_spread(3000))
    assert verdict.threshold == pytest.approx(expected, abs=0.004)
    assert verdict.reference_f1 == 0.63 and verdict.reference_rows == 3000
    # a 200,000-row batch: its own error is tiny, but the reference's is not
    large = check_model_drift(0.62, SHARES, 200_000, reference((0.63, 3000)), settings)
    assert 0.63 - large.threshold == pytest.approx(2 * f1_spread(3000), abs=0.004)
    assert 0.63 - large.threshold > 0.02 and not large.drifted
    # a reference measured on more rows is tighter
    tight = check_model_drift(0.62, SHARES, 200_000, reference((0.63, 3000), (0.63, 300_000)), settings)
    assert tight.threshold > large.threshold and tight.reference_rows == 303_000


def test_stable_batches_rarely_alarm_and_a_real_fall_is_caught():
    settings = MonitoringSettings()
    rng = np.random.default_rng(11)
    alarms = 0
    for _ in range(300):
        gate = float(resampled_f1(SHARES, 900, 1, rng)[0])  # the reference, itself measured on 900 rows
        new = float(resampled_f1(SHARES, 3000, 1, rng)[0])
        alarms += check_model_drift(new, SHARES, 3000, reference((gate, 900)), settings).drifted
    assert alarms / 300 < 0.05
    fallen = np.array([0.10, 0.14, 0.11, 0.65])  # the model now misses most exits: F1 about 0.45
    drop = float(f1_from_counts(*fallen[:3]))
    assert check_model_drift(drop, fallen, 3000, reference((0.63, 900)), settings).drifted


def test_nonparametric_test_uses_q1_minus_one_and_a_half_iqr_of_the_simulated_scores():
    simulated = np.array([0.60, 0.62, 0.61, 0.64, 0.63, 0.59, 0.65, 0.62])
    q1, q3 = np.percentile(simulated, [25, 75])
    assert drift_threshold("nonparametric", 0.63, simulated, k=2) == pytest.approx(q1 - 1.5 * (q3 - q1))
    settings = MonitoringSettings(model_drift_test="nonparametric")
    verdict = check_model_drift(0.6, SHARES, 2000, reference((0.63, 3000)), settings)
    assert 0.55 < verdict.threshold < 0.62


def test_scores_that_vary_more_than_their_sampling_error_widen_the_threshold():
    settings = MonitoringSettings(min_history_scores=5)
    steady = reference(*[(0.63, 50_000)] * 6)
    varied = reference(*[(f1, 50_000) for f1 in (0.60, 0.66, 0.61, 0.65, 0.62, 0.64)])
    assert check_model_drift(0.6, SHARES, 50_000, varied, settings).threshold < (
        check_model_drift(0.6, SHARES, 50_000, steady, settings).threshold - 0.02
    )
    assert "5 later score(s) on 250000 rows" in check_model_drift(0.6, SHARES, 2000, varied, settings).reference


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
    assert [row.test for row in large] == ["wasserstein"] * 3 and [row.test for row in small] == ["ks"] * 3
    assert not any(row.drifted for row in large + small)


def test_a_shifted_population_drifts_and_is_described():
    reference = features(10_000, 1)
    large = {row.feature: row for row in feature_drift(reference, features(5_000, 2, SHIFTED), MonitoringSettings())}
    small = {row.feature: row for row in feature_drift(reference, features(400, 3, SHIFTED), MonitoringSettings())}
    assert large["number_of_employees"].drifted and large["number_of_employees"].statistic > 0.3
    assert small["number_of_employees"].drifted and small["number_of_employees"].p_value < 1e-6
    assert describe_feature_drift(large["number_of_employees"]).startswith(
        "number_of_employees: normalised Wasserstein 0."
    )
    assert " > 0.1" in describe_feature_drift(large["number_of_employees"])
    assert "Kolmogorov-Smirnov D" in describe_feature_drift(small["number_of_employees"])


def sample_pair(kind: str, before_rows: int, after_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two samples of one kind: continuous, log counts (heavily tied), a few values, or the same values twice."""
    rng = np.random.default_rng(seed)
    if kind == "continuous":
        return rng.normal(0, 1, before_rows), rng.normal(0.05, 1.1, after_rows)
    if kind == "log counts":
        return np.log1p(rng.poisson(4, before_rows).astype(float)), np.log1p(rng.poisson(4.4, after_rows).astype(float))
    if kind == "few values":
        return rng.integers(0, 4, before_rows).astype(float), rng.integers(1, 6, after_rows).astype(float)
    same = rng.integers(0, 50, max(before_rows, after_rows)).astype(float)
    return same[:before_rows], same[:after_rows]


SIZES = [
    (1, 1),
    (7, 1),
    (400, 3000),
    (KS_EXACT_MAX_ROWS, 999),
    (KS_EXACT_MAX_ROWS + 1, 1000),
    (40_000, 300),
    (500, 20_000),
]


@pytest.mark.parametrize("kind", ["continuous", "log counts", "few values", "same values"])
@pytest.mark.parametrize("sizes", SIZES, ids=[f"{a}-{b}" for a, b in SIZES])
def test_the_statistics_of_two_sorted_samples_are_scipys(kind, sizes):
    """The KS statistic and p-value (exact and asymptotic) and the Wasserstein distance, merged from the two
    samples' sorted distinct values, equal SciPy's on the raw samples, ties and all."""
    before, after = sample_pair(kind, *sizes, seed=sum(sizes))
    sorted_before, sorted_after = sort_sample(before), sort_sample(after)
    expected = stats.ks_2samp(before, after)
    statistic, p_value = ks_two_samples(sorted_before, sorted_after)
    assert statistic == float(expected.statistic)
    assert p_value == pytest.approx(float(expected.pvalue), rel=1e-12, abs=1e-300)
    distance = wasserstein_between(sorted_before, sorted_after)
    assert distance == pytest.approx(float(stats.wasserstein_distance(before, after)), rel=1e-12, abs=1e-15)
    assert sorted_before.spread == pytest.approx(float(np.std(before)), rel=1e-12, abs=1e-15)
    assert sorted_before.size == before.size and np.array_equal(sorted_before.expand(), np.sort(before))


def test_a_sorted_sample_keeps_each_distinct_value_once_with_the_rows_at_or_below_it():
    sample = sort_sample(np.array([3.0, 1.0, 3.0, 2.0, 1.0, 3.0]))
    assert sample.values.tolist() == [1.0, 2.0, 3.0] and sample.at_or_below.tolist() == [2, 3, 6]
    assert sample.size == 6 and sort_sample(np.zeros(0)).size == 0
    with pytest.raises(ValueError, match="rows on both sides"):
        wasserstein_between(sample, sort_sample(np.zeros(0)))


def test_whole_counts_are_counted_into_the_sample_sorting_their_logs_makes():
    clients = generate_clients(20_000, np.random.default_rng(5), STABLE)
    for column in (*(np.asarray(clients[name], dtype=np.float64) for name in FEATURES), np.array([0.0, 7.0, 7.0])):
        counted, ordered = count_sample(column), sort_sample(np.log1p(column))
        assert counted is not None
        assert np.array_equal(counted.values, ordered.values)
        assert np.array_equal(counted.at_or_below, ordered.at_or_below) and counted.spread == ordered.spread
    for column in (np.array([1.0, 2.5]), np.array([-1.0, 2.0]), np.array([0.0, 2.0**40]), np.zeros(0)):
        assert count_sample(column) is None  # sorted instead
    mixed = np.column_stack([np.array([1.5, 0.5, 2.5]), np.array([3.0, 1.0, 2.0]), np.array([-0.5, 4.0, 4.0])])
    for counted, ordered in zip(
        fit_drift_reference(mixed).columns, (sort_sample(np.log1p(mixed[:, j])) for j in range(3)), strict=True
    ):
        assert np.array_equal(counted.values, ordered.values, equal_nan=True)
        assert np.array_equal(counted.at_or_below, ordered.at_or_below)


@pytest.mark.parametrize("new_rows", [400, 5_000, 20_000])
@pytest.mark.parametrize("world", ["stable", "shifted"])
def test_feature_drift_is_scipys_statistic_on_the_log_counts(new_rows, world):
    """What the per-feature test reported when it called SciPy on the log1p columns, to floating-point tolerance;
    a reference fitted once judges every batch the same."""
    reference, new = world_arrays("stable", 30_000, 1)[0], world_arrays(world, new_rows, 2)[0]
    settings = MonitoringSettings()
    rows = feature_drift(reference, new, settings)
    assert rows == judge_feature_drift(fit_drift_reference(reference), new, settings)
    for column, row in enumerate(rows):
        before, after = np.log1p(reference[:, column]), np.log1p(new[:, column])
        if new_rows <= settings.ks_max_rows:
            expected = stats.ks_2samp(before, after)
            assert row.test == "ks" and row.statistic == float(expected.statistic)
            assert row.p_value == pytest.approx(float(expected.pvalue), rel=1e-12, abs=1e-300)
            assert row.drifted == (float(expected.pvalue) < settings.ks_p_value)
        else:
            statistic = float(stats.wasserstein_distance(before, after)) / float(np.std(before))
            assert row.test == "wasserstein" and row.p_value is None
            assert row.statistic == pytest.approx(statistic, rel=1e-12)
            assert row.drifted == (statistic > settings.wasserstein_threshold)


def world_arrays(world: str, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from riskwatch.data.generator import WORLDS

    clients = generate_clients(rows, np.random.default_rng(seed), WORLDS[world])
    return np.column_stack([clients[name].astype(float) for name in FEATURES]), clients["exited"]


@pytest.fixture(scope="module")
def shipped_like_model():
    from riskwatch.core.config import ModelSettings
    from riskwatch.stages.training import fit_classifier

    return fit_classifier(*world_arrays("stable", 10_000, 1), ModelSettings())


def measured_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float(f1_score(labels, predicted))


def test_f1_estimated_from_probabilities_alone_matches_the_labels_on_30_batches(shipped_like_model):
    plans = [(world, rows) for world in ("stable", "shifted") for rows in (1_000, 5_000) for _ in range(8)][:30]
    errors, covered, table = [], [], []
    for seed, (world, rows) in enumerate(plans, start=100):
        features, labels = world_arrays(world, rows, seed)
        probabilities, predicted = (
            shipped_like_model.predict_proba(features)[:, 1],
            shipped_like_model.predict(features),
        )
        estimate = estimate_performance(probabilities, predicted)
        measured = measured_f1(labels, predicted)
        errors.append(abs(estimate.f1 - measured))
        covered.append(estimate.f1_low <= measured <= estimate.f1_high)
        table.append(
            f"{world:8} {rows:5}  estimated {estimate.f1:.4f} ({estimate.f1_low:.4f}-{estimate.f1_high:.4f})  "
            f"measured {measured:.4f}  calibration error {calibration_error(labels, probabilities):.4f}"
        )
    print("\n" + "\n".join(table) + f"\nmedian |error| {np.median(errors):.4f}; covered {np.mean(covered):.0%}")
    assert np.median(errors) <= 0.03
    assert np.mean(covered) >= 0.9


def test_the_estimates_interval_covers_the_measured_f1_on_100_batches_of_1000_rows(shipped_like_model):
    """At least 93% in each world, stable and shifted, counting the calibration's doubt (the interval widens)."""
    test_features, test_labels = world_arrays("stable", 3_000, 2)  # the test data: rows the model never saw
    fit = fit_calibration(test_labels, shipped_like_model.predict_proba(test_features)[:, 1])
    assert fit is not None and fit.rows == 3_000
    table = []
    for world in ("stable", "shifted"):
        covered, widened = [], []
        for seed in range(1_000, 1_050):
            features, labels = world_arrays(world, 1_000, seed)
            probabilities = shipped_like_model.predict_proba(features)[:, 1]
            predicted = shipped_like_model.predict(features)
            honest = estimate_performance(probabilities, predicted, fit)
            labels_only = estimate_performance(probabilities, predicted)
            covered.append(honest.f1_low <= measured_f1(labels, predicted) <= honest.f1_high)
            widened.append((honest.f1_high - honest.f1_low) / (labels_only.f1_high - labels_only.f1_low))
        table.append(f"{world:8} covered {np.mean(covered):.0%} of 50; interval x{np.median(widened):.3f} wider")
        assert np.mean(covered) >= 0.93, table[-1]
        assert 1.0 < np.median(widened) < 1.5, table[-1]
    print("\n" + "\n".join(table))


def test_the_calibration_fit_recovers_a_known_miscalibration_and_its_doubt_shrinks_with_rows():
    rng = np.random.default_rng(5)
    fits = {}
    for rows in (2_000, 20_000):
        probabilities = rng.uniform(0.02, 0.9, rows)
        truth = 1 / (1 + np.exp(-(0.4 + 0.7 * np.log(probabilities / (1 - probabilities)))))
        labels = (rng.random(rows) < truth).astype(int)
        fits[rows] = fit = fit_calibration(labels, probabilities)
        assert fit is not None
        errors = np.sqrt(np.diag(fit.covariance_matrix))
        assert abs(fit.intercept - 0.4) < 3 * errors[0] and abs(fit.slope - 0.7) < 3 * errors[1]
        assert np.allclose(fit.recalibrate(probabilities), truth, atol=6 * errors.sum())
    assert fits[20_000].covariance[1][1] < fits[2_000].covariance[1][1] / 5


def test_a_calibration_fit_needs_both_outcomes_and_varied_probabilities():
    assert fit_calibration(np.zeros(50), np.linspace(0.1, 0.9, 50)) is None
    assert fit_calibration(np.r_[np.zeros(25), np.ones(25)], np.full(50, 0.3)) is None
    without = estimate_performance(np.full(10, 0.3), np.ones(10), None)
    assert without.calibration_rows == 0


def test_the_calibration_test_stays_quiet_on_stable_batches_and_sees_doubled_odds(shipped_like_model):
    settings = MonitoringSettings()

    def judged(world: str, seed: int) -> CalibrationVerdict:
        features, labels = world_arrays(world, 3_000, seed)
        return judge_calibration(
            labels,
            shipped_like_model.predict_proba(features)[:, 1],
            settings.calibration_confidence,
            settings.calibration_tolerance,
            settings.calibration_slope_tolerance,
        )

    stable = [judged(world, seed) for world in ("stable", "shifted") for seed in range(2_000, 2_020)]
    assert not any(verdict.miscalibrated for verdict in stable)
    riskier = [judged("riskier", seed) for seed in range(2_100, 2_110)]
    assert all(verdict.miscalibrated and verdict.gap > 0.2 for verdict in riskier)
    assert all(0.8 < (verdict.slope or 0) < 1.2 for verdict in riskier)  # the ranking holds; the level moved


def test_the_log_loss_rule_prefers_reliably_better_calibrated_probabilities():
    rng = np.random.default_rng(9)
    truth = rng.uniform(0.05, 0.8, 2_000)
    labels = (rng.random(2_000) < truth).astype(int)
    too_low = truth / 2
    better = judge_log_loss(labels, too_low, truth, 0.95)
    assert better.passed and better.challenger_loss < better.champion_loss and better.p_no_gain < 0.001
    same = judge_log_loss(labels, truth, truth, 0.95)
    assert not same.passed and same.p_no_gain == 1.0
    worse = judge_log_loss(labels, truth, too_low, 0.95)
    assert not worse.passed and worse.p_no_gain > 0.999


def test_what_the_estimate_cannot_see_and_the_labelled_test_catches(shipped_like_model):
    # a changed relationship: the probabilities still promise the old F1, the labels show the fall
    features, labels = world_arrays("drifted", 5_000, 7)
    probabilities, predicted = shipped_like_model.predict_proba(features)[:, 1], shipped_like_model.predict(features)
    estimate = estimate_performance(probabilities, predicted)
    measured = measured_f1(labels, predicted)
    assert measured < estimate.f1_low - 0.1  # far outside what the probabilities expect
    assert calibration_error(labels, probabilities) > MonitoringSettings().max_calibration_error  # flagged unreliable
    shares = np.array(
        [
            np.mean(labels & predicted),
            np.mean(~labels.astype(bool) & predicted.astype(bool)),
            np.mean(labels.astype(bool) & ~predicted.astype(bool)),
            0.0,
        ]
    )
    shares[3] = 1 - shares[:3].sum()
    verdict = check_model_drift(measured, shares, labels.size, reference((0.63, 3000)), MonitoringSettings())
    assert verdict.drifted
