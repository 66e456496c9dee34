"""Reporting: plot the deployed model's confusion matrix and write a PDF summary report.

``main()`` writes ``confusionmatrix.png`` and ``summaryreport.pdf`` in the model output folder.
The report holds the deployed model (version, when it was trained and deployed, on what data,
its decision threshold), its metrics and confusion matrix on the test data, the summary
statistics, missing data, stage timings and dependency health from ``diagnostics.json`` (run
``diagnostics.py`` first), the model's calibration on the test data and on the latest batch of
ingested rows (drawn in ``calibration.png``), the active clients with the highest predicted exit
probability with what drives each one's risk, and the trends over fullprocess.py runs from the run
history (F1, missing data, timings), drawn in ``trends.png``.
"""

from __future__ import annotations

import argparse
import html
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER, TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, Image, KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from riskwatch.core.cli import build_parser, run_stage
from riskwatch.core.config import Config, load_config
from riskwatch.core.errors import PipelineError
from riskwatch.core.files import atomic_path, find_test_files, list_names, parse_utc, sha256_file
from riskwatch.core.formatting import format_timestamp
from riskwatch.core.schema import FEATURE_LABELS, FEATURES, BadFileError
from riskwatch.data.batches import (
    TrainingWindow,
    read_final_data,
    read_ingested_data,
    read_unlabelled_clients,
    select_current_clients,
)
from riskwatch.model import evaluation
from riskwatch.model.drivers import explain_clients
from riskwatch.model.riskmodels import risk_model_for
from riskwatch.state.artifacts import (
    CALIBRATION_PLOT_FILE,
    CONFUSION_MATRIX_FILE,
    DIAGNOSTICS_FILE,
    EVALUATION_WINDOW_FILE,
    FINAL_DATA,
    INGESTED_FILES,
    MODEL_FILE,
    REPORT_FILE,
    REPORT_RECORD_FILE,
    TRENDS_PLOT_FILE,
    Classifier,
    DeployedVersion,
    check_final_data,
    current_version_folder,
    keep_report,
    load_deployed_version,
    read_ingested_files,
    utc_now,
)
from riskwatch.state.history import DEPLOYED, FIRST_DEPLOYMENT, RUNNING, HistoryLocation, read_deploying_run, read_runs
from riskwatch.state.records import (
    Confusion,
    DependencyStatus,
    Diagnostics,
    EvaluationWindow,
    Metrics,
    ModelInfo,
    ReportRecord,
    StageSpread,
    read_diagnostics_record,
    read_evaluation_window,
    write_report_record,
)
from riskwatch.state.runs import CandidateScore, StoredRun
from riskwatch.stats.drift import CalibrationBins, calibration_bins

log = logging.getLogger("reporting")

CLASS_NAMES = ("stayed", "exited")
MARGIN = 16 * mm
FRAME_WIDTH = A4[0] - 2 * MARGIN
PLOT_WIDTH = 118 * mm
DASH = "\u2013"  # shown where a value is unknown
SHORT_HASH = 12
MAX_LISTED_FILES = 6
TREND_RUNS = 500  # runs with new data drawn in the trends
TREND_TABLE_RUNS = 12
STATUS_COLOURS = {
    "outdated": colors.HexColor("#FCE2C4"),
    "unknown": colors.HexColor("#E4E4EC"),
    "not installed": colors.HexColor("#F8CFCF"),
}
HEADER_BACKGROUND = colors.HexColor("#27476E")
STRIPE = colors.HexColor("#F2F5F9")
NOTE_BACKGROUND = colors.HexColor("#FFF3CD")
NOTE_BORDER = colors.HexColor("#E0B000")


# ---------------------------------------------------------------- gathering what the report shows


def read_diagnostics(path: Path) -> Diagnostics:
    """The diagnostics record; raise PipelineError saying to run diagnostics.py when it is missing."""
    if not path.is_file():
        raise PipelineError(f"{path} does not exist; run diagnostics.py first, then reporting.py again")
    return read_diagnostics_record(path)


def read_recent_window(path: Path, version: str) -> EvaluationWindow | None:
    """The serving model's scores on the rolling window of recent held-out rows; None when there are none for it."""
    try:
        stored = read_evaluation_window(path)
    except PipelineError:
        return None
    return stored.of_version(version)


def read_deployed_model(prod_deployment_path: Path) -> tuple[DeployedVersion, list[str]]:
    """The serving version (resolved once, checked) and the names of the files it was trained on (labelled ones)."""
    deployed = load_deployed_version(current_version_folder(prod_deployment_path))
    files = read_ingested_files(deployed.folder / INGESTED_FILES).values()
    return deployed, [entry.name for entry in files if entry.labelled]


def rank_clients(model: Classifier, folder: Path, top: int) -> list[dict[str, Any]]:
    """The ``top`` current clients of an ingested-data folder with the highest exit probability, highest first.

    A client counts by its latest row by arrival: labelled and not exited (clients who already
    exited are left out, as they have gone), or not labelled yet (``unlabelledclients.csv``).
    Ties keep arrival order.
    """
    path = Path(folder) / FINAL_DATA
    if not path.is_file():
        raise PipelineError(f"ingested data {path} does not exist; run ingestion.py first")
    try:
        current = select_current_clients(read_final_data(path), read_unlabelled_clients(folder))
    except BadFileError as exc:
        raise PipelineError(f"cannot rank clients: {exc}") from None
    if not current.ids:
        return []
    features = current.features
    counts = {name: features[:, j] for j, name in enumerate(FEATURES)}
    probabilities = model.predict_proba(features)[:, 1]
    order = np.argsort(-probabilities, kind="stable")[:top]
    ids = [current.ids[index] for index in order.tolist()]
    drivers_model = risk_model_for(model)
    if drivers_model is None:
        reasons = [DASH] * order.size
    else:
        reasons = [client.reason for client in explain_clients(drivers_model, features[order]).clients]
    return [
        {
            "rank": rank,
            "corporation": ids[rank - 1],
            "probability": float(probabilities[index]),
            **{name: int(counts[name][index]) for name in FEATURES},
            "reason": reasons[rank - 1],
        }
        for rank, index in enumerate(order, start=1)
    ]


