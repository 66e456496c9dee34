"""The API under gunicorn, as real processes: a deployment while requests run, then apicalls.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from riskwatch.core.config import Config
from riskwatch.state.artifacts import API_RETURNS_FILE, MODEL_FILE, current_version_folder, load_model
from tests.helpers import deploy, free_port, run_script, serving_api, train_and_score, write_config

RECORD = {"corporation": "acme", "lastmonth_activity": 37, "lastyear_activity": 412, "number_of_employees": 18}


@pytest.fixture
def server(deployed: Config) -> Iterator[str]:
    """``app.py`` (gunicorn, 2 workers) serving the deployed project on a free port; yields its URL."""
    with serving_api(deployed.path) as url:
        yield url


def hammer(url: str, stop: threading.Event, answers: list[tuple[int, str | None, float | None]]) -> None:
    """POST one record again and again until ``stop``; record (status, model version, probability)."""
    with requests.Session() as session:
        while not stop.is_set():
            try:
                response = session.post(f"{url}/prediction", json={"records": [RECORD]}, timeout=10)
            except requests.RequestException as exc:
                answers.append((0, type(exc).__name__, None))
                continue
            body = response.json() if response.status_code == 200 else {}
            answers.append(
                (response.status_code, body.get("model_version"), body.get("predictions", [{}])[0].get("probability"))
            )


@pytest.mark.slow
def test_a_deployment_during_load_fails_no_request_and_switches_every_worker(server, deployed):
    stop = threading.Event()
    per_thread: list[list[tuple[int, str | None, float | None]]] = [[] for _ in range(4)]
    threads = [threading.Thread(target=hammer, args=(server, stop, answers)) for answers in per_thread]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        train_and_score(deployed, C=0.001)
        deploy(deployed)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(a and a[-1][1] == "v0002" for a in per_thread):
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    answers = [answer for thread_answers in per_thread for answer in thread_answers]
    assert answers and all(status == 200 for status, _, _ in answers), {a for a in answers if a[0] != 200}
    new_probability = load_model(current_version_folder(deployed.prod_deployment_path) / MODEL_FILE).predict_proba(
        np.array([[37, 412, 18]], dtype=float)
    )[0, 1]
    for thread_answers in per_thread:
        versions = [version for _, version, _ in thread_answers]
        switched = versions.index("v0002")
        assert switched > 0 and set(versions[:switched]) == {"v0001"} and set(versions[switched:]) == {"v0002"}
        assert {p for _, v, p in thread_answers if v == "v0002"} == {new_probability}
    for _ in range(8):  # both workers answer with the new version
        assert requests.get(f"{server}/version", timeout=5).json()["model_version"] == "v0002"


@pytest.mark.slow
def test_apicalls_writes_every_answer_and_fails_clearly_when_the_api_is_down(server, deployed):
    diagnostics_log = run_script("diagnostics.py", "--config", str(deployed.path), "--runs", "1", "-q")
    assert diagnostics_log.returncode == 0, diagnostics_log.stderr
    done = run_script("apicalls.py", "--config", str(deployed.path), "--url", server)
    assert done.returncode == 0, done.stderr
    written = json.loads((deployed.output_model_path / API_RETURNS_FILE).read_text())
    answers = written["answers"]
    assert {"prediction", "scoring", "summarystats", "diagnostics", "history", "health", "version"} == set(answers)
    assert answers["prediction"]["rows"] == 500 and written["prediction_input"] == {
        "filelocation": "testdata/testdata.csv"
    }
    assert answers["scoring"]["f1"] == answers["version"]["metrics"]["f1"]
    assert answers["summarystats"]["rows"] == 1000
    assert answers["diagnostics"]["timing"]["runs"] == 1

    second = run_script("apicalls.py", "--config", str(deployed.path), "--url", server, "--output", "apireturns2.txt")
    assert second.returncode == 0 and (deployed.output_model_path / "apireturns2.txt").is_file()

    before = (deployed.output_model_path / API_RETURNS_FILE).read_bytes()
    down = run_script("apicalls.py", "--config", str(deployed.path), "--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1
    assert "GET http://127.0.0.1:" in down.stderr and "/health: the API is not reachable" in down.stderr
    assert (deployed.output_model_path / API_RETURNS_FILE).read_bytes() == before


@pytest.mark.slow
def test_apicalls_uploads_test_data_that_lies_outside_its_project(server, deployed, tmp_path):
    run_script("diagnostics.py", "--config", str(deployed.path), "--runs", "1", "-q")
    elsewhere = tmp_path / "analyst"
    elsewhere.mkdir()
    config = write_config(elsewhere, test_data_path=str(deployed.test_data_path / "testdata.csv"))
    done = run_script("apicalls.py", "--config", str(config), "--url", server)
    assert done.returncode == 0, done.stderr
    written = json.loads((elsewhere / "models" / API_RETURNS_FILE).read_text())
    assert written["prediction_input"] == {"upload": str(deployed.test_data_path / "testdata.csv")}
    assert written["answers"]["prediction"]["rows"] == 500


@pytest.mark.slow
def test_apicalls_names_the_endpoint_that_answers_an_error(server, deployed):
    done = run_script("apicalls.py", "--config", str(deployed.path), "--url", server)
    assert done.returncode == 1
    assert "/diagnostics answered 503: no diagnostics have been stored yet; run diagnostics.py" in done.stderr
    assert not Path(deployed.output_model_path / API_RETURNS_FILE).exists()
