"""Diagnostics: predictions, statistics, missing data, timings on scratch outputs, dependency checks."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from riskwatch.core.config import DiagnosticsSettings, load_config
from riskwatch.core.schema import read_feature_file
from riskwatch.core.timings import STAGE_TIMINGS_FILE, read_stage_timings
from riskwatch.data.datastats import missing_data, summary_statistics
from riskwatch.stages import diagnostics
from riskwatch.state.artifacts import (
    DEPENDENCY_CACHE_FILE,
    DIAGNOSTICS_FILE,
    MODEL_FILE,
    current_version_folder,
    load_model,
)
from tests.helpers import run_script, write_config


def test_predictions_are_the_models_own(deployed):
    model = load_model(current_version_folder(deployed.prod_deployment_path) / MODEL_FILE)
    predictions = diagnostics.predict_data_file(model, deployed.test_data_path / "testdata.csv")
    batch = read_feature_file(deployed.test_data_path / "testdata.csv")
    assert predictions.rows == 500 and predictions.corporation == batch.ids
    np.testing.assert_allclose(predictions.probability, model.predict_proba(batch.features)[:, 1], atol=5e-7)
    assert predictions.label == model.predict(batch.features).tolist()


def test_summary_statistics_match_the_textbook_definitions():
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0, np.nan])
    stats = summary_statistics({"x": values})["x"]
    assert stats == {
        "count": 5,
        "mean": 22.0,
        "median": 3.0,
        "std": pytest.approx((7610 / 4) ** 0.5, abs=1e-6),  # sample standard deviation (n - 1), as pandas gives
        "min": 1.0,
        "q1": 2.0,
        "q3": 4.0,
        "max": 100.0,
    }
    assert summary_statistics({"y": np.array([np.nan])})["y"]["mean"] is None


def test_missing_data_counts_blank_cells_per_column_and_file(tmp_path):
    (tmp_path / "a.csv").write_text(
        "corporation,lastmonth_activity,lastyear_activity,number_of_employees,exited\n"
        "a,1,,3,0\nb,,NA,3,1\nc,1,2,3,0\nd,1,2,,0\n"
    )
    (tmp_path / "b.csv").write_text("corporation,lastmonth_activity,lastyear_activity,exited\nx,1,2,0\n")
    (tmp_path / "c.csv").write_bytes("corporation\n".encode("utf-16"))
    report = missing_data([tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"])
    assert report["rows"] == 5
    assert report["files"]["a.csv"]["percent"] == {
        "corporation": 0.0,
        "lastmonth_activity": 25.0,
        "lastyear_activity": 50.0,
        "number_of_employees": 25.0,
        "exited": 0.0,
    }
    assert report["files"]["b.csv"]["percent"]["number_of_employees"] == 100.0  # the column is absent
    assert report["percent"]["number_of_employees"] == 40.0
    assert "UTF-16" in report["unreadable"]["c.csv"]


def snapshot(folder: Path) -> dict[str, int]:
    """Modification times of the files in ``folder``; the stage-timing record (written on purpose) aside."""
    return {
        str(path): path.stat().st_mtime_ns
        for path in folder.rglob("*")
        if path.is_file() and STAGE_TIMINGS_FILE not in path.name
    }


@pytest.mark.slow
def test_timing_runs_each_stage_as_a_process_without_touching_live_outputs(deployed):
    folders = (
        deployed.input_folder_path,
        deployed.output_folder_path,
        deployed.test_data_path,
        deployed.output_model_path,
        deployed.prod_deployment_path,
    )
    live = {folder: snapshot(folder) for folder in folders}
    timing = diagnostics.time_stages(deployed, runs=2)
    assert timing.runs == 2
    for stage in ("ingestion", "training", "scoring"):
        spread = timing.stages[stage]
        assert spread.values is not None and len(spread.values) == 2 and all(value > 0 for value in spread.values)
        assert spread.min is not None and spread.mean is not None and spread.max is not None
        assert spread.min <= spread.mean <= spread.max
    assert {folder: snapshot(folder) for folder in live} == live
    recorded = read_stage_timings(deployed.output_model_path)
    assert {"ingestion", "training", "scoring"} <= set(recorded)
    assert recorded["training"][-1].source == "diagnostics.py"


@pytest.mark.slow
def test_timing_names_the_stage_that_failed(deployed, tmp_path):
    (deployed.input_folder_path / "clients_a.csv").write_text("nothing useful\n")
    (deployed.input_folder_path / "clients_b.csv").write_text("nothing useful\n")
    with pytest.raises(diagnostics.PipelineError, match=r"timing ingestion\.py failed"):
        diagnostics.time_stages(deployed, runs=1)


class FakeIndex:
    """A PyPI-style JSON index on a free local port, counting the questions it gets."""

    def __init__(self, versions: dict[str, str], delay: float = 0.0):
        self.asked: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.strip("/").split("/")[0]
                owner.asked.append(name)
                time.sleep(delay)
                if name not in versions:
                    self.send_response(404)
                    self.end_headers()
                    return
                body = json.dumps({"info": {"version": versions[name]}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda request, address: None  # a client that gave up is expected here
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def requirements(tmp_path: Path) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text("# pinned\nnumpy==2.4.6\nflask>=3.0  # web\n-r other.txt\nnot-installed-package==1.0\n")
    return path


def test_dependencies_compare_installed_with_the_index_and_cache_the_answers(tmp_path, requirements):
    index = FakeIndex({"numpy": "99.0", "flask": "3.0.0", "not-installed-package": "1.0"})
    try:
        settings = DiagnosticsSettings(package_index=index.url, index_timeout_seconds=2, index_cache_hours=1)
        cache = tmp_path / DEPENDENCY_CACHE_FILE
        rows = {row.package: row for row in diagnostics.dependency_status(settings, cache, requirements)}
        assert rows["numpy"].status == "outdated" and rows["numpy"].latest == "99.0"
        assert rows["numpy"].installed == "2.4.6" and rows["numpy"].required == "==2.4.6"
        assert rows["flask"].status == "current" and rows["flask"].source == "index"
        assert rows["not-installed-package"].status == "not installed"
        assert sorted(index.asked) == ["flask", "not-installed-package", "numpy"]
        again = {row.package: row for row in diagnostics.dependency_status(settings, cache, requirements)}
        assert len(index.asked) == 3  # answered from the cache
        assert again["numpy"].source == "cache" and again["numpy"].status == "outdated"
    finally:
        index.close()


def test_an_unreachable_index_gives_unknown_with_the_reason_and_the_last_known_answer(tmp_path, requirements):
    cache = tmp_path / DEPENDENCY_CACHE_FILE
    cache.write_text(json.dumps({"numpy": {"latest": "2.5.0", "checked_at": "2026-01-01T00:00:00Z"}}))
    settings = DiagnosticsSettings(package_index="http://127.0.0.1:9", index_timeout_seconds=1)
    rows = {row.package: row for row in diagnostics.dependency_status(settings, cache, requirements)}
    assert rows["numpy"].status == "unknown"
    assert rows["numpy"].reason == "the package index cannot be reached"
    assert rows["numpy"].last_known is not None and rows["numpy"].last_known.latest == "2.5.0"
    assert rows["flask"].status == "unknown" and rows["flask"].last_known is None


def test_a_silent_index_is_given_up_on_after_the_timeout(tmp_path, requirements):
    index = FakeIndex({"numpy": "9.9"}, delay=5)
    try:
        settings = DiagnosticsSettings(package_index=index.url, index_timeout_seconds=0.3)
        started = time.monotonic()
        rows = diagnostics.dependency_status(settings, tmp_path / DEPENDENCY_CACHE_FILE, requirements)
        assert time.monotonic() - started < 3  # bounded by the timeout, not by the index's 5 s delay
        stuck = [thread for thread in threading.enumerate() if thread.is_alive() and not thread.daemon]
        assert stuck == [threading.main_thread()]  # nothing left that would keep the process from exiting
        assert {row.reason for row in rows if row.status == "unknown"} == {
            "the package index did not answer within 0.3 s"
        }
    finally:
        index.close()


def test_requirements_of_the_project_are_all_read():
    names = [name for name, _ in diagnostics.read_requirements()]
    assert {"numpy", "scikit-learn", "flask", "gunicorn", "requests", "matplotlib", "reportlab"} <= set(names)


@pytest.mark.slow
def test_main_writes_one_json_file_with_everything_and_a_timestamp(deployed):
    config_path = deployed.path
    settings = json.loads(config_path.read_text())
    settings["diagnostics"] = {"package_index": "http://127.0.0.1:9", "index_timeout_seconds": 0.5}
    config_path.write_text(json.dumps(settings))
    assert diagnostics.main(["--config", str(config_path), "--runs", "1", "-q"]) == 0
    stored = json.loads((deployed.output_model_path / DIAGNOSTICS_FILE).read_text())
    assert stored["generated_at"].endswith("Z") and stored["model_version"] == "v0001"
    assert stored["predictions"]["rows"] == 500
    assert set(stored["summary_statistics"]["columns"]) == {
        "lastmonth_activity",
        "lastyear_activity",
        "number_of_employees",
        "exited",
    }
    assert stored["missing_data"]["rows"] == 1000
    assert stored["timing"]["runs"] == 1
    assert all(row["status"] == "unknown" for row in stored["dependencies"])


@pytest.mark.slow
def test_stages_record_their_own_timings_and_diagnostics_reports_them_without_running_anything(deployed, monkeypatch):
    config_path = write_config(deployed.path.parent, diagnostics={"package_index": "http://127.0.0.1:9/pypi"})
    assert run_script("training.py", "--config", str(config_path), "-q").returncode == 0
    assert run_script("scoring.py", "--config", str(config_path), "-q").returncode == 0
    recorded = read_stage_timings(deployed.output_model_path)
    assert [item.source for item in recorded["training"]] == ["training.py"] and recorded["training"][0].seconds > 0

    def no_processes(*args, **kwargs):
        raise AssertionError("diagnostics ran a stage again")

    monkeypatch.setattr(diagnostics, "run_stage_process", no_processes)
    report = diagnostics.run_diagnostics(load_config(config_path), runs=0)
    timing = report.timing
    assert timing is not None
    assert timing.runs == 0 and timing.source == "recorded when each stage ran"
    assert list(timing.stages)[:2] == ["training", "scoring"]
    assert timing.stages["training"].latest == recorded["training"][-1].seconds
    assert timing.stages["training"].latest_source == "training.py"


@pytest.mark.slow
def test_a_damaged_timing_record_never_fails_a_stage(deployed):
    (deployed.output_model_path / STAGE_TIMINGS_FILE).write_text("{not json")
    config_path = write_config(deployed.path.parent)
    assert run_script("scoring.py", "--config", str(config_path), "-q").returncode == 0
    assert [item.source for item in read_stage_timings(deployed.output_model_path)["scoring"]] == ["scoring.py"]


def test_missing_counts_are_kept_by_content_and_an_unchanged_file_is_counted_once(project, tmp_path, monkeypatch):
    from riskwatch.data import datastats

    paths = sorted(project.input_folder_path.glob("*.csv"))
    cache = tmp_path / "missingcache.json"
    first = datastats.missing_data(paths, cache)
    assert first == datastats.missing_data(paths)

    def no_counting(path):
        raise AssertionError(f"{path.name} was counted again")

    monkeypatch.setattr(datastats, "count_missing", no_counting)
    assert datastats.missing_data(paths, cache) == first
    cache.write_text("{damaged")
    monkeypatch.undo()
    assert datastats.missing_data(paths, cache) == first  # a damaged cache is only a cache
