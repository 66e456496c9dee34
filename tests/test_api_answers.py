"""/prediction's row limits and large answers, in-process: explain has a limit of its own, a file is read only up to
the limit, an answer of many rows is sent in parts whose bytes are those of the whole answer, and a one-record answer
scored in Python floats is byte for byte numpy's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from riskwatch.core.config import MODEL_FAMILIES, Config, ModelSettings, load_config
from riskwatch.core.schema import FEATURES
from riskwatch.data.generator import format_csv, generate_clients, rows_of
from riskwatch.model.drivers import explain_clients
from riskwatch.model.riskmodels import FAMILY_CLASSES, RiskModel, risk_model_for
from riskwatch.state.artifacts import MODEL_FILE, current_version_folder, load_model
from riskwatch.web.api.routes import ANSWER_PART_ROWS, API_STATE, ScoredRows, encode_answer, prediction_parts
from riskwatch.web.app import create_app
from riskwatch.web.serving import ServedModel
from tests.helpers import write_config

HEADER = ",".join(FEATURES)
RECORD = {"corporation": "acme", "lastmonth_activity": 37, "lastyear_activity": 412, "number_of_employees": 18}
EXPLAIN_REFUSAL = "the API explains at once (api.max_explain_rows); send fewer rows, or ask without explain"


def client_with(config: Config, **api: object):
    return create_app(load_config(write_config(config.path.parent, api=api)), token="").test_client()


def clients_csv(rows: int, seed: int = 5) -> str:
    """``rows`` generated clients as CSV text with ids (and the exited column, which predictions ignore)."""
    return format_csv(rows_of(generate_clients(rows, np.random.default_rng(seed))))


def refuse_to_score(*_: object) -> None:
    raise AssertionError("the rows were scored")


def test_explain_over_its_limit_is_refused_in_one_sentence_before_anything_is_scored(deployed, monkeypatch):
    client = client_with(deployed, max_explain_rows=3)
    monkeypatch.setattr(ServedModel, "predict", refuse_to_score)
    by_records = client.post("/prediction", json={"records": [RECORD] * 4, "explain": True})
    by_csv = client.post("/prediction?explain=1", data=clients_csv(4), content_type="text/csv")
    by_location = client.post("/prediction", json={"filelocation": "testdata/testdata.csv", "explain": True})
    by_query = client.get("/prediction?filelocation=testdata/testdata.csv&explain=1")
    assert [answer.status_code for answer in (by_records, by_csv, by_location, by_query)] == [413] * 4
    assert by_records.get_json()["error"] == f"4 rows is more than the 3 {EXPLAIN_REFUSAL}"
    assert by_csv.get_json()["error"] == f"the CSV body has more than the 3 rows {EXPLAIN_REFUSAL}"
    assert by_location.get_json()["error"] == f"testdata.csv has more than the 3 rows {EXPLAIN_REFUSAL}"
    assert by_query.get_json() == by_location.get_json()

    monkeypatch.undo()
    at_limit = client.post("/prediction", json={"records": [RECORD] * 3, "explain": True})
    unexplained = client.post("/prediction", json={"records": [RECORD] * 4})
    assert at_limit.status_code == 200 and len(at_limit.get_json()["predictions"]) == 3
    assert unexplained.status_code == 200 and "drivers" not in unexplained.get_json()["predictions"][0]


def test_more_rows_than_max_rows_are_refused_naming_the_setting(deployed):
    client = client_with(deployed, max_rows=2, max_explain_rows=10)
    answer = client.post("/prediction", json={"records": [RECORD] * 3})
    explained = client.post("/prediction", json={"records": [RECORD] * 3, "explain": True})
    expected = "3 rows is more than the 2 the API scores at once (api.max_rows)"
    assert answer.status_code == explained.status_code == 413
    assert answer.get_json()["error"] == explained.get_json()["error"] == expected  # the lower limit applies


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "text", "fault"),
    [
        ("long.csv", clients_csv(200_000) + "zz,1,x,3,0\n", "long.csv: column lastyear_activity holds text"),
        (
            "long.jsonl",
            "".join(json.dumps({**RECORD, "corporation": f"c{i}"}) + "\n" for i in range(30_000)) + "{broken\n",
            "long.jsonl: not valid JSON (line 30001",
        ),
    ],
    ids=["csv", "json-lines"],
)
def test_a_file_past_the_row_limit_is_refused_without_being_read_to_its_end(deployed, name, text, fault):
    """The last line is broken: an answer that names it read the whole file, a 413 stopped at the limit."""
    write_text(deployed.test_data_path / name, text)
    stopped = client_with(deployed, max_rows=20_000).post("/prediction", json={"filelocation": f"testdata/{name}"})
    read_whole = client_with(deployed).post("/prediction", json={"filelocation": f"testdata/{name}"})
    assert stopped.status_code == 413
    assert stopped.get_json()["error"] == f"{name} has more than the 20,000 rows the API scores at once (api.max_rows)"
    assert read_whole.status_code == 400 and read_whole.get_json()["error"].startswith(fault)


def test_a_csv_body_past_the_row_limit_is_refused_without_being_read_to_its_end(deployed):
    body = clients_csv(200_000) + "zz,1,x,3,0\n"
    stopped = client_with(deployed, max_rows=20_000).post("/prediction", data=body, content_type="text/csv")
    read_whole = client_with(deployed).post("/prediction", data=body, content_type="text/csv")
    assert stopped.status_code == 413 and read_whole.status_code == 400
    assert "holds text" in read_whole.get_json()["error"]


def test_a_json_array_file_larger_than_a_body_is_refused_as_it_is_parsed_whole(deployed):
    records = [{**RECORD, "corporation": f"c{i}"} for i in range(200)]  # about 20 KB
    write_text(deployed.test_data_path / "many.json", json.dumps(records))
    write_text(deployed.test_data_path / "many.jsonl", "".join(json.dumps(record) + "\n" for record in records))
    client = client_with(deployed, max_body_mb=0.01)
    array = client.post("/prediction", json={"filelocation": "testdata/many.json"})
    lines = client.post("/prediction", json={"filelocation": "testdata/many.jsonl"})
    assert array.status_code == 413
    assert array.get_json()["error"] == (
        "testdata/many.json is a JSON file larger than the 0.01 MiB the API parses whole; "
        "send it as JSON Lines (.jsonl) or CSV, which are read in parts"
    )
    assert lines.status_code == 200 and lines.get_json()["rows"] == 200


def whole_answer(version: str, model: RiskModel, ids: list[str], features: np.ndarray, explain: bool) -> bytes:
    """The answer as /prediction made it before answers were streamed: one dict of every row, encoded at once."""
    probabilities, labels = model.score(features)
    rows = [
        {"corporation": corporation, "label": label, "probability": p}
        for corporation, label, p in zip(ids, labels.tolist(), probabilities.tolist(), strict=True)
    ]
    if not explain:
        return orjson.dumps({"model_version": version, "rows": len(rows), "predictions": rows})
    drivers = explain_clients(model, features)
    for row, client in zip(rows, drivers.clients, strict=True):
        row.update({"drivers": client.contributions, "log_odds": client.log_odds, "reason": client.reason})
    answer = {"model_version": version, "rows": len(rows), "baseline_log_odds": drivers.baseline_log_odds}
    return orjson.dumps({**answer, "predictions": rows}, option=orjson.OPT_SERIALIZE_NUMPY)


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_an_answer_made_in_parts_is_byte_for_byte_the_whole_answer(family):
    clients = generate_clients(3_000, np.random.default_rng(1))
    features = np.column_stack([clients[name] for name in FEATURES]).astype(np.float64)
    model = risk_model_for(FAMILY_CLASSES[family].fit(features, clients["exited"], ModelSettings()).estimator)
    assert model is not None
    rows = generate_clients(5 * ANSWER_PART_ROWS + 17, np.random.default_rng(2))
    asked = np.column_stack([rows[name] for name in FEATURES]).astype(np.float64)
    ids = rows["corporation"].astype(str).tolist()
    probabilities, labels = model.score(asked)
    for explain in (False, True):
        scored = ScoredRows("v0007", ids, probabilities, labels.astype(np.int8), *((model, asked) if explain else ()))
        parts = list(prediction_parts(scored))
        assert len(parts) == 6 + 2  # the head, six parts of rows, the end
        assert b"".join(parts) == whole_answer("v0007", model, ids, asked, explain)
        assert encode_answer(scored) == b"".join(parts)  # as a small answer is made, at once


def test_a_large_answer_is_streamed_and_equals_the_whole_answer(deployed):
    model = risk_model_for(load_model(current_version_folder(deployed.prod_deployment_path) / MODEL_FILE))
    assert model is not None
    client = create_app(deployed, token="").test_client()
    text = clients_csv(3 * ANSWER_PART_ROWS + 1, seed=9)
    lines = text.splitlines()
    ids = [line.split(",")[0] for line in lines[1:]]
    features = np.array([line.split(",")[1:4] for line in lines[1:]], dtype=np.float64)
    for explain in (False, True):
        streamed = client.post(f"/prediction?explain={int(explain)}", data=text, content_type="text/csv")
        small = client.post(
            f"/prediction?explain={int(explain)}", data="\n".join(lines[:3]) + "\n", content_type="text/csv"
        )
        assert streamed.status_code == small.status_code == 200
        assert "Content-Length" not in streamed.headers  # sent in parts, as they are made
        assert int(small.headers["Content-Length"]) == len(small.data)
        assert streamed.data == whole_answer("v0001", model, ids, features, explain)
        assert small.data == whole_answer("v0001", model, ids[:2], features[:2], explain)


def test_a_one_record_answer_scored_in_python_floats_is_byte_for_byte_numpy_s(deployed):
    model = risk_model_for(load_model(current_version_folder(deployed.prod_deployment_path) / MODEL_FILE))
    assert model is not None
    client = create_app(deployed, token="").test_client()
    assert client.application.extensions[API_STATE].watcher.served().row_scorer is not None
    generator = np.random.default_rng(12)
    counts = np.floor(generator.random((300, 3)) * 10.0 ** generator.uniform(0, 8, (300, 3)))
    for number, row in enumerate(counts):
        record = dict(zip(FEATURES, row.astype(np.int64).tolist(), strict=True))
        answer = client.post("/prediction", json={"records": [{"corporation": f"c{number}", **record}]})
        assert answer.data == whole_answer("v0001", model, [f"c{number}"], row[None, :], explain=False)
    without_id = client.post("/prediction", json=record)
    probabilities, labels = model.score(counts[-1:])
    assert without_id.data == orjson.dumps(
        {"model_version": "v0001", "rows": 1, "predictions": [{"label": labels[0], "probability": probabilities[0]}]},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
