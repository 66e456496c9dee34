"""The typed records of the JSON files the stages hand on (metrics, model, version, diagnostics, evaluation window,
report): reading, writing, and older files."""

from __future__ import annotations

import json
import logging

import pytest

from riskwatch.core.errors import PipelineError
from riskwatch.state.artifacts import read_deployment_details
from riskwatch.state.records import (
    Confusion,
    DependencyStatus,
    Diagnostics,
    EvaluationWindow,
    Metrics,
    ModelInfo,
    ReportRecord,
    StageTimings,
    TrainingWindow,
    VersionInfo,
    read_diagnostics_record,
    read_evaluation_window,
    read_metrics,
    read_model_info,
    read_report_record,
    read_version_info,
    record_from_json,
    record_to_json,
    write_diagnostics_record,
    write_evaluation_window,
    write_metrics,
    write_model_info,
    write_report_record,
    write_version_info,
)
from riskwatch.state.runs import FeatureDrift

# As the stages wrote them before the records were typed (paths shortened): they must keep loading.
METRICS_JSON = """\
{
  "f1": 0.627178,
  "precision": 0.625,
  "recall": 0.629371,
  "roc_auc": 0.856849,
  "accuracy": 0.786,
  "brier_score": 0.129787,
  "log_loss": 0.404684,
  "confusion": {
    "tn": 303,
    "fp": 54,
    "fn": 53,
    "tp": 90
  },
  "rows": 500,
  "exit_rate": 0.286,
  "mean_predicted_risk": 0.256447,
  "scored_at": "2026-11-23T12:43:17Z",
  "model": "/srv/risk/models/trainedmodel.pkl",
  "model_sha256": "827077f4bde8ce0864407d2402053f90e6826c950543a95a6fcdc61afdc66807",
  "test_data": [
    "/srv/risk/testdata/testdata.csv"
  ],
  "test_data_sha256": {
    "testdata.csv": "8b9715a4a63e1c676090740569d2d2d8e4f9086e9b9bb7dc23e60c1e3e5cc963"
  }
}
"""

MODEL_INFO_JSON = """\
{
  "trained_at": "2026-11-23T12:43:17Z",
  "model": "LogisticRegression on log1p-scaled, standardised counts",
  "features": [
    "lastmonth_activity",
    "lastyear_activity",
    "number_of_employees"
  ],
  "target": "exited",
  "decision_threshold": 0.302427,
  "coefficients": {
    "lastmonth_activity": -1.352114,
    "lastyear_activity": -0.727617,
    "number_of_employees": 0.777796
  },
  "intercept": -1.319085,
  "settings": {
    "C": 1.0,
    "max_iter": 1000,
    "class_weight": null,
    "decision_threshold": "f1"
  },
  "training_data": "/srv/risk/ingesteddata/finaldata.csv",
  "training_data_sha256": "5468eeb7dcf648963209c832dfa7296e4995d49d53a5ef3f2b194e5fec143c13",
  "ingested_files_sha256": "4de91fba9a99108701840d92ecfa18089b99e75b138e49409da7eb13033ce431",
  "ingested_record_sha256": "ab22498dd92122902e43e685352b147c0d7ad77ee00330f585b7147315a4d204",
  "training_window": {
    "name": "all",
    "first_batch": 1,
    "last_batch": 1,
    "rows": 1000,
    "held_out_from_batch": 2,
    "half_life": null,
    "half_life_unit": null
  },
  "training_rows": 1000,
  "training_exit_rate": 0.268,
  "fit_seconds": 0.007,
  "python": "3.11.7",
  "libraries": {
    "numpy": "2.4.6",
    "pyarrow": "26.0.1",
    "scikit-learn": "1.9.1",
    "scipy": "1.17.1"
  },
  "model_sha256": "827077f4bde8ce0864407d2402053f90e6826c950543a95a6fcdc61afdc66807"
}
"""

VERSION_INFO_JSON = """\
{
  "version": "v0001",
  "deployed_at": "2026-11-23T12:43:17Z",
  "previous_version": null,
  "model_sha256": "827077f4bde8ce0864407d2402053f90e6826c950543a95a6fcdc61afdc66807",
  "f1": 0.627178,
  "roc_auc": 0.856849,
  "trained_at": "2026-11-23T12:43:17Z",
  "sources": {
    "trainedmodel.pkl": "/srv/risk/models/trainedmodel.pkl",
    "trainedmodel.json": "/srv/risk/models/trainedmodel.json",
    "latestscore.txt": "/srv/risk/models/latestscore.txt",
    "metrics.json": "/srv/risk/models/metrics.json",
    "ingestedfiles.txt": "/srv/risk/ingesteddata/ingestedfiles.txt",
    "ingestedfiles.json": "/srv/risk/ingesteddata/ingestedfiles.json"
  }
}
"""

