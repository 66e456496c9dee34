"""Training: choose the model family the data supports, fit it on ``finaldata.csv`` and save it with its metadata.

The families (``model.families``; riskwatch/model/riskmodels.py) are compared by cross-validated F1 on the
same folds, and the simplest is kept unless a more complex one is reliably better
(riskwatch/model/familychoice.py). The default and simplest is the classic model: a logistic regression
in a scikit-learn Pipeline on log-scaled (``log1p``, as activity and head-count are
heavy-tailed), standardised counts. Every family is fitted without class weights so its
probabilities stay calibrated; the class imbalance is met by the decision threshold, chosen to
maximise F1 on the training data, so labels favour the rare exits while probabilities stay
honest risks.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from riskwatch.core.cli import build_parser, run_stage
from riskwatch.core.config import Config, ModelSettings, MonitoringSettings
from riskwatch.core.files import sha256_file
from riskwatch.core.schema import FEATURES, TARGET
from riskwatch.data.batches import TrainingWindow, read_ingested_data
from riskwatch.model.familychoice import choose_family
from riskwatch.model.riskmodels import BOOSTED, LINEAR, RiskModel, fit_risk_model
from riskwatch.state.artifacts import (
    FINAL_DATA,
    INGESTED_FILES,
    INGESTED_RECORD,
    MODEL_FILE,
    check_final_data,
    save_model,
    utc_now,
)
from riskwatch.state.records import CalibrationCheck, FamilyChoice, ModelInfo, TrainingSettings

if TYPE_CHECKING:
    from sklearn.model_selection import FixedThresholdClassifier

log = logging.getLogger("training")

LIBRARIES = ("numpy", "pyarrow", "scikit-learn", "scipy")
FAMILY_LIBRARIES = {BOOSTED: ("lightgbm",)}  # what a family needs beyond those to load


def fit_classifier(
    features: np.ndarray, labels: np.ndarray, settings: ModelSettings, sample_weight: np.ndarray | None = None
) -> FixedThresholdClassifier:
    """The classic model: the linear family's classifier (log1p, standardise, logistic regression, threshold)."""
    return fit_risk_model(LINEAR, features, labels, settings, sample_weight).estimator


@dataclass(frozen=True)
class TrainingData:
    """The ``finaldata.csv`` a model is trained on, and the hashes that tie the model to it and its ingestion."""

    path: Path
    sha256: str
    ingested_files_sha256: str | None
    ingested_record_sha256: str | None


@dataclass(frozen=True)
class Retraining:
    """Why the monitoring job trained a challenger, and how many recent rows it held out to judge it."""

    held_out_recent_rows: int
    because: str


@dataclass(frozen=True)
class FitContext:
    """What a fitted model's metadata records beside the model: how long the fit took, on which window, why a
    challenger was trained, which family the data chose and how, and the model's calibration."""

    seconds: float
    window: TrainingWindow
    retraining: Retraining | None = None
    family_choice: FamilyChoice | None = None
    calibration: CalibrationCheck | None = None


def describe_model(
    model: RiskModel, data: TrainingData, labels: np.ndarray, settings: ModelSettings, context: FitContext
) -> ModelInfo:
    """Metadata saved next to the model."""
    described = model.describe()
    retraining = context.retraining
    return ModelInfo(
        trained_at=utc_now(),
        model=described.text,
        family=described.family,
        features=list(FEATURES),
        target=TARGET,
        decision_threshold=round(float(model.threshold), 6),
        coefficients=described.coefficients or {},
        intercept=described.intercept,
        trees=described.trees,
        settings=TrainingSettings(
            C=settings.C,
            max_iter=settings.max_iter,
            class_weight=settings.class_weight,
            decision_threshold=settings.decision_threshold,
        ),
        training_data=str(data.path),
        training_data_sha256=data.sha256,
        ingested_files_sha256=data.ingested_files_sha256,
        ingested_record_sha256=data.ingested_record_sha256,
        training_window=context.window,
        family_choice=context.family_choice,
        calibration=context.calibration,
        held_out_recent_rows=retraining.held_out_recent_rows if retraining else None,
        retrained_because=retraining.because if retraining else None,
        training_rows=int(labels.size),
        training_exit_rate=round(float(labels.mean()), 6),
        fit_seconds=round(context.seconds, 3),
        python=platform.python_version(),
        libraries={name: version(name) for name in LIBRARIES + FAMILY_LIBRARIES.get(described.family, ())},
    )


