"""What drives a risk, through the API: /prediction with explain, and /clients, the current clients ranked."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.special import logit

from riskwatch.core.config import Config
from riskwatch.core.imports import sklearn_without_pandas
from riskwatch.core.schema import FEATURES, ID_COLUMN, TARGET
from riskwatch.data.batches import read_ingested_data
from riskwatch.web.app import create_app
from tests.helpers import deploy_plain_logistic_regression, latest_active_rows, served_model

with sklearn_without_pandas():
    pass

RECORDS = [
    {"corporation": "acme", "lastmonth_activity": 3, "lastyear_activity": 412, "number_of_employees": 18},
    {"corporation": "beta", "lastmonth_activity": 250, "lastyear_activity": 3000, "number_of_employees": 90},
    {"corporation": "gamma", "lastmonth_activity": 40, "lastyear_activity": 20, "number_of_employees": 2},
]
CSV_BODY = "corporation,lastmonth_activity,lastyear_activity,number_of_employees\nacme,3,412,18\nbeta,250,3000,90\n"


@pytest.fixture
def client(deployed: Config):
    return create_app(deployed, token="").test_client()


def check_drivers_add_up(answer: dict, model, features: np.ndarray) -> None:
    """Every row's baseline plus drivers is the model's own log-odds, and the row says why in words."""
    expected = logit(model.predict_proba(features)[:, 1])
    for row, log_odds in zip(answer["predictions"], expected, strict=True):
        assert set(row["drivers"]) == set(FEATURES)
        assert abs(answer["baseline_log_odds"] + sum(row["drivers"].values()) - log_odds) < 1e-9
        assert abs(row["log_odds"] - log_odds) < 1e-9
        assert "the typical" in row["reason"] or row["reason"].startswith("no count stands out")


def test_explain_gives_each_row_drivers_that_add_up_to_its_log_odds(client, deployed):
    answer = client.post("/prediction", json={"records": RECORDS, "explain": True})
    assert answer.status_code == 200
    body = answer.get_json()
    assert list(body) == ["model_version", "rows", "baseline_log_odds", "predictions"]
    assert list(body["predictions"][0]) == ["corporation", "label", "probability", "drivers", "log_odds", "reason"]
    features = np.array([[record[name] for name in FEATURES] for record in RECORDS], dtype=float)
    check_drivers_add_up(body, served_model(deployed), features)
    assert body["predictions"][0]["reason"].startswith("activity last month 3, far below the typical ")
    assert body["predictions"][0]["reason"].endswith(", raises the risk most")


def test_explain_in_the_query_string_works_for_get_csv_bodies_and_json(client, deployed):
    by_get = client.get("/prediction?explain=1").get_json()
    assert by_get["rows"] == 500 and "baseline_log_odds" in by_get
    by_csv = client.post("/prediction?explain=1", data=CSV_BODY, content_type="text/csv").get_json()
    by_json = client.post("/prediction?explain=true", json={"records": RECORDS[:2]}).get_json()
    assert by_csv == by_json
    check_drivers_add_up(by_csv, served_model(deployed), np.array([[3, 412, 18], [250, 3000, 90]], dtype=float))


def test_answers_without_explain_are_unchanged(client):
    for answer in (
        client.post("/prediction", json={"records": RECORDS}),
        client.post("/prediction", json={"records": RECORDS, "explain": False}),
        client.post("/prediction?explain=0", data=CSV_BODY, content_type="text/csv"),
    ):
        body = answer.get_json()
        assert list(body) == ["model_version", "rows", "predictions"]
        assert all(list(row) == ["corporation", "label", "probability"] for row in body["predictions"])


@pytest.mark.parametrize(
    ("query", "body"),
    [("", {"records": RECORDS, "explain": "yes"}), ("", {"records": RECORDS, "explain": 1}), ("?explain=maybe", None)],
)
def test_an_explain_that_is_not_yes_or_no_gets_400_naming_it(client, query, body):
    answer = client.post(
        f"/prediction{query}", data=json.dumps(body or {"records": RECORDS}), content_type="application/json"
    )
    assert answer.status_code == 400
    assert answer.get_json()["error"].startswith("explain must be")


def test_a_model_of_another_shape_answers_400_to_explain_and_ranking(client, deployed):
    deploy_plain_logistic_regression(deployed)
    plain = client.post("/prediction", json={"records": RECORDS})
    assert plain.status_code == 200 and plain.get_json()["model_version"] == "v0002"
    for answer in (client.post("/prediction", json={"records": RECORDS, "explain": True}), client.get("/clients")):
        assert answer.status_code == 400
        assert "v0002 is of none of the model families" in answer.get_json()["error"]


def test_ranking_lists_the_active_clients_riskiest_first(client, deployed):
    data = read_ingested_data(deployed.output_folder_path)
    ids = data.table[ID_COLUMN].to_pylist()
    rows = latest_active_rows(ids, data.table[TARGET].to_numpy())
    probabilities = served_model(deployed).predict_proba(data.features()[rows])[:, 1]
    expected = {ids[row]: p for row, p in zip(rows.tolist(), probabilities.tolist(), strict=True)}

    body = client.get("/clients").get_json()
    assert body["model_version"] == "v0001" and body["count"] == len(expected)
    assert len(body["clients"]) == 50
    listed = [client["probability"] for client in body["clients"]]
    assert listed == sorted(listed, reverse=True) and listed[0] == max(expected.values())
    for row in body["clients"]:
        assert row["probability"] == expected[row["corporation"]]
        assert abs(body["baseline_log_odds"] + sum(row["drivers"].values()) - logit(row["probability"])) < 1e-9
        assert list(row) == ["corporation", "probability", "label", "drivers", "log_odds", "reason"]
    assert [row["corporation"] for row in client.get("/clients?limit=5").get_json()["clients"]] == [
        row["corporation"] for row in body["clients"][:5]
    ]
    assert len(client.get("/clients?limit=1000").get_json()["clients"]) == len(expected)


@pytest.mark.parametrize("limit", ["0", "1001", "-3", "ten", "2.5", ""])
def test_ranking_refuses_a_bad_limit_naming_it(client, limit):
    answer = client.get(f"/clients?limit={limit}")
    assert answer.status_code == 400 and answer.get_json()["error"].startswith("limit must be")


def test_ranking_without_ingested_data_says_so(client, deployed):
    shutil.rmtree(deployed.output_folder_path)
    answer = client.get("/clients")
    assert answer.status_code == 503 and "run ingestion.py" in answer.get_json()["error"]