DIAGNOSTICS_JSON = """\
{
  "generated_at": "2026-11-23T14:29:43Z",
  "model_version": "v0001",
  "model_trained_at": "2026-11-23T14:29:37Z",
  "predictions": {
    "dataset": "/srv/risk/testdata/testdata.csv",
    "rows": 2,
    "corporation": [
      "orrcfr",
      "wlkiyv"
    ],
    "label": [
      0,
      1
    ],
    "probability": [
      0.120513,
      0.702113
    ],
    "predicted_exits": 1
  },
  "summary_statistics": {
    "dataset": "ingesteddata/finaldata.csv",
    "columns": {
      "lastmonth_activity": {
        "count": 1000,
        "mean": 164.3,
        "median": 73.0,
        "std": 251.2,
        "min": 0.0,
        "q1": 19.0,
        "q3": 198.0,
        "max": 2000.0
      },
      "exited": {
        "count": 0,
        "mean": null,
        "median": null,
        "std": null,
        "min": null,
        "q1": null,
        "q3": null,
        "max": null
      }
    }
  },
  "missing_data": {
    "dataset": "sourceddata",
    "rows": 1000,
    "percent": {
      "corporation": 0.0,
      "lastmonth_activity": 1.5
    },
    "files": {
      "dataset1.csv": {
        "rows": 1000,
        "percent": {
          "corporation": 0.0,
          "lastmonth_activity": 1.5
        }
      }
    },
    "unreadable": {
      "broken.csv": "broken.csv: cannot be read (Permission denied)"
    }
  },
  "timing": {
    "runs": 0,
    "unit": "seconds",
    "source": "recorded when each stage ran",
    "stages": {
      "training": {
        "mean": 1.2,
        "std": 0.1,
        "median": 1.2,
        "min": 1.1,
        "max": 1.3,
        "values": [
          1.1,
          1.3
        ],
        "latest": 1.3,
        "latest_at": "2026-11-23T14:29:37Z",
        "latest_source": "training.py",
        "count": 2
      }
    }
  },
  "dependencies": [
    {
      "package": "numpy",
      "required": "==2.4.6",
      "installed": "2.4.6",
      "latest": "2.5.5",
      "source": "cache",
      "checked_at": "2026-11-23T14:29:43Z",
      "status": "outdated"
    },
    {
      "package": "flask",
      "required": null,
      "installed": "3.1.0",
      "latest": null,
      "source": null,
      "reason": "the package index cannot be reached",
      "last_known": {
        "latest": "3.1.0",
        "checked_at": "2026-11-20T08:00:00Z"
      },
      "status": "unknown"
    },
    {
      "package": "absent-package",
      "required": "==1.0",
      "installed": null,
      "latest": "1.0",
      "source": "index",
      "checked_at": "2026-11-23T14:29:43Z",
      "status": "not installed"
    }
  ],
  "seconds": 1.234
}
"""

# fullprocess.py wrote this one without a newline at the end.
EVALUATION_WINDOW_JSON = """\
{
  "model_version": "v0003",
  "updated_at": "2026-11-23T14:40:00Z",
  "rows": 420,
  "batches": [
    2,
    4
  ],
  "f1": 0.61,
  "precision": 0.6,
  "recall": 0.62,
  "roc_auc": null,
  "accuracy": 0.8,
  "confusion": {
    "tn": 300,
    "fp": 20,
    "fn": 40,
    "tp": 60
  },
  "test_data_drift": true,
  "test_data_note": "the test data no longer looks like the recent rows (number_of_employees: ...)",
  "test_data_features": [
    {
      "feature": "lastmonth_activity",
      "test": "ks",
      "statistic": 0.05,
      "p_value": 0.4,
      "threshold": 0.01,
      "drifted": false
    },
    {
      "feature": "number_of_employees",
      "test": "wasserstein",
      "statistic": 0.61,
      "p_value": null,
      "threshold": 0.1,
      "drifted": true
    }
  ]
}"""

REPORT_RECORD_JSON = """\
{
  "model_version": "v0003",
  "generated_at": "2026-11-23T14:41:00Z",
  "pdf": "/srv/risk/models/summaryreport.pdf",
  "plot": "/srv/risk/models/confusionmatrix.png"
}
"""