@dataclass(frozen=True)
class CalibrationCurve:
    """The model's predictions on some labelled rows, binned by probability, and what those rows are."""

    name: str
    bins: CalibrationBins
    in_training: bool = False  # the model was trained on these rows

    @property
    def rows(self) -> int:
        return int(self.bins.rows.sum())

    @property
    def label(self) -> str:
        """The name as the legend and the caption show it."""
        return f"{self.name} (trained on)" if self.in_training else self.name


def measure_calibration(
    model: Classifier, name: str, features: np.ndarray, labels: np.ndarray, in_training: bool = False
) -> CalibrationCurve:
    """The model's predicted probabilities on these rows against their labels, in ten probability bins."""
    return CalibrationCurve(name, calibration_bins(labels, model.predict_proba(features)[:, 1]), in_training)


def measure_calibrations(
    model: Classifier, test_data_path: Path, output_folder_path: Path, window: TrainingWindow | None = None
) -> list[CalibrationCurve]:
    """Calibration on the test data and on the latest batch of ingested rows (left out when it cannot be read).

    ``window``: the rows the model was trained on, to say when the latest batch was among them.
    """
    test = evaluation.read_test_data(test_data_path)
    curves = [measure_calibration(model, "test data", test.features, test.labels)]
    try:
        data = read_ingested_data(output_folder_path)
    except (PipelineError, OSError) as exc:
        log.warning("the calibration on the latest batch is left out: %s", exc)
        return curves
    latest = data.in_batches(data.latest_batch)
    latest_batch = data.latest_batch
    trained_on = window is not None and window.first_batch <= latest_batch <= window.last_batch
    name = f"ingested batch {latest_batch}, the latest"
    curves.append(measure_calibration(model, name, data.features(latest), data.labels(latest), trained_on))
    return curves


def evaluate_deployed(deployed: DeployedVersion, test_data_path: Path) -> Metrics:
    """The deployed model's metrics on the test data: those it was scored with, unless the test data changed since."""
    files = find_test_files(test_data_path)
    scored = deployed.metrics
    if scored.confusion is not None and scored.test_data_sha256 == {path.name: sha256_file(path) for path in files}:
        return scored
    return evaluation.score_model(deployed.folder / MODEL_FILE, test_data_path)


def report_notes(deployed: DeployedVersion, evaluation: Metrics, diagnostics: Diagnostics) -> list[str]:
    """Warnings a reader must see first: figures that do not belong to the deployed model as it is now."""
    notes = []
    diagnosed = diagnostics.model_version
    if diagnosed != deployed.version:
        notes.append(
            f"diagnostics.json was made for model {diagnosed or 'unknown'}, not the deployed {deployed.version}; "
            "its statistics, timings and dependency checks may be out of date. Run diagnostics.py again to refresh."
        )
    recorded = deployed.metrics.test_data_sha256
    if recorded is not None and recorded != evaluation.test_data_sha256:
        notes.append(
            f"The test data changed after the model was scored on {format_time(deployed.metrics.scored_at)} "
            f"(F1 then {format_metric(deployed.metrics.f1)}); the metrics below are measured on the test data "
            "as it is now."
        )
    return notes


# ---------------------------------------------------------------- formatting numbers for people


