"""Scoring: measure a trained model on the test data.

Writes ``latestscore.txt`` (the F1 as a bare number, as the classic project does) and
``metrics.json`` (F1, precision, recall, ROC AUC, accuracy, Brier score, log loss, confusion
counts, and which model and test data they belong to) next to the model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from riskwatch.core.cli import build_parser, run_stage
from riskwatch.core.config import Config
from riskwatch.core.files import write_text_atomic
from riskwatch.model import evaluation
from riskwatch.state.artifacts import LATEST_SCORE_FILE, METRICS_FILE, MODEL_FILE
from riskwatch.state.records import Metrics, write_metrics

log = logging.getLogger("scoring")


def write_scores(metrics: Metrics, folder: Path) -> Path:
    """Write ``latestscore.txt`` (bare F1) then ``metrics.json``, each atomically; return the former.

    ``metrics.json`` names the model it scored and is written last, so it marks the pair complete.
    """
    score_file = write_text_atomic(folder / LATEST_SCORE_FILE, f"{metrics.f1}\n")
    write_metrics(folder / METRICS_FILE, metrics)
    return score_file


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, help="model file to score (default: trainedmodel.pkl in output_model_path)"
    )
    args = parser.parse_args(argv)

    def work(config: Config) -> Metrics:
        model_path = (args.model or config.output_model_path / MODEL_FILE).resolve()
        metrics = evaluation.score_model(model_path, config.test_data_path)
        score_file = write_scores(metrics, model_path.parent)
        log.info(
            "F1 %.4f, precision %.4f, recall %.4f, ROC AUC %s on %d test rows; wrote %s",
            metrics.f1,
            metrics.precision,
            metrics.recall,
            metrics.roc_auc,
            metrics.rows,
            score_file,
        )
        return metrics

    return run_stage("scoring", args, work)


if __name__ == "__main__":
    raise SystemExit(main())
