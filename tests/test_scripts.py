"""Each stage as a process: --help, the whole pipeline, and the classic course data layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from riskwatch.core.config import load_config
from riskwatch.stages.deployment import current_version
from riskwatch.state.artifacts import INGESTED_FILES, LATEST_SCORE_FILE, METRICS_FILE, MODEL_FILE
from tests.helpers import PROJECT_ROOT, UDACITY_DATA, run_script, udacity_config

STAGES = ("ingestion.py", "training.py", "scoring.py", "deployment.py")


@pytest.mark.parametrize(
    "script", [*STAGES, "generate_data.py", "diagnostics.py", "reporting.py", "apicalls.py", "app.py"]
)
@pytest.mark.slow
def test_every_script_has_help(script):
    done = run_script(script, "--help")
    assert done.returncode == 0
    assert "usage:" in done.stdout


def run_pipeline(config_path: Path) -> list[str]:
    """Run the four stages as processes; return their logs."""
    logs = []
    for script in STAGES:
        done = run_script(script, "--config", str(config_path))
        assert done.returncode == 0, f"{script} failed: {done.stderr}"
        logs.append(done.stderr)
    return logs


@pytest.mark.slow
def test_the_pipeline_runs_stage_by_stage_as_processes(project):
    ingestion_log, training_log, scoring_log, deployment_log = run_pipeline(project.path)
    assert "rows written to" in ingestion_log
    assert "model family: linear" in training_log and "on 1000 rows" in training_log
    assert "F1 0." in scoring_log
    assert "deployed v0001" in deployment_log
    root = project.prod_deployment_path
    assert all((root / name).is_file() for name in (MODEL_FILE, LATEST_SCORE_FILE, METRICS_FILE, INGESTED_FILES))


@pytest.mark.slow
def test_the_classic_course_data_runs_through_all_four_stages(tmp_path):
    config_path = udacity_config(tmp_path)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in UDACITY_DATA.rglob("*"))
    ingestion_log, *_ = run_pipeline(config_path)
    assert "ingested 2 file(s)" in ingestion_log
    config = load_config(config_path)
    assert current_version(config.prod_deployment_path) == "v0001"
    assert 0 <= float((config.prod_deployment_path / LATEST_SCORE_FILE).read_text()) <= 1
    assert (config.prod_deployment_path / INGESTED_FILES).read_text().startswith("dataset3.csv\n")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in UDACITY_DATA.rglob("*")) == before


def test_shipped_configs_point_where_they_should():
    production = load_config(PROJECT_ROOT / "config.json")
    assert (production.input_folder_path, production.output_model_path) == (
        PROJECT_ROOT / "sourceddata",
        PROJECT_ROOT / "models",
    )
    practice = load_config(PROJECT_ROOT / "config.practice.json")
    assert (practice.input_folder_path, practice.output_model_path) == (
        PROJECT_ROOT / "practicedata",
        PROJECT_ROOT / "practicemodels",
    )
    assert practice.prod_deployment_path != production.prod_deployment_path
    course = load_config(PROJECT_ROOT / "config.udacity.json")
    assert course.input_folder_path == (PROJECT_ROOT.parent / "shared" / "udacity-data" / "sourcedata").resolve()
