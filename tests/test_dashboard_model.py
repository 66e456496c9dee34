"""The model page (/dashboard/model) through Flask's test client, for a model of each family and of none.

The additive and boosted models are trained on the project's non-linear world (generate_data.py), once per
module; the numbers the page shows are checked against the served model's own arithmetic.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from markupsafe import escape

from riskwatch.core.config import Config, ModelSettings, load_config
from riskwatch.core.schema import FEATURE_LABELS, FEATURES
from riskwatch.data.batches import TrainingWindow, read_ingested_data
from riskwatch.data.generator import write_world_data
from riskwatch.model.clients import ClientTable
from riskwatch.model.evaluation import score_model
from riskwatch.model.riskmodels import ADDITIVE, BOOSTED, LINEAR
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.stages.scoring import write_scores
from riskwatch.stages.training import FitContext, describe_training_data, fit_and_save, train_from_folder
from riskwatch.state.artifacts import MODEL_FILE, current_version_folder, load_deployed_version
from riskwatch.state.history import DEPLOYED, open_history, save_run, start_run
from riskwatch.state.runs import CandidateScore, RunFields
from riskwatch.web.app import create_app
from riskwatch.web.dashboard.charts import Chart, Series, render_chart, y_ticks
from riskwatch.web.dashboard.model import SAMPLE_LIMIT, bin_dependence, format_count, measure_effects, sample_rows
from tests.helpers import deploy, deploy_plain_logistic_regression, write_config

PAGE = "/dashboard/model"
WORLD_ROWS = 3_000


def build_world_project(root: Path, families: tuple[str, ...]) -> Config:
    """A project on the non-linear world, trained choosing among ``families``, scored and deployed (v0001)."""
    write_world_data(root, "nonlinear", seed=3, source_rows=WORLD_ROWS, test_rows=1_000)
    config = load_config(write_config(root))
    ingest_folder(config.input_folder_path, config.output_folder_path)
    train_from_folder(config.output_folder_path, config.output_model_path, ModelSettings(families=families))
    write_scores(score_model(config.output_model_path / MODEL_FILE, config.test_data_path), config.output_model_path)
    deploy(config)
    return config


@pytest.fixture(scope="module")
def additive(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """Linear against additive on the non-linear world: the additive family wins by far."""
    return build_world_project(tmp_path_factory.mktemp("additive"), (LINEAR, ADDITIVE))


@pytest.fixture(scope="module")
def boosted(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return build_world_project(tmp_path_factory.mktemp("boosted"), (BOOSTED,))


def open_page(config: Config) -> tuple[str, Flask]:
    """The model page's HTML, and the app (for its client table)."""
    app = create_app(config, token="")
    answer = app.test_client().get(PAGE)
    assert answer.status_code == 200 and answer.mimetype == "text/html"
    return answer.get_data(as_text=True), app


def client_table(app: Flask) -> ClientTable:
    from riskwatch.web.dashboard.views import read_clients, read_serving

    with app.app_context():
        return read_clients(read_serving())


