"""The dashboard's pages through Flask's test client: every page, the CSV, search, sort, paging, drivers, sign-in."""

from __future__ import annotations

import contextlib
import csv
import io
import re

import numpy as np
import pytest
from scipy.special import logit

from riskwatch.core.config import Config
from riskwatch.core.schema import FEATURES, ID_COLUMN
from riskwatch.state.artifacts import CONFUSION_MATRIX_FILE, REPORT_FILE, current_version_folder, load_deployed_version
from riskwatch.state.history import open_history, save_run, start_run
from riskwatch.state.runs import RunFields
from riskwatch.web.app import create_app
from riskwatch.web.dashboard.access import session_secret
from riskwatch.web.guard import ACCESS_FOLDER, SECRET_FILE
from tests.helpers import active_clients, add_runs, deploy, train_and_score

PAGES = tuple(f"/dashboard{page}" for page in ("/", "/clients", "/model-health", "/runs", "/runs?all=1", "/system"))
TOKEN = "s3cret-token"


@pytest.fixture
def app(deployed: Config):
    add_runs(deployed)
    return create_app(deployed, token="")


@pytest.fixture
def client(app):
    return app.test_client()


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_every_page_answers_html_without_a_token(client):
    for page in PAGES:
        answer = client.get(page)
        assert answer.status_code == 200, page
        assert answer.mimetype == "text/html" and b"<h1>" in answer.data, page


def test_the_overview_shows_version_scores_health_last_run_and_risk(client, deployed):
    page = client.get("/dashboard/").get_data(as_text=True)
    deployed_version = load_deployed_version(current_version_folder(deployed.prod_deployment_path))
    assert "v0001" in page and ">ok<" in page
    assert f"{deployed_version.metrics.f1:.3f}" in page and f"{deployed_version.metrics.roc_auc:.3f}" in page
    assert "Decision number 2 in one sentence." in page and "no new data" in page
    ids, features = active_clients(deployed)
    probabilities = deployed_version.model.predict_proba(features)[:, 1]
    at_risk = int((probabilities >= deployed_version.model.threshold).sum())
    assert f'<p class="big">{at_risk:,}</p>' in page
    assert f'<p class="big">{probabilities.sum():,.0f}</p>' in page


def test_the_expected_exits_say_how_the_latest_calibration_test_of_the_serving_version_came_out(client, deployed):
    page = client.get("/dashboard/").get_data(as_text=True)
    assert "No labelled batch has tested the calibration of v0001 yet." in page
    with contextlib.closing(open_history(deployed.history_path)) as connection:
        run = start_run(connection, "2026-11-10T10:00:00Z", 300, "v0001")
        tested = RunFields(outcome="kept", new_rows=3000, expected_exits=767.2, expected_exits_low=718.4)
        tested = tested.updated(RunFields(expected_exits_high=815.9, observed_exits=1039, miscalibrated=True))
        save_run(connection, run, tested)
    page = client.get("/dashboard/").get_data(as_text=True)
    assert (
        f"The latest calibration test of v0001 (run {run}, 3,000 labelled rows): 767 exits expected, 1,039 observed "
        "(+35%), outside the range a calibrated model shows (718-816): its expected exits were that far off."
    ) in page


def test_model_health_charts_calibration_and_data_integrity_per_run(client, deployed):
    page = client.get("/dashboard/model-health").get_data(as_text=True)
    assert "Data integrity" not in page and "Exits observed" not in page  # no run tested them
    with contextlib.closing(open_history(deployed.history_path)) as connection:
        run = start_run(connection, "2026-11-10T10:00:00Z", 300, "v0001")
        fields = RunFields(outcome="quarantined", new_rows=3000, reconstruction_error=1.1396)
        fields = fields.updated(RunFields(reconstruction_expected=0.6922, reconstruction_threshold=0.8307))
        fields = fields.updated(RunFields(integrity_alarm=True, observed_exits=740, expected_exits=731.5))
        fields = fields.updated(RunFields(expected_exits_low=681.2, expected_exits_high=781.8, miscalibrated=False))
        save_run(connection, run, fields)
    page = client.get("/dashboard/model-health").get_data(as_text=True)
    assert "Data integrity: how far each batch&#39;s rows lie from the training rows&#39; principal axes" in page
    assert "<td>1.140</td><td>0.692</td><td>0.831</td><td>yes</td>" in page
    assert "Exits observed in each labelled batch" in page and "681-782" in page