def describe_training_data(output_folder_path: Path) -> TrainingData:
    """Path and hashes of the ingested data; refuse data the last ingestion report does not vouch for."""
    data_hash = check_final_data(output_folder_path)
    ingested_files, record = output_folder_path / INGESTED_FILES, output_folder_path / INGESTED_RECORD
    return TrainingData(
        path=output_folder_path / FINAL_DATA,
        sha256=data_hash,
        ingested_files_sha256=sha256_file(ingested_files) if ingested_files.exists() else None,
        # ingestedfiles.txt names the files; their content hashes are in the record beside it
        ingested_record_sha256=sha256_file(record) if record.exists() else None,
    )


def save_trained(
    model: RiskModel,
    labels: np.ndarray,
    data: TrainingData,
    settings: ModelSettings,
    output_model_path: Path,
    context: FitContext,
) -> ModelInfo:
    """Save a fitted model with its metadata in ``output_model_path``; return the metadata."""
    info = save_model(model.estimator, describe_model(model, data, labels, settings, context), output_model_path)
    log.info(
        "trained %s on %d rows of %s in %.2fs (threshold %.3f); saved %s",
        info.model,
        labels.size,
        data.path,
        context.seconds,
        info.decision_threshold,
        output_model_path / MODEL_FILE,
    )
    return info


def fit_and_save(
    family: str,
    features: np.ndarray,
    labels: np.ndarray,
    data: TrainingData,
    settings: ModelSettings,
    output_model_path: Path,
    context: FitContext,
    sample_weight: np.ndarray | None = None,
    threads: int = 1,
) -> ModelInfo:
    """Train one family on these rows and save it with its metadata in ``output_model_path``; return the metadata."""
    started = time.perf_counter()
    model = fit_risk_model(family, features, labels, settings, sample_weight, threads)
    context = replace(context, seconds=time.perf_counter() - started)
    return save_trained(model, labels, data, settings, output_model_path, context)


def train_from_folder(
    output_folder_path: Path,
    output_model_path: Path,
    settings: ModelSettings,
    gate: MonitoringSettings | None = None,
) -> ModelInfo:
    """Choose the family the ingested data supports, train it on ``finaldata.csv`` and save it; return its metadata.

    ``gate``: the margin and confidence a more complex family must beat the simpler one by (default: the
    monitoring job's defaults).
    """
    data = describe_training_data(output_folder_path)
    ingested = read_ingested_data(output_folder_path)
    latest = ingested.latest_batch
    window = TrainingWindow("all", min(1, latest), latest, ingested.rows, held_out_from_batch=latest + 1)
    features, labels = ingested.features(), ingested.labels()
    started = time.perf_counter()
    choice = choose_family(features, labels, settings, gate or MonitoringSettings())
    log.info("model family: %s (%s)", choice.family, choice.reason)
    chosen = choice.score_of(choice.family)
    calibration = (
        CalibrationCheck(
            chosen.calibration_error,
            choice.rows,
            f"the out-of-fold probabilities of {choice.folds}-fold cross-validation",
        )
        if chosen
        else None
    )
    context = FitContext(time.perf_counter() - started, window, family_choice=choice, calibration=calibration)
    return fit_and_save(choice.family, features, labels, data, settings, output_model_path, context, threads=2)


def main(argv: list[str] | None = None) -> int:
    args = build_parser(__doc__.splitlines()[0]).parse_args(argv)

    def work(config: Config) -> ModelInfo:
        return train_from_folder(config.output_folder_path, config.output_model_path, config.model, config.monitoring)

    return run_stage("training", args, work)


if __name__ == "__main__":
    raise SystemExit(main())
