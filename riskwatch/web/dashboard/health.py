"""The model health page's charts over the monitoring runs: F1 against the drift threshold, calibration, data drift,
data integrity, missing cells and run times, each with the table of its numbers."""

from __future__ import annotations

from typing import Any

from riskwatch.core.formatting import DASH, format_decimals, format_grouped, format_time
from riskwatch.core.schema import FEATURE_LABELS, FEATURES
from riskwatch.state.history import DEPLOYED, FIRST_DEPLOYMENT
from riskwatch.state.runs import FeatureDrift, StoredRun
from riskwatch.web.dashboard.charts import Chart, Mark, Series


def format_score(value: Any) -> str:
    """A score as the pages show it: three decimals."""
    return format_decimals(value, 3)


def compared_value(row: FeatureDrift) -> float | None:
    """The number a feature's drift test compares with its threshold: the p-value for KS, else the statistic."""
    return row.p_value if row.test == "ks" else row.statistic


def run_label(run: StoredRun) -> str:
    return f"#{run.id}"


ChartWithTable = tuple[Chart, list[str], list[list[str]]]


def health_charts(runs: list[StoredRun]) -> list[ChartWithTable]:
    """The charts of model health over the runs that saw new data (oldest first), each with its table."""
    labels = [run_label(run) for run in runs]
    marks = deployment_marks(runs, labels)
    drift = drift_chart(runs, labels, marks)
    optional = (calibration_chart(runs, labels, marks), drift, integrity_chart(runs, labels, marks))
    return [
        f1_chart(runs, labels, marks),
        *(chart for chart in optional if chart is not None),
        missing_chart(runs, labels),
        duration_chart(runs, labels),
    ]


def deployment_marks(runs: list[StoredRun], labels: list[str]) -> list[Mark]:
    """A mark on each run that deployed, or that retrained and kept the champion."""
    marks = []
    for index, run in enumerate(runs):
        if run.outcome in (DEPLOYED, FIRST_DEPLOYMENT):
            marks.append(Mark(index, f"{labels[index]}: deployed {run.model_version_after or ''}"))
        elif run.drift_trigger:
            marks.append(Mark(index, f"{labels[index]}: retrained, champion kept", "mark-retrain"))
    return marks


def f1_chart(runs: list[StoredRun], labels: list[str], marks: list[Mark]) -> ChartWithTable:
    chart = Chart(
        "F1 of the serving model on each new batch, against the drift threshold",
        labels,
        [
            Series("F1 on new rows", [run.new_data_f1 for run in runs], "series-a"),
            Series("drift threshold", [run.drift_threshold for run in runs], "series-b"),
        ],
        "F1",
        marks=marks,
    )
    rows = [
        [labels[i], run.outcome, format_score(run.new_data_f1), format_score(run.drift_threshold)]
        for i, run in enumerate(runs)
    ]
    return chart, ["Run", "Outcome", "F1 on new rows", "Drift threshold"], rows


def drift_chart(runs: list[StoredRun], labels: list[str], marks: list[Mark]) -> ChartWithTable | None:
    """Each feature's drift statistic per run, against the latest test's threshold; None when no run tested any."""
    features = [name for name in FEATURES if any(r.feature == name for run in runs for r in run.feature_drift)]
    if not features:
        return None
    styles = ("series-a", "series-c", "series-d")
    drift: dict[str, list[float | None]] = {name: [None] * len(runs) for name in features}
    tests: dict[str, FeatureDrift] = {}
    for index, run in enumerate(runs):
        for row in run.feature_drift:
            if row.feature in drift:
                drift[row.feature][index] = compared_value(row)
                tests[row.feature] = row
    latest = next(iter(tests.values()))
    what = "p-value (KS test; drift below the threshold)" if latest.test == "ks" else "normalised distance"
    chart = Chart(
        f"Data drift per feature and run: {what}",
        labels,
        [Series(FEATURE_LABELS[name], drift[name], styles[j % 3]) for j, name in enumerate(features)],
        "p-value" if latest.test == "ks" else "distance",
        reference=(float(latest.threshold), "threshold"),
        marks=marks,
    )
    rows = [[labels[i]] + [format_score(drift[name][i]) for name in features] for i in range(len(runs))]
    return chart, ["Run", *[FEATURE_LABELS[name] for name in features]], rows


