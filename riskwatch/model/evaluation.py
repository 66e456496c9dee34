"""Measuring a model on labelled data: the metrics scoring, reporting and the automation share."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from riskwatch.core.errors import PipelineError
from riskwatch.core.files import find_test_files, sha256_file
from riskwatch.core.imports import sklearn_without_pandas
from riskwatch.core.schema import BadFileError
from riskwatch.data.datafiles import read_labelled_data
from riskwatch.state.artifacts import Classifier, load_model, utc_now
from riskwatch.state.records import Confusion, Metrics

with sklearn_without_pandas():
    from sklearn.metrics import (
        accuracy_score,
        brier_score_loss,
        confusion_matrix,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

log = logging.getLogger(__name__)


def score_predictions(labels: np.ndarray, probabilities: np.ndarray, predicted: np.ndarray) -> Metrics:
    """Every metric of one set of predictions (which model and data they belong to left unset)."""
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    both_classes = np.unique(labels).size == 2
    if not both_classes:
        log.warning("the test data holds one class only; ROC AUC and log loss are undefined")
    return Metrics(
        f1=round(float(f1_score(labels, predicted, zero_division=0)), 6),
        precision=round(float(precision_score(labels, predicted, zero_division=0)), 6),
        recall=round(float(recall_score(labels, predicted, zero_division=0)), 6),
        roc_auc=round(float(roc_auc_score(labels, probabilities)), 6) if both_classes else None,
        accuracy=round(float(accuracy_score(labels, predicted)), 6),
        brier_score=round(float(brier_score_loss(labels, probabilities)), 6),
        log_loss=round(float(log_loss(labels, probabilities, labels=[0, 1])), 6) if both_classes else None,
        confusion=Confusion(tn=int(tn), fp=int(fp), fn=int(fn), tp=int(tp)),
        rows=int(labels.size),
        exit_rate=round(float(labels.mean()), 6),
        mean_predicted_risk=round(float(probabilities.mean()), 6),
    )


@dataclass(frozen=True)
class EvaluationData:
    """The test data, read once: its files (with their hashes) and its rows."""

    files: list[Path]
    sha256: dict[str, str]
    features: np.ndarray
    labels: np.ndarray


def read_test_data(test_data_path: Path) -> EvaluationData:
    """Read the test data files; raise PipelineError naming the file at fault."""
    files = find_test_files(test_data_path)
    try:
        features, labels = read_labelled_data(files)
    except BadFileError as exc:
        raise PipelineError(f"cannot use test data: {exc}") from None
    return EvaluationData(files, {path.name: sha256_file(path) for path in files}, features, labels)


def score_loaded_model(model: Classifier, model_path: Path, test: EvaluationData) -> Metrics:
    """The metrics of a loaded model (from ``model_path``) on test data already read."""
    probabilities = model.predict_proba(test.features)[:, 1]
    scores = score_predictions(test.labels, probabilities, model.predict(test.features))
    return replace(
        scores,
        scored_at=utc_now(),
        model=str(model_path),
        model_sha256=sha256_file(model_path),
        test_data=[str(path) for path in test.files],
        test_data_sha256=test.sha256,
    )


def score_model(model_path: Path, test_data_path: Path) -> Metrics:
    """Load the model at ``model_path`` and return its metrics on the test data."""
    return score_loaded_model(load_model(model_path), model_path, read_test_data(test_data_path))
