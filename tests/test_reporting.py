"""Reporting: the confusion-matrix plot, the PDF report's content, the client ranking and its failures."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pypdf import PdfReader
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.platypus import Flowable, Paragraph
from sklearn.metrics import f1_score

from riskwatch.core.config import Config, load_config
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import find_test_files
from riskwatch.core.schema import FEATURES
from riskwatch.data.batches import read_ingested_data
from riskwatch.data.datafiles import read_labelled_data
from riskwatch.model.clients import riskiest_first, sort_orders
from riskwatch.model.drivers import explain_clients
from riskwatch.model.riskmodels import risk_model_for
from riskwatch.report import gather as report_gather
from riskwatch.report import pdf as report_pdf
from riskwatch.report import plots as report_plots
from riskwatch.report import reporting
from riskwatch.stages import diagnostics
from riskwatch.state.artifacts import (
    CALIBRATION_PLOT_FILE,
    CONFUSION_MATRIX_FILE,
    DIAGNOSTICS_FILE,
    FINAL_DATA,
    MODEL_FILE,
    REPORT_FILE,
    TRENDS_PLOT_FILE,
    current_version_folder,
    load_model,
)
from riskwatch.state.history import open_history, save_run, start_run
from riskwatch.state.records import Confusion, write_diagnostics_record
from riskwatch.state.runs import RunFields
from tests.helpers import UNREACHABLE_INDEX, run_script, write_config

SECTION_HEADINGS = (
    "Client exit risk: summary report",
    "Deployed model",
    "Performance on the test data",
    "Calibration",
    "Summary statistics of the ingested data",
    "Missing data in the source files",
    "Stage timings",
    "Dependencies",
    "clients at risk of leaving",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def diagnosed(deployed: Config, monkeypatch: pytest.MonkeyPatch) -> Config:
    """The deployed small project with a diagnostics.json: stage timings faked, package index unreachable."""
    config = load_config(write_config(deployed.path.parent, diagnostics=UNREACHABLE_INDEX))
    # Timing runs three stages as processes; a fixed time keeps the test quick and the record whole.
    monkeypatch.setattr(diagnostics, "run_stage_process", lambda stage, config_path: 0.25)
    report = diagnostics.run_diagnostics(config, runs=1)
    write_diagnostics_record(config.output_model_path / DIAGNOSTICS_FILE, report)
    return config


def pdf_text(path: Path) -> str:
    """The text of every page of a PDF, whitespace collapsed so wrapped lines still match."""
    return " ".join(" ".join(page.extract_text() for page in PdfReader(path).pages).split())


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def temp_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def deployed_model(config: Config):
    return load_model(current_version_folder(config.prod_deployment_path) / MODEL_FILE)


def riskiest_active_client(model, data_path: Path) -> str:
    """Computed apart from reporting: the last row of each corporation, active ones only, highest probability."""
    with open(data_path, newline="", encoding="utf-8") as handle:
        latest = {row["corporation"]: row for row in csv.DictReader(handle)}
    active = [row for row in latest.values() if row["exited"] == "0"]
    features = np.array([[float(row[name]) for name in FEATURES] for row in active])
    return active[int(np.argmax(model.predict_proba(features)[:, 1]))]["corporation"]


def test_report_shows_every_section_with_the_deployed_models_figures(diagnosed):
    result = reporting.write_report(diagnosed)

    plot = diagnosed.output_model_path / CONFUSION_MATRIX_FILE
    width, height = png_size(plot)
    assert 600 <= width <= 2000 and 450 <= height <= 1500
    assert plot.stat().st_size > 10_000

    pdf = diagnosed.output_model_path / REPORT_FILE
    assert result["pdf"] == pdf and pdf.read_bytes().startswith(b"%PDF")
    text = pdf_text(pdf)
    for heading in SECTION_HEADINGS:
        assert heading in text, heading
    assert "v0001" in text

    model = deployed_model(diagnosed)
    features, labels = read_labelled_data(find_test_files(diagnosed.test_data_path))
    assert f"{f1_score(labels, model.predict(features)):.4f}" in text
    assert riskiest_active_client(model, diagnosed.output_folder_path / FINAL_DATA) in text
    assert result["clients"][0]["corporation"] == riskiest_active_client(
        model, diagnosed.output_folder_path / FINAL_DATA
    )
    assert len(result["clients"]) == diagnosed.reporting.top_clients

    stored = json.loads((diagnosed.output_model_path / DIAGNOSTICS_FILE).read_text())
    assert "is not in diagnostics.json" not in text, "every section has its figures"
    metrics = result["metrics"]
    for key in ("precision", "recall", "roc_auc", "accuracy"):
        assert f"{getattr(metrics, key):.4f}" in text, key
    month = stored["summary_statistics"]["columns"]["lastmonth_activity"]
    assert f"{month['mean']:,.2f}" in text and f"{month['max']:,.0f}" in text
    assert "1,000 " in text  # rows of the source files, in the missing-data table
    assert "0.25" in text  # the (faked) stage timings
    corporation = result["clients"][0]["corporation"]
    assert f"{corporation} {100 * result['clients'][0]['probability']:.1f}%" in text

    assert "unknown" in text and "the package index cannot be reached" in text
    assert "Note:" not in text, "no warning is due when diagnostics match the deployed model"
    assert temp_files(diagnosed.output_model_path) == []


def test_report_shows_the_calibration_on_the_test_data_and_the_latest_batch(diagnosed):
    result = reporting.write_report(diagnosed)

    plot = diagnosed.output_model_path / CALIBRATION_PLOT_FILE
    assert result["calibration_plot"] == plot and plot.read_bytes().startswith(PNG_SIGNATURE)
    width, height = png_size(plot)
    assert 600 <= width <= 2000 and 450 <= height <= 1500
    model = deployed_model(diagnosed)
    curves = report_gather.measure_calibrations(model, diagnosed.test_data_path, diagnosed.output_folder_path)
    data = read_ingested_data(diagnosed.output_folder_path)
    assert [curve.rows for curve in curves] == [500, int(data.in_batches(data.latest_batch).sum())]
    test_features, test_labels = read_labelled_data(find_test_files(diagnosed.test_data_path))
    bins = curves[0].bins
    assert bins.exits.sum() == test_labels.sum()
    assert bins.predicted.sum() == pytest.approx(model.predict_proba(test_features)[:, 1].sum())
    assert np.all((bins.mean_predicted() >= 0) & (bins.mean_predicted() <= 1))

    text = pdf_text(result["pdf"])
    assert "ten bins of predicted exit probability" in text and "test data: 500 rows" in text
    assert text.index("Calibration") < text.index("Summary statistics of the ingested data")
    images = sum(
        1
        for page in PdfReader(result["pdf"]).pages
        for item in (page.get("/Resources", {}).get("/XObject") or {}).values()
        if item.get_object().get("/Subtype") == "/Image"
    )
    assert images == 2  # the confusion matrix and the calibration (no run history here, so no trends)
    reason = result["clients"][0]["reason"]
    assert reason[:1].upper() + reason[1:] in text


def test_report_notes_diagnostics_of_another_model_version(diagnosed):
    path = diagnosed.output_model_path / DIAGNOSTICS_FILE
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "model_version": "v0000"}))

    result = reporting.write_report(diagnosed, pdf_name="other.pdf")

    assert len(result["notes"]) == 1
    text = pdf_text(diagnosed.output_model_path / "other.pdf")
    assert "Note: diagnostics.json was made for model v0000, not the deployed v0001" in text
    assert "Run diagnostics.py again" in text


def test_rank_clients_keeps_each_corporations_last_row_and_active_clients_only(deployed, tmp_path):
    data = tmp_path
    (data / "finaldata.csv").write_text(
        "corporation,lastmonth_activity,lastyear_activity,number_of_employees,exited\n"
        "left_later,0,0,900,0\n"  # riskiest row, but its last row says it exited
        "twice,0,0,500,0\n"
        "gone,0,0,800,1\n"
        "steady,900,9000,5,0\n"
        "left_later,0,0,900,1\n"
        "twice,50,800,20,0\n",
        encoding="utf-8",
    )
    model = deployed_model(deployed)

    ranked = report_gather.rank_clients(model, data, top=5)

    assert [client["corporation"] for client in ranked] == ["twice", "steady"]
    assert ranked[0] == {
        "rank": 1,
        "corporation": "twice",
        "probability": pytest.approx(model.predict_proba(np.array([[50.0, 800.0, 20.0]]))[0, 1]),
        "lastmonth_activity": 50,
        "lastyear_activity": 800,
        "number_of_employees": 20,
        "reason": explain_clients(risk_model_for(model), np.array([[50.0, 800.0, 20.0]])).clients[0].reason,
    }
    assert ranked[1]["reason"].startswith("activity last month 900, far above the typical ")
    assert [client["corporation"] for client in report_gather.rank_clients(model, data, top=1)] == ["twice"]


def test_the_report_ranks_equal_risks_as_the_client_table_does(deployed, tmp_path):
    (tmp_path / "finaldata.csv").write_text(
        "corporation,lastmonth_activity,lastyear_activity,number_of_employees,exited\n"
        "first,0,0,500,0\n"
        "steady,900,9000,5,0\n"
        "second,0,0,500,0\n",  # the same counts as "first": the same probability
        encoding="utf-8",
    )
    model = deployed_model(deployed)
    probabilities = model.predict_proba(np.array([[0, 0, 500], [900, 9000, 5], [0, 0, 500]], dtype=float))[:, 1]
    table_order = sort_orders(pa.array(["first", "steady", "second"]), np.zeros((3, 3)), probabilities)["probability"]

    ranked = report_gather.rank_clients(model, tmp_path, top=3)

    assert [client["corporation"] for client in ranked] == ["second", "first", "steady"]
    assert riskiest_first(probabilities).tolist() == table_order[::-1].tolist() == [2, 0, 1]


def test_confusion_matrix_plot_is_written_under_the_given_name(tmp_path):
    target = report_plots.plot_confusion_matrix(
        Confusion(tn=1958, fp=302, fn=260, tp=480), "v0042", tmp_path / "cm.png"
    )
    assert target == tmp_path / "cm.png"
    assert png_size(target)[0] >= 600
    assert temp_files(tmp_path) == []


def test_a_failed_build_leaves_the_old_report_and_no_temp_files(diagnosed, monkeypatch):
    class Exploding(Flowable):
        def wrap(self, available_width, available_height):
            return available_width, 10

        def draw(self):
            raise RuntimeError("disk trouble while drawing")

    pdf = diagnosed.output_model_path / REPORT_FILE
    pdf.write_bytes(b"%PDF old report")
    monkeypatch.setattr(report_pdf, "clients_section", lambda *args: [Exploding()])

    with pytest.raises(RuntimeError, match="disk trouble"):
        reporting.write_report(diagnosed)

    assert pdf.read_bytes() == b"%PDF old report"
    assert temp_files(diagnosed.output_model_path) == []


@pytest.mark.slow
def test_reporting_without_diagnostics_fails_saying_to_run_diagnostics(deployed):
    done = run_script("reporting.py", "--config", str(deployed.path))

    assert done.returncode == 1
    assert "run diagnostics.py first" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert not (deployed.output_model_path / REPORT_FILE).exists()
    assert not (deployed.output_model_path / CONFUSION_MATRIX_FILE).exists()


@pytest.mark.slow
def test_cli_writes_the_named_files_in_the_model_folder(diagnosed):
    done = run_script(
        "reporting.py", "--config", str(diagnosed.path), "--plot", "confusionmatrix2.png", "--pdf", "report2.pdf"
    )

    assert done.returncode == 0, done.stderr
    for name in ("confusionmatrix2.png", "report2.pdf"):
        assert (diagnosed.output_model_path / name).is_file()
        assert f"wrote {diagnosed.output_model_path / name}" in done.stderr


@pytest.mark.parametrize("option", [["--plot", "../elsewhere.png"], ["--pdf", "report.png"], ["--pdf", "/tmp/a.pdf"]])
def test_output_names_must_be_plain_file_names(option, capsys):
    with pytest.raises(SystemExit) as stopped:
        reporting.main(option)
    assert stopped.value.code == 2
    assert "must" in capsys.readouterr().err


def test_trends_over_runs_come_from_the_run_history(diagnosed):
    without = reporting.write_report(diagnosed)
    assert without["trend_runs"] == 0
    assert "No run with new data is recorded" in pdf_text(without["pdf"])
    connection = open_history(diagnosed.history_path)
    for minute, (outcome, f1, decision) in enumerate(
        [
            ("kept", 0.64, "no drift; kept v0001"),
            ("no_new_data", None, "no new data"),
            ("deployed", 0.39, "replaced v0001"),
        ]
    ):
        run_id = start_run(connection, f"2026-11-21T10:{minute:02d}:00Z", 1, "v0001")
        fields = RunFields(outcome=outcome, decision=decision, new_data_f1=f1, new_rows=2000, drift_threshold=0.59)
        save_run(connection, run_id, fields.updated(RunFields(timings={"ingestion": 0.1}, seconds=2.0)))
    connection.close()
    result = reporting.write_report(diagnosed)
    text = pdf_text(result["pdf"])
    assert result["trend_runs"] == 2  # the no-op run is left out
    assert (diagnosed.output_model_path / TRENDS_PLOT_FILE).read_bytes().startswith(PNG_SIGNATURE)
    assert "Trends over runs" in text and "2 runs of fullprocess.py that found new data" in text
    assert text.index("replaced v0001") < text.index("no drift; kept v0001")  # newest first
    assert "0.3900" in text and "0.5900" in text
    # no run tested v0001's calibration: the calibration section says so; a run that does is reported
    assert "No labelled batch has tested the calibration of v0001 yet." in " ".join(text.split())
    connection = open_history(diagnosed.history_path)
    run_id = start_run(connection, "2026-11-21T11:00:00Z", 1, "v0001")
    tested = RunFields(outcome="kept", decision="kept", new_rows=3000, expected_exits=1020.8, observed_exits=1002)
    tested = tested.updated(RunFields(expected_exits_low=964.1, expected_exits_high=1077.5, miscalibrated=False))
    save_run(connection, run_id, tested)
    connection.close()
    text = " ".join(pdf_text(reporting.write_report(diagnosed)["pdf"]).split())
    assert (
        f"The latest calibration test of v0001 (run {run_id}, 3,000 labelled rows): 1,021 exits expected, 1,002 "
        "observed (-2%), within the range a calibrated model shows (964-1,078): its expected exits held."
    ) in text


def test_a_broken_history_leaves_the_trends_out_with_a_note(diagnosed):
    diagnosed.history_path.write_bytes(b"not a database" * 100)
    result = reporting.write_report(diagnosed)
    assert any("trends over runs are left out" in note for note in result["notes"])
    assert "Deployed model" in pdf_text(result["pdf"])


def test_a_finaldata_cut_short_is_described_by_neither_the_report_nor_the_diagnostics(diagnosed: Config):
    data = diagnosed.output_folder_path / FINAL_DATA
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # a full disk, a crash, an edit
    with pytest.raises(PipelineError, match="not the file the last ingestion wrote"):
        reporting.write_report(diagnosed)
    with pytest.raises(PipelineError, match="not the file the last ingestion wrote"):
        diagnostics.run_diagnostics(diagnosed, runs=0)


def test_table_columns_are_widened_so_no_word_is_cut():
    cell = ParagraphStyle("cell", fontName="Helvetica", fontSize=8)
    data = [[Paragraph("Outcome", cell), Paragraph("Decision", cell)]]
    data.append([Paragraph("first deployment", cell), Paragraph("a long decision " * 8, cell)])
    fitted = report_pdf.widen_for_words(data, [10 * mm, 150 * mm])
    assert fitted[0] >= stringWidth("deployment", "Helvetica", 8) + report_pdf.CELL_PADDING
    assert sum(fitted) == pytest.approx(160 * mm)  # the room came from the column with words to wrap
