"""Model families: the data chooses among them, each is calibrated, and each explains every score exactly.

The project's own non-linear world (``generate_data.py``) knows each client's true exit probability,
so a test can compute the Bayes-optimal F1 of a sample: the best F1 any model could reach on it.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logit

from riskwatch.core.config import MODEL_FAMILIES, ModelSettings, MonitoringSettings, load_config
from riskwatch.core.errors import PipelineError
from riskwatch.core.schema import FEATURES
from riskwatch.data.generator import WORLDS, exit_probability, generate_clients, write_world_data
from riskwatch.model.evaluation import score_model
from riskwatch.model.familychoice import choose_family
from riskwatch.model.riskmodels import (
    ADDITIVE,
    BOOSTED,
    FAMILY_CLASSES,
    LINEAR,
    equal_count_calibration_error,
    fit_risk_model,
    risk_model_for,
)
from riskwatch.stages.deployment import publish_deployment
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.stages.scoring import write_scores
from riskwatch.stages.training import train_from_folder
from riskwatch.state.artifacts import MODEL_FILE, MODEL_INFO_FILE, load_model
from riskwatch.state.records import read_model_info
from riskwatch.stats.comparison import labels_f1
from riskwatch.web.app import create_app
from tests.helpers import PROJECT_ROOT, world_number, write_config

FRESH_ROWS = 20_000
MAX_CALIBRATION_ERROR = 0.02


def world_sample(world: str, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, true exit probabilities) of ``rows`` clients drawn from ``world``."""
    clients = generate_clients(rows, np.random.default_rng(seed), WORLDS[world])
    features = np.column_stack([clients[name] for name in FEATURES]).astype(np.float64)
    return features, clients["exited"], exit_probability(WORLDS[world], *features.T)