def format_number(value: float | int | None) -> str:
    """Thousands separators; whole numbers without decimals, others with 1 to 3 as the size suits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if float(value).is_integer():
        return f"{value:,.0f}"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.3f}"


def format_metric(value: float | None) -> str:
    """A score between 0 and 1 to four decimals."""
    return DASH if value is None else f"{value:.4f}"


def format_percent(value: float | None, decimals: int = 1) -> str:
    """A share between 0 and 1 as a percentage."""
    return DASH if value is None else f"{100 * value:.{decimals}f}%"


def format_missing(percent: float | None) -> str:
    """A percentage of missing values: plain 0 when none, never rounded down to 0 when some."""
    if percent is None:
        return DASH
    if percent == 0:
        return "0"
    if percent < 0.01:
        return "<0.01%"
    return f"{percent:,.2f}%"


def format_time(stamp: str | None) -> str:
    """An ISO 8601 UTC time as '2026-11-20 23:17:30 UTC'."""
    if not stamp:
        return DASH
    return format_timestamp(str(stamp)) + " UTC"


def format_seconds(value: float | None) -> str:
    return DASH if value is None else f"{value:,.2f}"


def breakable(name: str) -> str:
    """Paragraph markup of a column name that wraps after its last underscore, to fit a narrow column."""
    head, underscore, tail = name.rpartition("_")
    return f"{escape(head)}_<br/>{escape(tail)}" if underscore else escape(name)


def ellipsize(text: str, width: float, style: ParagraphStyle) -> str:
    """``text`` cut in the middle with an ellipsis to fit ``width`` points in ``style``; as it is when it fits.

    The start and the end stay, so two long ids that differ at either end still read apart.
    """
    if stringWidth(text, style.fontName, style.fontSize) <= width:
        return text
    for keep in range(len(text) - 1, 1, -1):
        tail = keep // 3
        shown = f"{text[: keep - tail]}\u2026{text[len(text) - tail :]}"
        if stringWidth(shown, style.fontName, style.fontSize) <= width:
            return shown
    return "\u2026"


def nowrap(text: str) -> str:
    """Text whose spaces do not break a line (for times and numbers with units in running text)."""
    return text.replace(" ", "\u00a0")


# ---------------------------------------------------------------- the plot


def plot_confusion_matrix(confusion: Confusion | None, version: str, target: Path) -> Path:
    """Draw the confusion matrix (counts and percent of each actual class) as a PNG; write it atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg for this figure only, not process-wide
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    if confusion is None:
        raise PipelineError(f"the scores of model {version} hold no confusion counts; run scoring.py")
    counts = np.array([[confusion.tn, confusion.fp], [confusion.fn, confusion.tp]], dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)

    figure = Figure(figsize=(6.4, 4.8), dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for actual in range(2):
        for predicted in range(2):
            share = shares[actual, predicted]
            axes.text(
                predicted,
                actual,
                f"{counts[actual, predicted]:,}\n{share:.1%} of row",
                ha="center",
                va="center",
                fontsize=13,
                color="white" if share > 0.55 else "black",
            )
    axes.set_xticks([0, 1], labels=list(CLASS_NAMES), fontsize=11)
    axes.set_yticks([0, 1], labels=list(CLASS_NAMES), fontsize=11)
    axes.set_xlabel("predicted", fontsize=12)
    axes.set_ylabel("actual", fontsize=12)
    axes.set_title(f"Confusion matrix of model {version}\n{int(counts.sum()):,} test rows", fontsize=13)
    figure.colorbar(image, ax=axes, label="share of the actual class", format=PercentFormatter(1.0), shrink=0.85)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png")
    return Path(target)


def plot_calibration(curves: Sequence[CalibrationCurve], version: str, target: Path) -> Path:
    """Draw observed exit rate against mean predicted probability per bin, with the diagonal; write it atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    figure = Figure(figsize=(6.4, 4.8), dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color="#888888", linewidth=1, label="perfectly calibrated")
    for curve, (colour, marker) in zip(curves, (("#27476E", "o"), ("#D9822B", "s")), strict=False):
        rows = curve.bins.rows[curve.bins.filled]
        axes.plot(curve.bins.mean_predicted(), curve.bins.observed_rate(), "-", color=colour, linewidth=1.2, alpha=0.7)
        axes.scatter(
            curve.bins.mean_predicted(),
            curve.bins.observed_rate(),
            s=12 + 160 * np.sqrt(rows / rows.max()),
            color=colour,
            marker=marker,
            edgecolors="white",
            linewidths=0.6,
            zorder=3,
            label=f"{curve.label}, {curve.rows:,} rows",
        )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_aspect("equal")
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.grid(color="#DDDDDD", linewidth=0.6)
    axes.set_xlabel("mean predicted exit probability in the bin", fontsize=11)
    axes.set_ylabel("observed exit rate in the bin", fontsize=11)
    axes.set_title(f"Calibration of model {version}", fontsize=13)
    axes.legend(fontsize=9, loc="upper left")
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png")
    return Path(target)


def read_candidates_of(history_path: HistoryLocation, version: str) -> tuple[CandidateScore, ...]:
    """The challengers of the run that deployed ``version``; none when it was deployed otherwise or the history
    cannot be read (which the trends section reports)."""
    try:
        run = read_deploying_run(history_path, version)
    except PipelineError:
        return ()
    return run.candidates or () if run is not None else ()


def read_trend_runs(history_path: HistoryLocation) -> list[StoredRun]:
    """Finished runs that saw new data, oldest first ([] without a history)."""
    runs = read_runs(history_path, limit=TREND_RUNS, with_no_op=False)
    return [run for run in reversed(runs) if run.outcome != RUNNING]


RunValue = Callable[[StoredRun], float | None]  # one number of a run, for a trend line


def run_time(run: StoredRun) -> datetime:
    """When a run started, as a time (the history writes these)."""
    moment = parse_utc(run.started_at)
    assert moment is not None  # the history writes these times
    return moment


def trend_series(runs: list[StoredRun], value: RunValue) -> tuple[list[datetime], list[float]]:
    """The runs' start times and values, where a run has a value."""
    points = [(run_time(run), found) for run in runs if (found := value(run)) is not None]
    return [point[0] for point in points], [point[1] for point in points]


def stage_seconds(stage: str) -> RunValue:
    """How long a run spent in ``stage``; None when it did not time it."""
    return lambda run: (run.timings or {}).get(stage)


def plot_f1_trends(axes: Any, runs: list[StoredRun]) -> None:
    """The serving model's F1 scores, the drift threshold and the challenger's F1 over the runs."""
    lines: tuple[tuple[RunValue, str, str, dict[str, float], str], ...] = (
        (lambda run: run.deployed_f1, "-", "#27476E", {}, "serving model, F1 on test data"),
        (lambda run: run.new_data_f1, "o", "#D9822B", {}, "serving model, F1 on new rows"),
        (lambda run: run.window_f1, "s", "#7B3F99", {"markersize": 4}, "serving model, F1 on recent window"),
        (lambda run: run.drift_threshold, "_", "#B22222", {"markersize": 12}, "model-drift threshold"),
        (lambda run: run.challenger_recent_f1, "^", "#3A7D44", {}, "challenger, F1 on recent rows"),
    )
    for value, style, colour, size, label in lines:
        axes.plot(*trend_series(runs, value), style, color=colour, label=label, **size)
    axes.set_ylabel("F1")
    axes.set_title("Runs that found new data (dotted lines: deployments)", fontsize=11)
    axes.legend(fontsize=7, loc="lower left", ncols=2)


def plot_missing_trend(axes: Any, runs: list[StoredRun]) -> None:
    axes.plot(*trend_series(runs, lambda run: run.missing_percent), "s-", color="#6A4C93", markersize=4)
    axes.set_ylabel("missing cells, %")


def plot_timing_trends(axes: Any, runs: list[StoredRun]) -> None:
    """The seconds of the slow stages and of the whole run, over the runs."""
    for stage, colour in (("ingestion", "#1F77B4"), ("training", "#2CA02C"), ("scoring", "#FF7F0E")):
        times, seconds = trend_series(runs, stage_seconds(stage))
        if times:
            axes.plot(times, seconds, ".-", color=colour, label=stage)
    axes.plot(*trend_series(runs, lambda run: run.seconds), "k.-", label="whole run")
    axes.set_ylabel("seconds")
    axes.legend(fontsize=7, loc="upper left", ncols=4)


def mark_deployments(all_axes: list[Any], runs: list[StoredRun]) -> None:
    """A dotted line on every plot at each run that deployed."""
    for run in runs:
        if run.outcome in (DEPLOYED, FIRST_DEPLOYMENT):
            for axes in all_axes:
                axes.axvline(run_time(run), color="#888888", linewidth=0.8, linestyle=":")


def set_time_axis(axes: Any, runs: list[StoredRun]) -> None:
    """Dates under the last plot; a run or a burst of runs gets an hour either side, not years of empty axis."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    first, last = run_time(runs[0]), run_time(runs[-1])
    margin = timedelta(hours=TREND_MIN_SPAN_HOURS / 2)
    if last - first < 2 * margin:
        axes.set_xlim(first - margin, last + margin)
    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def plot_trends(runs: list[StoredRun], target: Path) -> Path:
    """Draw F1, missing data and timings over runs as a PNG; write it atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.2, 6.6), dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    f1_axes, missing_axes, time_axes = figure.subplots(3, 1, sharex=True)
    plot_f1_trends(f1_axes, runs)
    mark_deployments([f1_axes, missing_axes, time_axes], runs)
    plot_missing_trend(missing_axes, runs)
    plot_timing_trends(time_axes, runs)
    set_time_axis(time_axes, runs)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png")
    return Path(target)


