"""The report's pictures, drawn with matplotlib: the confusion matrix, the calibration curves, the trends."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from riskwatch.core.errors import PipelineError
from riskwatch.core.files import atomic_path
from riskwatch.report.gather import CalibrationCurve, RunValue, run_time, stage_seconds, trend_series
from riskwatch.state.history import DEPLOYED, FIRST_DEPLOYMENT
from riskwatch.state.records import (
    Confusion,
)
from riskwatch.state.runs import StoredRun

CLASS_NAMES = ("stayed", "exited")


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


TREND_MIN_SPAN_HOURS = 2  # the trends' time axis spans at least this
