"""Training and scoring: model behaviour, calibration, the baseline, metadata and failures."""

from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from riskwatch.core.config import ModelSettings, load_config
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import sha256_file
from riskwatch.core.schema import FEATURES
from riskwatch.data.datafiles import read_labelled_data
from riskwatch.model.evaluation import score_model
from riskwatch.model.riskmodels import (
    ADDITIVE,
    FAMILY_CLASSES,
    fused_multiply_add,
    one_row_probes,
    one_row_scorer,
    risk_model_for,
)
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.stages.scoring import write_scores
from riskwatch.stages.training import fit_classifier, train_from_folder
from riskwatch.state.artifacts import (
    FINAL_DATA,
    LATEST_SCORE_FILE,
    METRICS_FILE,
    MODEL_FILE,
    MODEL_INFO_FILE,
    load_model,
)
from riskwatch.state.records import read_model_info, record_to_json
from tests.helpers import PROJECT_ROOT, run_script


@pytest.fixture(scope="module")
def shipped():
    """The model trained on the data the project ships (sourceddata/), and the shipped test data."""
    config = load_config(PROJECT_ROOT / "config.json")
    folder = PROJECT_ROOT / "sourceddata"
    features, labels = read_labelled_data(sorted(folder.glob("*.csv")))
    test_features, test_labels = read_labelled_data([PROJECT_ROOT / "testdata" / "testdata.csv"])
    return fit_classifier(features, labels, config.model), features, labels, test_features, test_labels


def grid_with(feature: str, values: np.ndarray, base: np.ndarray) -> np.ndarray:
    rows = np.repeat(base[None, :], values.size, axis=0)
    rows[:, FEATURES.index(feature)] = values
    return rows