# ---------------------------------------------------------------- the PDF


def make_styles() -> dict[str, ParagraphStyle]:
    """The paragraph styles of the report."""
    sample = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=sample["BodyText"], fontSize=9.5, leading=12.5)
    cell = ParagraphStyle("cell", parent=body, fontSize=8.5, leading=10.5, spaceBefore=0, spaceAfter=0)
    return {
        "title": ParagraphStyle("title", parent=sample["Title"], alignment=0, fontSize=20, leading=24, spaceAfter=2),
        "subtitle": ParagraphStyle("subtitle", parent=body, textColor=colors.HexColor("#555555")),
        "heading": ParagraphStyle(
            "heading", parent=sample["Heading2"], fontSize=13.5, spaceBefore=12, spaceAfter=4, keepWithNext=1
        ),
        "body": body,
        "caption": ParagraphStyle(
            "caption", parent=body, fontSize=8.5, leading=11, textColor=colors.HexColor("#444444"), keepWithNext=1
        ),
        # Below a figure: unlike a caption above a table, it must not pull the next section along.
        "figure_caption": ParagraphStyle(
            "figure_caption", parent=body, fontSize=8.5, leading=11, textColor=colors.HexColor("#444444")
        ),
        "note": ParagraphStyle(
            "note",
            parent=body,
            backColor=NOTE_BACKGROUND,
            borderColor=NOTE_BORDER,
            borderWidth=0.8,
            borderPadding=5,
            spaceBefore=6,
            spaceAfter=8,
        ),
        "cell": cell,
        "number": ParagraphStyle("number", parent=cell, alignment=TA_RIGHT),
        "centre": ParagraphStyle("centre", parent=cell, alignment=TA_CENTER, fontSize=10, leading=13),
        "head_cell": ParagraphStyle("head_cell", parent=cell, fontName="Helvetica-Bold", textColor=colors.white),
        "head_number": ParagraphStyle(
            "head_number", parent=cell, fontName="Helvetica-Bold", textColor=colors.white, alignment=TA_RIGHT
        ),
        "head_centre": ParagraphStyle(
            "head_centre", parent=cell, fontName="Helvetica-Bold", textColor=colors.white, alignment=TA_CENTER
        ),
        "label": ParagraphStyle("label", parent=cell, fontName="Helvetica-Bold"),
    }


def make_table(
    styles: dict[str, ParagraphStyle],
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    widths: Sequence[float],
    text_columns: int = 1,
    row_colours: dict[int, colors.Color] | None = None,
    centred: bool = False,
    text_last: bool = False,
) -> Table:
    """A striped table with a header row that repeats across pages; columns from ``text_columns`` on are numbers,
    but for the last one when ``text_last``.

    Cells are Paragraph markup, so long text wraps inside its column. Numbers align right, or
    centre when ``centred`` (for a single row of figures).
    """
    number = "centre" if centred else "number"

    last = len(header) - 1

    def cell(markup: str, column: int, head: bool = False) -> Paragraph:
        kind = "cell" if column < text_columns or (text_last and column == last) else number
        return Paragraph(markup, styles[f"head_{kind}" if head else kind])

    data = [[cell(text, column, head=True) for column, text in enumerate(header)]]
    data += [[cell(text, column) for column, text in enumerate(row)] for row in rows]
    widths = widen_for_words(data, widths)
    commands: list[tuple[Any, ...]] = [
        ("BACKGROUND", (0, 0), (-1, 0), HEADER_BACKGROUND),
        ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, STRIPE]),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("LINEBELOW", (0, -1), (-1, -1), 0.6, HEADER_BACKGROUND),
        ("TOPPADDING", (0, 0), (-1, -1), 2.5),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2.5),
    ]
    for row, colour in (row_colours or {}).items():
        commands.append(("BACKGROUND", (0, row + 1), (-1, row + 1), colour))
    table = Table(data, colWidths=list(widths), repeatRows=1, hAlign="LEFT")
    table.setStyle(TableStyle(commands))
    return table


TREND_MIN_SPAN_HOURS = 2  # the trends' time axis spans at least this
CELL_PADDING = 12  # reportlab's left and right cell padding, 6 points each
MAX_WORD_COLUMN = FRAME_WIDTH / 3  # the widest a column grows to keep a word whole
CORPORATION_WIDTH = 44 * mm  # a longer corporation id is cut in the middle with an ellipsis
_MARKUP_TAG = re.compile(r"<[^>]+>")


def longest_word_width(paragraph: Paragraph) -> float:
    """The width of a cell's widest word (a run without a breaking space), in its own font and size."""
    text = html.unescape(_MARKUP_TAG.sub(" ", paragraph.text))
    style = paragraph.style
    return max((stringWidth(word, style.fontName, style.fontSize) for word in text.split(" ") if word), default=0.0)