def test_the_overview_compares_with_the_previous_version(deployed):
    train_and_score(deployed, C=0.01)
    deploy(deployed)
    page = create_app(deployed, token="").test_client().get("/dashboard/").get_data(as_text=True)
    assert "v0002" in page and "v0001 put" in page and "v0001 expected" in page


def test_the_csv_holds_every_active_client_with_the_models_own_probabilities(client, deployed):
    answer = client.get("/dashboard/clients.csv")
    assert answer.status_code == 200 and answer.mimetype == "text/csv"
    assert "attachment" in answer.headers["Content-Disposition"]
    rows = read_csv(answer.get_data(as_text=True))
    ids, features = active_clients(deployed)
    model = load_deployed_version(current_version_folder(deployed.prod_deployment_path)).model
    expected = dict(zip(ids, model.predict_proba(features)[:, 1].tolist(), strict=True))
    assert len(rows) == len(ids) and {row[ID_COLUMN] for row in rows} == set(ids)
    for row in rows:
        assert float(row["probability"]) == expected[row[ID_COLUMN]]
    probabilities = [float(row["probability"]) for row in rows]
    assert probabilities == sorted(probabilities, reverse=True)
    assert [int(row["rank"]) for row in rows] == list(range(1, len(rows) + 1))


def test_search_finds_clients_by_part_of_their_id(client, deployed):
    ids, _ = active_clients(deployed)
    part = ids[0][1:4].upper()
    rows = read_csv(client.get(f"/dashboard/clients.csv?q={part}").get_data(as_text=True))
    assert rows and all(part.lower() in row[ID_COLUMN].lower() for row in rows)
    assert len(rows) == sum(part.lower() in name.lower() for name in ids)
    page = client.get(f"/dashboard/clients?q={part}").get_data(as_text=True)
    assert ids[0] in page or len(rows) > 50
    assert "No active client id contains" in client.get("/dashboard/clients?q=zzzzzzzzzz").get_data(as_text=True)


@pytest.mark.parametrize("key", ["probability", ID_COLUMN, *FEATURES])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_sorting_orders_the_table_and_the_csv(client, key, order):
    rows = read_csv(client.get(f"/dashboard/clients.csv?sort={key}&order={order}").get_data(as_text=True))
    values = [row[key] if key == ID_COLUMN else float(row[key]) for row in rows]
    assert values == sorted(values, reverse=order == "desc")
    page = client.get(f"/dashboard/clients?sort={key}&order={order}&per=25").get_data(as_text=True)
    shown = re.findall(r'<a href="/dashboard/clients/([^"]+)">', page)
    assert shown == [row[ID_COLUMN] for row in rows[:25]]


def test_paging_shows_consecutive_slices(client):
    rows = read_csv(client.get("/dashboard/clients.csv").get_data(as_text=True))
    second = client.get("/dashboard/clients?per=25&page=2").get_data(as_text=True)
    assert re.findall(r'<a href="/dashboard/clients/([^"]+)">', second) == [row[ID_COLUMN] for row in rows[25:50]]
    assert f"Showing 26–50 of {len(rows):,}" in second
    assert 'rel="prev"' in second and 'rel="next"' in second
    last = client.get("/dashboard/clients?per=25&page=9999").get_data(as_text=True)
    assert 'rel="next"' not in last
    assert client.get("/dashboard/clients?per=7&page=x&sort=nonsense&order=up").status_code == 200


def test_a_client_page_shows_its_rows_and_drivers_that_add_up(app, client, deployed):
    ids, features = active_clients(deployed)
    model = load_deployed_version(current_version_folder(deployed.prod_deployment_path)).model
    probabilities = model.predict_proba(features)[:, 1]
    for index in (int(np.argmax(probabilities)), int(np.argmin(probabilities)), 0):
        page = client.get(f"/dashboard/clients/{ids[index]}").get_data(as_text=True)
        assert f"Client {ids[index]}" in page
        assert any(words in page for words in ("raises the risk most", "lowers the risk most", "no count stands out"))
        assert "Its rows as they arrived" in page
        with app.app_context():
            from riskwatch.web.dashboard.views import read_clients, read_serving

            detail = read_clients(read_serving()).detail(ids[index])
        assert detail.probability == probabilities[index]
        assert abs(detail.baseline + sum(detail.contributions.values()) - logit(probabilities[index])) < 1e-9
        assert detail.rows[-1].values == {name: int(features[index][j]) for j, name in enumerate(FEATURES)}
        assert all(row.batch >= 1 for row in detail.rows)
    assert client.get("/dashboard/clients/nobody-has-this-id").status_code == 404


