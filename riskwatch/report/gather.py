"""What the report is made of, gathered from the files and the run history: the deployed model and its
scores, its calibration, the riskiest clients, the runs for the trends."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from riskwatch.core.errors import PipelineError
from riskwatch.core.files import find_test_files, parse_utc, sha256_file
from riskwatch.core.formatting import DASH
from riskwatch.core.schema import FEATURES, BadFileError
from riskwatch.data.batches import (
    TrainingWindow,
    read_final_data,
    read_ingested_data,
    read_unlabelled_clients,
    select_current_clients,
)
from riskwatch.model import evaluation
from riskwatch.model.clients import riskiest_first
from riskwatch.model.drivers import explain_clients
from riskwatch.model.riskmodels import risk_model_for
from riskwatch.report.text import format_metric, format_time
from riskwatch.state.artifacts import (
    FINAL_DATA,
    INGESTED_FILES,
    MODEL_FILE,
    Classifier,
    DeployedVersion,
    current_version_folder,
    load_deployed_version,
    read_ingested_files,
)
from riskwatch.state.history import RUNNING, HistoryLocation, read_deploying_run, read_runs
from riskwatch.state.records import (
    Diagnostics,
    EvaluationWindow,
    Metrics,
    read_diagnostics_record,
    read_evaluation_window,
)
from riskwatch.state.runs import CandidateScore, StoredRun
from riskwatch.stats.calibration import CalibrationBins, calibration_bins

log = logging.getLogger("reporting")


TREND_RUNS = 500  # runs with new data drawn in the trends


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
    In the order ``/clients`` and the dashboard give them (``riskiest_first``: of equal risks, the later row first).
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
    order = riskiest_first(probabilities)[:top]
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