def widen_for_words(data: list[list[Paragraph]], widths: Sequence[float]) -> list[float]:
    """Column widths in which no word is broken: a column narrower than its widest word takes the room from the
    columns with the most to spare (text wraps at spaces, so a word is never cut as "deplo / yment").

    A column widens to a third of the page at most: a longer word (a 256-character id) is split
    across lines there rather than pushing the table off the page.
    """
    needed = [
        min(max(longest_word_width(row[column]) for row in data) + CELL_PADDING, MAX_WORD_COLUMN)
        for column in range(len(widths))
    ]
    fitted = [max(width, need) for width, need in zip(widths, needed, strict=True)]
    excess = sum(fitted) - sum(widths)
    while excess > 0.01:
        spare = [width - need for width, need in zip(fitted, needed, strict=True)]
        donor = max(range(len(fitted)), key=lambda column: spare[column])
        if spare[donor] <= 0.01:
            break  # every column is at its narrowest: the table is as narrow as its words allow
        given = min(spare[donor], excess)
        fitted[donor] -= given
        excess -= given
    return fitted


def spread_widths(first: float, count: int, total: float = FRAME_WIDTH) -> list[float]:
    """Widths of a table whose first column is ``first`` points and whose ``count`` others share the rest."""
    return [first] + [(total - first) / count] * count


def heading(styles: dict[str, ParagraphStyle], text: str, caption: str | None = None) -> list[Flowable]:
    flowables: list[Flowable] = [Paragraph(escape(text), styles["heading"])]
    if caption:
        flowables.append(Paragraph(caption, styles["caption"]))
    return flowables


def missing_section(styles: dict[str, ParagraphStyle], what: str) -> Paragraph:
    return Paragraph(f"<i>{escape(what)} is not in diagnostics.json; run diagnostics.py again.</i>", styles["body"])


def describe_family_choice(info: ModelInfo, candidates: Sequence[CandidateScore]) -> str:
    """How the serving family was chosen, with every candidate's F1: cross-validated at the first deployment, on the
    held-out recent rows at the gate for a challenger."""
    family = info.family or "linear"
    choice = info.family_choice
    if choice is not None and choice.scores:
        listed = "; ".join(
            f"{score.family} {format_metric(score.f1)}"
            + ("" if score.better is None else (", better" if score.better else ", not better by the margin"))
            for score in choice.scores
        )
        return f"{family}, chosen by {choice.folds}-fold cross-validated F1 on {choice.rows:,} rows: {listed}"
    if choice is not None:
        return f"{family}: {choice.reason}"
    if candidates:
        listed = "; ".join(
            f"{candidate.window}/{candidate.family or 'linear'} {format_metric(candidate.recent_f1)}"
            for candidate in candidates
        )
        return (
            f"{family}, chosen by the gate among {len(candidates)} challengers (F1 on the held-out recent rows: "
            f"{listed})"
        )
    return family


def describe_calibration(info: ModelInfo) -> str | None:
    check = info.calibration
    if check is None:
        return None
    return (
        f"expected calibration error {format_metric(check.error)} (ten bins of equal counts) on {check.rows:,} rows: "
        f"{check.measured_on}"
    )


def model_section(
    styles: dict[str, ParagraphStyle],
    deployed: DeployedVersion,
    files: list[str],
    candidates: Sequence[CandidateScore] = (),
) -> list[Flowable]:
    """Which model serves, when it was made, on what data (``files``), and how it turns risk into a label."""
    info, record = deployed.model_info, deployed.version_info
    sha = info.training_data_sha256 or ""
    data_text = f"{format_number(info.training_rows)} rows"
    if info.training_exit_rate is not None:
        data_text += f" (exit rate {format_percent(info.training_exit_rate)})"
    window = info.training_window
    if window is not None and window.name != "all":
        data_text += f": {window.describe()}"
        if info.retrained_because:
            data_text += f", retrained because of {info.retrained_because}"
    elif files:
        data_text += f" from {len(files)} file{'s' if len(files) != 1 else ''}: {list_names(files, MAX_LISTED_FILES)}"
    threshold = info.decision_threshold
    how = (
        "chosen to maximise F1 on the training data"
        if info.settings.decision_threshold == "f1"
        else "set in the config"
    )
    coefficients = ", ".join(f"{name} {value:+.3f}" for name, value in info.coefficients.items())
    rows = [
        ("Version", f"{deployed.version} (previous: {record.previous_version or 'none'})"),
        ("Deployed", format_time(record.deployed_at)),
        ("Trained", format_time(info.trained_at)),
        ("Model", info.model or DASH),
        ("Model family", describe_family_choice(info, candidates)),
        ("Training data", data_text),
        ("Training data SHA-256", f"{sha[:SHORT_HASH]}\u2026" if sha else DASH),
        ("Decision threshold", f"{format_metric(threshold)}, {how}" if threshold is not None else DASH),
    ]
    if coefficients:
        rows.append(("Coefficients", f"{coefficients} (on log-scaled, standardised counts)"))
    calibration = describe_calibration(info)
    if calibration:
        rows.append(("Calibration", calibration))
    data = [
        [Paragraph(escape(label), styles["label"]), Paragraph(escape(value), styles["cell"])] for label, value in rows
    ]
    table = Table(data, colWidths=[42 * mm, FRAME_WIDTH - 42 * mm], hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("ROWBACKGROUNDS", (0, 0), (-1, -1), [colors.white, STRIPE]),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("TOPPADDING", (0, 0), (-1, -1), 2.5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 2.5),
            ]
        )
    )
    return [*heading(styles, "Deployed model"), table]


PERFORMANCE_METRICS = (
    ("F1", "f1"),
    ("Precision", "precision"),
    ("Recall", "recall"),
    ("ROC AUC", "roc_auc"),
    ("Accuracy", "accuracy"),
)


def performance_section(
    styles: dict[str, ParagraphStyle],
    evaluation: Metrics,
    threshold: float | None,
    plot: Path,
    recent: EvaluationWindow | None = None,
) -> list[Flowable]:
    """Metrics of the deployed model on the test data (and on the recent window), and its confusion matrix."""
    table = make_table(
        styles,
        ["Measured on", *(name for name, _ in PERFORMANCE_METRICS)],
        performance_rows(evaluation, recent),
        spread_widths(52 * mm, len(PERFORMANCE_METRICS)),
        text_columns=1,
        centred=True,
    )
    return [
        *heading(styles, "Performance on the test data", performance_caption(evaluation, threshold, recent)),
        table,
        Spacer(1, 4 * mm),
        confusion_figure(styles, plot),
    ]