def calibration_chart(runs: list[StoredRun], labels: list[str], marks: list[Mark]) -> ChartWithTable | None:
    """The exits each labelled batch showed against those the serving model expected, with the range a calibrated
    model shows; None when no run tested calibration."""
    if all(run.observed_exits is None for run in runs):
        return None
    chart = Chart(
        "Exits observed in each labelled batch, against those the serving model expected",
        labels,
        [
            Series("observed exits", [run.observed_exits for run in runs], "series-a"),
            Series("expected exits", [run.expected_exits for run in runs], "series-b"),
            Series("lowest a calibrated model shows", [run.expected_exits_low for run in runs], "series-c"),
            Series("highest a calibrated model shows", [run.expected_exits_high for run in runs], "series-d"),
        ],
        "exits",
        marks=marks,
        y_format="{:,.0f}",
    )
    rows = [
        [
            labels[i],
            format_grouped(run.observed_exits),
            format_grouped(run.expected_exits),
            f"{format_grouped(run.expected_exits_low)}-{format_grouped(run.expected_exits_high)}",
            format_score(run.calibration_slope),
            yes_no(run.miscalibrated),
        ]
        for i, run in enumerate(runs)
    ]
    header = ["Run", "Observed exits", "Expected exits", "Calibrated range", "Calibration slope", "Miscalibrated"]
    return chart, header, rows


def integrity_chart(runs: list[StoredRun], labels: list[str], marks: list[Mark]) -> ChartWithTable | None:
    """Each batch's reconstruction error against the error its own columns imply and the alarm threshold; None
    when no run tested the data's integrity."""
    if all(run.reconstruction_error is None for run in runs):
        return None
    chart = Chart(
        "Data integrity: how far each batch's rows lie from the training rows' principal axes",
        labels,
        [
            Series("reconstruction error", [run.reconstruction_error for run in runs], "series-a"),
            Series("expected from the batch's own columns", [run.reconstruction_expected for run in runs], "series-c"),
            Series("alarm threshold", [run.reconstruction_threshold for run in runs], "series-b"),
        ],
        "error",
        marks=marks,
    )
    rows = [
        [
            labels[i],
            format_score(run.reconstruction_error),
            format_score(run.reconstruction_expected),
            format_score(run.reconstruction_threshold),
            yes_no(run.integrity_alarm)
            + (f", accepted {format_time(run.integrity_accepted_at)}" if run.integrity_accepted_at else ""),
        ]
        for i, run in enumerate(runs)
    ]
    return chart, ["Run", "Reconstruction error", "Expected", "Alarm above", "Integrity alarm"], rows


def yes_no(flag: bool | None) -> str:
    return DASH if flag is None else ("yes" if flag else "no")


def missing_chart(runs: list[StoredRun], labels: list[str]) -> ChartWithTable:
    missing = [run.missing_percent for run in runs]
    chart = Chart(
        "Missing cells in each batch's new files",
        labels,
        [Series("missing cells (%)", missing, "series-c")],
        "%",
        bars=True,
    )
    rows = [[labels[i], format_grouped(value, 2)] for i, value in enumerate(missing)]
    return chart, ["Run", "Missing cells (%)"], rows


def duration_chart(runs: list[StoredRun], labels: list[str]) -> ChartWithTable:
    seconds = [run.seconds for run in runs]
    chart = Chart(
        "How long each monitoring run took",
        labels,
        [Series("seconds", seconds, "series-d")],
        "seconds",
        bars=True,
        y_format="{:.1f}",
    )
    rows = [
        [labels[i], format_grouped(value, 1), slowest_stage(run.timings)]
        for i, (value, run) in enumerate(zip(seconds, runs, strict=True))
    ]
    return chart, ["Run", "Seconds", "Slowest stage"], rows


def slowest_stage(timings: dict[str, float] | None) -> str:
    if not timings:
        return "–"
    numeric = {k: v for k, v in timings.items() if isinstance(v, int | float)}
    if not numeric:
        return "–"
    name = max(numeric, key=numeric.__getitem__)
    return f"{name} ({numeric[name]:.1f} s)"
