"""Compare the pipeline's model with a plain ``LogisticRegression()`` on the raw columns.

Both are trained on the ingested data of a config and scored on its test data:

    python -m bench.baseline [--config config.json]

Run ``make run`` (or ingestion.py) first so that ``finaldata.csv`` exists.
"""

from __future__ import annotations

import argparse

from sklearn.linear_model import LogisticRegression

from riskwatch.core.config import load_config
from riskwatch.core.files import find_test_files
from riskwatch.data.datafiles import read_labelled_data
from riskwatch.model.evaluation import score_predictions
from riskwatch.stages.training import fit_classifier
from riskwatch.state.artifacts import FINAL_DATA
from riskwatch.state.records import Metrics


def compare_with_baseline(config_path: str | None) -> dict[str, Metrics]:
    """Metrics of the pipeline's model and of the plain baseline on the config's test data."""
    config = load_config(config_path)
    features, labels = read_labelled_data([config.output_folder_path / FINAL_DATA])
    test_features, test_labels = read_labelled_data(find_test_files(config.test_data_path))
    models = {
        "pipeline model": fit_classifier(features, labels, config.model),
        "LogisticRegression() on raw columns": LogisticRegression().fit(features, labels),
    }
    return {
        name: score_predictions(test_labels, model.predict_proba(test_features)[:, 1], model.predict(test_features))
        for name, model in models.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config")
    args = parser.parse_args(argv)
    print("| model | F1 | precision | recall | ROC AUC |\n|---|---|---|---|---|")
    for name, metrics in compare_with_baseline(args.config).items():
        print(
            f"| {name} | {metrics.f1:.3f} | {metrics.precision:.3f} | {metrics.recall:.3f} "
            f"| {'n/a' if metrics.roc_auc is None else f'{metrics.roc_auc:.3f}'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