@pytest.mark.parametrize("feature", ["lastmonth_activity", "lastyear_activity"])
def test_more_activity_never_raises_risk(shipped, feature):
    model, features, *_ = shipped
    values = np.unique(
        np.concatenate(
            [np.arange(0, 100), np.geomspace(1, features[:, FEATURES.index(feature)].max() * 10, 300).round()]
        )
    )
    for base in features[:: max(1, len(features) // 200)]:
        risk = model.predict_proba(grid_with(feature, values, base))[:, 1]
        assert np.all(np.diff(risk) <= 1e-12), f"risk rose with {feature} for client {base}"


def test_probabilities_are_in_range_and_calibrated(shipped):
    model, _, _, test_features, test_labels = shipped
    risk = model.predict_proba(test_features)[:, 1]
    assert risk.min() >= 0 and risk.max() <= 1
    assert abs(risk.mean() - test_labels.mean()) < 0.03
    order = np.argsort(risk)
    for decile in np.array_split(order, 5):  # observed exit rate follows predicted risk in each fifth
        assert abs(risk[decile].mean() - test_labels[decile].mean()) < 0.06


def test_model_clearly_beats_plain_logistic_regression_on_raw_columns(shipped):
    model, features, labels, test_features, test_labels = shipped
    ours = f1_score(test_labels, model.predict(test_features))
    baseline = f1_score(test_labels, LogisticRegression().fit(features, labels).predict(test_features))
    assert ours > 0.55
    assert ours > baseline + 0.2


def test_threshold_is_the_best_for_f1_on_the_training_data(shipped):
    model, features, labels, _, _ = shipped
    risk = model.predict_proba(features)[:, 1]
    chosen = f1_score(labels, model.predict(features))
    for threshold in np.linspace(0.05, 0.95, 91):
        assert chosen >= f1_score(labels, (risk >= threshold).astype(int)) - 1e-12
    assert 0.1 < model.threshold < 0.5  # below 0.5: exits are the rarer class


def test_training_saves_model_with_metadata(project):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    info = train_from_folder(project.output_folder_path, project.output_model_path, project.model)
    saved = json.loads((project.output_model_path / MODEL_INFO_FILE).read_text())
    assert saved == record_to_json(info) and read_model_info(project.output_model_path / MODEL_INFO_FILE) == info
    assert saved["features"] == list(FEATURES)
    assert saved["training_rows"] == 1000
    assert saved["training_data_sha256"] == sha256_file(project.output_folder_path / FINAL_DATA)
    assert saved["model_sha256"] == sha256_file(project.output_model_path / MODEL_FILE)
    assert set(saved["libraries"]) == {"numpy", "pyarrow", "scikit-learn", "scipy"}
    assert saved["coefficients"]["lastmonth_activity"] < 0


def test_training_refuses_data_the_last_ingestion_did_not_write(project):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    with open(project.output_folder_path / FINAL_DATA, "a") as handle:
        handle.write("edited,1,1,1,0\n")
    with pytest.raises(PipelineError, match="not the file the last ingestion wrote"):
        train_from_folder(project.output_folder_path, project.output_model_path, project.model)


@pytest.mark.slow
def test_scoring_another_model_file_writes_its_scores_beside_it(project, tmp_path):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    train_from_folder(project.output_folder_path, project.output_model_path, project.model)
    other = tmp_path / "candidate"
    other.mkdir()
    (other / MODEL_FILE).write_bytes((project.output_model_path / MODEL_FILE).read_bytes())
    done = run_script("scoring.py", "--config", str(project.path), "--model", str(other / MODEL_FILE))
    assert done.returncode == 0, done.stderr
    assert (other / LATEST_SCORE_FILE).is_file()
    assert not (project.output_model_path / LATEST_SCORE_FILE).exists()


def test_training_on_one_class_fails_clearly(tmp_path):
    features = np.ones((10, 3))
    with pytest.raises(PipelineError, match="only exited=0"):
        fit_classifier(features, np.zeros(10, dtype=int), ModelSettings())


def test_training_without_ingested_data_names_the_missing_file(project):
    with pytest.raises(PipelineError, match="finaldata.csv does not exist; run ingestion.py first"):
        train_from_folder(project.output_folder_path, project.output_model_path, project.model)


def test_scoring_writes_bare_f1_and_all_metrics(project):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    train_from_folder(project.output_folder_path, project.output_model_path, project.model)
    metrics = score_model(project.output_model_path / MODEL_FILE, project.test_data_path)
    write_scores(metrics, project.output_model_path)
    assert float((project.output_model_path / LATEST_SCORE_FILE).read_text()) == metrics.f1
    stored = json.loads((project.output_model_path / METRICS_FILE).read_text())
    assert {"f1", "precision", "recall", "roc_auc", "confusion", "brier_score", "model_sha256"} <= set(stored)
    confusion = stored["confusion"]
    assert sum(confusion.values()) == stored["rows"] == 500
    precision = confusion["tp"] / (confusion["tp"] + confusion["fp"])
    assert stored["precision"] == pytest.approx(precision, abs=1e-6)


def test_scoring_one_class_test_data_reports_auc_as_undefined(project):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    train_from_folder(project.output_folder_path, project.output_model_path, project.model)
    one_class = project.test_data_path / "testdata.csv"
    lines = one_class.read_text().splitlines()
    one_class.write_text("\n".join([lines[0], *[line for line in lines[1:] if line.endswith(",0")]]) + "\n")
    metrics = score_model(project.output_model_path / MODEL_FILE, project.test_data_path)
    assert metrics.roc_auc is None and metrics.exit_rate == 0


@pytest.mark.parametrize(
    ("content", "message"), [(b"", "corrupt"), (b"\x80\x05garbage", "corrupt"), (None, "does not exist")]
)
def test_corrupt_or_missing_model_gets_a_clear_error(tmp_path, content, message):
    path = tmp_path / MODEL_FILE
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PipelineError, match=message):
        load_model(path)


def test_the_api_s_fast_arithmetic_is_taken_for_the_model_training_writes_and_gives_the_same_numbers(project):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    train_from_folder(project.output_folder_path, project.output_model_path, project.model)
    model = load_model(project.output_model_path / MODEL_FILE)
    shortcut = risk_model_for(model)
    assert shortcut is not None  # the API would otherwise fall back to scikit-learn on every request
    features, _ = read_labelled_data([project.test_data_path / "testdata.csv"])
    probabilities, labels = shortcut.score(features.copy())
    assert np.array_equal(probabilities, model.predict_proba(features)[:, 1])
    assert np.array_equal(labels, model.predict(features))
    weighted = fit_classifier(
        features, (features[:, 0] < 20).astype(int), ModelSettings(), np.linspace(1, 2, len(features))
    )
    assert risk_model_for(weighted) is not None  # a challenger trained with sample weights too


def test_one_row_in_python_floats_gives_numpy_s_and_scikit_learn_s_numbers_bit_for_bit(project):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    train_from_folder(project.output_folder_path, project.output_model_path, project.model)
    model = load_model(project.output_model_path / MODEL_FILE)
    shortcut = risk_model_for(model)
    scorer = one_row_scorer(shortcut)
    assert scorer is not None  # a one-record request would otherwise pay numpy's dozen calls
    generator = np.random.default_rng(11)
    counts = np.floor(generator.random((2_000, 3)) * 10.0 ** generator.uniform(0, 9, (2_000, 3)))
    tested, _ = read_labelled_data([project.test_data_path / "testdata.csv"])
    for row in np.concatenate([counts, tested, [[2.0**53 - 1, 0, 0]]]):
        one = row[None, :]
        probabilities, labels = shortcut.score(one)
        assert scorer.score(one) == (probabilities[0], labels[0])
        assert probabilities[0] == model.predict_proba(one)[0, 1] and labels[0] == model.predict(one)[0]
    for other in (counts[:2], counts[0], counts[:1].astype(np.float32)):
        assert scorer.score(other) is None  # numpy's arithmetic answers for anything but one row of float64


def test_the_probe_rows_tell_fused_multiply_adds_from_plain_ones(project):
    ingest_folder(project.input_folder_path, project.output_folder_path)
    train_from_folder(project.output_folder_path, project.output_model_path, project.model)
    shortcut = risk_model_for(load_model(project.output_model_path / MODEL_FILE))
    scorer = one_row_scorer(shortcut)
    assert scorer is not None
    other = dataclasses.replace(scorer, fused=not scorer.fused)  # the arithmetic numpy does not do here
    probes = one_row_probes()
    disagree = [other.score(probes[row : row + 1]) != scorer.score(probes[row : row + 1]) for row in range(len(probes))]
    assert sum(disagree) > len(probes) // 10


def test_a_one_row_scorer_is_only_made_for_the_linear_family_s_arithmetic():
    clients_features = np.array([[1, 2, 3], [30, 400, 5], [0, 0, 1], [90, 9000, 40]] * 25, dtype=np.float64)
    labels = np.array([0, 1, 0, 1] * 25)
    additive = FAMILY_CLASSES[ADDITIVE].fit(clients_features, labels, ModelSettings())
    assert one_row_scorer(additive) is None  # its curves stay numpy's


def exactly_rounded_multiply_add(x: float, y: float, z: float) -> float:
    return float(Fraction(x) * Fraction(y) + Fraction(z))


def test_the_fused_multiply_add_rounds_once_as_the_instruction_does():
    generator = np.random.default_rng(4)
    cases = [
        (x * 2.0 ** int(a), y * 2.0 ** int(b), z * 2.0 ** int(c))
        for (x, y, z), (a, b, c) in zip(
            generator.normal(size=(20_000, 3)).tolist(),
            generator.integers(-600, 600, (20_000, 3)).tolist(),
            strict=True,
        )
    ]
    for k in range(1, 500):  # sums half-way between two floats, and ones that cancel the product
        x, y = 1.0 + k * 2.0**-52, 1.0 + (k % 7 + 1) * 2.0**-52
        cases += [(x, y, -(x * y)), (x, y, 2.0**-53), (x, y, -(2.0**-53)), (-x, y, 1.0), (x, 0.0, -0.0)]
    cases += [(0.0, 5.0, -0.0), (-0.0, 5.0, -0.0), (1e-300, 1e-300, 0.0), (-1e-300, 1e-300, 0.0), (1e200, 1e100, -1.0)]
    for x, y, z in cases:
        try:
            expected = exactly_rounded_multiply_add(x, y, z)
        except OverflowError:  # past the largest float
            with pytest.raises(OverflowError):
                fused_multiply_add(x, y, z)
            continue
        fused = fused_multiply_add(x, y, z)
        assert fused == expected, (x, y, z)
        if expected == 0:  # the sign of a zero too: an exact zero sum is +0, a product too small to hold keeps its own
            exact = Fraction(x) * Fraction(y) + Fraction(z)
            sign = (
                -1.0 if exact < 0 or (exact == 0 and math.copysign(1, z) < 0 and math.copysign(1, x * y) < 0) else 1.0
            )
            assert math.copysign(1, fused) == sign, (x, y, z)
    with pytest.raises(ValueError):
        fused_multiply_add(math.nan, 1.0, 0.0)
