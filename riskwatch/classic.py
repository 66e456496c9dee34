"""The classic course project's functions, by their classic names, with their classic return values.

Each reads config.json (or the file ``config_path`` or ``$RISK_CONFIG`` names) as the course does, runs the
stage that does the work, and hands back a plain value, a pandas object or a path. The stage scripts export
them, so ``import training; training.train_model()`` works as it did; ``reporting.score_model`` (the confusion
matrix) is ``report_score_model`` here, as ``scoring.score_model`` (the F1) keeps its name. Everything they use
is imported when one is called: importing a script stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from riskwatch.core.config import load_config

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.model_selection import FixedThresholdClassifier

    from riskwatch.stages.deployment import Publication

ConfigPath = str | os.PathLike[str] | None


def merge_multiple_dataframe(config_path: ConfigPath = None) -> pd.DataFrame:
    """Ingest the configured input folder; return ``finaldata.csv`` as a DataFrame (writes what ``ingestion.py``
    writes)."""
    from riskwatch.data.frames import read_client_frame
    from riskwatch.stages.ingestion import ingest_folder

    config = load_config(config_path)
    result = ingest_folder(
        config.input_folder_path,
        config.output_folder_path,
        database=config.database,
        block_bytes=config.ingestion.batch_bytes,
    )
    return read_client_frame(result.final_data)


def train_model(config_path: ConfigPath = None) -> FixedThresholdClassifier:
    """Train on the ingested data, save ``trainedmodel.pkl``; return the model."""
    from riskwatch.stages.training import train_from_folder
    from riskwatch.state.artifacts import MODEL_FILE, load_model

    config = load_config(config_path)
    train_from_folder(config.output_folder_path, config.output_model_path, config.model, config.monitoring)
    return load_model(config.output_model_path / MODEL_FILE)


def score_model(config_path: ConfigPath = None) -> float:
    """Score the trained model on the test data, write ``latestscore.txt`` and ``metrics.json``; return the F1."""
    from riskwatch.model.evaluation import score_model as score_on_test_data
    from riskwatch.stages.scoring import write_scores
    from riskwatch.state.artifacts import MODEL_FILE

    config = load_config(config_path)
    metrics = score_on_test_data(config.output_model_path / MODEL_FILE, config.test_data_path)
    write_scores(metrics, config.output_model_path)
    return metrics.f1


def store_model_into_pickle(config_path: ConfigPath = None) -> Publication:
    """Publish the model, its score and ``ingestedfiles.txt``; return the version."""
    from riskwatch.stages.deployment import publish_deployment

    config = load_config(config_path)
    return publish_deployment(
        config.output_model_path, config.output_folder_path, config.prod_deployment_path, config.keep_versions
    )


def model_predictions(dataframe: pd.DataFrame | None = None, config_path: ConfigPath = None) -> list[int]:
    """The deployed model's label (0 or 1) for each row of ``dataframe``, default the test data, in row order."""
    from riskwatch.core.errors import PipelineError
    from riskwatch.core.files import find_test_files
    from riskwatch.core.schema import BadFileError
    from riskwatch.data.frames import frame_features, read_test_frame
    from riskwatch.state.artifacts import current_version_folder, load_deployed_version

    config = load_config(config_path)
    model = load_deployed_version(current_version_folder(config.prod_deployment_path)).model
    if dataframe is None:
        dataframe = read_test_frame(find_test_files(config.test_data_path)[0])
    try:
        features = frame_features(dataframe)
    except BadFileError as exc:
        raise PipelineError(f"cannot predict: {exc}") from None
    return [int(label) for label in model.predict(features)]


def dataframe_summary(config_path: ConfigPath = None) -> list[list[float | None]]:
    """``[mean, median, standard deviation]`` of each numeric column of the ingested data, in column order.

    The columns are ``lastmonth_activity``, ``lastyear_activity``, ``number_of_employees``, ``exited``.
    """
    from riskwatch.data import datastats
    from riskwatch.state.artifacts import FINAL_DATA

    config = load_config(config_path)
    summary = datastats.summary_statistics(datastats.read_numeric_columns(config.output_folder_path / FINAL_DATA))
    return [[column["mean"], column["median"], column["std"]] for column in summary.values()]


def missing_data(config_path: ConfigPath = None) -> list[float]:
    """Percent of missing values in each column of the source files, in column order (corporation first)."""
    from riskwatch.stages.diagnostics import measure_missing_data

    return list(measure_missing_data(load_config(config_path), cached=False).percent.values())


def execution_time(config_path: ConfigPath = None) -> list[float]:
    """``[ingestion seconds, training seconds]``, each stage run once as a process on scratch outputs."""
    from riskwatch.stages.diagnostics import time_stages

    stages = time_stages(load_config(config_path), runs=1).stages
    return [stages["ingestion"].mean or 0.0, stages["training"].mean or 0.0]


def outdated_packages_list(config_path: ConfigPath = None) -> pd.DataFrame:
    """One row per requirement: ``package``, ``installed`` and ``latest`` version (None when unknown)."""
    import pandas as pd

    from riskwatch.stages.diagnostics import dependency_status
    from riskwatch.state.artifacts import DEPENDENCY_CACHE_FILE

    config = load_config(config_path)
    rows = dependency_status(config.diagnostics, config.output_model_path / DEPENDENCY_CACHE_FILE)
    return pd.DataFrame(
        [(row.package, row.installed, row.latest) for row in rows], columns=["package", "installed", "latest"]
    )


def report_score_model(config_path: ConfigPath = None) -> Path:
    """The classic ``reporting.score_model``: plot the deployed model's confusion matrix on the test data into
    ``confusionmatrix.png`` in the model folder; return the file."""
    from riskwatch.model.evaluation import score_model as score_on_test_data
    from riskwatch.report.plots import plot_confusion_matrix
    from riskwatch.state.artifacts import (
        CONFUSION_MATRIX_FILE,
        MODEL_FILE,
        current_version_folder,
        load_deployed_version,
    )

    config = load_config(config_path)
    deployed = load_deployed_version(current_version_folder(config.prod_deployment_path))
    scores = score_on_test_data(deployed.folder / MODEL_FILE, config.test_data_path)
    return plot_confusion_matrix(scores.confusion, deployed.version, config.output_model_path / CONFUSION_MATRIX_FILE)
