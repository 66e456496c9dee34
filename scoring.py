"""Scoring: measure a trained model on the test data.

Writes ``latestscore.txt`` (the F1 as a bare number, as the classic project does) and
``metrics.json`` (F1, precision, recall, ROC AUC, accuracy, Brier score, log loss, confusion
counts, and which model and test data they belong to) next to the model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
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

from common.artifacts import LATEST_SCORE_FILE, METRICS_FILE, MODEL_FILE, load_model, utc_now
from common.cli import build_parser, run_stage
from common.config import Config
from common.errors import PipelineError
from common.files import list_data_files, sha256_file, write_text_atomic
from common.schema import BadFileError, read_labelled_data

log = logging.getLogger("scoring")

CLASSIC_TEST_FILE = "testdata.csv"


def find_test_files(test_data_path: Path) -> list[Path]:
    """The test data files: the path itself, or ``testdata.csv`` in the folder, or every data file in it."""
    if test_data_path.is_file():
        return [test_data_path]
    if not test_data_path.is_dir():
        raise PipelineError(f"test data {test_data_path} does not exist")
    if (test_data_path / CLASSIC_TEST_FILE).is_file():
        return [test_data_path / CLASSIC_TEST_FILE]
    files, _ = list_data_files(test_data_path)
    if not files:
        raise PipelineError(f"test data folder {test_data_path} holds no .csv, .json or .jsonl file")
    return files


def score_predictions(labels: np.ndarray, probabilities: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Every metric of one set of predictions, as plain JSON-ready numbers."""
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    both_classes = np.unique(labels).size == 2
    if not both_classes:
        log.warning("the test data holds one class only; ROC AUC and log loss are undefined")
    return {
        "f1": round(float(f1_score(labels, predicted, zero_division=0)), 6),
        "precision": round(float(precision_score(labels, predicted, zero_division=0)), 6),
        "recall": round(float(recall_score(labels, predicted, zero_division=0)), 6),
        "roc_auc": round(float(roc_auc_score(labels, probabilities)), 6) if both_classes else None,
        "accuracy": round(float(accuracy_score(labels, predicted)), 6),
        "brier_score": round(float(brier_score_loss(labels, probabilities)), 6),
        "log_loss": round(float(log_loss(labels, probabilities, labels=[0, 1])), 6) if both_classes else None,
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "rows": int(labels.size),
        "exit_rate": round(float(labels.mean()), 6),
        "mean_predicted_risk": round(float(probabilities.mean()), 6),
    }


def score_model(model_path: Path, test_data_path: Path) -> dict[str, Any]:
    """Load the model at ``model_path`` and return its metrics on the test data."""
    model = load_model(model_path)
    files = find_test_files(test_data_path)
    try:
        features, labels = read_labelled_data(files)
    except BadFileError as exc:
        raise PipelineError(f"cannot use test data: {exc}") from None
    probabilities = model.predict_proba(features)[:, 1]
    metrics = score_predictions(labels, probabilities, model.predict(features))
    return {
        **metrics,
        "scored_at": utc_now(),
        "model": str(model_path),
        "model_sha256": sha256_file(model_path),
        "test_data": [str(path) for path in files],
        "test_data_sha256": {path.name: sha256_file(path) for path in files},
    }


def write_scores(metrics: dict[str, Any], folder: Path) -> Path:
    """Write ``latestscore.txt`` (bare F1) then ``metrics.json``, each atomically; return the former.

    ``metrics.json`` names the model it scored and is written last, so it marks the pair complete.
    """
    score_file = write_text_atomic(folder / LATEST_SCORE_FILE, f"{metrics['f1']}\n")
    write_text_atomic(folder / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    return score_file


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, help="model file to score (default: trainedmodel.pkl in output_model_path)"
    )
    args = parser.parse_args(argv)

    def work(config: Config) -> dict[str, Any]:
        model_path = (args.model or config.model_folder / MODEL_FILE).resolve()
        metrics = score_model(model_path, config.test_data_path)
        score_file = write_scores(metrics, model_path.parent)
        log.info(
            "F1 %.4f, precision %.4f, recall %.4f, ROC AUC %s on %d test rows; wrote %s",
            metrics["f1"],
            metrics["precision"],
            metrics["recall"],
            metrics["roc_auc"],
            metrics["rows"],
            score_file,
        )
        return metrics

    return run_stage("scoring", args, work)


if __name__ == "__main__":
    raise SystemExit(main())
