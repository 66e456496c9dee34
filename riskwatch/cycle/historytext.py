"""The run history as ``fullprocess.py --history`` prints it: a plain-text table, then each run's decision."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from riskwatch.core.config import MODEL_FAMILIES
from riskwatch.core.formatting import format_timestamp
from riskwatch.state.runs import StoredRun

HISTORY_COLUMNS = (
    ("id", "run", lambda value: str(value)),
    ("started_at", "started (UTC)", format_timestamp),
    ("outcome", "outcome", str),
    ("new_files", "files", str),
    ("new_rows", "new rows", str),
    ("model_version_before", "before", str),
    ("model_version_after", "after", str),
    ("new_data_f1", "F1 new", lambda value: f"{value:.4f}"),
    ("estimated_f1", "F1 estimated", lambda value: f"{value:.4f}"),
    ("drift_threshold", "threshold", lambda value: f"{value:.4f}"),
    ("model_drift", "model drift", lambda value: "yes" if value else "no"),
    ("data_drift", "data drift", lambda value: "yes" if value else "no"),
    ("champion_recent_f1", "champion recent", lambda value: f"{value:.4f}"),
    ("challenger_recent_f1", "challenger recent", lambda value: f"{value:.4f}"),
    ("champion_test_f1", "champion test", lambda value: f"{value:.4f}"),
    ("challenger_test_f1", "challenger test", lambda value: f"{value:.4f}"),
    ("winning_window", "window won", str),
    ("winning_family", "family won", str),
    ("model_family", "serving family", str),
    ("window_f1", "F1 recent window", lambda value: f"{value:.4f}"),
    ("missing_percent", "missing %", lambda value: f"{value:.3f}"),
    ("seconds", "seconds", lambda value: f"{value:.2f}"),
)


def format_history(runs: list[StoredRun]) -> str:
    """The runs as a plain-text table, oldest first, then each run's decision and drift trigger."""
    header = [title for _, title, _ in HISTORY_COLUMNS]
    rows = [[format_cell(getattr(run, key), show) for key, _, show in HISTORY_COLUMNS] for run in reversed(runs)]
    widths = [max(len(text) for text in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("")
    for run in reversed(runs):
        lines += describe_run(run)
    return "\n".join(lines)


def format_cell(value: Any, show: Callable[[Any], str]) -> str:
    return "-" if value is None else show(value)


def describe_run(run: StoredRun) -> list[str]:
    """A run's decision, and under it what triggered it, its references, its candidates and its failure."""
    lines = [f"run {run.id}: {run.decision or run.outcome}"]
    notes = (
        ("trigger", run.drift_trigger),
        ("model-drift reference", run.drift_reference),
        ("data-drift reference", run.data_drift_reference),
    )
    lines += [f"    {name}: {value}" for name, value in notes if value]
    for candidate in run.candidates or ():
        window_f1 = float("nan") if candidate.window_f1 is None else candidate.window_f1
        lines.append(
            f"    candidate {candidate.window}/{candidate.family or MODEL_FAMILIES[0]}: {candidate.describe}; F1 "
            f"{candidate.recent_f1:.4f} on the "
            f"held-out recent rows, {window_f1:.4f} on the recent window, {candidate.test_f1:.4f} on the test data"
        )
    if run.failed_stage:
        lines.append(f"    failed stage: {run.failed_stage}: {run.error}")
    return lines