@pytest.mark.parametrize(
    ("text", "read", "write"),
    [
        (METRICS_JSON, read_metrics, write_metrics),
        (MODEL_INFO_JSON, read_model_info, write_model_info),
        (VERSION_INFO_JSON, read_version_info, write_version_info),
        (DIAGNOSTICS_JSON, read_diagnostics_record, write_diagnostics_record),
        (EVALUATION_WINDOW_JSON, read_evaluation_window, write_evaluation_window),
        (REPORT_RECORD_JSON, read_report_record, write_report_record),
    ],
    ids=["metrics", "model info", "version info", "diagnostics", "evaluation window", "report record"],
)
def test_files_written_before_read_back_and_are_written_the_same(tmp_path, text, read, write):
    (tmp_path / "before.json").write_text(text)
    record = read(tmp_path / "before.json")
    write(tmp_path / "after.json", record)
    assert (tmp_path / "after.json").read_text().rstrip("\n") == text.rstrip("\n")
    assert read(tmp_path / "after.json") == record


def test_fields_read_as_typed_values(tmp_path):
    (tmp_path / "metrics.json").write_text(METRICS_JSON)
    (tmp_path / "trainedmodel.json").write_text(MODEL_INFO_JSON)
    (tmp_path / "version.json").write_text(VERSION_INFO_JSON)
    metrics = read_metrics(tmp_path / "metrics.json")
    info = read_model_info(tmp_path / "trainedmodel.json")
    version = read_version_info(tmp_path / "version.json")
    assert isinstance(metrics.confusion, Confusion) and metrics.rows == sum(vars(metrics.confusion).values())
    assert metrics.test_data_sha256 == {"testdata.csv": metrics.test_data_sha256["testdata.csv"]}
    assert info.training_window == TrainingWindow("all", 1, 1, 1000, held_out_from_batch=2)
    assert info.settings.decision_threshold == "f1" and info.retrained_because is None
    assert version.version == "v0001" and version.previous_version is None and version.f1 == metrics.f1
    assert version.model_sha256 == metrics.model_sha256 == info.model_sha256


def test_extra_keys_are_ignored_and_keys_older_versions_lacked_read_as_none(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"f1": 0.5, "model_sha256": "abc", "written_by": "a later version"}))
    assert read_metrics(path) == Metrics(f1=0.5, model_sha256="abc")
    path = tmp_path / "trainedmodel.json"
    path.write_text(json.dumps({"trained_at": "2024-01-01T00:00:00Z", "decision_threshold": 1}))
    info = read_model_info(path)
    assert info.decision_threshold == 1.0 and info.training_window is None and info.libraries == {}
    assert "training_window" not in json.loads(write_model_info(path, info).read_text())


def test_a_challenger_s_model_info_keeps_why_it_was_trained(tmp_path):
    window = TrainingWindow("recent", 3, 5, 300, held_out_from_batch=6)
    info = ModelInfo(training_window=window, held_out_recent_rows=40, retrained_because="model drift")
    assert read_model_info(write_model_info(tmp_path / "trainedmodel.json", info)) == info


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "metrics.json does not exist"),
        ("{not json", "metrics.json cannot be read"),
        ("[1, 2]", "metrics.json does not hold a JSON object"),
        ('{"precision": 0.5}', "metrics.json: field 'f1' is missing"),
        ('{"f1": "high"}', "metrics.json: field 'f1': expected float, found str"),
        ('{"f1": 0.5, "confusion": {"tn": 1}}', "metrics.json: field 'confusion': field 'fp' is missing"),
        ('{"f1": 0.5, "test_data_sha256": {"a.csv": 3}}', "metrics.json: field 'test_data_sha256'"),
        ('{"f1": 0.5, "rows": true}', "metrics.json: field 'rows'"),
    ],
)
def test_a_bad_file_is_named_with_the_field_at_fault(tmp_path, content, message):
    path = tmp_path / "metrics.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PipelineError, match=message):
        read_metrics(path)


def test_a_damaged_version_record_reads_as_unknown_details(tmp_path, caplog):
    (tmp_path / "version.json").write_text('{"version": "v0001", "f1": "damaged"')
    with caplog.at_level(logging.WARNING):
        assert read_deployment_details(tmp_path) == VersionInfo()
    assert "deployment details are unknown" in caplog.text


