"""The checks every API request passes, made cheap, still decide what they decided: a wait recorded by another
worker, a model file changed in place, the safety headers on every answer, no session for a request without
a cookie."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from riskwatch.core.config import Config, load_config
from riskwatch.core.schema import (
    FEW_VALUES,
    MAX_COUNT,
    BadFileError,
    check_feature_values,
    features_are_counts,
    features_from_records,
)
from riskwatch.state.artifacts import MODEL_FILE, current_version_folder
from riskwatch.web.app import create_app
from riskwatch.web.guard import FREE_FAILURES, RECHECK_SECONDS, STORE_FILE, AccessStore, ChangeCounter
from tests.helpers import PROJECT_ROOT, write_config

TOKEN = "a-long-random-token-for-the-checks-0123456789abcdef"
RECORD = {"corporation": "acme", "lastmonth_activity": 37, "lastyear_activity": 412, "number_of_employees": 18}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_wait_recorded_by_another_worker_holds_at_the_next_request(deployed: Config):
    first, second = (create_app(deployed, token=TOKEN).test_client() for _ in range(2))  # two workers' apps
    assert first.get("/version", headers=bearer(TOKEN)).status_code == 200  # its wait check is now open
    for _ in range(FREE_FAILURES + 1):
        assert second.get("/version", headers=bearer("guess")).status_code == 401
    refused = first.get("/version", headers=bearer(TOKEN))
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1


def test_the_wait_check_sees_each_change_and_keeps_no_snapshot_open(tmp_path):
    reader, writer = AccessStore(tmp_path / STORE_FILE, 100), AccessStore(tmp_path / STORE_FILE, 100)
    assert reader.refusal("10.0.0.1", now=1000) is None
    for _ in range(FREE_FAILURES + 1):
        writer.record_failure("10.0.0.1", now=1000)
    assert reader.refusal("10.0.0.1", now=1000) is not None
    with sqlite3.connect(tmp_path / STORE_FILE) as connection:  # a reader holding a snapshot would block this
        assert connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    writer.forget_failures("10.0.0.1")
    assert reader.refusal("10.0.0.1", now=1000) is None


@pytest.mark.slow
def test_a_wait_recorded_by_another_process_holds_at_once(tmp_path):
    store = AccessStore(tmp_path / STORE_FILE, 100)
    assert store.refusal("10.0.0.1", now=1000) is None  # kept: no change since
    record = (
        "import sys; from pathlib import Path; from riskwatch.web.guard import AccessStore, FREE_FAILURES;"
        "store = AccessStore(Path(sys.argv[1]), 100);"
        "[store.record_failure('10.0.0.1', now=1000) for _ in range(FREE_FAILURES + 1)]"
    )
    subprocess.run([sys.executable, "-c", record, str(tmp_path / STORE_FILE)], cwd=PROJECT_ROOT, check=True)
    assert store.refusal("10.0.0.1", now=1000) is not None
    forgive = "import sys; from pathlib import Path; from riskwatch.web.guard import AccessStore;"
    forgive += "AccessStore(Path(sys.argv[1]), 100).forget_failures('10.0.0.1')"
    subprocess.run([sys.executable, "-c", forgive, str(tmp_path / STORE_FILE)], cwd=PROJECT_ROOT, check=True)
    assert store.refusal("10.0.0.1", now=1000) is None


@pytest.mark.slow
def test_the_count_of_changes_only_grows_whatever_adds_to_it_at_once(tmp_path):
    counter = ChangeCounter(tmp_path / "failures.changes")
    add = "import sys; from pathlib import Path; from riskwatch.web.guard import ChangeCounter;"
    add += "counter = ChangeCounter(Path(sys.argv[1])); [counter.add_one() for _ in range(300)]"
    adders = [
        subprocess.Popen([sys.executable, "-c", add, str(tmp_path / "failures.changes")], cwd=PROJECT_ROOT)
        for _ in range(4)
    ]
    assert all(adder.wait(timeout=60) == 0 for adder in adders)
    assert counter.read() == 4 * 300  # no two adds read the same number


def test_a_wait_changed_by_hand_is_seen_after_the_recheck_time(tmp_path, monkeypatch):
    store = AccessStore(tmp_path / STORE_FILE, 100)
    for _ in range(FREE_FAILURES + 1):
        store.record_failure("10.0.0.1", now=1000)
    assert store.refusal("10.0.0.1", now=1000) is not None
    with sqlite3.connect(tmp_path / STORE_FILE) as connection:  # an operator forgives it, bypassing the counter
        connection.execute("DELETE FROM failures")
    later = time.monotonic() + RECHECK_SECONDS
    monkeypatch.setattr("riskwatch.web.guard.time.monotonic", lambda: later)
    assert store.refusal("10.0.0.1", now=1000) is None


def test_a_session_checked_on_its_open_connection_follows_the_server_record(tmp_path):
    store = AccessStore(tmp_path / STORE_FILE, idle_seconds=100)
    session = store.start_session(now=1000)
    assert store.is_live(session, now=1050)
    AccessStore(tmp_path / STORE_FILE, idle_seconds=100).end_session(session)  # signed out through another worker
    assert not store.is_live(session, now=1050)


def test_a_model_file_changed_in_place_is_seen_by_the_next_request(deployed: Config):
    client = create_app(deployed, token="").test_client()
    assert client.get("/health").get_json() == {"status": "ok", "model_version": "v0001"}
    model_file = current_version_folder(deployed.prod_deployment_path) / MODEL_FILE
    kept = model_file.read_bytes()
    model_file.write_bytes(b"damaged")  # the link unchanged: only the file's size and time tell
    answer = client.get("/health")
    assert answer.status_code == 503 and "cannot be loaded" in answer.get_json()["error"]
    model_file.write_bytes(kept)
    assert client.get("/health").get_json() == {"status": "ok", "model_version": "v0001"}


def test_the_body_middlewares_refusals_carry_the_safety_headers(deployed: Config):
    config = load_config(write_config(deployed.path.parent, api={"max_body_mb": 0.01}))
    client = create_app(config, token="").test_client()
    answer = client.post("/prediction", data=b"x" * 20_000, content_type="text/csv")
    assert answer.status_code == 413 and answer.get_json()["status"] == 413
    assert answer.headers["X-Content-Type-Options"] == "nosniff" and answer.headers["X-Frame-Options"] == "DENY"


def test_a_header_an_answer_sets_itself_is_not_doubled(deployed: Config):
    client = create_app(deployed, token="").test_client()
    page = client.get("/dashboard/")
    assert page.headers.getlist("X-Content-Type-Options") == ["nosniff"]
    assert page.headers.getlist("X-Frame-Options") == ["DENY"]


def test_an_api_request_without_a_cookie_opens_no_session_and_sets_none(deployed: Config):
    client = create_app(deployed, token=TOKEN).test_client()
    answer = client.post(
        "/prediction", data=json.dumps({"records": [RECORD]}), content_type="application/json", headers=bearer(TOKEN)
    )
    assert answer.status_code == 200 and answer.get_json()["model_version"] == "v0001"
    assert "Set-Cookie" not in answer.headers and "Cookie" not in answer.headers.get("Vary", "")


@pytest.mark.parametrize(
    "value, count",
    [
        (0.0, True),
        (-0.0, True),
        (18.0, True),
        (float(MAX_COUNT), True),
        (float(MAX_COUNT + 1), False),
        (-1.0, False),
        (2.5, False),
        (float("nan"), False),
        (float("inf"), False),
        (float("-inf"), False),
    ],
)
def test_a_few_values_are_judged_as_many_are(value, count):
    few = np.array([[37.0, 412.0, value]])  # one record, checked one value at a time
    many = np.vstack([np.ones((FEW_VALUES, 3)), few])  # past FEW_VALUES: checked by array operations
    assert features_are_counts(few) is features_are_counts(many) is count
    for features, unit in ((few, "record 1"), (many, f"record {FEW_VALUES + 1}")):
        if count:
            check_feature_values(features, "records", unit="record")
        else:
            with pytest.raises(BadFileError, match=f"records: {unit}, number_of_employees "):
                check_feature_values(features, "records", unit="record")


def test_a_json_body_that_ends_before_its_length_is_refused_not_read_short(deployed: Config):
    app = create_app(deployed, token="")
    body = json.dumps({"records": [RECORD]}).encode()
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/prediction",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "HTTP_HOST": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body) + 50),  # the client said more than it sent, then went away
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
    }
    statuses: list[str] = []
    answer = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses == ["400 BAD REQUEST"]
    assert "did not arrive whole" in json.loads(answer)["error"]


@pytest.mark.parametrize(
    "record, message",
    [
        ({"lastmonth_activity": 1, "lastyear_activity": 2}, "record 1 lacks number_of_employees"),
        ({**RECORD, "lastyear_activity": None}, "record 1 lacks lastyear_activity"),
        ({**RECORD, "lastmonth_activity": True}, "record 1, lastmonth_activity is true or false"),
        ({**RECORD, "number_of_employees": "18"}, "record 1, number_of_employees is text"),
        ({**RECORD, "lastmonth_activity": [1]}, "record 1, lastmonth_activity is a list"),
    ],
)
def test_a_record_of_the_wrong_shape_is_named_by_its_first_fault(record, message):
    with pytest.raises(BadFileError, match=message):
        features_from_records([record], "records")


def test_records_in_any_key_case_or_of_a_number_subclass_are_read_as_plain_ones():
    class Count(int):
        pass

    plain = features_from_records([RECORD, RECORD], "records")
    odd = {" LastMonth_Activity ": Count(37), "lastyear_activity": 412.0, "NUMBER_OF_EMPLOYEES": 18, "corporation": 7}
    mixed = features_from_records([RECORD, odd], "records")
    assert mixed.features.flags.c_contiguous and mixed.features.shape == (2, 3)
    assert np.array_equal(mixed.features, plain.features) and mixed.ids == ["acme", "7"]
