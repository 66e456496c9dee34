"""The challengers: the training windows a retraining considers (all rows, the recent rows, all rows weighted by
recency), one model per window and family trained two at a time into ``challenger/<window>-<family>/``, each
scored on the test data."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from riskwatch.core.config import Config
from riskwatch.data.batches import IngestedData, TrainingWindow
from riskwatch.model.evaluation import score_loaded_model
from riskwatch.model.riskmodels import (
    ADDITIVE,
    LINEAR,
    RECALIBRATED_FAMILIES,
    FittedModel,
    RiskModel,
    choose_threshold,
    equal_count_calibration_error,
    family_of,
    fit_risk_model,
    import_family_libraries,
    recalibrated_model,
    with_threshold,
)
from riskwatch.monitoring.verdicts import RunInputs, Yardsticks
from riskwatch.state.artifacts import MODEL_FILE
from riskwatch.state.history import HistoryStore, change_started_batch
from riskwatch.state.records import CalibrationCheck
from riskwatch.stats.calibration import fit_calibration

log = logging.getLogger("fullprocess")

CHALLENGER_FOLDER = "challenger"
RECALIBRATED = "recalibrated"  # the window name of the serving model recalibrated on the recent rows


def recency_weights(data: IngestedData, half_life: float, unit: str, latest: int | None = None) -> np.ndarray:
    if unit == "days":
        return data.day_weights(half_life)
    return data.batch_weights(half_life, latest)


def candidate_windows(
    config: Config,
    connection: HistoryStore,
    data: IngestedData,
    first_new: int,
    held_out_from_batch: int,
    trainable: np.ndarray,
) -> list[tuple[TrainingWindow, np.ndarray, np.ndarray | None]]:
    """The training windows to try: (window, mask of its rows, weights or None), the configured ones that differ."""
    settings = config.monitoring
    latest = data.latest_batch
    windows: list[tuple[TrainingWindow, np.ndarray, np.ndarray | None]] = []
    for name in settings.candidate_windows:
        weights = None
        if name == "all":
            mask, first = trainable, 1
        elif name == "recent":
            mask = recent_rows(config, connection, data, first_new, trainable)
            first = int(data.batch[mask].min(initial=latest))
        else:
            mask, first = trainable, 1
            weights = recency_weights(data, settings.recency_half_life, settings.recency_unit)[mask]
        rows = int(mask.sum())
        if rows < settings.min_new_rows or np.unique(data.labels(mask)).size < 2:
            log.info("no %s challenger: its window holds %d rows (or one class only)", name, rows)
            continue
        if any(np.array_equal(mask, other) and weights is None and w is None for _, other, w in windows):
            log.info("no %s challenger: its window holds the same rows as another", name)
            continue
        half_life = settings.recency_half_life if name == "weighted" else None
        unit = settings.recency_unit if name == "weighted" else None
        windows.append((TrainingWindow(name, first, latest, rows, held_out_from_batch, half_life, unit), mask, weights))
    return windows


def recent_rows(
    config: Config, connection: HistoryStore, data: IngestedData, first_new: int, trainable: np.ndarray
) -> np.ndarray:
    """The recent window's rows: since the change was first seen (in this run, or an earlier one whose challenger
    lost), or the last ``monitoring.recent_window_rows`` rows when that is set; of the ``trainable`` ones."""
    if config.monitoring.recent_window_rows:
        return data.newest(trainable, config.monitoring.recent_window_rows)
    earlier = change_started_batch(connection)
    mask: np.ndarray = trainable & data.in_batches(min(first_new, earlier or first_new))
    return mask


# ---------------------------------------------------------------- the gate


@dataclass(frozen=True)
class TrainedChallenger:
    """One challenger as trained: its window and family, its folder, its arithmetic and its F1 on the test data."""

    window: TrainingWindow
    family: str
    folder: Path
    model: RiskModel
    test_f1: float


def train_candidates(
    inputs: RunInputs,
    triggers: tuple[str, ...],
    yardsticks: Yardsticks,
    recalibrate: bool = False,
    judged_on: np.ndarray | None = None,
) -> list[TrainedChallenger]:
    """Train one challenger per window and model family into ``challenger/<window>-<family>/``, on every row
    outside the evaluation window and the rows the gate judges on (``judged_on``), and score it on the test data;
    ``triggers``: why, as the models record it.

    With ``recalibrate``, the serving model recalibrated on the recent rows comes first (``recalibrate_serving``).
    """
    from riskwatch.stages.scoring import write_scores
    from riskwatch.stages.training import FitContext, Retraining, describe_training_data, save_trained

    config, data, test = inputs.config, inputs.data, yardsticks.test
    first_new, because = inputs.watermark + 1, "; ".join(triggers)
    trainable = ~yardsticks.evaluation & ~yardsticks.kept_out  # kept out: until an integrity alarm is accepted
    if judged_on is not None:  # a large batch's held-out rows reach past the evaluation window
        trainable &= ~judged_on
    described = describe_training_data(config.output_folder_path)
    retraining = Retraining(int((data.in_batches(first_new) & ~trainable).sum()), because)
    windows = candidate_windows(config, inputs.connection, data, first_new, yardsticks.held_out_from, trainable)
    # Simplest family first, so that a tie at the gate goes to the simpler model.
    jobs = [(window, mask, weights, family) for family in config.model.families for window, mask, weights in windows]

    def save(window: TrainingWindow, family: str, model: RiskModel, labels: np.ndarray, seconds: float) -> Path:
        folder = config.output_model_path / CHALLENGER_FOLDER / f"{window.name}-{family}"
        probabilities = model.score(test.features)[0]
        calibration = CalibrationCheck(
            round(equal_count_calibration_error(test.labels, probabilities), 6), int(test.labels.size), "the test data"
        )
        context = FitContext(seconds, window, retraining, calibration=calibration)
        save_trained(model, labels, described, config.model, folder, context)
        return folder

    def score(window: TrainingWindow, family: str, model: RiskModel, folder: Path) -> TrainedChallenger:
        # Scored with the family's own arithmetic, the numbers the API will serve (checked against the saved
        # classifier when it is loaded); the metrics name the saved file and its hash.
        metrics = score_loaded_model(model, folder / MODEL_FILE, test)
        write_scores(metrics, folder)
        return TrainedChallenger(window, family, folder, model, metrics.f1)

    def train(window: TrainingWindow, mask: np.ndarray, weights: np.ndarray | None, family: str) -> TrainedChallenger:
        labels = data.labels(mask)
        started = time.perf_counter()
        model = fit_risk_model(family, data.features(mask), labels, config.model, weights)
        folder = save(window, family, model, labels, time.perf_counter() - started)
        return score(window, family, model, folder)

    # Two at a time, each numpy operation (and each tree) on one thread: half the time of one after the other
    # on two cores, where letting numpy's own threads compete for them is no faster than one fit at a time. The
    # largest fits start first, so the two threads finish together; the results keep the order of ``jobs``.
    cap = config.model.max_fit_rows
    order = sorted(range(len(jobs)), key=lambda index: -fit_cost(jobs[index][3], int(jobs[index][1].sum()), cap))
    import_family_libraries(config.model.families)
    with threadpool_limits(1), ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(order, pool.map(lambda index: train(*jobs[index]), order), strict=True))
    trained = [done[index] for index in range(len(jobs))]
    recalibrated = recalibrate_serving(inputs, trainable, yardsticks.held_out_from) if recalibrate else None
    if recalibrated is None:
        return trained
    window, model, labels, seconds = recalibrated
    family = model.family
    return [score(window, family, model, save(window, family, model, labels, seconds)), *trained]


def recalibrate_serving(
    inputs: RunInputs, trainable: np.ndarray, held_out_from: int
) -> tuple[TrainingWindow, FittedModel, np.ndarray, float] | None:
    """The serving model with its log-odds refitted on the recent rows (``intercept + slope × log-odds``, the
    outcomes' maximum-likelihood fit) and its threshold chosen again there: the cheapest repair of a model whose
    ranking holds but whose probabilities no longer match the exits. Its window, arithmetic, the rows' labels and
    the seconds it took; None when the serving model's family cannot be refitted so (the boosted trees) or the
    recent rows cannot pin the fit down."""
    config, data, champion = inputs.config, inputs.data, inputs.champion
    serving = champion.model.estimator if isinstance(champion.model, FittedModel) else champion.model
    family = family_of(serving)
    if family not in RECALIBRATED_FAMILIES:
        log.info("no recalibrated challenger: %s's log-odds cannot be refitted", champion.version)
        return None
    started = time.perf_counter()
    mask = recent_rows(config, inputs.connection, data, inputs.watermark + 1, trainable)
    features, labels = data.features(mask), data.labels(mask)
    fit = fit_calibration(labels, champion.model.predict_proba(features)[:, 1]) if labels.size else None
    if fit is None:
        log.info("no recalibrated challenger: the %d recent rows cannot pin the calibration down", labels.size)
        return None
    model = recalibrated_model(family, serving, fit.intercept, fit.slope)
    if config.model.decision_threshold == "f1":
        model = with_threshold(model, choose_threshold(labels, model.score(features)[0]))
    first = int(data.batch[mask].min())
    lineage = champion.model_info.training_window
    window = TrainingWindow(
        RECALIBRATED,
        lineage.first_batch if lineage else 1,
        data.latest_batch,
        int(labels.size),
        held_out_from,
        recalibrated_from_batch=first,
    )
    log.info(
        "recalibrated %s on %d recent rows: log-odds' = %.3f + %.3f x log-odds, threshold %.3f",
        champion.version,
        labels.size,
        fit.intercept,
        fit.slope,
        model.threshold,
    )
    return window, model, labels, time.perf_counter() - started


def fit_cost(family: str, rows: int, max_fit_rows: int) -> float:
    """A rough relative cost of fitting ``family`` on ``rows`` rows, to start the largest fits first (measured:
    the boosted family takes about ten times the linear one's time per row, the additive family four; both fit
    on at most ``max_fit_rows``)."""
    if family == LINEAR:
        return float(rows)
    return min(rows, max_fit_rows) * (4.0 if family == ADDITIVE else 10.0)
