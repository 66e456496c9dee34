"""The config loader: classic keys, paths relative to the config file, env override, clear errors."""

from __future__ import annotations

import json
import re

import pytest

from riskwatch.core.config import CONFIG_ENV_VAR, dump_config, load_config
from riskwatch.core.errors import PipelineError
from tests.helpers import PROJECT_ROOT, write_config


def test_paths_resolve_against_the_config_folder_not_the_working_directory(tmp_path, monkeypatch):
    path = write_config(tmp_path)
    monkeypatch.chdir(PROJECT_ROOT)
    config = load_config(path)
    assert config.input_folder_path == tmp_path / "sourceddata"
    assert config.prod_deployment_path == tmp_path / "production_deployment"


def test_a_classic_course_config_works_unchanged(tmp_path):
    classic = {
        "input_folder_path": "practicedata",
        "output_folder_path": "ingesteddata",
        "test_data_path": "testdata",
        "output_model_path": "practicemodels",
        "prod_deployment_path": "production_deployment",
    }
    (tmp_path / "config.json").write_text(json.dumps(classic))
    config = load_config(tmp_path / "config.json")
    assert config.model.decision_threshold == "f1"
    assert config.keep_versions == 5


def test_environment_variable_chooses_the_config(tmp_path, monkeypatch):
    path = write_config(tmp_path, input_folder_path="elsewhere")
    monkeypatch.setenv(CONFIG_ENV_VAR, str(path))
    assert load_config().input_folder_path == tmp_path / "elsewhere"
    assert load_config(PROJECT_ROOT / "config.json").input_folder_path == PROJECT_ROOT / "sourceddata"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON (line 1"),
        ("[]", "must hold a JSON object"),
        (json.dumps({"input_folder_path": "a"}), "needs 'output_folder_path'"),
    ],
)
def test_broken_config_files_get_one_clear_sentence(tmp_path, content, message):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(PipelineError, match=re.escape(message)):
        load_config(tmp_path / "config.json")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"model": {"C": -1}}, "model.C must be a positive number"),
        ({"model": {"class_weight": "heavy"}}, "model.class_weight"),
        ({"model": {"decision_threshold": 2}}, "model.decision_threshold"),
        ({"model": {"penalty": "l1"}}, "unknown model settings penalty"),
        ({"deployment": {"keep_versions": 1}}, "keep_versions must be a whole number of at least 2"),
        ({"monitoring": {"model_drift_test": "vibes"}}, "must be one of raw, parametric, nonparametric"),
        ({"monitoring": {"retrain_on": "always"}}, "must be one of model_drift, data_drift, either"),
        ({"monitoring": {"holdout_fraction": 1.0}}, "monitoring.holdout_fraction must be below 1"),
        ({"monitoring": {"min_gain": -0.1}}, "monitoring.min_gain must be at least 0"),
        ({"monitoring": {"min_new_rows": 2.5}}, "monitoring.min_new_rows must be a whole number"),
        ({"monitoring": {"min_new_rows": 60}}, r"min_new_rows \(60\) times holdout_fraction \(0.3\) must be at least"),
        ({"monitoring": {"min_history_scores": 1}}, "monitoring.min_history_scores must be at least 2"),
        (
            {"monitoring": {"history_url": "mysql://db/risk"}},
            "history_url must be 'sqlite:///path/to/file.sqlite' or 'postgresql",
        ),
    ],
)
def test_bad_settings_are_named(tmp_path, section, message):
    with pytest.raises(PipelineError, match=message):
        load_config(write_config(tmp_path, **section))


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        load_config(tmp_path / "nope.json")


def test_history_and_log_default_to_the_model_folder_and_follow_the_url(tmp_path):
    config = load_config(write_config(tmp_path))
    assert config.history_path == tmp_path / "models" / "runhistory.sqlite"
    assert config.log_path == tmp_path / "models" / "fullprocess.log"
    assert config.monitoring.min_gain == 0.01 and config.monitoring.retrain_on == "either"
    moved = load_config(
        write_config(
            tmp_path, monitoring={"history_url": "sqlite:///records/h.db", "log_file": "logs/f.log", "min_gain": 0}
        )
    )
    assert moved.history_path == tmp_path / "records" / "h.db"
    assert moved.log_path == tmp_path / "logs" / "f.log"
    assert moved.monitoring.min_gain == 0
    absolute = load_config(write_config(tmp_path, monitoring={"history_url": f"sqlite:///{tmp_path}/abs.db"}))
    assert absolute.history_path == tmp_path / "abs.db"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "model": {"C": 0.5, "decision_threshold": 0.4, "class_weight": "balanced"},
            "api": {"max_rows": 10},
            "reporting": {"top_clients": 5},
            "diagnostics": {"timing_runs": 2},
            "monitoring": {
                "candidate_windows": ["recent", "all"],
                "webhooks": ["http://127.0.0.1:9/hook"],
                "history_url": "sqlite:///runs/history.sqlite",
                "retrain_on": "model_drift",
            },
        },
    ],
    ids=["defaults", "every section"],
)
def test_a_dumped_config_loads_back_the_same(tmp_path, overrides):
    config = load_config(write_config(tmp_path, **overrides))
    config.path.write_text(dump_config(config))
    assert load_config(config.path) == config


def test_a_config_with_a_database_source_and_no_folder_round_trips(tmp_path):
    path = write_config(
        tmp_path,
        input_database_url="sqlite:///clients.sqlite",
        input_database_table="client_activity",
        input_database_watermark="id",
    )
    raw = json.loads(path.read_text())
    del raw["input_folder_path"]
    path.write_text(json.dumps(raw))
    config = load_config(path)
    assert config.input_folder_path is None and config.database is not None
    path.write_text(dump_config(config))
    assert load_config(path) == config
