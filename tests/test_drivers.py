"""What drives a risk: the arithmetic adds up to the model's own log-odds, behaves, and reads as a sentence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logit

from riskwatch.core.config import Config, ModelSettings
from riskwatch.core.imports import sklearn_without_pandas
from riskwatch.core.schema import FEATURES
from riskwatch.model.drivers import compare_with_typical, describe_reason, explain_clients
from riskwatch.model.riskmodels import risk_model_for
from riskwatch.stages.training import fit_classifier
from riskwatch.state.artifacts import MODEL_FILE, load_model

with sklearn_without_pandas():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import FixedThresholdClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler
    from sklearn.tree import DecisionTreeClassifier


def random_clients(rows: int, seed: int) -> np.ndarray:
    """Valid counts spread over several orders of magnitude, zeros included."""
    rng = np.random.default_rng(seed)
    highs = np.array([5_000, 60_000, 5_000])
    counts = np.floor(np.expm1(rng.uniform(0, 1, (rows, 3)) * np.log1p(highs)))
    counts[rng.uniform(size=counts.shape) < 0.05] = 0
    return counts


@pytest.fixture
def trained(deployed: Config):
    return load_model(deployed.output_model_path / MODEL_FILE)


def test_baseline_plus_contributions_is_the_models_own_log_odds(trained):
    features = random_clients(500, seed=7)
    drivers = explain_clients(risk_model_for(trained), features)
    expected = logit(trained.predict_proba(features)[:, 1])
    contributions = np.array([[client.contributions[name] for name in FEATURES] for client in drivers.clients])
    np.testing.assert_allclose(drivers.baseline_log_odds + contributions.sum(axis=1), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose([client.log_odds for client in drivers.clients], expected, rtol=0, atol=1e-9)


def test_the_baseline_is_the_log_odds_of_the_average_training_client(trained):
    model = risk_model_for(trained)
    typical = model.typical_counts.reshape(1, -1)
    np.testing.assert_allclose(model.contributions(typical), 0, atol=1e-12)
    assert logit(trained.predict_proba(typical)[0, 1]) == pytest.approx(model.baseline_log_odds, abs=1e-9)


def test_more_activity_all_else_equal_never_raises_the_activity_contribution(trained):
    model = risk_model_for(trained)
    features = random_clients(300, seed=8)
    more = features.copy()
    more[:, 0] += np.random.default_rng(9).integers(1, 500, len(features))
    before, after = model.contributions(features), model.contributions(more)
    assert np.all(after[:, 0] <= before[:, 0])
    np.testing.assert_array_equal(after[:, 1:], before[:, 1:])


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(LogisticRegression(), id="plain logistic regression"),
        pytest.param(
            FixedThresholdClassifier(
                Pipeline(
                    [
                        ("log_counts", FunctionTransformer(np.log1p)),
                        ("scale", StandardScaler()),
                        ("classifier", DecisionTreeClassifier(max_depth=3)),
                    ]
                ),
                threshold=0.5,
            ),
            id="pipeline without coef_",
        ),
    ],
)
def test_a_model_of_another_shape_has_no_drivers(model):
    features = random_clients(200, seed=10)
    labels = (features[:, 0] < 20).astype(int)
    model = model.fit(features, labels)
    assert risk_model_for(model) is None


def test_a_tampered_coefficient_is_caught_against_predict_proba():
    features = random_clients(200, seed=11)
    model = fit_classifier(features, (features[:, 0] < 20).astype(int), ModelSettings())
    assert risk_model_for(model) is not None
    model.estimator.named_steps["log_counts"].func = np.log  # not the arithmetic the drivers assume
    assert risk_model_for(model) is None


def test_the_reason_names_what_raises_the_risk_with_the_typical_value():
    typical = np.array([79.0, 900.0, 40.0])
    reason = describe_reason(np.array([3.0, 900.0, 40.0]), np.array([-1.6, 0.0, 0.0]), np.array([1.2, 0, 0]), typical)
    assert reason == "activity last month 3, far below the typical 79, raises the risk most"
    lowers = describe_reason(np.array([79, 9000, 40.0]), np.array([0, 1.5, 0]), np.array([0, -0.8, 0.01]), typical)
    assert lowers == "activity last year 9,000, far above the typical 900, lowers the risk most, and no count raises it"
    none = describe_reason(np.array([79, 900, 40.0]), np.zeros(3), np.array([0.01, -0.02, 0]), typical)
    assert none.startswith("no count stands out")
    assert [compare_with_typical(z) for z in (-2, -0.5, 0.05, 0.5, 2)] == [
        "far below",
        "below",
        "close to",
        "above",
        "far above",
    ]