def performance_caption(evaluation: Metrics, threshold: float | None, recent: EvaluationWindow | None) -> str:
    """What the performance table measures: on which rows, when, and how a probability becomes a label."""
    files = [Path(name).name for name in evaluation.test_data]
    shown = escape(list_names(files, MAX_LISTED_FILES))
    caption = (
        f"The deployed model on {format_number(evaluation.rows)} rows of {shown} "
        f"(exit rate {format_percent(evaluation.exit_rate)}), "
        f"measured {nowrap(format_time(evaluation.scored_at))}."
    )
    if threshold is not None:
        caption += f" A client is labelled as exiting when the predicted probability is at least {threshold:.4f}."
    if recent is not None:
        caption += f" Recent clients: {escape(recent.test_data_note or DASH)}."
    return caption


def performance_rows(evaluation: Metrics, recent: EvaluationWindow | None) -> list[list[str]]:
    """The metrics on the test data and, when there are scores for it, on the recent window."""
    rows = [["test data", *(format_metric(getattr(evaluation, key)) for _, key in PERFORMANCE_METRICS)]]
    if recent is not None:
        rows.append(
            [f"recent clients ({format_number(recent.rows)} held-out rows, {recent.batch_span})"]
            + [format_metric(getattr(recent, key)) for _, key in PERFORMANCE_METRICS]
        )
    return rows


def confusion_figure(styles: dict[str, ParagraphStyle], plot: Path) -> KeepTogether:
    """The confusion-matrix plot with its caption below, kept on one page."""
    width, height = plot_size(plot)
    image = Image(str(plot), width=PLOT_WIDTH, height=PLOT_WIDTH * height / width)
    image.hAlign = "CENTER"
    caption = (
        "Each cell: number of test clients and their share of the actual class (the row), "
        "so the diagonal shows how many of those who stayed and of those who exited the model gets right."
    )
    return KeepTogether([image, Paragraph(caption, styles["figure_caption"])])


def plot_size(path: Path) -> tuple[int, int]:
    """Width and height in pixels of a PNG file."""
    from reportlab.lib.utils import ImageReader

    return ImageReader(str(path)).getSize()


def calibration_section(
    styles: dict[str, ParagraphStyle], curves: Sequence[CalibrationCurve], plot: Path
) -> list[Flowable]:
    """How well the predicted probabilities match the exit rates seen, on the test data and the latest batch."""
    described = "; ".join(f"{escape(curve.label)}: {format_number(curve.rows)} rows" for curve in curves)
    caption = (
        "The labelled rows are put in ten bins of predicted exit probability (0–10%, 10–20%, …); each point is a "
        f"bin's mean predicted probability against the share of its rows that exited ({described}). "
        "On the dashed diagonal the probabilities are honest risks; below it the model overstates the risk, "
        "above it understates it. Larger points hold more rows; few rows make a point uncertain."
    )
    if any(curve.in_training for curve in curves):
        caption += " The model was trained on the latest batch's rows, so its calibration there is in-sample."
    width, height = plot_size(plot)
    image = Image(str(plot), width=PLOT_WIDTH, height=PLOT_WIDTH * height / width)
    image.hAlign = "CENTER"
    return [*heading(styles, "Calibration", caption), image]


STATISTICS_KEYS = ("count", "mean", "median", "std", "min", "q1", "q3", "max")


def statistics_section(styles: dict[str, ParagraphStyle], diagnostics: Diagnostics) -> list[Flowable]:
    """Per-column summary statistics of the ingested data."""
    section = diagnostics.summary_statistics
    title = "Summary statistics of the ingested data"
    if section is None or not section.columns:
        return [*heading(styles, title), missing_section(styles, "Summary statistics")]
    rows = [
        [escape(name), *(format_number(getattr(values, key)) for key in STATISTICS_KEYS)]
        for name, values in section.columns.items()
    ]
    caption = f"Of {escape(Path(section.dataset or FINAL_DATA).name)}; std is the sample standard deviation."
    header = ["Column", "Count", "Mean", "Median", "Std", "Min", "Q1", "Q3", "Max"]
    return [*heading(styles, title, caption), make_table(styles, header, rows, spread_widths(38 * mm, 8))]


def missing_data_section(styles: dict[str, ParagraphStyle], diagnostics: Diagnostics) -> list[Flowable]:
    """Percent of missing values per column, over all source files and per file, and the unreadable files."""
    section = diagnostics.missing_data
    title = "Missing data in the source files"
    if section is None:
        return [*heading(styles, title), missing_section(styles, "Missing data")]
    columns = list(section.percent)
    rows = [["<b>All files</b>", format_number(section.rows), *map(format_missing, section.percent.values())]]
    for name, entry in section.files.items():
        percent = [format_missing(entry.percent[column]) if column in entry.percent else DASH for column in columns]
        rows.append([escape(name), format_number(entry.rows), *percent])
    caption = (
        f"Percent of values missing per column in {escape(section.dataset or 'the source folder')}, "
        "before ingestion leaves incomplete rows out."
    )
    header = ["File", "Rows", *(breakable(name) for name in columns)]
    return [
        *heading(styles, title, caption),
        make_table(styles, header, rows, spread_widths(44 * mm, len(columns) + 1)),
        *unreadable_files(styles, section.unreadable),
    ]


def unreadable_files(styles: dict[str, ParagraphStyle], unreadable: dict[str, str]) -> list[Flowable]:
    """The source files that could not be read, each with the reason; nothing when all could."""
    if not unreadable:
        return []
    return [
        Spacer(1, 2 * mm),
        Paragraph(f"<b>Unreadable files ({len(unreadable)})</b>, not counted above:", styles["body"]),
        *(
            Paragraph(f"\u2022 {escape(name)}: {escape(reason.removeprefix(f'{name}: '))}", styles["body"])
            for name, reason in unreadable.items()
        ),
    ]