@cache
def fresh(world: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return world_sample(world, FRESH_ROWS, seed=90_000 + world_number(world))


def bayes_f1(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The best F1 on these labels of any threshold on the true probabilities: the Bayes-optimal classifier's."""
    order = np.argsort(-probabilities, kind="stable")
    hits = np.cumsum(labels[order])
    flagged = np.arange(1, labels.size + 1)
    return float(np.max(2 * hits / (flagged + labels.sum())))


def ratio_to_bayes(model: object, world: str) -> float:
    features, labels, truth = fresh(world)
    return labels_f1(labels, model.predict(features)) / bayes_f1(labels, truth)  # type: ignore[attr-defined]


def deploy_world(root: Path, world_rows: int, world: str = "nonlinear", **model: object) -> Path:
    """A project whose source data holds ``world_rows`` clients of ``world``, trained as training.py trains."""
    write_world_data(root, world, seed=5, source_rows=world_rows)
    config = load_config(write_config(root, model=model) if model else write_config(root))
    ingest_folder(config.input_folder_path, config.output_folder_path)
    train_from_folder(config.output_folder_path, config.output_model_path, config.model, config.monitoring)
    return config.output_model_path


@pytest.mark.parametrize(("rows", "at_least"), [(10_000, 0.95), (50_000, 0.97)])
def test_a_first_deployment_on_the_non_linear_world_comes_close_to_the_bayes_optimal_f1(tmp_path, rows, at_least):
    models = deploy_world(tmp_path, rows)
    info = read_model_info(models / MODEL_INFO_FILE)
    ratio = ratio_to_bayes(load_model(models / MODEL_FILE), "nonlinear")
    assert info.family in (ADDITIVE, BOOSTED) and ratio >= at_least, (info.family, ratio)
    linear = info.family_choice.score_of(LINEAR)
    assert linear is not None and linear.f1 < info.family_choice.score_of(info.family).f1 - 0.1


def test_on_the_shipped_world_the_linear_family_is_kept_and_is_as_good_as_the_world_allows(tmp_path):
    models = deploy_world(tmp_path, 10_000, world="stable")
    info = read_model_info(models / MODEL_INFO_FILE)
    assert info.family == LINEAR
    assert [score.family for score in info.family_choice.scores] == list(MODEL_FAMILIES)
    assert not any(score.better for score in info.family_choice.scores)
    assert ratio_to_bayes(load_model(models / MODEL_FILE), "stable") >= 0.99
    assert info.calibration.rows == 10_000 and info.calibration.error < MAX_CALIBRATION_ERROR


def test_the_simplest_family_is_kept_without_a_comparison_when_only_it_is_listed_or_the_rows_are_too_few():
    features, labels, _ = world_sample("nonlinear", 3_000, seed=1)
    only = choose_family(features, labels, ModelSettings(families=("boosted",)), MonitoringSettings())
    assert only.family == BOOSTED and [score.family for score in only.scores] == [BOOSTED]
    assert only.scores[0].compared_with is None and "only boosted is listed" in only.reason
    few = choose_family(features[:500], labels[:500], ModelSettings(), MonitoringSettings())
    assert few.family == LINEAR and not few.scores and "too few" in few.reason


@pytest.mark.parametrize("families", [["linear", "trees"], []])
def test_the_families_listed_in_the_config_are_checked(tmp_path, families):
    with pytest.raises(PipelineError, match="model.families must list some of linear, additive, boosted"):
        load_config(write_config(tmp_path, model={"families": families}))


def test_a_more_complex_family_must_pass_the_gates_rule_against_the_simpler_one():
    features, labels, _ = world_sample("nonlinear", 5_000, seed=2)
    strict = choose_family(features, labels, ModelSettings(), MonitoringSettings(min_gain=0.5))
    assert strict.family == LINEAR and all(score.better is False for score in strict.scores[1:])
    usual = choose_family(features, labels, ModelSettings(), MonitoringSettings())
    additive = usual.score_of(ADDITIVE)
    assert additive.compared_with == LINEAR and additive.better and additive.p_no_gain <= 0.05
    assert len(additive.fold_f1) == 5 and usual.family != LINEAR


@pytest.mark.slow
def test_the_families_are_compared_in_a_fresh_interpreter_without_an_import_race():
    # Two fits on threads: LightGBM's first import (which imports pandas) in one used to leave pandas half
    # imported for scikit-learn's checks in the other, an AttributeError whenever nothing had imported it before.
    code = (
        "import sys; from riskwatch.core.config import ModelSettings, MonitoringSettings;"
        "import numpy as np; from riskwatch.core.schema import FEATURES;"
        "from riskwatch.data.generator import WORLDS, generate_clients;"
        "from riskwatch.model.familychoice import choose_family;"
        "assert 'pandas' not in sys.modules and 'lightgbm' not in sys.modules;"
        "c = generate_clients(3000, np.random.default_rng(2), WORLDS['nonlinear']);"
        "f = np.column_stack([c[name] for name in FEATURES]).astype(np.float64); y = c['exited'];"
        "print(choose_family(f, y, ModelSettings(), MonitoringSettings()).family)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() in MODEL_FAMILIES


@pytest.mark.parametrize("family", MODEL_FAMILIES)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample-weighted"])
def test_every_familys_drivers_add_up_to_the_log_odds_served(family, weighted):
    features, labels, _ = world_sample("nonlinear", 4_000, seed=3)
    weights = np.linspace(0.1, 1.0, labels.size) if weighted else None
    model = risk_model_for(FAMILY_CLASSES[family].fit(features, labels, ModelSettings(), weights).estimator)
    assert model is not None and model.family == family
    rows = world_sample("nonlinear", 500, seed=4)[0]
    rows[:25] *= 50  # far beyond the training range too
    served = model.score(rows)[0]
    total = model.baseline_log_odds + model.contributions(rows).sum(axis=1)
    np.testing.assert_allclose(total, logit(served), rtol=0, atol=1e-9)
    np.testing.assert_allclose(total, logit(model.estimator.predict_proba(rows)[:, 1]), rtol=0, atol=1e-9)
    typical = model.typical_counts.reshape(1, -1)
    np.testing.assert_allclose(model.contributions(typical), 0, atol=1e-9)


@pytest.mark.parametrize(("world", "families"), [("nonlinear", (ADDITIVE, BOOSTED)), ("stable", MODEL_FAMILIES)])
def test_every_family_offered_is_calibrated_on_a_fresh_sample_of_its_world(world, families):
    features, labels, _ = world_sample(world, 10_000, seed=6)
    test_features, test_labels, _ = fresh(world)
    for family in families:
        model = fit_risk_model(family, features, labels, ModelSettings())
        error = equal_count_calibration_error(test_labels, model.score(test_features)[0])
        assert error <= MAX_CALIBRATION_ERROR, (world, family, error)


@pytest.mark.slow
def test_each_familys_model_file_loads_in_a_fresh_interpreter_with_the_libraries_alone(tmp_path):
    """No project code on the path: the pickle holds scikit-learn (and LightGBM) objects only; the classic
    functions' DataFrames work too."""
    features, labels, _ = world_sample("nonlinear", 3_000, seed=7)
    for family in MODEL_FAMILIES:
        model = fit_risk_model(family, features, labels, ModelSettings())
        (tmp_path / f"{family}.pkl").write_bytes(pickle.dumps(model.estimator))
        expected = model.score(features[:5])[0].tolist()
        code = (
            "import json, pickle, sys\n"
            "import pandas as pd\n"
            f"model = pickle.load(open({str(tmp_path / (family + '.pkl'))!r}, 'rb'))\n"
            f"frame = pd.DataFrame({features[:5].tolist()!r}, columns={list(FEATURES)!r})\n"
            "print(json.dumps([model.predict_proba(frame.to_numpy())[:, 1].tolist(), model.predict(frame).tolist()]))\n"
            "assert not any(name.split('.')[0] in ('riskwatch', 'training') for name in sys.modules)\n"
        )
        done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        probabilities, predicted = json.loads(done.stdout)
        np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-12)
        assert predicted == model.predict(features[:5]).tolist()


@pytest.mark.parametrize("family", [ADDITIVE, BOOSTED])
def test_the_api_serves_and_explains_every_family_on_its_fast_path(tmp_path, family):
    models = deploy_world(tmp_path, 3_000, families=[family])
    config = load_config(tmp_path / "config.json")
    write_scores(score_model(models / MODEL_FILE, config.test_data_path), models)
    publish_deployment(models, config.output_folder_path, config.prod_deployment_path, 3)
    client = create_app(config, token="").test_client()
    records = [dict(zip(FEATURES, row, strict=True)) for row in world_sample("nonlinear", 20, seed=8)[0].tolist()]
    answer = client.post("/prediction", json={"records": records, "explain": True})
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    for row in body["predictions"]:
        assert abs(body["baseline_log_odds"] + sum(row["drivers"].values()) - logit(row["probability"])) < 1e-9
        assert row["reason"]
    version = client.get("/version").get_json()
    assert version["model_family"] == family and version["explained"] is True
    served = client.application.extensions["risk_api"].watcher.served()
    assert served.shortcut is not None and served.shortcut.family == family
    assert served.row_scorer is None  # one record is scored by the family's numpy arithmetic, as many are
    one = client.post("/prediction", json=records[0]).get_json()["predictions"][0]
    probabilities, labels = served.shortcut.score(np.array([list(records[0].values())], dtype=np.float64))
    assert (one["probability"], one["label"]) == (probabilities[0], labels[0])
    ranked = client.get("/clients?limit=5").get_json()
    assert len(ranked["clients"]) == 5