def test_the_runs_page_lists_runs_newest_first_with_details(client):
    page = client.get("/dashboard/runs").get_data(as_text=True)
    assert page.index("#3") < page.index("#2") < page.index("#1") and "#4" not in page
    assert "<details>" in page and "batch_1.csv" in page and "all rows" in page
    assert "#4" in client.get("/dashboard/runs?all=1").get_data(as_text=True)


def test_model_health_draws_charts_with_values_on_hover(client):
    page = client.get("/dashboard/model-health").get_data(as_text=True)
    assert page.count("<svg") >= 4
    assert "<title>F1 on new rows, #1: 0.600</title>" in page
    assert "deployed v0002" in page


def test_only_the_report_and_the_plot_are_served_from_the_model_folder(client, deployed):
    (deployed.output_model_path / REPORT_FILE).write_bytes(b"%PDF-1.4 test")
    (deployed.output_model_path / CONFUSION_MATRIX_FILE).write_bytes(b"\x89PNG test")
    # a served file stays open until its response is closed, as a WSGI server closes it
    with client.get("/dashboard/files/report") as answer:
        assert answer.data == b"%PDF-1.4 test"
    with client.get("/dashboard/files/confusion-matrix") as answer:
        assert answer.data == b"\x89PNG test"
    for name in ("trainedmodel.pkl", "metrics.json", "..%2Fconfig.json"):
        assert client.get(f"/dashboard/files/{name}").status_code == 404
    assert 'href="/dashboard/files/report"' in client.get("/dashboard/system").get_data(as_text=True)


def test_pages_answer_before_anything_is_deployed(project):
    client = create_app(project, token="").test_client()
    for page in PAGES:
        assert client.get(page).status_code == 200, page
    assert "No model is deployed" in client.get("/dashboard/").get_data(as_text=True)
    assert client.get("/dashboard/clients.csv").status_code == 503


def test_the_client_table_is_scored_once_per_version_and_data(app, deployed):
    from riskwatch.web.dashboard.views import read_clients, read_serving

    with app.app_context():
        first = read_clients(read_serving())
        assert read_clients(read_serving()) is first
        final = deployed.output_folder_path / "finaldata.csv"
        final.write_text(final.read_text() + "newcorp,1,1,1,0\n")
        again = read_clients(read_serving())
    assert again is not first and "newcorp" in again.ids


def sign_in_form(client, path: str = "/dashboard/sign-in") -> str:
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


@pytest.fixture
def guarded(deployed):
    return create_app(deployed, token=TOKEN).test_client()


def test_with_a_token_pages_ask_to_sign_in_and_the_token_never_goes_in_a_url(guarded):
    for page in PAGES:
        answer = guarded.get(page)
        assert answer.status_code == 302 and "/sign-in" in answer.headers["Location"], page
    csrf = sign_in_form(guarded)
    answer = guarded.post("/dashboard/sign-in", data={"token": TOKEN, "csrf": csrf, "next": "/dashboard/runs"})
    assert answer.status_code == 302 and answer.headers["Location"] == "/dashboard/runs"
    assert TOKEN not in answer.headers["Location"]
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    for page in PAGES:
        assert guarded.get(page).status_code == 200, page
    assert guarded.get("/dashboard/clients.csv").status_code == 200


def test_a_wrong_token_is_refused(guarded):
    csrf = sign_in_form(guarded)
    answer = guarded.post("/dashboard/sign-in", data={"token": "wrong", "csrf": csrf})
    assert answer.status_code == 401 and "not the one" in answer.get_data(as_text=True)
    assert guarded.get("/dashboard/").status_code == 302


