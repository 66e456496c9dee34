"""The classic course project's habits, from its published rubric: its functions, files and workflow.

Each function is called as a course notebook calls it: no arguments, the paths coming from
``config.json`` (here the file ``$RISK_CONFIG`` names), with pandas objects in and out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

import deployment
import diagnostics
import ingestion
import reporting
import scoring
import training
from bench.classic_clients import RECORD, SHAPES, Target, send_shape, start_gunicorn, stop
from riskwatch.core.config import CONFIG_ENV_VAR, Config, load_config
from riskwatch.core.errors import PipelineError
from riskwatch.core.schema import COLUMNS, FEATURES, read_feature_file
from riskwatch.state.artifacts import (
    CONFUSION_MATRIX_FILE,
    FINAL_DATA,
    INGESTED_FILES,
    LATEST_SCORE_FILE,
    MODEL_FILE,
    current_version_folder,
    load_model,
)
from tests.helpers import PROJECT_ROOT, UDACITY_DATA, free_port, udacity_config, write_clients, write_config

# No package index in tests: the dependency check answers "unknown" at once.
OFFLINE = {"diagnostics": {"package_index": "http://127.0.0.1:9", "index_timeout_seconds": 0.5}}
NUMERIC_COLUMNS = [*FEATURES, "exited"]


@pytest.fixture
def classic(project: Config, monkeypatch: pytest.MonkeyPatch) -> Config:
    """The small project, its config.json named by $RISK_CONFIG as a course notebook's working folder would."""
    config = load_config(write_config(project.path.parent, **OFFLINE))
    monkeypatch.setenv(CONFIG_ENV_VAR, str(config.path))
    return config


def run_course_steps() -> dict[str, object]:
    """The course's steps in order, each with no arguments; what each returned."""
    return {
        "merged": ingestion.merge_multiple_dataframe(),
        "model": training.train_model(),
        "f1": scoring.score_model(),
        "deployed": deployment.store_model_into_pickle(),
        "predictions": diagnostics.model_predictions(),
        "summary": diagnostics.dataframe_summary(),
        "missing": diagnostics.missing_data(),
        "plot": reporting.score_model(),
    }


def test_the_course_steps_run_with_no_arguments_and_return_classic_values(classic):
    answers = run_course_steps()
    merged = answers["merged"]
    assert isinstance(merged, pd.DataFrame) and list(merged.columns) == list(COLUMNS)
    assert len(merged) == 1000 and not merged.duplicated().any()
    assert merged.equals(pd.read_csv(classic.output_folder_path / FINAL_DATA, dtype={"corporation": str}))
    assert (classic.output_folder_path / INGESTED_FILES).read_text().splitlines() == ["clients_a.csv", "clients_b.csv"]

    assert callable(answers["model"].predict) and (classic.output_model_path / MODEL_FILE).is_file()
    f1 = answers["f1"]
    assert isinstance(f1, float) and 0 < f1 <= 1
    assert float((classic.output_model_path / LATEST_SCORE_FILE).read_text()) == f1
    for name in (MODEL_FILE, LATEST_SCORE_FILE, INGESTED_FILES):  # the three files the rubric names
        assert (classic.prod_deployment_path / name).is_file(), name
    assert answers["deployed"].version == "v0001"

    batch = read_feature_file(classic.test_data_path / "testdata.csv")
    deployed_model = load_model(current_version_folder(classic.prod_deployment_path) / MODEL_FILE)
    assert answers["predictions"] == deployed_model.predict(batch.features).tolist()
    assert len(answers["predictions"]) == 500 and set(answers["predictions"]) <= {0, 1}

    summary = answers["summary"]
    assert isinstance(summary, list) and len(summary) == len(NUMERIC_COLUMNS)
    for (mean, median, std), name in zip(summary, NUMERIC_COLUMNS, strict=True):
        expected = [merged[name].mean(), merged[name].median(), merged[name].std()]
        np.testing.assert_allclose([mean, median, std], expected, atol=1e-6)
    assert answers["missing"] == [0.0] * len(COLUMNS)
    assert answers["plot"] == classic.output_model_path / CONFUSION_MATRIX_FILE and answers["plot"].stat().st_size > 0


