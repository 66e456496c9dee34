"""The API through Flask's test client: answers, bad input, path refusals, tokens and model swaps."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from riskwatch.core.config import Config, load_config
from riskwatch.core.schema import FEATURES, read_feature_file
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.state.artifacts import (
    DIAGNOSTICS_FILE,
    FINAL_DATA,
    MODEL_FILE,
    VERSIONS_FOLDER,
    current_version_folder,
    load_model,
)
from riskwatch.state.history import open_history, save_run, start_run
from riskwatch.state.runs import FeatureDrift, RunFields, RunFile
from riskwatch.web.app import create_app
from tests import history_rules
from tests.helpers import deploy, train_and_score, write_config

HEADER = ",".join(FEATURES)
RECORD = {"corporation": "acme", "lastmonth_activity": 37, "lastyear_activity": 412, "number_of_employees": 18}
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def client(deployed: Config):
    return create_app(deployed, token="").test_client()


def predict_json(client, body):
    return client.post("/prediction", data=json.dumps(body), content_type="application/json")


def deployed_model(config: Config):
    return load_model(current_version_folder(config.prod_deployment_path) / MODEL_FILE)


def test_prediction_by_file_location_equals_the_models_own_predict_proba(client, deployed):
    answer = predict_json(client, {"filelocation": "testdata/testdata.csv"})
    assert answer.status_code == 200
    body = answer.get_json()
    batch = read_feature_file(deployed.test_data_path / "testdata.csv")
    model = deployed_model(deployed)
    assert body["model_version"] == "v0001" and body["rows"] == batch.rows == 500
    assert [row["corporation"] for row in body["predictions"]] == batch.ids
    probabilities = np.array([row["probability"] for row in body["predictions"]])
    np.testing.assert_array_equal(probabilities, model.predict_proba(batch.features)[:, 1])
    np.testing.assert_array_equal([row["label"] for row in body["predictions"]], model.predict(batch.features))


def test_a_file_changed_since_the_last_request_is_read_again(client, deployed):
    data_file = deployed.test_data_path / "one.csv"
    data_file.write_text(f"corporation,{HEADER}\nacme,10,400,18\n")
    first = predict_json(client, {"filelocation": "testdata/one.csv"}).get_json()["predictions"][0]
    assert predict_json(client, {"filelocation": "testdata/one.csv"}).get_json()["predictions"][0] == first
    data_file.write_text(f"corporation,{HEADER}\nacme,90,400,18\n")  # edited in place, same size
    edited = predict_json(client, {"filelocation": "testdata/one.csv"}).get_json()["predictions"][0]
    replacement = deployed.test_data_path / "one.tmp"
    replacement.write_text(f"corporation,{HEADER}\nbeta,10,400,18\n")
    os.replace(replacement, data_file)
    replaced = predict_json(client, {"filelocation": "testdata/one.csv"}).get_json()["predictions"][0]
    assert edited["probability"] < first["probability"]  # more activity, less risk
    assert replaced == {**first, "corporation": "beta"}


def test_prediction_of_json_records_csv_body_and_upload_agree(client, deployed):
    by_records = predict_json(client, {"records": [RECORD, {**RECORD, "corporation": "beta", "lastmonth_activity": 0}]})
    csv_text = f"corporation,{HEADER}\nacme,37,412,18\nbeta,0,412,18\n"
    by_csv = client.post("/prediction", data=csv_text, content_type="text/csv")
    by_upload = client.post(
        "/prediction", data={"file": (io.BytesIO(csv_text.encode()), "clients.csv")}, content_type="multipart/form-data"
    )
    answers = [response.get_json()["predictions"] for response in (by_records, by_csv, by_upload)]
    assert answers[0] == answers[1] == answers[2]
    assert [row["corporation"] for row in answers[0]] == ["acme", "beta"]
    model = deployed_model(deployed)
    expected = model.predict_proba(np.array([[37, 412, 18], [0, 412, 18]], dtype=float))[:, 1]
    np.testing.assert_array_equal([row["probability"] for row in answers[0]], expected)
    assert answers[0][1]["probability"] > answers[0][0]["probability"]  # less activity, more risk


def test_every_format_a_spreadsheet_or_script_may_send_is_read(client):
    upload = '{"corporation": "a", "lastmonth_activity": 1, "lastyear_activity": 2, "number_of_employees": 3}\n' * 2
    as_jsonl = client.post(
        "/prediction", data={"file": (io.BytesIO(upload.encode()), "x.jsonl")}, content_type="multipart/form-data"
    )
    wrapped = json.dumps({"records": [RECORD]}).encode()
    as_json = client.post(
        "/prediction", data={"file": (io.BytesIO(wrapped), "x.json")}, content_type="multipart/form-data"
    )
    old_mac = client.post("/prediction", data=f"id,{HEADER}\r1,2,3,4\r5,6,7,8\r", content_type="text/csv")
    cased = predict_json(client, [{"LastMonth_Activity": 37, " lastyear_activity": 412, "NUMBER_OF_EMPLOYEES": 18}])
    later_ids = predict_json(client, [{k: v for k, v in RECORD.items() if k != "corporation"}, RECORD])
    assert [answer.status_code for answer in (as_jsonl, as_json, old_mac, cased, later_ids)] == [200] * 5
    assert as_jsonl.get_json()["rows"] == 2 and old_mac.get_json()["rows"] == 2
    assert cased.get_json()["predictions"][0]["probability"] == as_json.get_json()["predictions"][0]["probability"]
    assert [row.get("corporation") for row in later_ids.get_json()["predictions"]] == [None, "acme"]


def test_too_many_rows_get_413(deployed):
    config = load_config(write_config(deployed.path.parent, api={"max_rows": 2}))
    answer = (
        create_app(config, token="")
        .test_client()
        .post("/prediction", data=json.dumps({"records": [RECORD] * 3}), content_type="application/json")
    )
    assert answer.status_code == 413
    assert answer.get_json()["error"] == "3 rows is more than the 2 the API scores at once (api.max_rows)"


def test_records_without_ids_and_a_bare_list_are_accepted(client):
    answer = predict_json(client, [{key: value for key, value in RECORD.items() if key != "corporation"}])
    assert answer.status_code == 200
    assert set(answer.get_json()["predictions"][0]) == {"label", "probability"}


def write_data_file(config: Config, name: str, text: str) -> None:
    (config.test_data_path / name).write_text(text, encoding="utf-8")


# (case, request, status, words the error must contain)
BAD_REQUESTS = [
    ("malformed JSON", {"data": '{"records": [', "content_type": "application/json"}, 400, "not valid JSON"),
    ("empty body", {}, 400, "the request is empty"),
    ("empty JSON body", {"data": "", "content_type": "application/json"}, 400, "the request body is empty"),
    ("JSON string", {"json": "hello"}, 400, "must be an object"),
    ("neither key", {"json": {"rows": []}}, 400, "needs 'filelocation'"),
    ("records not a list", {"json": {"records": {"a": 1}}}, 400, "non-empty list"),
    ("no records", {"json": {"records": []}}, 400, "non-empty list"),
    ("record not an object", {"json": {"records": [3]}}, 400, "record 1 is int"),
    (
        "missing column",
        {"json": {"records": [{"lastmonth_activity": 1, "lastyear_activity": 2}]}},
        400,
        "record 1 lacks number_of_employees",
    ),
    ("null value", {"json": {"records": [{**RECORD, "lastyear_activity": None}]}}, 400, "lacks lastyear_activity"),
    (
        "text value",
        {"json": {"records": [{**RECORD, "lastyear_activity": "many"}]}},
        400,
        "lastyear_activity is text, where a number is expected",
    ),
    (
        "boolean value",
        {"json": {"records": [{**RECORD, "number_of_employees": True}]}},
        400,
        "number_of_employees is true",
    ),
    ("list value", {"json": {"records": [{**RECORD, "number_of_employees": [1]}]}}, 400, "where a number is expected"),
    (
        "negative count",
        {"json": {"records": [RECORD, {**RECORD, "lastmonth_activity": -5}]}},
        400,
        "record 2, lastmonth_activity is negative",
    ),
    ("fractional count", {"json": {"records": [{**RECORD, "number_of_employees": 2.5}]}}, 400, "not a whole number"),
    ("huge count", {"json": {"records": [{**RECORD, "number_of_employees": 1e300}]}}, 400, "too large"),
    ("id not scalar", {"json": {"records": [{**RECORD, "corporation": {"a": 1}}]}}, 400, "corporation must be"),
    (
        "CSV missing column",
        {"data": "lastmonth_activity,lastyear_activity\n1,2\n", "content_type": "text/csv"},
        400,
        "missing column number_of_employees",
    ),
    (
        "CSV text in number",
        {"data": f"{HEADER}\n1,lots,3\n", "content_type": "text/csv"},
        400,
        "column lastyear_activity holds text where a number is expected",
    ),
    (
        "CSV negative",
        {"data": f"{HEADER}\n1,2,3\n1,2,-3\n", "content_type": "text/csv"},
        400,
        "row 2, number_of_employees is negative",
    ),
    ("CSV blank cell", {"data": f"{HEADER}\n1,,3\n", "content_type": "text/csv"}, 400, "lastyear_activity is missing"),
    ("CSV header only", {"data": f"{HEADER}\n", "content_type": "text/csv"}, 400, "header but no data rows"),
    ("CSV empty", {"data": "", "content_type": "text/csv"}, 400, "the CSV body: the CSV is empty"),
    ("CSV not UTF-8", {"data": "\ufeffa".encode("utf-16"), "content_type": "text/csv"}, 400, "UTF-16"),
    (
        "upload not client data",
        {"data": {"file": (io.BytesIO(b"name,age\nx,3\n"), "people.csv")}, "content_type": "multipart/form-data"},
        400,
        "not client-activity data",
    ),
    (
        "unsupported type",
        {"data": "<clients/>", "content_type": "application/xml"},
        415,
        "cannot read a body of type application/xml",
    ),
    ("file location not a string", {"json": {"filelocation": 42}}, 400, "must be a non-empty string"),
    ("file location empty", {"json": {"filelocation": " "}}, 400, "must be a non-empty string"),
    ("file location missing file", {"json": {"filelocation": "testdata/nothere.csv"}}, 404, "does not exist"),
    ("file location is a folder", {"json": {"filelocation": "testdata"}}, 400, "is a folder"),
    ("file location not data", {"json": {"filelocation": "testdata/notes.txt"}}, 400, "not a .csv, .json or .jsonl"),
    (
        "file location too long",
        {"json": {"filelocation": "testdata/" + "a" * 300 + ".csv"}},
        400,
        "cannot be read (File name too long)",
    ),
    ("file location a pipe", {"json": {"filelocation": "testdata/pipe.csv"}}, 400, "is not a regular file"),
    ("file location nested JSON", {"json": {"filelocation": "testdata/deep.json"}}, 400, "nested too deeply"),
    (
        "CSV with old Mac line ends, bad",
        {"data": f"{HEADER}\r1,2,-3\r", "content_type": "text/csv"},
        400,
        "row 1, number_of_employees is negative",
    ),
    (
        "file location bad rows",
        {"json": {"filelocation": "testdata/bad.csv"}},
        400,
        "bad.csv: row 2, lastmonth_activity is negative",
    ),
]


@pytest.mark.parametrize(("case", "kwargs", "status", "words"), BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_input_gets_a_4xx_json_error_naming_the_problem(client, deployed, case, kwargs, status, words):
    write_data_file(deployed, "notes.txt", "hello\n")
    write_data_file(deployed, "bad.csv", f"{HEADER}\n1,2,3\n-1,2,3\n")
    write_data_file(deployed, "deep.json", "[" * 100_000 + "]" * 100_000)
    os.mkfifo(deployed.test_data_path / "pipe.csv")
    answer = client.post("/prediction", **kwargs)
    body = answer.get_json()
    assert answer.status_code == status, body
    assert words in body["error"]
    assert body["status"] == status
    assert "Traceback" not in answer.get_data(as_text=True)


# (case, file location, how it escapes the data folders)
TRAVERSALS = [
    ("absolute path", "/etc/passwd"),
    ("absolute path into the project, outside the data", "{root}/config.json"),
    ("parent folder", "../config.json"),
    ("parent folder inside", "testdata/../../etc/passwd"),
    ("parent folder back in", "testdata/../testdata/testdata.csv"),
    ("home folder", "~/.bashrc"),
    ("Windows drive", "C:\\Windows\\win.ini"),
    ("backslash parent", "testdata\\..\\config.json"),
    ("model folder", "models/trainedmodel.pkl"),
    ("deployment folder", "production_deployment/current/trainedmodel.pkl"),
    ("config file", "config.json"),
    ("encoded dots stay literal", "%2e%2e/config.json"),
    ("file link out", "testdata/passwd.csv"),
    ("folder link out", "testdata/models/trainedmodel.pkl"),
]


@pytest.mark.parametrize(("case", "location"), TRAVERSALS, ids=[case for case, _ in TRAVERSALS])
def test_file_locations_outside_the_data_folders_are_refused_with_403(client, deployed, case, location):
    (deployed.test_data_path / "passwd.csv").symlink_to("/etc/passwd")
    (deployed.test_data_path / "models").symlink_to(deployed.output_model_path)
    location = location.format(root=deployed.path.parent)
    for answer in (
        predict_json(client, {"filelocation": location}),
        client.post("/prediction", query_string={"filelocation": location}),
        client.post("/prediction", data={"filelocation": location}),
    ):
        assert answer.status_code == 403, answer.get_json()
        assert answer.get_json()["error"]


def test_an_absolute_path_into_a_data_folder_is_read(client, deployed):
    location = str(deployed.test_data_path / "testdata.csv")
    for answer in (
        predict_json(client, {"filelocation": location}),
        client.post("/prediction", query_string={"filelocation": location}),
        client.post("/prediction", data={"filelocation": location}),
    ):
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()["rows"] == 500


def test_a_test_file_in_the_project_folder_opens_only_itself(deployed):
    shutil.copy(deployed.test_data_path / "testdata.csv", deployed.path.parent / "testdata.csv")
    (deployed.output_model_path / "notes.csv").write_text("api_key,owner\nsecret,me\n")
    config = load_config(write_config(deployed.path.parent, test_data_path="testdata.csv"))
    client = create_app(config, token="").test_client()
    assert predict_json(client, {"filelocation": "testdata.csv"}).status_code == 200
    for location in ("config.json", "models/notes.csv", "models/metrics.json", "production_deployment/metrics.json"):
        assert predict_json(client, {"filelocation": location}).status_code == 403, location


def test_a_data_folder_holding_the_models_is_not_served_by_location(deployed, tmp_path_factory):
    # The ingested data elsewhere: an output folder inside the input folder is refused by the config itself.
    elsewhere = tmp_path_factory.mktemp("ingested")
    config = load_config(write_config(deployed.path.parent, input_folder_path=".", output_folder_path=str(elsewhere)))
    client = create_app(config, token="").test_client()
    assert predict_json(client, {"filelocation": "models/metrics.json"}).status_code == 403
    assert predict_json(client, {"filelocation": "sourceddata/clients_a.csv"}).status_code == 403
    assert predict_json(client, {"filelocation": "testdata/testdata.csv"}).status_code == 200


def test_body_larger_than_the_limit_gets_413(deployed):
    config = load_config(write_config(deployed.path.parent, api={"max_body_mb": 0.01}))
    client = create_app(config, token="").test_client()
    answer = client.post("/prediction", data=f"{HEADER}\n" + "1,2,3\n" * 5000, content_type="text/csv")
    assert answer.status_code == 413
    assert answer.get_json()["error"] == "the request body is larger than the 0.01 MiB the API accepts"


def test_unknown_paths_and_methods_get_json_errors(client):
    assert client.get("/nothing").status_code == 404
    assert client.delete("/prediction").status_code == 405
    assert client.get("/nothing").get_json()["status"] == 404


def test_scoring_and_version_describe_the_deployed_model(client, deployed):
    folder = current_version_folder(deployed.prod_deployment_path)
    metrics = json.loads((folder / "metrics.json").read_text())
    scoring = client.get("/scoring").get_json()
    assert scoring["model_version"] == "v0001"
    assert {key: scoring[key] for key in ("f1", "precision", "recall", "roc_auc")} == {
        key: metrics[key] for key in ("f1", "precision", "recall", "roc_auc")
    }
    assert scoring["test_data_unchanged"] is True and "note" not in scoring
    with open(deployed.test_data_path / "testdata.csv", "a") as handle:
        handle.write("newclient,1,2,3,0\n")
    changed = client.get("/scoring").get_json()
    assert changed["test_data_unchanged"] is False and "changed since this model was scored" in changed["note"]
    version = client.get("/version").get_json()
    assert version["model_version"] == "v0001"
    assert version["metrics"]["f1"] == metrics["f1"]
    assert version["trained_at"] and version["deployed_at"]
    assert client.get("/health").get_json() == {"status": "ok", "model_version": "v0001"}


def test_summarystats_are_those_of_the_ingested_data_and_follow_it(client, deployed):
    data = np.genfromtxt(deployed.output_folder_path / FINAL_DATA, delimiter=",", skip_header=1, usecols=(1, 2, 3, 4))
    stats = client.get("/summarystats").get_json()
    assert stats["rows"] == data.shape[0]
    month = stats["columns"]["lastmonth_activity"]
    assert month["mean"] == pytest.approx(data[:, 0].mean(), abs=1e-6)
    assert month["median"] == pytest.approx(np.median(data[:, 0]))
    assert month["std"] == pytest.approx(data[:, 0].std(ddof=1), abs=1e-6)
    assert set(month) == {"count", "mean", "median", "std", "min", "q1", "q3", "max"}
    (deployed.output_folder_path / FINAL_DATA).write_text(f"corporation,{HEADER},exited\na,1,2,3,0\nb,3,4,5,1\n")
    cut = client.get("/summarystats")  # not the file ingestion wrote: not described as if it were
    assert cut.status_code == 503 and "not the file the last ingestion wrote" in cut.get_json()["error"]
    (deployed.input_folder_path / "more.csv").write_text(f"corporation,{HEADER},exited\nnew-client,1,2,3,0\n")
    ingest_folder(deployed.input_folder_path, deployed.output_folder_path)
    assert client.get("/summarystats").get_json()["rows"] == data.shape[0] + 1


def test_diagnostics_are_served_as_stored_with_their_timestamp(client, deployed):
    answer = client.get("/diagnostics")
    assert answer.status_code == 503
    assert "run diagnostics.py" in answer.get_json()["error"]
    stored = {
        "generated_at": "2026-11-20T10:00:00Z",
        "model_version": "v0001",
        "timing": {"runs": 3, "stages": {"ingestion": {"mean": 0.5}}},
        "missing_data": {"dataset": "x", "rows": 10, "percent": {"corporation": 0.0}, "files": {}, "unreadable": {}},
        "dependencies": [{"package": "flask", "status": "current"}],
        "predictions": {"rows": 500},
    }
    (deployed.output_model_path / DIAGNOSTICS_FILE).write_text(json.dumps(stored))
    body = client.get("/diagnostics").get_json()
    assert body["generated_at"] == "2026-11-20T10:00:00Z"
    assert body["timing"] == stored["timing"]
    assert body["dependencies"] == stored["dependencies"]
    assert body["missing_data"]["percent"] == {"corporation": 0.0}


def test_token_is_needed_everywhere_but_health_when_configured(deployed):
    client = create_app(deployed, token="s3cret").test_client()
    assert client.get("/health").status_code == 200
    for path in ("/scoring", "/version", "/summarystats", "/diagnostics", "/clients"):
        answer = client.get(path)
        assert answer.status_code == 401 and "token" in answer.get_json()["error"]
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/scoring", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/scoring", headers={"Authorization": "bearer s3cret"}).status_code == 200  # any case
    assert client.get("/scoring", headers={"Authorization": "Basic s3cret"}).status_code == 401
    assert predict_json(client, {"records": [RECORD]}).status_code == 401


def test_token_is_read_from_the_configured_environment_variable(deployed, monkeypatch):
    monkeypatch.setenv("RISK_API_TOKEN", "from-env")
    client = create_app(deployed).test_client()
    assert client.get("/scoring").status_code == 401
    assert client.get("/scoring", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_a_new_deployment_is_served_without_restart(client, deployed):
    before = predict_json(client, {"records": [RECORD]}).get_json()
    train_and_score(deployed, C=0.001)
    deploy(deployed)
    after = predict_json(client, {"records": [RECORD]}).get_json()
    assert (before["model_version"], after["model_version"]) == ("v0001", "v0002")
    expected = deployed_model(deployed).predict_proba(np.array([[37, 412, 18]], dtype=float))[0, 1]
    assert after["predictions"][0]["probability"] == expected != before["predictions"][0]["probability"]
    assert client.get("/version").get_json()["previous_version"] == "v0001"


def test_a_version_that_will_not_load_leaves_the_previous_one_serving(client, deployed):
    assert client.get("/health").get_json()["model_version"] == "v0001"
    train_and_score(deployed, C=0.001)
    deploy(deployed)
    (deployed.prod_deployment_path / VERSIONS_FOLDER / "v0002" / MODEL_FILE).write_bytes(b"damaged")
    health = client.get("/health").get_json()
    assert (health["status"], health["model_version"], health["deployed_version"]) == ("degraded", "v0001", "v0002")
    assert health["load_error"] == (
        "versions/v0002: metrics.json holds the scores of another model; run scoring.py after training.py"
    )
    assert predict_json(client, {"records": [RECORD]}).get_json()["model_version"] == "v0001"
    assert client.get("/version").get_json()["deployed_version"] == "v0002"


def test_a_version_that_failed_to_load_is_tried_again_later(client, deployed, monkeypatch):
    train_and_score(deployed, C=0.001)
    deploy(deployed)
    model_file = deployed.prod_deployment_path / VERSIONS_FOLDER / "v0002" / MODEL_FILE
    model_file.write_bytes(b"damaged")
    assert client.get("/health").get_json()["status"] == "degraded"
    shutil.copy(deployed.output_model_path / MODEL_FILE, model_file)  # repaired, say after a disk fault
    assert client.get("/health").get_json()["model_version"] == "v0001"  # not retried at once
    monkeypatch.setattr("riskwatch.web.serving.RETRY_SECONDS", 0.0)
    assert client.get("/health").get_json() == {"status": "ok", "model_version": "v0002"}


def test_broken_server_side_files_get_503_not_500(client, deployed):
    (deployed.output_folder_path / FINAL_DATA).write_text("corporation,exited\na,0\n")
    answer = client.get("/summarystats")
    assert answer.status_code == 503 and "run ingestion.py" in answer.get_json()["error"]
    (deployed.output_model_path / DIAGNOSTICS_FILE).write_text("{not json")
    assert client.get("/diagnostics").status_code == 503
    (deployed.output_model_path / DIAGNOSTICS_FILE).write_text(json.dumps({"generated_at": "x", "missing_data": [1]}))
    assert client.get("/diagnostics").get_json()["missing_data"]["percent"] is None


def test_without_a_deployment_the_api_says_so(project):
    client = create_app(project, token="").test_client()
    health = client.get("/health")
    assert health.status_code == 503 and "run deployment.py" in health.get_json()["error"]
    answer = predict_json(client, {"records": [RECORD]})
    assert answer.status_code == 503 and "no model is deployed" in answer.get_json()["error"]


def record_runs(config, outcomes: list[str]) -> None:
    """Write runs with these outcomes to the config's run history, as fullprocess.py does."""
    connection = open_history(config.history_path)
    for number, outcome in enumerate(outcomes):
        run_id = start_run(connection, f"2026-11-21T10:{number:02d}:00Z", 100 + number, "v0001")
        save_run(
            connection,
            run_id,
            RunFields(outcome=outcome, decision=f"run {number}", timings={"check": 0.01}),
            files=[RunFile(f"batch{number}.csv", "new", "ab" * 32)],
            feature_drift=[FeatureDrift("number_of_employees", "ks", 0.3, 1e-9, 0.05, True)],
        )
    connection.close()