def test_a_form_without_its_csrf_token_is_refused(guarded):
    sign_in_form(guarded)
    assert guarded.post("/dashboard/sign-in", data={"token": TOKEN}).status_code == 400
    assert guarded.post("/dashboard/sign-in", data={"token": TOKEN, "csrf": "forged"}).status_code == 400
    assert guarded.get("/dashboard/").status_code == 302
    csrf = sign_in_form(guarded)
    guarded.post("/dashboard/sign-in", data={"token": TOKEN, "csrf": csrf})
    assert guarded.post("/dashboard/sign-out", data={}).status_code == 400
    assert guarded.get("/dashboard/").status_code == 200


def test_sign_out_ends_the_session(guarded):
    csrf = sign_in_form(guarded)
    guarded.post("/dashboard/sign-in", data={"token": TOKEN, "csrf": csrf})
    csrf = re.search(r'name="csrf" value="([^"]+)"', guarded.get("/dashboard/").get_data(as_text=True)).group(1)
    answer = guarded.post("/dashboard/sign-out", data={"csrf": csrf})
    assert answer.status_code == 302 and "/sign-in" in answer.headers["Location"]
    assert guarded.get("/dashboard/").status_code == 302


def test_the_json_api_keeps_its_bearer_token_whatever_the_session(guarded):
    csrf = sign_in_form(guarded)
    guarded.post("/dashboard/sign-in", data={"token": TOKEN, "csrf": csrf})
    assert guarded.get("/version").status_code == 401
    assert guarded.get("/version", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_sign_in_sends_people_back_to_this_site_only(guarded):
    csrf = sign_in_form(guarded)
    answer = guarded.post(
        "/dashboard/sign-in", data={"token": TOKEN, "csrf": csrf, "next": "https://elsewhere.example/"}
    )
    assert answer.headers["Location"] == "/dashboard/"


def test_every_worker_signs_sessions_with_the_same_key(deployed):
    first, second = create_app(deployed, token=TOKEN), create_app(deployed, token=TOKEN)
    server_secret = (deployed.prod_deployment_path / ACCESS_FOLDER / SECRET_FILE).read_bytes()
    assert first.secret_key == second.secret_key == session_secret(server_secret, TOKEN)
    assert create_app(deployed, token="other").secret_key != first.secret_key


def test_pages_forbid_framing_and_scripts_and_are_not_cached(client):
    answer = client.get("/dashboard/clients")
    policy = answer.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'none'" in policy
    assert answer.headers["Cache-Control"] == "no-store"


def test_the_overview_says_degraded_and_why_when_the_deployed_version_cannot_be_loaded(app, client, deployed):
    train_and_score(deployed, C=0.01)
    deploy(deployed)
    (current_version_folder(deployed.prod_deployment_path) / "trainedmodel.pkl").write_bytes(b"not a model")
    page = client.get("/dashboard/").get_data(as_text=True)
    assert ">degraded<" in page and "v0002 cannot be loaded" in page and "v0001 serves" in page


def test_the_pages_live_under_dashboard_and_the_root_leads_there(client, guarded):
    for test_client in (client, guarded):  # no token needed to be sent on to the sign-in
        answer = test_client.get("/")
        assert answer.status_code == 302 and answer.headers["Location"] == "/dashboard/"
    with client.get("/dashboard/static/dashboard.css") as answer:
        assert answer.status_code == 200
    assert 'href="/dashboard/static/dashboard.css"' in client.get("/dashboard/").get_data(as_text=True)
    for old in ("/model-health", "/runs", "/system", "/sign-in", "/clients.csv", "/ranking"):
        assert client.get(old).status_code == 404, old
    assert client.get("/clients").get_json()["clients"]  # the JSON list, not the page


def test_a_runs_drift_charts_compare_with_the_batches_the_run_recorded_not_a_sentence():
    from riskwatch.state.runs import StoredRun
    from riskwatch.web.dashboard.views import reference_batches

    recorded = StoredRun(
        started_at="2026-01-01T00:00:00Z",
        outcome="kept",
        id=9,
        first_batch=7,
        last_batch=7,
        data_drift_reference="reworded: any sentence at all",
        data_reference_first_batch=3,
        data_reference_last_batch=5,
    )
    assert reference_batches(recorded, [recorded], None) == (3, 5)
    older = StoredRun(started_at="2026-01-01T00:00:00Z", outcome="kept", id=4, first_batch=6, last_batch=6)
    assert reference_batches(older, [older], None) == (1, 5)  # recorded before the batches were: all rows before