def test_model_predictions_takes_a_dataframe_and_names_a_missing_column(classic):
    run_course_steps()
    frame = pd.read_csv(classic.test_data_path / "testdata.csv")
    assert diagnostics.model_predictions(frame) == diagnostics.model_predictions()
    assert diagnostics.model_predictions(frame.head(3)) == diagnostics.model_predictions()[:3]
    with pytest.raises(PipelineError, match="missing column number_of_employees"):
        diagnostics.model_predictions(frame.drop(columns="number_of_employees"))
    with pytest.raises(PipelineError, match="row 2, lastmonth_activity is 'lots'"):
        diagnostics.model_predictions(
            frame.head(3).astype({"lastmonth_activity": object}).assign(lastmonth_activity=[1, "lots", 3])
        )


def test_missing_data_is_the_percent_of_blank_cells_per_column_of_the_source_files(classic):
    (classic.input_folder_path / "clients_c.csv").write_text(
        "corporation,lastmonth_activity,lastyear_activity,number_of_employees,exited\nx,,1,2,0\ny,1,1,2,1\n"
    )
    missing = diagnostics.missing_data()
    assert len(missing) == len(COLUMNS)
    assert missing[1] == round(100 / 1002, 4) and missing[0] == missing[2] == 0.0


@pytest.mark.slow
def test_execution_time_and_outdated_packages_list_answer_in_the_classic_shapes(classic):
    ingestion.merge_multiple_dataframe()
    seconds = diagnostics.execution_time()
    assert isinstance(seconds, list) and len(seconds) == 2 and all(value > 0 for value in seconds)
    assert not (classic.output_model_path / MODEL_FILE).exists()  # timed on scratch outputs
    packages = diagnostics.outdated_packages_list()
    assert list(packages.columns) == ["package", "installed", "latest"]
    assert "pandas" in packages["package"].tolist() and packages["installed"].notna().all()


def test_the_functions_take_another_config_as_an_argument(classic, tmp_path):
    other = tmp_path / "other"
    write_clients(other / "sourceddata" / "clients.csv", 300, seed=5)
    write_clients(other / "testdata" / "testdata.csv", 100, seed=6)
    path = write_config(other)
    assert len(ingestion.merge_multiple_dataframe(path)) == 300
    assert not (classic.output_folder_path / FINAL_DATA).exists()


def test_the_course_workflow_practice_then_source_keeps_the_source_rows_only(classic):
    practice = classic.path.parent / "practicedata"
    write_clients(practice / "dataset1.csv", 200, seed=7)
    write_config(classic.path.parent, input_folder_path="practicedata")
    assert len(ingestion.merge_multiple_dataframe()) == 200
    write_config(classic.path.parent)  # input_folder_path back to sourceddata, same output folder
    assert len(ingestion.merge_multiple_dataframe()) == 1000
    assert "dataset1.csv" not in (classic.output_folder_path / INGESTED_FILES).read_text()


@pytest.fixture
def udacity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config like config.udacity.json, on the course's practice data first; outputs in tmp_path."""
    path = udacity_config(tmp_path)  # skips when the course data is not beside the project
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "input_folder_path": str(UDACITY_DATA / "practicedata"), **OFFLINE}))
    monkeypatch.setenv(CONFIG_ENV_VAR, str(path))
    return path


def switch_input_folder(config_path: Path, folder: Path) -> None:
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "input_folder_path": str(folder)}))


@pytest.mark.slow
def test_the_course_data_through_the_course_steps(udacity):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in UDACITY_DATA.rglob("*"))
    practice = ingestion.merge_multiple_dataframe()
    switch_input_folder(udacity, UDACITY_DATA / "sourcedata")
    answers = run_course_steps()
    source = pd.concat([pd.read_csv(path) for path in sorted((UDACITY_DATA / "sourcedata").glob("*.csv"))])
    assert len(practice) == 26  # the practice rows are not kept when the source data is ingested next
    assert len(answers["merged"]) == len(source.drop_duplicates()) == 29
    assert Path(udacity.parent / "ingesteddata" / INGESTED_FILES).read_text() == "dataset3.csv\ndataset4.csv\n"
    assert len(answers["predictions"]) == 5 and 0 <= answers["f1"] <= 1
    assert len(diagnostics.execution_time()) == 2
    assert sorted((p.name, p.stat().st_mtime_ns) for p in UDACITY_DATA.rglob("*")) == before