def figure_rows(page: str, title_start: str) -> list[list[str]]:
    """The cells of the body of the table whose caption starts with ``title_start``, row by row."""
    caption = next(f"<caption>{text}" for text in (escape(title_start), title_start) if f"<caption>{text}" in page)
    start = page.index(caption)
    body = page[page.index("<tbody>", start) : page.index("</tbody>", start)]
    return [
        [html.unescape(cell) for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    ]


def expected_grid(column: np.ndarray) -> np.ndarray:
    """Forty counts evenly spaced on the log1p scale from the 1st to the 99th percentile: computed here directly."""
    low, high = np.percentile(np.log1p(column), [1, 99])
    return np.expm1(np.linspace(low, high, 40))


def label(name: str) -> str:
    return FEATURE_LABELS[name][0].upper() + FEATURE_LABELS[name][1:]


# ---------------------------------------------------------------- the linear model (tests/conftest.py's project)


def test_the_model_page_answers_and_is_in_the_navigation_between_health_and_runs(deployed):
    page, _ = open_page(deployed)
    assert "<h1>The model</h1>" in page
    assert '<a href="/dashboard/model" aria-current="page">The model</a>' in page
    assert page.index('href="/dashboard/model-health"') < page.index('href="/dashboard/model"')
    assert page.index('href="/dashboard/model"') < page.index('href="/dashboard/runs"')
    overview = create_app(deployed, token="").test_client().get("/dashboard/").get_data(as_text=True)
    assert '<a href="/dashboard/model">The model</a>' in overview


def test_a_linear_model_names_its_family_threshold_and_training(deployed):
    page, _ = open_page(deployed)
    info = load_deployed_version(current_version_folder(deployed.prod_deployment_path)).model_info
    assert "v0001 serves the linear family: LogisticRegression on log1p-scaled, standardised counts." in page
    assert f"{info.decision_threshold * 100:.1f}%: a client whose exit probability" in page
    assert f"{info.training_rows:,} rows: {info.training_window.describe()}" in page
    assert info.trained_at.replace("T", " ").replace("Z", "") in page
    # tests/helpers.py trains the linear family alone: no comparison, but its cross-validated calibration
    assert (
        "No comparison of families was made for v0001. Only linear is listed in model.families (cross-validated F1"
        in page
    )
    assert "No calibration check is recorded" not in page and "out-of-fold probabilities of 5-fold" in page


def test_a_linear_curve_is_its_coefficient_times_the_standardised_log_count(deployed):
    page, app = open_page(deployed)
    table = client_table(app)
    model = load_deployed_version(current_version_folder(deployed.prod_deployment_path)).model
    pipeline = model.estimator.named_steps
    coefficients = pipeline["classifier"].coef_[0]
    mean, scale = pipeline["scale"].mean_, pipeline["scale"].scale_
    assert page.count("<svg") == 1 + len(FEATURES)  # the importance bars and one curve per feature
    for j, name in enumerate(FEATURES):
        grid = expected_grid(table.features[:, j])
        expected = coefficients[j] * (np.log1p(grid) - mean[j]) / scale[j]
        rows = figure_rows(page, f"{label(name)}: its change in the log-odds of exit at each count")
        assert [row[0] for row in rows] == [format_count(count) for count in grid]
        np.testing.assert_allclose([float(row[1]) for row in rows], expected, rtol=0, atol=5e-4)
        assert rows[0][2].endswith("%")


# ---------------------------------------------------------------- every family: mean |contribution|


@pytest.mark.parametrize("which", ["deployed", "additive", "boosted"])
def test_the_mean_size_of_each_contribution_is_the_client_tables(which, request):
    config = request.getfixturevalue(which)
    page, app = open_page(config)
    table = client_table(app)
    assert len(table.ids) <= SAMPLE_LIMIT  # every current client counts, so the mean is over all of them
    expected = np.abs(table.drivers_model.contributions(table.features)).mean(axis=0)
    rows = figure_rows(page, "How much each count moves the risk")
    assert [row[0] for row in rows] == [label(name) for name in FEATURES]
    np.testing.assert_allclose([float(row[1]) for row in rows], expected, rtol=0, atol=5e-4)
    assert f"over all {len(table.ids):,} current clients" in page
    effects = measure_effects(table.drivers_model, table.features)
    np.testing.assert_allclose([effects.mean_absolute[name] for name in FEATURES], expected, rtol=1e-12)


# ---------------------------------------------------------------- the additive model


def test_an_additive_model_shows_every_familys_cross_validated_scores_and_why(additive):
    page, _ = open_page(additive)
    info = load_deployed_version(current_version_folder(additive.prod_deployment_path)).model_info
    choice = info.family_choice
    assert info.family == ADDITIVE and "v0001 serves the additive family" in page
    rows = figure_rows(page, "Every family's cross-validated scores")
    assert [row[0].split(" ")[0] for row in rows] == [LINEAR, ADDITIVE]
    linear, chosen = choice.score_of(LINEAR), choice.score_of(ADDITIVE)
    assert rows[0][1:] == [f"{linear.f1:.3f}", f"{min(linear.fold_f1):.3f}–{max(linear.fold_f1):.3f}"] + [
        f"{linear.calibration_error:.3f}",
        "–",
        "–",
        "–",
        "–",
    ]
    assert "serving" in rows[1][0] and rows[1][1] == f"{chosen.f1:.3f}"
    assert rows[1][4:] == [LINEAR, f"{chosen.gain:+.3f}", f"{chosen.p_no_gain * 100:.1f}%", "yes"]
    assert choice.reason[1:] in page
    check = info.calibration
    assert f"Expected calibration error {check.error:.3f}" in page and f"Measured on {check.rows:,} rows" in page


def test_an_additive_curve_is_the_models_contribution_at_each_grid_point(additive):
    page, app = open_page(additive)
    table = client_table(app)
    model = table.drivers_model
    assert model.family == ADDITIVE
    effects = measure_effects(model, table.features)
    someone = table.features[len(table.ids) // 2]
    for j, name in enumerate(FEATURES):
        grid = expected_grid(table.features[:, j])
        typical = np.tile(model.typical_counts, (grid.size, 1))
        typical[:, j] = grid
        expected = model.contributions(typical)[:, j]
        # a feature's contribution does not depend on the others: any client's other counts give the same curve
        theirs = np.tile(someone, (grid.size, 1))
        theirs[:, j] = grid
        np.testing.assert_allclose(model.contributions(theirs)[:, j], expected, rtol=0, atol=1e-12)
        curve = effects.curves[j]
        assert curve.feature == name
        np.testing.assert_allclose(curve.counts, grid, rtol=1e-12)
        np.testing.assert_allclose(curve.contributions, expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(curve.probabilities, model.score(typical)[0], rtol=0, atol=1e-12)
        rows = figure_rows(page, f"{label(name)}: its change in the log-odds of exit at each count")
        assert [row[1] for row in rows] == [f"{value:+.3f}" for value in expected]
        assert [row[2] for row in rows] == [f"{p:.1%}" for p in model.score(typical)[0]]
    assert "binned by their count" not in page


# ---------------------------------------------------------------- the boosted model


def test_a_boosted_model_shows_a_dependence_plot_per_feature_from_the_clients_contributions(boosted):
    page, app = open_page(boosted)
    table = client_table(app)
    model = table.drivers_model
    assert model.family == BOOSTED and "v0001 serves the boosted family: LightGBM" in page
    assert (
        "No comparison of families was made for v0001. Only boosted is listed in model.families (cross-validated"
        in page
    )
    assert page.count("<svg") == 1 + len(FEATURES) and "log-odds of exit at each count" not in page
    contributions = model.contributions(table.features)
    for j, name in enumerate(FEATURES):
        column = np.log1p(table.features[:, j])
        low, high = np.percentile(column, [1, 99])
        inside = (column >= low) & (column <= high)
        rows = figure_rows(page, f"{label(name)}: the clients' change in the log-odds of exit, binned by their count")
        assert 5 <= len(rows) <= 30 and sum(int(row[2].replace(",", "")) for row in rows) == int(inside.sum())
        for row in rows:
            smallest, largest = (float(part.replace(",", "")) for part in row[1].split("–"))
            members = inside & (table.features[:, j] >= smallest) & (table.features[:, j] <= largest)
            assert int(members.sum()) == int(row[2].replace(",", ""))
            part = contributions[members, j]
            assert row[0] == format_count(float(np.median(table.features[members, j])))
            assert row[3:] == [f"{value:+.3f}" for value in (part.mean(), *np.percentile(part, [10, 90]))]


def test_a_challenger_the_monitoring_job_deployed_shows_the_candidates_of_its_run(deployed):
    data = read_ingested_data(deployed.output_folder_path)
    window = TrainingWindow("recent", 1, data.latest_batch, data.rows, held_out_from_batch=data.latest_batch + 1)
    fit_and_save(
        BOOSTED,
        data.features(),
        data.labels(),
        describe_training_data(deployed.output_folder_path),
        ModelSettings(),
        deployed.output_model_path,
        FitContext(0.0, window),  # as fullprocess.py trains a challenger: no family choice recorded
    )
    write_scores(
        score_model(deployed.output_model_path / MODEL_FILE, deployed.test_data_path), deployed.output_model_path
    )
    deploy(deployed)
    candidates = (
        CandidateScore("all", "all rows, batch 1", 1000, 1, 1, 0.512, 0.498, 0.505, LINEAR),
        CandidateScore("recent", "recent rows, batch 1", 1000, 1, 1, 0.561, 0.547, 0.552, BOOSTED),
    )
    connection = open_history(deployed.history_path)
    try:
        run = start_run(connection, "2026-11-02T10:00:00Z", 100, "v0001")
        fields = RunFields(
            outcome=DEPLOYED,
            decision="The challenger beat the champion on the recent rows.",
            model_version_after="v0002",
            candidates=candidates,
            winning_window="recent",
            winning_family=BOOSTED,
        )
        save_run(connection, run, fields)
    finally:
        connection.close()
    page, _ = open_page(deployed)
    assert "v0002 serves the boosted family" in page
    assert f"deployed by run #{run}, started 2026-11-02 10:00:00" in page
    assert "The challenger beat the champion on the recent rows." in page
    rows = figure_rows(page, f"The candidates run #{run} trained")
    assert rows[0] == ["all rows, batch 1", LINEAR, "1,000", "0.512", "0.498", "0.505"]
    assert rows[1][0].startswith("recent rows, batch 1") and "deployed" in rows[1][0]
    assert rows[1][1:] == [BOOSTED, "1,000", "0.561", "0.547", "0.552"]
    assert "No calibration check is recorded for v0002." in page


# ---------------------------------------------------------------- no family, no model


def test_a_model_of_no_family_gets_a_sentence_and_no_chart(deployed):
    deploy_plain_logistic_regression(deployed)
    page, _ = open_page(deployed)
    assert "v0002 serves a model of none of the families" in page
    assert "This model's risk cannot be split into drivers" in page
    assert "<svg" not in page and "The numbers" not in page


def test_the_page_answers_before_anything_is_deployed(project):
    answer = create_app(project, token="").test_client().get(PAGE)
    assert answer.status_code == 200 and "No model is deployed yet" in answer.get_data(as_text=True)


def test_with_a_token_the_page_asks_to_sign_in(deployed):
    answer = create_app(deployed, token="a-token").test_client().get(PAGE)
    assert answer.status_code == 302 and "/sign-in" in answer.headers["Location"]


def test_the_effects_are_computed_once_per_client_table(deployed, monkeypatch):
    from riskwatch.web.dashboard import model as dashboard_model

    calls = []
    measure = dashboard_model.measure_effects
    monkeypatch.setattr(dashboard_model, "measure_effects", lambda *args: calls.append(1) or measure(*args))
    client = create_app(deployed, token="").test_client()
    assert client.get(PAGE).status_code == 200 and client.get(PAGE).status_code == 200
    assert len(calls) == 1
    final = deployed.output_folder_path / "finaldata.csv"
    final.write_text(final.read_text() + "newcorp,1,1,1,0\n")
    assert client.get(PAGE).status_code == 200 and len(calls) == 2


# ---------------------------------------------------------------- the pieces


def test_a_sample_of_rows_is_seeded_ordered_and_at_most_the_limit():
    assert sample_rows(10, limit=20).tolist() == list(range(10))
    rows = sample_rows(100_000, limit=5_000)
    assert rows.size == 5_000 and np.all(np.diff(rows) > 0) and rows.max() < 100_000
    assert np.array_equal(rows, sample_rows(100_000, limit=5_000))


def test_binning_counts_every_client_inside_the_span_once():
    rng = np.random.default_rng(4)
    column = np.rint(rng.lognormal(4, 1.5, 2_000))
    contributions = np.log1p(column) * 0.5
    bins = bin_dependence(column, contributions, bins=12)
    low, high = np.percentile(np.log1p(column), [1, 99])
    inside = (np.log1p(column) >= low) & (np.log1p(column) <= high)
    assert bins.clients.sum() == inside.sum() and bins.left_out == (~inside).sum()
    filled = bins.clients > 0
    assert np.all(np.diff(bins.mean[filled]) >= 0)  # the contribution grows with the count here
    assert np.all(bins.low[filled] <= bins.mean[filled]) and np.all(bins.mean[filled] <= bins.high[filled])
    assert np.all(np.isnan(bins.mean[~filled]))


def test_chart_ticks_are_round_numbers_and_the_x_axis_can_be_named():
    assert y_ticks(-1.246, 3.186) == [-1.0, 0.0, 1.0, 2.0, 3.0]
    assert y_ticks(0.0, 1.458) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    svg = render_chart(Chart("t", ["1", "2"], [Series("s", [0.2, -0.4])], "change", x_label="head-count (log)"))
    assert ">head-count (log)</text>" in svg and '">0.0</text>' in svg and '">-0.4</text>' in svg