def test_history_serves_the_recorded_runs_newest_first(client, deployed):
    assert client.get("/history").get_json() == {"history": "runhistory.sqlite", "count": 0, "runs": []}
    record_runs(deployed, ["first_deployment", "no_new_data", "kept", "no_new_data", "deployed"])
    body = client.get("/history").get_json()
    assert [run["outcome"] for run in body["runs"]] == ["deployed", "kept", "first_deployment"]
    newest = body["runs"][0]
    assert newest["decision"] == "run 4" and newest["timings"] == {"check": 0.01}
    assert newest["files"] == [{"name": "batch4.csv", "sha256": "ab" * 32, "status": "new", "note": None}]
    assert newest["feature_drift"][0]["drifted"] is True and newest["feature_drift"][0]["test"] == "ks"
    assert [run["id"] for run in client.get("/history?all=1&limit=2").get_json()["runs"]] == [5, 4]


def test_history_answers_runs_written_before_with_the_same_json(client, deployed):
    """Rows as the history stored them before runs were typed, and what /history answered for them."""
    history_rules.write_runs_as_written(deployed.history_path)
    answered = json.loads((FIXTURES / "history_runs.json").read_text(encoding="utf-8"))
    runs = [history_rules.without_later_columns(run) for run in client.get("/history").get_json()["runs"]]
    assert runs == answered
    assert [list(run) for run in runs] == [list(run) for run in answered]


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("limit=0", "limit must be a whole number from 1 to 1000, not '0'"),
        ("limit=abc", "limit must be a whole number"),
        ("limit=1001", "limit must be a whole number"),
        ("limit=%C2%B2", "limit must be a whole number"),
        ("all=maybe", "all must be 1 or 0"),
    ],
)
def test_history_refuses_bad_parameters(client, deployed, query, words):
    answer = client.get(f"/history?{query}")
    assert answer.status_code == 400 and words in answer.get_json()["error"]


def test_a_broken_history_gets_503_naming_it(client, deployed):
    deployed.history_path.parent.mkdir(parents=True, exist_ok=True)
    deployed.history_path.write_bytes(b"not a database" * 200)
    answer = client.get("/history")
    assert answer.status_code == 503 and "the run history cannot be read" in answer.get_json()["error"]