@pytest.mark.slow
def test_importing_the_stages_and_the_api_does_not_import_pandas():
    """Not even through scikit-learn, which would import it whenever it is installed."""
    code = (
        "import sys, ingestion, training, scoring, deployment, diagnostics, reporting, app, apicalls, fullprocess\n"
        "assert 'pandas' not in sys.modules, 'pandas imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def classic_server(deployed: Config) -> Iterator[Target]:
    """``gunicorn app:app`` (as a classic wsgi.py is served) on a free port, the deployed project's config in
    $RISK_CONFIG; yields where it is and how clients name the test file."""
    port = free_port()
    server = start_gunicorn(deployed.path, port)
    try:
        yield Target(f"http://127.0.0.1:{port}", "testdata/testdata.csv", deployed.test_data_path / "testdata.csv")
    finally:
        stop(server)


@pytest.mark.slow
def test_every_request_shape_of_classic_clients_is_answered_by_a_real_server(classic_server):
    with requests.Session() as session:
        for row, shapes in SHAPES:
            for shape in shapes:
                answer = send_shape(session, classic_server, shape)
                if row.startswith("traversal"):
                    assert answer.status_code == 403, (shape.label, answer.text)
                    assert "passwd" not in answer.text.replace("/etc/passwd", "")
                    continue
                assert answer.status_code == 200, (shape.label, answer.text)
                assert answer.json()["rows"] == (1 if shape.json in ([RECORD], RECORD) else 500), shape.label


@pytest.mark.slow
def test_a_request_naming_no_file_gets_400_listing_the_accepted_keys(classic_server):
    url = f"{classic_server.url}/prediction"
    for answer in (
        requests.post(url, params={"path_to_file": "testdata/testdata.csv"}, timeout=10),
        requests.post(url, data={"path_to_file": "testdata/testdata.csv"}, timeout=10),
        requests.get(url, params={"limit": "3"}, timeout=10),
    ):
        assert answer.status_code == 400
        assert "filelocation, file_location, filename" in answer.json()["error"]
    two_files = requests.post(url, files={"a": ("a.csv", b"x"), "b": ("b.csv", b"y")}, timeout=10)
    assert two_files.status_code == 400 and "holds 2 files" in two_files.json()["error"]
    xml = requests.post(url, data="<clients/>", headers={"Content-Type": "application/xml"}, timeout=10)
    assert xml.status_code == 415


@pytest.mark.slow
def test_serving_records_imports_no_pandas_and_no_request_imports_anything_once_warm(deployed):
    """JSON records (the hot path) never touch pandas; a CSV read makes pyarrow import it, once per worker."""
    code = (
        "import sys, json\n"
        "import app\n"
        "client = app.app.test_client()\n"  # built on first access, with $RISK_CONFIG
        f"record = {RECORD!r}\n"
        "for body in (record, [record], {'records': [record]}):\n"
        "    assert client.post('/prediction', json=body).status_code == 200\n"
        "assert 'pandas' not in sys.modules and 'riskwatch.data.frames' not in sys.modules\n"
        "assert client.post('/prediction', json={'filelocation': 'testdata/testdata.csv'}).status_code == 200\n"
        "before = set(sys.modules)\n"
        "for body in (record, [record], {'filename': 'testdata.csv'}):\n"
        "    assert client.post('/prediction', json=body).status_code == 200\n"
        "assert client.get('/prediction?filename=testdata/testdata.csv').status_code == 200\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, CONFIG_ENV_VAR: str(deployed.path)},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


@pytest.mark.slow
def test_importing_app_builds_nothing(tmp_path):
    code = "import app\nfrom riskwatch.web import app as web_app\nassert web_app._built is None\n"
    missing = str(tmp_path / "no-config.json")  # building would fail on it
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, CONFIG_ENV_VAR: missing},
    )
    assert done.returncode == 0, done.stderr