def timing_section(styles: dict[str, ParagraphStyle], diagnostics: Diagnostics) -> list[Flowable]:
    """Seconds per stage: the latest, and the median and range over the kept timings."""
    section = diagnostics.timing
    title = "Stage timings"
    if section is None or not section.stages:
        return [*heading(styles, title), missing_section(styles, "Timing")]
    source = section.source or f"each stage run again {section.runs} time(s) as a process"
    caption = (
        f"Seconds per stage: {escape(source)}; the latest, and the median, fastest and slowest of the timings kept "
        f"(diagnostics of {nowrap(format_time(diagnostics.generated_at))})."
    )
    rows = [timing_row(stage, values) for stage, values in section.stages.items()]
    header = ["Stage", "Latest", "Median", "Min", "Max", "Timings"]
    return [*heading(styles, title, caption), make_table(styles, header, rows, spread_widths(48 * mm, 5))]


def timing_row(stage: str, timing: StageSpread) -> list[str]:
    return [
        escape(stage),
        format_seconds(timing.latest_seconds),
        *(format_seconds(value) for value in (timing.median, timing.min, timing.max)),
        format_number(timing.timings),
    ]


def dependency_note(row: DependencyStatus) -> str:
    """Why a version is unknown, or where the latest version came from."""
    if row.status == "unknown":
        note = row.reason or "the latest version could not be compared"
        known = row.last_known
        if known is not None and known.latest:
            note += f"; last known {known.latest} ({format_time(known.checked_at)})"
        return note
    if row.status == "not installed":
        return "not installed in this environment"
    if row.source:
        kind = "cached answer from" if row.source == "cache" else "asked the index"
        return f"{kind} {format_time(row.checked_at)}"
    return ""


def dependency_section(styles: dict[str, ParagraphStyle], diagnostics: Diagnostics) -> list[Flowable]:
    """Required, installed and latest version of each requirement; outdated and unknown rows coloured."""
    dependencies = diagnostics.dependencies
    title = "Dependencies"
    if dependencies is None:
        return [*heading(styles, title), missing_section(styles, "The dependency check")]
    counts = {status: sum(1 for row in dependencies if row.status == status) for status in STATUS_COLOURS}
    summary = ", ".join(f"{count} {status}" for status, count in counts.items() if count) or "all current"
    caption = (
        f"The {len(dependencies)} packages in requirements.txt, checked against the package index: {summary}. "
        '<font backColor="#FCE2C4">&nbsp;outdated&nbsp;</font> and '
        '<font backColor="#E4E4EC">&nbsp;unknown&nbsp;</font> rows are shaded.'
    )
    rows = [dependency_row(row) for row in dependencies]
    shown = [row.status or "unknown" for row in dependencies]
    colours = {index: STATUS_COLOURS[status] for index, status in enumerate(shown) if status in STATUS_COLOURS}
    header = ["Package", "Required", "Installed", "Latest", "Status", "Note"]
    widths = [30 * mm, 22 * mm, 19 * mm, 19 * mm, 21 * mm]
    widths.append(FRAME_WIDTH - sum(widths))
    return [
        *heading(styles, title, caption),
        make_table(styles, header, rows, widths, text_columns=6, row_colours=colours),
    ]


def dependency_row(row: DependencyStatus) -> list[str]:
    """One requirement as the dependency table shows it; the status in bold when it is shaded."""
    status = row.status or "unknown"
    return [
        escape(str(row.package)),
        escape(row.required or "any"),
        escape(row.installed or DASH),
        escape(row.latest or DASH),
        f"<b>{escape(status)}</b>" if status in STATUS_COLOURS else escape(status),
        escape(dependency_note(row)),
    ]


def clients_section(
    styles: dict[str, ParagraphStyle], clients: list[dict[str, Any]], top: int, data_path: Path, version: str
) -> list[Flowable]:
    """The active clients most likely to leave, as the deployed model sees them."""
    title = f"Top {top} clients at risk of leaving"
    caption = (
        f"Current clients of {escape(data_path.name)} (not exited) and of the files whose outcome is not known yet, "
        f"with the highest exit probability under model {escape(version)}; a corporation listed more than once "
        "counts by its latest row; an id too long for the page is cut in the middle (\u2026)."
    )
    if not clients:
        return [*heading(styles, title, caption), Paragraph("<i>No current clients in the data.</i>", styles["body"])]
    if len(clients) < top:
        caption += f" Only {len(clients)} current clients are in the data."
    caption += " Why: the count that raises the client's risk most, against the typical training client's."
    rows = [
        [
            str(client["rank"]),
            escape(ellipsize(str(client["corporation"]), CORPORATION_WIDTH - CELL_PADDING, styles["cell"])),
            format_percent(client["probability"]),
            *(format_number(client[name]) for name in FEATURES),
            escape(client["reason"][:1].upper() + client["reason"][1:]),
        ]
        for client in clients
    ]
    features = (escape(FEATURE_LABELS[name].capitalize()) for name in FEATURES)
    header = ["Rank", "Corporation", "Exit probability", *features, "Why"]
    widths = [12 * mm, 24 * mm, 20 * mm, 19 * mm, 19 * mm, 22 * mm]  # one per feature after the probability
    widths.append(FRAME_WIDTH - sum(widths))
    # Rank and corporation read as text; the right-aligned numbers start at the probability; the reason is text.
    table = make_table(styles, header, rows, widths, text_columns=2, text_last=True)
    return [*heading(styles, title, caption), table]


