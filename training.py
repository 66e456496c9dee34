"""Training: fit the exit-risk classifier on ``finaldata.csv`` and save it with its metadata.

The model is a logistic regression in a scikit-learn Pipeline: counts are log-scaled
(``log1p``, as activity and head-count are heavy-tailed) and standardised. It is fitted
without class weights so its probabilities stay calibrated; the class imbalance is met by
the decision threshold, chosen to maximise F1 on the training data, so labels favour the
rare exits while probabilities stay honest risks.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from common.artifacts import (
    FINAL_DATA,
    INGESTED_FILES,
    INGESTED_RECORD,
    MODEL_FILE,
    check_final_data,
    load_model,
    save_model,
    utc_now,
)
from common.batches import TrainingWindow, read_ingested_data
from common.cli import build_parser, run_stage
from common.config import Config, ModelSettings, load_config
from common.errors import PipelineError
from common.files import sha256_file
from common.imports import sklearn_without_pandas
from common.records import ModelInfo, TrainingSettings
from common.schema import FEATURES, TARGET

with sklearn_without_pandas():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import precision_recall_curve
    from sklearn.model_selection import FixedThresholdClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

log = logging.getLogger("training")

LIBRARIES = ("numpy", "pyarrow", "scikit-learn", "scipy")


_PROBE_ROWS = np.array(
    [[0, 0, 1], [1, 10, 2], [37, 412, 18], [250, 3000, 90], [5000, 60000, 800], [0, 120000, 4000], [44507, 0, 1]],
    dtype=np.float64,
)


class LinearRiskModel:
    """The trained pipeline's arithmetic on plain arrays: log1p, standardise, logistic, threshold.

    scikit-learn's ``predict_proba`` spends most of its time on input validation; for one row
    that is ~20 times the arithmetic. The same operations in the same order give identical
    numbers, and ``for_model`` checks that on probe rows before the shortcut is used.
    """

    def __init__(self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: np.ndarray, threshold: float):
        self.mean, self.scale, self.coef_t, self.intercept, self.threshold = mean, scale, coef.T, intercept, threshold

    @classmethod
    def for_model(cls, model: Any) -> LinearRiskModel | None:
        """The shortcut for a model of the shape training.py writes, if it matches exactly; else None."""
        try:
            steps = model.estimator.named_steps
            if steps["log_counts"].func is not np.log1p or getattr(model, "response_method", "") != "predict_proba":
                return None
            scaler, classifier = steps["scale"], steps["classifier"]
            if list(classifier.classes_) != [0, 1] or classifier.coef_.shape[0] != 1:
                return None
            mean = scaler.mean_ if scaler.with_mean else np.zeros(classifier.coef_.shape[1])
            scale = scaler.scale_ if scaler.with_std else np.ones(classifier.coef_.shape[1])
            shortcut = cls(mean, scale, classifier.coef_, classifier.intercept_, float(model.threshold))
        except (AttributeError, KeyError, TypeError, IndexError):
            return None
        probabilities, labels = shortcut.predict(_PROBE_ROWS)
        expected = model.predict_proba(_PROBE_ROWS)[:, 1]
        if (
            np.array_equal(probabilities, expected)
            and np.array_equal(labels, model.predict(_PROBE_ROWS))
            and np.allclose(expit(shortcut.log_odds(_PROBE_ROWS)), expected, rtol=0, atol=1e-12)
        ):
            return shortcut
        return None

    @property
    def baseline_log_odds(self) -> float:
        """The log-odds of exit of the average training client (every standardised count 0)."""
        return float(self.intercept[0])

    @property
    def typical_counts(self) -> np.ndarray:
        """The counts of the average training client, back from the log scale: ``expm1`` of the scaler's mean."""
        return np.expm1(self.mean)

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """Each feature's share of each row's log-odds relative to the average training client (rows x features).

        ``baseline_log_odds`` plus a row's contributions is its log-odds, ``log(p / (1 - p))``.
        """
        return self.standardise(features) * self.coef_t.reshape(-1)

    def log_odds(self, features: np.ndarray) -> np.ndarray:
        """Each row's log-odds of exit, as the baseline plus the sum of its contributions."""
        return self.baseline_log_odds + self.contributions(features).sum(axis=1)

    def standardise(self, features: np.ndarray) -> np.ndarray:
        """The standardised log1p counts (a new array): 0 is the average training client."""
        scaled = np.log1p(features)
        scaled -= self.mean
        scaled /= self.scale
        return scaled

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(exit probabilities, labels 0/1) for float64 features, one row per client."""
        scaled = self.standardise(features)
        scores = (scaled @ self.coef_t + self.intercept).reshape(-1)
        probabilities = expit(scores, out=scores)
        return probabilities, (probabilities >= self.threshold).astype(np.int64)


def build_pipeline(settings: ModelSettings) -> Pipeline:
    """log1p -> standardise -> logistic regression."""
    return Pipeline(
        [
            ("log_counts", FunctionTransformer(np.log1p, feature_names_out="one-to-one")),
            ("scale", StandardScaler()),
            (
                "classifier",
                LogisticRegression(C=settings.C, max_iter=settings.max_iter, class_weight=settings.class_weight),
            ),
        ]
    )


def choose_threshold(labels: np.ndarray, probabilities: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """The probability threshold with the highest (weighted) F1 on these labels."""
    precision, recall, thresholds = precision_recall_curve(labels, probabilities, sample_weight=sample_weight)
    precision, recall = precision[:-1], recall[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(thresholds[int(np.argmax(f1))])


def fit_classifier(
    features: np.ndarray, labels: np.ndarray, settings: ModelSettings, sample_weight: np.ndarray | None = None
) -> FixedThresholdClassifier:
    """Fit the pipeline (each row weighted by ``sample_weight``, if given) with its decision threshold."""
    classes = np.unique(labels)
    if classes.size < 2:
        raise PipelineError(f"the training data holds only exited={classes[0]}; both classes are needed to train")
    weights = (
        {}
        if sample_weight is None
        else {"scale__sample_weight": sample_weight, "classifier__sample_weight": sample_weight}
    )
    pipeline = build_pipeline(settings).fit(features, labels, **weights)
    if settings.decision_threshold == "f1":
        threshold = choose_threshold(labels, pipeline.predict_proba(features)[:, 1], sample_weight)
    else:
        threshold = float(settings.decision_threshold)
    # The wrapper takes the fitted pipeline as it is; fitting the wrapper would fit it again.
    return FixedThresholdClassifier(pipeline, threshold=threshold, response_method="predict_proba")


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


def describe_model(
    model: FixedThresholdClassifier,
    data: TrainingData,
    labels: np.ndarray,
    settings: ModelSettings,
    seconds: float,
    window: TrainingWindow,
    retraining: Retraining | None = None,
) -> ModelInfo:
    """Metadata saved next to the model."""
    classifier = model.estimator.named_steps["classifier"]
    return ModelInfo(
        trained_at=utc_now(),
        model="LogisticRegression on log1p-scaled, standardised counts",
        features=list(FEATURES),
        target=TARGET,
        decision_threshold=round(float(model.threshold), 6),
        coefficients=dict(zip(FEATURES, np.round(classifier.coef_[0], 6).tolist(), strict=True)),
        intercept=round(float(classifier.intercept_[0]), 6),
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
        training_window=window,
        held_out_recent_rows=retraining.held_out_recent_rows if retraining else None,
        retrained_because=retraining.because if retraining else None,
        training_rows=int(labels.size),
        training_exit_rate=round(float(labels.mean()), 6),
        fit_seconds=round(seconds, 3),
        python=platform.python_version(),
        libraries={name: version(name) for name in LIBRARIES},
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


def fit_and_save(
    features: np.ndarray,
    labels: np.ndarray,
    data: TrainingData,
    settings: ModelSettings,
    output_model_path: Path,
    window: TrainingWindow,
    sample_weight: np.ndarray | None = None,
    retraining: Retraining | None = None,
) -> ModelInfo:
    """Train on these rows and save the model with its metadata in ``output_model_path``; return the metadata."""
    started = time.perf_counter()
    model = fit_classifier(features, labels, settings, sample_weight)
    seconds = time.perf_counter() - started
    described = describe_model(model, data, labels, settings, seconds, window, retraining)
    info = save_model(model, described, output_model_path)
    log.info(
        "trained on %d rows of %s in %.2fs (threshold %.3f, coefficients %s); saved %s",
        labels.size,
        data.path,
        seconds,
        info.decision_threshold,
        info.coefficients,
        output_model_path / MODEL_FILE,
    )
    return info


def train_from_folder(output_folder_path: Path, output_model_path: Path, settings: ModelSettings) -> ModelInfo:
    """Train on ``finaldata.csv`` in ``output_folder_path`` and save the model; return its metadata."""
    data = describe_training_data(output_folder_path)
    ingested = read_ingested_data(output_folder_path)
    latest = ingested.latest_batch
    window = TrainingWindow("all", min(1, latest), latest, ingested.rows, held_out_from_batch=latest + 1)
    return fit_and_save(ingested.features(), ingested.labels(), data, settings, output_model_path, window)


def train_model(config_path: str | os.PathLike[str] | None = None) -> FixedThresholdClassifier:
    """The classic course function: train on the ingested data, save ``trainedmodel.pkl``; return the model.

    ``config_path``: default ``$RISK_CONFIG``, else config.json.
    """
    config = load_config(config_path)
    train_from_folder(config.output_folder_path, config.output_model_path, config.model)
    return load_model(config.output_model_path / MODEL_FILE)


def main(argv: list[str] | None = None) -> int:
    args = build_parser(__doc__.splitlines()[0]).parse_args(argv)

    def work(config: Config) -> ModelInfo:
        return train_from_folder(config.output_folder_path, config.output_model_path, config.model)

    return run_stage("training", args, work)


if __name__ == "__main__":
    raise SystemExit(main())
