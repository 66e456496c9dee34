"""What an attack on the API found, kept found: bodies are read whole or refused, framing and encodings
are checked, values have bounds, secrets stay out of URLs and logs, files are a trust boundary, and a
damaged deployment falls back to an intact version. Real-server attacks are in test_api_server_attacks.py."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

from riskwatch.core.config import Config
from riskwatch.state.artifacts import MODEL_FILE, VERSION_INFO_FILE, VERSIONS_FOLDER
from riskwatch.web.app import check_exposure, create_app
from tests.helpers import deploy, train_and_score

RECORD = {"corporation": "acme", "lastmonth_activity": 37, "lastyear_activity": 412, "number_of_employees": 18}
CSV_HEADER = "corporation,lastmonth_activity,lastyear_activity,number_of_employees\n"
MIB = 1024 * 1024


@pytest.fixture
def app(deployed: Config):
    return create_app(deployed, token="")


@pytest.fixture
def client(app):
    return app.test_client()


@dataclass
class Answer:
    status_code: int
    body: dict


def streamed(app, body: bytes, **headers: str) -> Answer:
    """POST /prediction with a body of no declared length, as gunicorn hands a chunked request to the application.

    Straight to the WSGI application: the test client would give the body a Content-Length.
    """
    environ = EnvironBuilder(
        path="/prediction",
        method="POST",
        input_stream=io.BytesIO(body),
        headers={"Transfer-Encoding": "chunked", "Content-Type": "text/csv", **headers},
        environ_overrides={"wsgi.input_terminated": True},
    ).get_environ()
    del environ["CONTENT_LENGTH"]
    chunks, status, _ = run_wsgi_app(app, environ, buffered=True)
    return Answer(int(status.split()[0]), json.loads(b"".join(chunks)))


def csv_rows(count: int) -> bytes:
    return (CSV_HEADER + "".join(f"c{i},{i % 90},{i % 900},{i % 50}\n" for i in range(count))).encode()


def test_a_streamed_csv_over_the_limit_is_413_never_a_shorter_csv_scored(deployed: Config):
    body = csv_rows(20_000)  # ~330 KiB
    answer = streamed(create_app(_with_body_limit(deployed, 0.25), token=""), body)
    assert answer.status_code == 413, answer.body
    assert "larger than the 0.25 MiB" in answer.body["error"]
    whole = streamed(create_app(_with_body_limit(deployed, 1), token=""), body)
    assert whole.status_code == 200 and whole.body["rows"] == 20_000  # under the limit: every row scored


def test_a_streamed_json_body_over_the_limit_is_413_not_a_misleading_400(deployed: Config):
    body = json.dumps({"records": [RECORD] * 5000}).encode()  # ~470 KiB
    limited = create_app(_with_body_limit(deployed, 0.25), token="")
    answer = streamed(limited, body, **{"Content-Type": "application/json"})
    assert answer.status_code == 413


def test_gzip_bodies_are_decoded_within_the_limit_and_other_encodings_refused(client, deployed: Config):
    body = csv_rows(300)
    answer = client.post(
        "/prediction", data=gzip.compress(body), headers={"Content-Encoding": "gzip", "Content-Type": "text/csv"}
    )
    assert answer.status_code == 200 and answer.get_json()["rows"] == 300
    plain = client.post("/prediction", data=body, headers={"Content-Type": "text/csv"}).get_json()
    assert answer.get_json()["predictions"] == plain["predictions"]
    bomb = gzip.compress(b"0" * (40 * MIB))  # 40 KiB that decode to 40 MiB
    refused = client.post("/prediction", data=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "text/csv"})
    assert refused.status_code == 413 and "decompressed" in refused.get_json()["error"]
    broken = client.post("/prediction", data=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert broken.status_code == 400 and "not valid gzip" in broken.get_json()["error"]
    cut = client.post("/prediction", data=gzip.compress(body)[:-20], headers={"Content-Encoding": "gzip"})
    assert cut.status_code == 400
    other = client.post("/prediction", data=body, headers={"Content-Encoding": "br", "Content-Type": "text/csv"})
    assert other.status_code == 415


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (
            b'{"records": [{"corporation": "\\ud800", "lastmonth_activity": 1, "lastyear_activity": 2, '
            b'"number_of_employees": 3}]}',
            "not valid JSON",
        ),
        (
            b'{"records": [{"corporation": "a", "lastmonth_activity": '
            + b"[" * 1000
            + b"]" * 1000
            + b', "lastyear_activity": 2, "number_of_employees": 3}]}',
            "lastmonth_activity is a list",
        ),
        (b'{"records": [' * 600 + b"]}" * 600, "nested too deeply"),
        (
            b'{"records": [{"corporation": "a", "lastmonth_activity": '
            + b"9" * 5000
            + b', "lastyear_activity": 2, "number_of_employees": 3}]}',
            "not valid JSON",
        ),
        (
            b'{"records": [{"corporation": "a", "lastmonth_activity": 9007199254740993, "lastyear_activity": 2, '
            b'"number_of_employees": 3}]}',
            "too large",
        ),
    ],
    ids=["lone surrogate", "value nested 1,000 deep", "body nested 1,200 deep", "5,000-digit integer", "2**53 + 1"],
)
def test_hostile_json_gets_a_400_naming_the_problem(client, payload: bytes, words: str):
    answer = client.post("/prediction", data=payload, content_type="application/json")
    assert answer.status_code == 400, answer.get_json()
    assert words in answer.get_json()["error"]


def test_a_count_from_2_to_the_53_on_is_too_large_not_rounded(client):
    exact = client.post("/prediction", json={"records": [{**RECORD, "lastyear_activity": 2**53 - 1}]})
    assert exact.status_code == 200
    for value in (2**53, 2**53 + 1):
        answer = client.post("/prediction", json={"records": [{**RECORD, "lastyear_activity": value}]})
        assert answer.status_code == 400 and "too large" in answer.get_json()["error"]


def test_a_bad_value_is_named_by_its_kind_never_echoed(client, deployed: Config):
    secret = "s3cret-cell-value"
    answer = client.post("/prediction", json={"records": [{**RECORD, "lastmonth_activity": secret}]})
    assert answer.status_code == 400 and secret not in answer.get_data(as_text=True)
    (deployed.test_data_path / "cells.csv").write_text(CSV_HEADER + f"a,1,{secret},3\n")
    by_file = client.post("/prediction", json={"filelocation": "testdata/cells.csv"})
    assert by_file.status_code == 400 and secret not in by_file.get_data(as_text=True)
    assert "holds text where a number is expected" in by_file.get_json()["error"]


def test_a_hard_link_to_a_file_outside_the_data_folders_is_refused_and_nothing_of_it_echoed(
    client, deployed: Config, tmp_path: Path
):
    outside = tmp_path.parent / f"{tmp_path.name}-private.csv"
    outside.write_text("root:x:0:0:root:/root:/bin/bash\n")
    try:
        os.link(outside, deployed.test_data_path / "linked.csv")
        answer = client.post("/prediction", json={"filelocation": "testdata/linked.csv"})
    finally:
        outside.unlink()
    assert answer.status_code == 403 and "hard link" in answer.get_json()["error"]
    assert "root:" not in answer.get_data(as_text=True)


def test_a_token_is_taken_from_the_authorization_header_only(deployed: Config):
    client = create_app(deployed, token="s3cret").test_client()
    assert client.get("/scoring", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    in_url = client.get("/scoring?token=s3cret")
    assert in_url.status_code == 400 and "never in the URL" in in_url.get_json()["error"]
    assert client.get("/scoring?access_token=s3cret").status_code == 400
    basic = base64.b64encode(b"s3cret:").decode()
    as_basic = client.get("/scoring", headers={"Authorization": f"Basic {basic}"})
    assert as_basic.status_code == 401 and "Bearer" in as_basic.get_json()["error"]
    wrong = client.get("/scoring", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "not this API's token" in wrong.get_json()["error"]


def test_without_a_token_only_loopback_is_served_unless_asked():
    assert check_exposure("127.0.0.1", None, False) is None
    assert check_exposure("::1", None, False) is None
    refusal = check_exposure("0.0.0.0", None, False)
    assert refusal is not None and "--open-without-token" in refusal
    assert check_exposure("0.0.0.0", "token", False) is None
    assert check_exposure("0.0.0.0", None, True) is None


def test_messages_show_no_absolute_paths(client, deployed: Config):
    from riskwatch.state.artifacts import DIAGNOSTICS_FILE

    (deployed.output_model_path / DIAGNOSTICS_FILE).write_text(
        json.dumps({"model_version": "v0001", "missing_data": {"dataset": "sourceddata", "rows": 1}})
    )
    for path in ("/diagnostics", "/summarystats", "/scoring", "/version", "/health"):
        assert str(deployed.path.parent) not in client.get(path).get_data(as_text=True), path
    (deployed.prod_deployment_path / "current").unlink()
    (deployed.prod_deployment_path / "current").symlink_to(f"{VERSIONS_FOLDER}/v0009")
    (deployed.prod_deployment_path / VERSIONS_FOLDER / "v0001" / MODEL_FILE).unlink()  # nothing to fall back to
    answer = create_app(deployed, token="").test_client().get("/scoring")
    error = answer.get_json()["error"]
    assert answer.status_code == 503 and "versions/v0009: " in error and "metrics.json" in error
    assert str(deployed.path.parent) not in answer.get_data(as_text=True)


def test_a_damaged_deployed_model_falls_back_to_the_newest_intact_version(deployed: Config):
    train_and_score(deployed, C=0.01)
    deploy(deployed)
    running = create_app(deployed, token="").test_client()
    assert running.get("/version").get_json()["model_version"] == "v0002"
    model = deployed.prod_deployment_path / VERSIONS_FOLDER / "v0002" / MODEL_FILE
    model.write_bytes(model.read_bytes()[:100])  # damaged after deployment
    health = running.get("/health").get_json()
    assert health["model_version"] == "v0001" and health["status"] == "degraded"
    assert health["deployed_version"] == "v0002" and str(deployed.path.parent) not in json.dumps(health)
    assert running.post("/prediction", json={"records": [RECORD]}).get_json()["model_version"] == "v0001"
    restarted = create_app(deployed, token="").test_client()  # a restart serves the same, never 503
    assert restarted.get("/version").get_json()["model_version"] == "v0001"
    assert restarted.post("/prediction", json={"records": [RECORD]}).status_code == 200


def test_a_truncated_version_json_does_not_stop_an_intact_model_serving(deployed: Config):
    info = deployed.prod_deployment_path / VERSIONS_FOLDER / "v0001" / VERSION_INFO_FILE
    info.write_text(info.read_text()[:10])
    client = create_app(deployed, token="").test_client()
    version = client.get("/version")
    assert version.status_code == 200 and version.get_json()["model_version"] == "v0001"
    assert client.post("/prediction", json={"records": [RECORD]}).status_code == 200


def _with_body_limit(config: Config, mib: float) -> Config:
    from dataclasses import replace

    return replace(config, api=replace(config.api, max_body_mb=mib))