def trends_section(
    styles: dict[str, ParagraphStyle], runs: list[StoredRun], plot: Path | None, history_path: HistoryLocation
) -> list[Flowable]:
    """F1, missing data and timings over the fullprocess.py runs that found new data, and the latest of them."""
    title = "Trends over runs"
    if not runs or plot is None:
        where = history_path.name if isinstance(history_path, Path) else history_path.shown
        text = f"No run with new data is recorded in {escape(where)} yet; fullprocess.py records every run."
        return [*heading(styles, title), Paragraph(f"<i>{text}</i>", styles["body"])]
    caption = (
        f"{len(runs)} run{'s' if len(runs) != 1 else ''} of fullprocess.py that found new data, from "
        f"{nowrap(format_time(runs[0].started_at))} to {nowrap(format_time(runs[-1].started_at))}, "
        "from the run history."
    )
    width, height = plot_size(plot)
    image = Image(str(plot), width=FRAME_WIDTH * 0.92, height=FRAME_WIDTH * 0.92 * height / width)
    rows = [
        [
            nowrap(format_timestamp(run.started_at)),
            escape(run.outcome.replace("_", " ")),
            escape(run.model_version_after or DASH),
            escape(run.decision or DASH),
            format_number(run.new_rows),
            format_metric(run.new_data_f1),
            format_metric(run.drift_threshold),
        ]
        for run in runs[-TREND_TABLE_RUNS:][::-1]
    ]
    header = ["Started (UTC)", "Outcome", "Serving", "Decision", "New rows", "F1 new", "Threshold"]
    widths = [34 * mm, 18 * mm, 17 * mm, 0, 15 * mm, 15 * mm, 19 * mm]
    widths[3] = FRAME_WIDTH - sum(widths)
    table = make_table(styles, header, rows, widths, text_columns=4)
    return [
        *heading(styles, title, caption),
        image,
        Spacer(1, 3 * mm),
        Paragraph(f"The latest {len(rows)} of these runs, newest first:", styles["caption"]),
        table,
    ]


def page_decoration(version: str, generated_at: str) -> Callable[[Canvas, SimpleDocTemplate], None]:
    """Draw the footer (model, time, page number) on each page."""

    def draw(canvas: Canvas, document: SimpleDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 8)
        canvas.setFillColor(colors.HexColor("#666666"))
        canvas.drawString(
            MARGIN, 10 * mm, f"Client exit risk report \u2013 model {version} \u2013 {format_time(generated_at)}"
        )
        canvas.drawRightString(A4[0] - MARGIN, 10 * mm, f"page {document.page}")
        canvas.restoreState()

    return draw


def build_report(
    target: Path,
    *,
    deployed: DeployedVersion,
    source_files: list[str],
    evaluation: Metrics,
    diagnostics: Diagnostics,
    clients: list[dict[str, Any]],
    top: int,
    data_path: Path,
    plot: Path,
    calibration: Sequence[CalibrationCurve] = (),
    calibration_plot: Path | None = None,
    trend_runs: list[StoredRun] | None = None,
    trend_plot: Path | None = None,
    history_path: HistoryLocation | None = None,
    notes: Sequence[str] = (),
    generated_at: str | None = None,
    recent: EvaluationWindow | None = None,
    candidates: Sequence[CandidateScore] = (),
) -> Path:
    """Lay out the summary report and write it atomically as a PDF at ``target``; return ``target``."""
    generated_at = generated_at or utc_now()
    styles = make_styles()
    story = report_title(styles, deployed.version, diagnostics, generated_at)
    story += [Paragraph(f"<b>Note:</b> {escape(note)}", styles["note"]) for note in notes]
    story += model_section(styles, deployed, source_files, candidates)
    threshold = deployed.model_info.decision_threshold
    story += performance_section(styles, evaluation, threshold, plot, recent)
    if calibration and calibration_plot is not None:
        story += calibration_section(styles, calibration, calibration_plot)
    story += diagnostics_sections(styles, diagnostics)
    story += clients_section(styles, clients, top, data_path, deployed.version)
    if history_path is not None:
        story += trends_section(styles, trend_runs or [], trend_plot, history_path)
    return write_pdf(target, story, deployed.version, generated_at)


def report_title(
    styles: dict[str, ParagraphStyle], version: str, diagnostics: Diagnostics, generated_at: str
) -> list[Flowable]:
    """The title, and which model and which diagnostics the report is of."""
    return [
        Paragraph("Client exit risk: summary report", styles["title"]),
        Paragraph(
            f"Generated {nowrap(format_time(generated_at))} for model {escape(version)}; "
            f"diagnostics from {nowrap(format_time(diagnostics.generated_at))} "
            f"(model {escape(diagnostics.model_version or 'unknown')}).",
            styles["subtitle"],
        ),
    ]


def diagnostics_sections(styles: dict[str, ParagraphStyle], diagnostics: Diagnostics) -> list[Flowable]:
    """Summary statistics, missing data, stage timings and dependencies, from ``diagnostics.json``."""
    return [
        *statistics_section(styles, diagnostics),
        *missing_data_section(styles, diagnostics),
        *timing_section(styles, diagnostics),
        *dependency_section(styles, diagnostics),
    ]


def write_pdf(target: Path, story: list[Flowable], version: str, generated_at: str) -> Path:
    """Lay ``story`` out on A4 pages with the footer and write it atomically at ``target``; return ``target``."""
    decorate = page_decoration(version, generated_at)
    with atomic_path(target) as tmp:
        document = SimpleDocTemplate(
            str(tmp),
            pagesize=A4,
            leftMargin=MARGIN,
            rightMargin=MARGIN,
            topMargin=MARGIN,
            bottomMargin=MARGIN + 4 * mm,
            title=f"Client exit risk: summary report, model {version}",
            author="reporting.py",
            subject=f"generated {generated_at}",
        )
        document.build(story, onFirstPage=decorate, onLaterPages=decorate)
    return Path(target)


# ---------------------------------------------------------------- the stage


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


def score_model(config_path: str | os.PathLike[str] | None = None) -> Path:
    """The classic course function: plot the deployed model's confusion matrix on the test data; return the file.

    Writes ``confusionmatrix.png`` in the model folder. ``config_path``: default ``$RISK_CONFIG``, else config.json.
    """
    config = load_config(config_path)
    deployed = load_deployed_version(current_version_folder(config.prod_deployment_path))
    scores = evaluation.score_model(deployed.folder / MODEL_FILE, config.test_data_path)
    return plot_confusion_matrix(scores.confusion, deployed.version, config.output_model_path / CONFUSION_MATRIX_FILE)


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