def test_diagnostics_sections_read_as_typed_values(tmp_path):
    (tmp_path / "diagnostics.json").write_text(DIAGNOSTICS_JSON)
    diagnostics = read_diagnostics_record(tmp_path / "diagnostics.json")
    assert diagnostics.model_version == "v0001" and diagnostics.seconds == 1.234
    assert diagnostics.predictions is not None and diagnostics.predictions.label == [0, 1]
    assert diagnostics.summary_statistics is not None
    assert diagnostics.summary_statistics.columns["exited"].mean is None
    assert diagnostics.missing_data is not None and diagnostics.missing_data.files["dataset1.csv"].rows == 1000
    assert diagnostics.timing is not None and diagnostics.timing.stages["training"].latest_seconds == 1.3
    assert diagnostics.timing.stages["training"].timings == 2
    assert diagnostics.dependencies is not None
    numpy, flask, absent = diagnostics.dependencies
    assert (numpy.status, numpy.reason, numpy.last_known) == ("outdated", None, None)
    assert flask.last_known is not None and flask.last_known.latest == "3.1.0" and flask.checked_at is None
    assert absent.installed is None and absent.status == "not installed"


def test_evaluation_window_and_report_record_read_as_typed_values(tmp_path):
    (tmp_path / "evaluationwindow.json").write_text(EVALUATION_WINDOW_JSON)
    (tmp_path / "summaryreport.json").write_text(REPORT_RECORD_JSON)
    window = read_evaluation_window(tmp_path / "evaluationwindow.json")
    assert window.batch_span == "batches 2\u20134" and window.roc_auc is None
    assert window.confusion == Confusion(tn=300, fp=20, fn=40, tp=60)
    assert window.test_data_features[1] == FeatureDrift(
        feature="number_of_employees", test="wasserstein", statistic=0.61, p_value=None, threshold=0.1, drifted=True
    )
    assert EvaluationWindow(batches=[3, 3]).batch_span == "batch 3" and EvaluationWindow().batch_span == ""
    report = read_report_record(tmp_path / "summaryreport.json")
    assert report == ReportRecord(
        model_version="v0003",
        generated_at="2026-11-23T14:41:00Z",
        pdf="/srv/risk/models/summaryreport.pdf",
        plot="/srv/risk/models/confusionmatrix.png",
    )


def test_timings_and_dependencies_keep_only_the_keys_their_file_held():
    timing = {"runs": 3, "stages": {"ingestion": {"mean": 0.5}}}
    row = {"package": "flask", "status": "current"}
    assert record_to_json(record_from_json(StageTimings, timing)) == timing
    assert record_to_json(record_from_json(DependencyStatus, row)) == row
    written = DependencyStatus(package="flask", latest=None, source=None, reason="unreachable", status="unknown")
    assert list(record_to_json(written)) == ["package", "required", "installed", "latest", "source", "reason", "status"]


def test_a_diagnostics_section_of_the_wrong_shape_reads_as_absent(tmp_path, caplog):
    path = tmp_path / "diagnostics.json"
    path.write_text(json.dumps({"generated_at": "x", "missing_data": [1], "timing": {"runs": "three"}}))
    with caplog.at_level(logging.WARNING):
        assert read_diagnostics_record(path) == Diagnostics(generated_at="x")
    assert "'missing_data' is left out" in caplog.text and "'timing' is left out" in caplog.text
    path.write_text(json.dumps({"predictions": {"rows": 500}}))
    predictions = read_diagnostics_record(path).predictions
    assert predictions is not None and predictions.rows == 500 and predictions.label == []


@pytest.mark.parametrize(
    ("name", "read", "what"),
    [
        ("diagnostics.json", read_diagnostics_record, "diagnostics file"),
        ("evaluationwindow.json", read_evaluation_window, "evaluationwindow.json"),
        ("summaryreport.json", read_report_record, "report record"),
    ],
)
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "cannot be read"),
        ("[1, 2]", "does not hold a JSON object"),
    ],
)
def test_a_missing_or_damaged_file_is_named_as_before(tmp_path, name, read, what, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(PipelineError, match=f"^{what} {path} {message}"):
        read(path)


@pytest.mark.parametrize(
    ("name", "read", "content", "message"),
    [
        ("evaluationwindow.json", read_evaluation_window, '{"rows": "many"}', "field 'rows': expected int"),
        ("evaluationwindow.json", read_evaluation_window, '{"confusion": {"tn": 1}}', "field 'confusion'"),
        ("summaryreport.json", read_report_record, '{"model_version": 3}', "field 'model_version'"),
    ],
)
def test_a_field_of_the_wrong_type_is_named(tmp_path, name, read, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PipelineError, match=message):
        read(path)
