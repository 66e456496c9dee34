"""Reporting: plot the deployed model's confusion matrix and write a PDF summary report.

``main()`` writes ``confusionmatrix.png`` and ``summaryreport.pdf`` in the model output folder.
The report holds the deployed model (version, when it was trained and deployed, on what data,
its decision threshold), its metrics and confusion matrix on the test data, the summary
statistics, missing data, stage timings and dependency health from ``diagnostics.json`` (run
``diagnostics.py`` first), the model's calibration on the test data and on the latest batch of
ingested rows (drawn in ``calibration.png``), the active clients with the highest predicted exit
probability with what drives each one's risk, and the trends over fullprocess.py runs from the run
history (F1, missing data, timings), drawn in ``trends.png``.

The stage in order: ``gather`` reads what the report is made of, ``plots`` draws the pictures, ``pdf`` lays
the pages out (``text`` formats the values); this module runs them and writes the files.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from riskwatch.core.cli import build_parser, run_stage
from riskwatch.core.config import Config
from riskwatch.core.errors import PipelineError
from riskwatch.report.gather import (
    CalibrationCurve,
    evaluate_deployed,
    measure_calibrations,
    rank_clients,
    read_candidates_of,
    read_deployed_model,
    read_diagnostics,
    read_recent_window,
    read_trend_runs,
    report_notes,
)
from riskwatch.report.pdf import build_report
from riskwatch.report.plots import plot_calibration, plot_confusion_matrix, plot_trends
from riskwatch.report.text import format_metric
from riskwatch.state.artifacts import (
    CALIBRATION_PLOT_FILE,
    CONFUSION_MATRIX_FILE,
    DIAGNOSTICS_FILE,
    EVALUATION_WINDOW_FILE,
    FINAL_DATA,
    REPORT_FILE,
    REPORT_RECORD_FILE,
    TRENDS_PLOT_FILE,
    DeployedVersion,
    check_final_data,
    keep_report,
    utc_now,
)
from riskwatch.state.records import (
    ReportRecord,
    write_report_record,
)
from riskwatch.state.runs import StoredRun

log = logging.getLogger("reporting")


def write_report(config: Config, plot_name: str = CONFUSION_MATRIX_FILE, pdf_name: str = REPORT_FILE) -> dict[str, Any]:
    """Make the confusion-matrix plot and the PDF report in the model folder; return what they show."""
    diagnostics = read_diagnostics(config.output_model_path / DIAGNOSTICS_FILE)
    deployed, source_files = read_deployed_model(config.prod_deployment_path)
    scores = evaluate_deployed(deployed, config.test_data_path)
    plot = plot_confusion_matrix(scores.confusion, deployed.version, config.output_model_path / plot_name)
    calibration, calibration_plot = draw_calibration(config, deployed)
    check_final_data(config.output_folder_path)  # a finaldata.csv cut short is not ranked as if whole
    clients = rank_clients(deployed.model, config.output_folder_path, config.reporting.top_clients)
    notes = report_notes(deployed, scores, diagnostics)
    for note in notes:
        log.warning("%s", note)
    trend_runs, trend_plot = draw_trends(config, notes)
    pdf = build_report(
        config.output_model_path / pdf_name,
        candidates=read_candidates_of(config.history_path, deployed.version),
        deployed=deployed,
        source_files=source_files,
        evaluation=scores,
        diagnostics=diagnostics,
        clients=clients,
        top=config.reporting.top_clients,
        data_path=config.output_folder_path / FINAL_DATA,
        plot=plot,
        calibration=calibration,
        calibration_plot=calibration_plot,
        trend_runs=trend_runs,
        trend_plot=trend_plot,
        history_path=config.history_path,
        notes=notes,
        recent=read_recent_window(config.output_model_path / EVALUATION_WINDOW_FILE, deployed.version),
    )
    kept = keep_report(config.prod_deployment_path, deployed.version, {REPORT_FILE: pdf, CONFUSION_MATRIX_FILE: plot})
    if kept:
        log.info("kept the report of %s with it in %s", deployed.version, kept[0].parent)
    record = ReportRecord(model_version=deployed.version, generated_at=utc_now(), pdf=str(pdf), plot=str(plot))
    write_report_record(config.output_model_path / REPORT_RECORD_FILE, record)
    return {
        "version": deployed.version,
        "plot": plot,
        "calibration_plot": calibration_plot,
        "pdf": pdf,
        "metrics": scores,
        "clients": clients,
        "notes": notes,
        "trend_runs": len(trend_runs),
    }


def draw_calibration(config: Config, deployed: DeployedVersion) -> tuple[list[CalibrationCurve], Path]:
    """The deployed model's calibration curves, drawn in ``calibration.png``; the curves and the plot."""
    window = deployed.model_info.training_window
    calibration = measure_calibrations(deployed.model, config.test_data_path, config.output_folder_path, window)
    plot = plot_calibration(calibration, deployed.version, config.output_model_path / CALIBRATION_PLOT_FILE)
    return calibration, plot


def draw_trends(config: Config, notes: list[str]) -> tuple[list[StoredRun], Path | None]:
    """The runs the trends show and their plot (None without runs); a history that cannot be read adds a note."""
    try:
        trend_runs = read_trend_runs(config.history_path)
    except PipelineError as exc:  # the report stands without its trends
        notes.append(f"The trends over runs are left out: {exc}.")
        log.warning("%s", notes[-1])
        trend_runs = []
    trend_plot = plot_trends(trend_runs, config.output_model_path / TRENDS_PLOT_FILE) if trend_runs else None
    return trend_runs, trend_plot


def plain_file_name(suffix: str) -> Callable[[str], str]:
    """An argparse type: a bare file name ending in ``suffix``, to be written in the model folder."""

    def check(name: str) -> str:
        if not name or Path(name).name != name or name in (".", ".."):
            raise argparse.ArgumentTypeError(f"{name!r} must be a file name only; it is written in the model folder")
        if not name.lower().endswith(suffix):
            raise argparse.ArgumentTypeError(f"{name!r} must end in {suffix}")
        return name

    return check


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--plot",
        metavar="NAME",
        type=plain_file_name(".png"),
        default=CONFUSION_MATRIX_FILE,
        help=f"file name of the confusion-matrix plot in the model folder (default: {CONFUSION_MATRIX_FILE})",
    )
    parser.add_argument(
        "--pdf",
        metavar="NAME",
        type=plain_file_name(".pdf"),
        default=REPORT_FILE,
        help=f"file name of the PDF report in the model folder (default: {REPORT_FILE})",
    )
    args = parser.parse_args(argv)

    def work(config: Config) -> dict[str, Any]:
        result = write_report(config, plot_name=args.plot, pdf_name=args.pdf)
        metrics = result["metrics"]
        log.info(
            "model %s on %d test rows: F1 %.4f, precision %.4f, recall %.4f, ROC AUC %s",
            result["version"],
            metrics.rows,
            metrics.f1,
            metrics.precision,
            metrics.recall,
            format_metric(metrics.roc_auc),
        )
        log.info("wrote %s", result["plot"])
        log.info("wrote %s (%d clients at risk listed)", result["pdf"], len(result["clients"]))
        return result

    return run_stage("reporting", args, work)


if __name__ == "__main__":
    raise SystemExit(main())
