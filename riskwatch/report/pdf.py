"""The report's PDF, laid out with reportlab from the gathered values, section by section."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER, TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Flowable, Image, KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from riskwatch.core.files import atomic_path, list_names
from riskwatch.core.formatting import DASH, format_percent, format_timestamp
from riskwatch.core.schema import FEATURE_LABELS, FEATURES
from riskwatch.report.gather import CalibrationCurve
from riskwatch.report.text import (
    breakable,
    ellipsize,
    format_metric,
    format_missing,
    format_number,
    format_seconds,
    format_time,
    nowrap,
)
from riskwatch.state.artifacts import (
    FINAL_DATA,
    DeployedVersion,
    utc_now,
)
from riskwatch.state.history import HistoryLocation
from riskwatch.state.records import (
    DependencyStatus,
    Diagnostics,
    EvaluationWindow,
    Metrics,
    ModelInfo,
    StageSpread,
)
from riskwatch.state.runs import CandidateScore, StoredRun, describe_calibration_test, latest_calibration_test

MARGIN = 16 * mm


FRAME_WIDTH = A4[0] - 2 * MARGIN


PLOT_WIDTH = 118 * mm


SHORT_HASH = 12


MAX_LISTED_FILES = 6


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
    styles: dict[str, ParagraphStyle], curves: Sequence[CalibrationCurve], plot: Path, tested: str | None = None
) -> list[Flowable]:
    """How well the predicted probabilities match the exit rates seen, on the test data and the latest batch;
    ``tested``: the latest calibration test of the monitoring job, in a sentence."""
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
    test = [Paragraph(escape(tested), styles["body"])] if tested else []
    return [*heading(styles, "Calibration", caption), *test, image]


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
        tested = None
        if history_path is not None:  # newest first, as the test is looked for
            latest = latest_calibration_test(list(reversed(trend_runs or [])), deployed.version)
            tested = describe_calibration_test(latest, deployed.version)
        story += calibration_section(styles, calibration, calibration_plot, tested)
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
