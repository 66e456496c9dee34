"""The monitoring decision: given the ingested rows and the serving model, drift or not, and what to do.

``assess`` takes the rows of the batches that arrived since the last decision and returns an
``Assessment``: the model-drift verdict (the serving model's F1 on the new rows against its own
reference: what it scored at its gate, then on later batches that did not drift), the data-drift
verdict per feature (the new rows against the rows the serving model was trained on), and, when
drift calls for it, challengers trained on several windows of the data (all rows, the recent
rows, all rows weighted by recency), each judged on the same held-out recent rows; the best of
them faces the serving model at the gate. It trains models into the challenger folder but
deploys nothing: ``fullprocess.py`` acts on the decision.

Held-out rows are chosen by a hash of each row, so the choice never changes between runs. The
held-out rows of each batch join a rolling evaluation window (``monitoring.evaluation_window_rows``),
which no challenger is trained on, so every model is also measured on recent clients rather
than only on the fixed test file.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from riskwatch.core.config import MonitoringSettings
from riskwatch.data.batches import IngestedData
from riskwatch.model.evaluation import EvaluationData, read_test_data, score_predictions
from riskwatch.model.riskmodels import RiskModel
from riskwatch.monitoring.challengers import (
    CHALLENGER_FOLDER,
    RECALIBRATED,
    TrainedChallenger,
    recency_weights,
    train_candidates,
)
from riskwatch.monitoring.driftreference import load_drift_reference
from riskwatch.monitoring.verdicts import (
    Action,
    Assessment,
    Candidate,
    DataReference,
    Findings,
    Gate,
    RunInputs,
    WindowScore,
    Yardsticks,
    describe_deployment,
)
from riskwatch.state.artifacts import Classifier, DeployedVersion
from riskwatch.state.history import (
    DEPLOYED,
    KEPT,
    QUARANTINED,
    WAITING,
    HistoryStore,
    ReferenceScore,
    change_started_batch,
    gate_score,
    later_scores,
    latest_confirmation,
    quarantined_batches,
)
from riskwatch.state.runs import FeatureDrift
from riskwatch.state.stages import StageClock
from riskwatch.stats.calibration import (
    CalibrationFit,
    CalibrationVerdict,
    calibration_error,
    fit_calibration,
    judge_calibration,
)
from riskwatch.stats.comparison import LossVerdict, judge_gain, judge_log_loss, labels_f1
from riskwatch.stats.drift import (
    DriftReference,
    ModelDrift,
    check_model_drift,
    confusion_shares,
    describe_feature_drift,
    f1_from_counts,
    feature_drift,
    fit_drift_reference,
    judge_feature_drift,
)
from riskwatch.stats.estimate import PerformanceEstimate, estimate_performance
from riskwatch.stats.integrity import IntegrityVerdict, fit_joint_structure, judge_integrity

log = logging.getLogger("fullprocess")

MAX_REFERENCE_ROWS = 200_000  # the data integrity test fits on a random sample of at most this many reference rows


def f1_on(model: Classifier, features: np.ndarray, labels: np.ndarray) -> float:
    """The F1 of a model's labels on these rows."""
    return labels_f1(labels, model.predict(features))


def reference_scores(connection: HistoryStore, champion: DeployedVersion) -> list[ReferenceScore]:
    """What the serving model is judged against, first score first, then its later scores on batches that did not drift.

    The first is its F1 at its gate (with no gate: on the test data), or, once drift called for
    retraining and no challenger beat it, its F1 on the rows of that run.
    """
    run_id, first = gate_score(connection, champion.version)
    confirmed = latest_confirmation(connection, champion.version, run_id)
    if confirmed is not None:
        run_id, first = confirmed.run_id, confirmed.score
    elif first is None:
        first = ReferenceScore(
            champion.metrics.f1, int(champion.metrics.rows or 0), "the test data, scored when it was deployed"
        )
    return [first, *later_scores(connection, champion.version, run_id)]


def judge_model_drift(
    settings: MonitoringSettings,
    connection: HistoryStore,
    champion: DeployedVersion,
    features: np.ndarray,
    labels: np.ndarray,
) -> ModelDrift:
    """The serving model's F1 on the new rows against its reference."""
    shares = confusion_shares(labels, champion.model.predict(features))
    new_f1 = float(f1_from_counts(shares[0], shares[1], shares[2]))
    verdict = check_model_drift(new_f1, shares, labels.size, reference_scores(connection, champion), settings)
    (log.warning if verdict.drifted else log.info)(
        "model drift %s: %s (reference: %s; spread %.4f at %d new rows)",
        "detected" if verdict.drifted else "not detected",
        verdict.describe(),
        verdict.reference,
        verdict.spread,
        labels.size,
    )
    return verdict


def estimate_before_labels(
    model: Classifier,
    features: np.ndarray,
    labels: np.ndarray,
    calibration: CalibrationFit | None,
    settings: MonitoringSettings,
) -> tuple[PerformanceEstimate, float, CalibrationVerdict]:
    """The F1 the probabilities alone promise on these rows; how well calibrated they are on the labels (the
    expected calibration error, and the calibration test)."""
    probabilities = model.predict_proba(features)[:, 1]
    estimate = estimate_performance(probabilities, model.predict(features), calibration)
    verdict = judge_calibration(
        labels,
        probabilities,
        settings.calibration_confidence,
        settings.calibration_tolerance,
        settings.calibration_slope_tolerance,
    )
    (log.warning if verdict.miscalibrated else log.info)(
        "calibration %s: %s", "off" if verdict.miscalibrated else "holds", verdict.describe()
    )
    return estimate, calibration_error(labels, probabilities), verdict


def fit_serving_calibration(model: Classifier, test: EvaluationData) -> CalibrationFit | None:
    """The serving model's recalibration fit on the test data, rows it was never trained on: how well its
    probabilities are known to be calibrated, which the label-free estimate's interval counts."""
    return fit_calibration(test.labels, model.predict_proba(test.features)[:, 1])


# ---------------------------------------------------------------- data drift


def data_reference(
    connection: HistoryStore,
    data: IngestedData,
    champion: DeployedVersion,
    watermark: int,
    kept_out: np.ndarray,
) -> DataReference:
    """The rows new ones are compared with.

    The rows the serving model was trained on (a weighted sample for a weighted window); or, once
    drift called for retraining and no challenger beat it, the rows of that run, which it is
    known to serve as well as any model could.
    """
    run_id, _ = gate_score(connection, champion.version)
    confirmed = latest_confirmation(connection, champion.version, run_id)
    if confirmed is not None:
        rows = without(np.flatnonzero(data.in_batches(confirmed.first_batch, confirmed.last_batch)), kept_out)
        return DataReference(rows, confirmed.first_batch, confirmed.last_batch, run_id=confirmed.run_id)
    window = champion.model_info.training_window
    if window is None:
        mask = data.batch <= watermark
        return DataReference(
            without(np.flatnonzero(mask), kept_out),
            1 if watermark >= 1 else None,
            watermark if watermark >= 1 else None,
        )
    rows = without(np.flatnonzero(data.in_batches(window.first_batch, window.last_batch)), kept_out)
    weighted = window.name == "weighted" and rows.size > 0
    if weighted:
        weights = recency_weights(data, window.half_life or 1.0, window.half_life_unit or "batches", window.last_batch)
        weights = weights[rows] / weights[rows].sum()
        rows = np.sort(np.random.default_rng(0).choice(rows, size=rows.size, p=weights))
    return DataReference(rows, window.first_batch, window.last_batch, window=window, weighted=weighted)


def without(rows: np.ndarray, kept_out: np.ndarray) -> np.ndarray:
    """These row numbers less the rows of batches kept out of training (a data integrity alarm not accepted)."""
    kept: np.ndarray = rows[~kept_out[rows]]
    return kept


def judge_data_drift(
    settings: MonitoringSettings,
    data: IngestedData,
    reference_rows: np.ndarray,
    new_features: np.ndarray | DriftReference,
    models_folder: Path | None = None,
) -> list[FeatureDrift]:
    """Each feature of the new rows against all the reference rows, whose sorted values are kept in
    ``models_folder`` from one run to the next (``riskwatch/monitoring/driftreference.py``): a batch costs its
    own sort."""
    if reference_rows.size == 0:
        return []
    reference = load_drift_reference(models_folder, data, reference_rows)
    rows = judge_feature_drift(reference, new_features, settings)
    for row in rows:
        (log.warning if row.drifted else log.info)(
            "data drift %s: %s", "detected" if row.drifted else "not detected", describe_feature_drift(row)
        )
    return rows


def retraining_triggers(
    settings: MonitoringSettings,
    model_drift: ModelDrift | None,
    drifted: list[FeatureDrift],
    calibration: CalibrationVerdict | None = None,
    integrity: IntegrityVerdict | None = None,
) -> list[str]:
    """What calls for retraining under ``monitoring.retrain_on`` (drift) and ``monitoring.recalibrate``
    (miscalibration), each with the statistic behind it; nothing when the rows broke the data integrity test,
    which no model should learn from.

    ``model_drift`` and ``calibration``: None for rows without outcomes, where only data drift can call for it.
    """
    retrain_on = settings.retrain_on
    triggers: list[str] = []
    if integrity is not None and integrity.broken:
        return triggers
    if model_drift is not None and model_drift.drifted and retrain_on in ("model_drift", "either"):
        triggers.append(f"model drift ({model_drift.describe()})")
    if drifted and retrain_on in ("data_drift", "either"):
        triggers.append("data drift (" + "; ".join(describe_feature_drift(row) for row in drifted) + ")")
    if calibration is not None and calibration.miscalibrated and settings.recalibrate:
        triggers.append(f"miscalibration ({calibration.describe()})")
    return triggers


def describe_no_trigger(
    settings: MonitoringSettings,
    model_drift: ModelDrift | None,
    drifted: list[FeatureDrift],
    calibration: CalibrationVerdict | None = None,
) -> str:
    """Why a run with drift or miscalibration found did not retrain, or "" when there was none."""
    found = []
    if model_drift is not None and model_drift.drifted:
        found.append("model drift")
    if drifted:
        found.append("data drift in " + ", ".join(row.feature for row in drifted))
    drift = f" ({' and '.join(found)} found, but retrain_on is {settings.retrain_on})" if found else ""
    if calibration is not None and calibration.miscalibrated and not settings.recalibrate:
        drift += f" (miscalibration found: {calibration.describe()}; recalibrate is off)"
    return drift


# ---------------------------------------------------------------- data integrity


def judge_data_integrity(
    settings: MonitoringSettings,
    data: IngestedData,
    reference_rows: np.ndarray,
    new_features: np.ndarray,
    sorted_columns: DriftReference | None = None,
) -> IntegrityVerdict | None:
    """The data integrity test of the new rows against the reference rows (``riskwatch/stats/integrity.py``);
    None when it is switched off or the reference cannot give a joint structure."""
    if not settings.check_integrity or reference_rows.size == 0 or new_features.shape[0] == 0:
        return None
    if reference_rows.size > MAX_REFERENCE_ROWS:
        reference_rows = np.sort(np.random.default_rng(0).choice(reference_rows, MAX_REFERENCE_ROWS, replace=False))
    structure = fit_joint_structure(data.features()[reference_rows])
    if structure is None:
        return None
    verdict = judge_integrity(structure, new_features, settings.integrity_tolerance, sorted_columns)
    (log.warning if verdict.broken else log.info)(
        "data integrity %s: %s", "broken" if verdict.broken else "holds", verdict.describe()
    )
    return verdict


def quarantine(inputs: RunInputs, findings: Findings, rows: int, unlabelled: bool = False) -> Action:
    """The action on rows that broke the data integrity test: nothing is trained on them (now, or by later runs
    until an operator accepts them), the serving model keeps serving, and the decision says so."""
    integrity = findings.integrity
    assert integrity is not None
    first, last = inputs.watermark + 1, inputs.data.latest_batch
    batches = "" if unlabelled else (f" of batch {first}" if first == last else f" of batches {first}-{last}")
    accept = (
        f"fullprocess.py --accept-run {inputs.run_id}" if inputs.run_id is not None else "fullprocess.py --accept-run"
    )
    kept_from = "ranked, but never trained on" if unlabelled else f"kept out of training until accepted ({accept})"
    return Action(
        QUARANTINED,
        f"data integrity alarm: the {rows} new row(s){batches} keep each column's values but not their relationship, "
        f"as a faulty join or export would leave them: {integrity.describe()}; they are {kept_from}; "
        f"{inputs.champion.version} serves",
    )


def kept_out_rows(connection: HistoryStore, data: IngestedData) -> np.ndarray:
    """The ingested rows of the batches a data integrity alarm keeps out of training (not accepted yet)."""
    mask = np.zeros(data.rows, dtype=bool)
    for first, last in quarantined_batches(connection):
        mask |= data.in_batches(first, last)
    return mask


# ---------------------------------------------------------------- windows


def evaluation_mask(data: IngestedData, settings: MonitoringSettings, held_out_from_batch: int) -> np.ndarray:
    """The rolling evaluation window: the newest held-out rows of the batches that were held out when they came."""
    eligible = data.held_out(settings.holdout_fraction) & data.in_batches(held_out_from_batch)
    return data.newest(eligible, settings.evaluation_window_rows)


def judge_candidates(
    settings: MonitoringSettings,
    champion: DeployedVersion,
    candidates: tuple[Candidate, ...],
    models: dict[str, RiskModel],
    recent: tuple[np.ndarray, np.ndarray],
    champion_test_f1: float,
    champion_window_f1: float,
    window_rows: int,
) -> Gate:
    """The best candidate on the recent rows against the champion, by the gate's rules: the best by F1 must gain
    ``min_gain`` and gain reliably (``judge_gain``); failing that, a better calibrated one passes when its log
    loss is reliably lower (``judge_log_loss``) and its F1 no more than ``min_gain`` lower (``calibration_tries``)."""
    features, labels = recent
    # Ties: the first, so the simplest family and, within it, "all" when configured.
    best = max(candidates, key=lambda candidate: candidate.recent_f1)
    # The best of several challengers on the same rows is favoured by luck: each of them would have had to
    # clear the bar, so the share allowed is split among them (a Bonferroni correction).
    allowed = (1 - settings.gate_confidence) / len(candidates)
    champion_labels = champion.model.predict(features)
    verdict = judge_gain(labels, champion_labels, models[best.name].predict(features), settings.min_gain, 1 - allowed)
    champion_probabilities = champion.model.predict_proba(features)[:, 1]
    losses = {
        candidate.name: judge_log_loss(
            labels, champion_probabilities, models[candidate.name].predict_proba(features)[:, 1], 1 - allowed
        )
        for candidate in candidates
    }
    rule, calibration_share = ("f1" if verdict.passed else None), allowed
    for candidate, share in [] if verdict.passed else calibration_tries(candidates, losses, settings):
        lower_loss = losses[candidate.name].p_no_gain <= share  # its log loss reliably lower, at this share
        kept_f1 = judge_gain(labels, champion_labels, models[candidate.name].predict(features), -settings.min_gain, 0.0)
        if lower_loss and kept_f1.passed:  # no more than the margin lower in F1: the better calibrated one is taken
            best, verdict, rule, calibration_share = candidate, kept_f1, "calibration", share
            break
    loss = losses[best.name]
    others = ", ".join(f"{c.name} {c.recent_f1:.4f}" for c in candidates if c is not best)
    sentence = (
        f"challenger ({best.label}) F1 {best.recent_f1:.4f} against champion "
        f"{verdict.champion_f1:.4f} on {labels.size} held-out recent rows (margin {settings.min_gain:g}; "
        + (
            f"better calibrated: log loss {loss.challenger_loss:.4f} against {loss.champion_loss:.4f}, not lower in "
            f"{loss.p_no_gain:.1%} of resamples, at most {calibration_share:.2%} allowed"
            if rule == "calibration"
            else f"no gain in {verdict.p_no_gain:.1%} of resamples, at most {allowed:.2%} allowed for the best of "
            f"{len(candidates)}; log loss {loss.challenger_loss:.4f} against {loss.champion_loss:.4f}"
        )
        + ")"
        + (f"; other challengers: {others}" if others else "")
        + f"; on the recent window ({window_rows} rows) {best.window_f1:.4f} against {champion_window_f1:.4f}"
        + f"; on the test data {best.test_f1:.4f} against {champion_test_f1:.4f}"
    )
    return Gate(
        verdict.champion_f1,
        champion_test_f1,
        champion_window_f1,
        best,
        best.recent_f1 - verdict.champion_f1,
        verdict.p_no_gain,
        rule is not None,
        sentence,
        settings.min_gain,
        rule=rule,
        champion_loss=loss.champion_loss,
        challenger_loss=loss.challenger_loss,
    )


def calibration_tries(
    candidates: tuple[Candidate, ...], losses: dict[str, LossVerdict], settings: MonitoringSettings
) -> list[tuple[Candidate, float]]:
    """The candidates the gate's calibration rule tries, in turn, each with the share of resamples it may show no
    gain in: the best calibrated of all (lowest log loss), its share split among the candidates; and the serving
    model recalibrated, when a failed calibration test called for it, named before the rows were seen and so
    judged alone. With both, each has half of ``1 - gate_confidence``, so the rule's chance of a false pass stays
    within it."""
    total = 1 - settings.gate_confidence
    calibrated = min(candidates, key=lambda candidate: losses[candidate.name].challenger_loss)
    recalibrated = next((candidate for candidate in candidates if candidate.window.name == RECALIBRATED), None)
    if recalibrated is None:
        return [(calibrated, total / len(candidates))]
    tries = [(calibrated, total / 2 / len(candidates))]
    return tries if recalibrated is calibrated else [*tries, (recalibrated, total / 2)]


# ---------------------------------------------------------------- evaluation window


def score_window(
    model: Classifier, data: IngestedData, yardsticks: Yardsticks, settings: MonitoringSettings
) -> WindowScore | None:
    """A model's scores on the rolling evaluation window and the test data's drift against it."""
    window = yardsticks.evaluation
    if int(window.sum()) < settings.min_holdout_rows or np.unique(data.labels(window)).size < 2:
        return None
    features, labels = data.features(window), data.labels(window)
    metrics = score_predictions(labels, model.predict_proba(features)[:, 1], model.predict(features))
    batches = data.batch[window]
    drift = feature_drift(features, yardsticks.test.features, settings)
    return WindowScore(int(window.sum()), int(batches.min()), int(batches.max()), metrics, drift)


def assess(inputs: RunInputs, clock: StageClock) -> Assessment:
    """Decide on the rows that arrived after the watermark."""
    settings, data, champion = inputs.config.monitoring, inputs.data, inputs.champion
    new = data.in_batches(inputs.watermark + 1)
    new_rows = int(new.sum())
    if new_rows < settings.min_new_rows:
        log.info("%d new row(s): too few to test for drift; they wait for more", new_rows)
        waiting = Action(
            WAITING,
            f"the new files hold {new_rows} row(s) not ingested before, fewer than the {settings.min_new_rows} a "
            f"drift test needs; ingested, and they wait for the next batch to be tested with it; "
            f"{champion.version} serves",
        )
        return assessed(inputs, new_rows, Findings(), waiting)
    yardsticks = read_yardsticks(inputs, clock)
    findings, verdict = look_for_drift(inputs, clock, new, yardsticks)
    if findings.integrity is not None and findings.integrity.broken:
        return assessed(inputs, new_rows, findings, quarantine(inputs, findings, new_rows))
    if findings.triggers:
        log.warning("retraining: %s", "; ".join(findings.triggers))
        action = retrain_and_gate(inputs, clock, findings, new, yardsticks)
        return assessed(inputs, new_rows, findings, action)
    with clock.stage("evaluation window"):
        window = score_window(champion.model, data, yardsticks, settings)
    untriggered = describe_no_trigger(settings, verdict, findings.drifted_features, findings.calibration_test)
    kept = Action(
        KEPT,
        f"no drift that triggers retraining{untriggered}; kept {champion.version} "
        f"(F1 {verdict.new_f1:.4f} on {new_rows} new rows, threshold {verdict.threshold:.4f})",
        window=window,
    )
    return assessed(inputs, new_rows, findings, kept)


def assessed(
    inputs: RunInputs, new_rows: int, findings: Findings, action: Action, unlabelled: bool = False
) -> Assessment:
    """The assessment of the rows past the watermark, made once from what was found and what is done about it."""
    return Assessment(
        inputs.watermark + 1,
        inputs.data.latest_batch,
        new_rows,
        findings,
        action,
        inputs.config.monitoring.max_calibration_error,
        unlabelled,
    )


def look_for_drift(
    inputs: RunInputs, clock: StageClock, new: np.ndarray, yardsticks: Yardsticks
) -> tuple[Findings, ModelDrift]:
    """The label-free estimate, the model-drift and data-drift tests on the new rows, and what they trigger;
    with the model-drift verdict, which rows with outcomes always have."""
    settings, data, champion = inputs.config.monitoring, inputs.data, inputs.champion
    features, labels = data.features(new), data.labels(new)
    with clock.stage("performance estimate"):
        fit = fit_serving_calibration(champion.model, yardsticks.test)
        estimate, calibration, calibration_test = estimate_before_labels(
            champion.model, features, labels, fit, settings
        )
    with clock.stage("model drift"):
        verdict = judge_model_drift(settings, inputs.connection, champion, features, labels)
    with clock.stage("data drift"):
        reference = data_reference(inputs.connection, data, champion, inputs.watermark, yardsticks.kept_out)
        batch = fit_drift_reference(features)  # the new rows sorted once, for the drift and integrity tests
        drift_rows = judge_data_drift(settings, data, reference.rows, batch, inputs.config.output_model_path)
    with clock.stage("data integrity"):
        integrity = judge_data_integrity(settings, data, reference.rows, features, batch)
    log.info("data drift reference: %s", reference.describe())
    drifted = [row for row in drift_rows if row.drifted]
    findings = Findings(
        estimate=estimate,
        calibration=calibration,
        model_drift=verdict,
        feature_drift=tuple(drift_rows),
        data_reference=reference,
        triggers=tuple(retraining_triggers(settings, verdict, drifted, calibration_test, integrity)),
        calibration_test=calibration_test,
        integrity=integrity,
    )
    log.info(
        "F1 estimated from the probabilities alone %.4f (%.4f-%.4f), measured %.4f; calibration error %.4f%s",
        estimate.f1,
        estimate.f1_low,
        estimate.f1_high,
        verdict.new_f1,
        calibration,
        ""
        if calibration <= settings.max_calibration_error
        else f", above {settings.max_calibration_error:g}: the estimate is unreliable",
    )
    return findings, verdict


def expected_shares(probabilities: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The confusion shares (TP, FP, FN, TN) expected when each row exits with its predicted probability."""
    flagged = np.asarray(predicted).astype(bool)
    tp, fn = probabilities[flagged].sum(), probabilities[~flagged].sum()
    cells = np.array([tp, flagged.sum() - tp, fn], dtype=float)
    return np.append(cells, probabilities.size - cells.sum()) / max(probabilities.size, 1)


def assess_unlabelled(inputs: RunInputs, clock: StageClock, features: np.ndarray) -> Assessment:
    """Decide on new rows without outcomes: the label-free estimate of F1 and data drift, never model drift.

    Only data drift (when ``monitoring.retrain_on`` allows it) calls for retraining, on the labelled
    rows, judged on the rolling evaluation window; an estimated F1 below the model-drift threshold
    is a warning until the outcomes arrive.
    """
    settings, data, champion = inputs.config.monitoring, inputs.data, inputs.champion
    rows = features.shape[0]
    yardsticks = read_yardsticks(inputs, clock)
    with clock.stage("performance estimate"):
        estimate, low_estimate = estimate_unlabelled_performance(inputs, features, yardsticks.test)
    if rows < settings.min_new_rows:
        log.info("%d unlabelled row(s): too few to test for data drift", rows)
        kept = Action(
            KEPT,
            f"{rows} unlabelled row(s) ranked, too few (under {settings.min_new_rows}) for a data-drift test; "
            f"estimated F1 {estimate.f1:.4f}{low_estimate}; kept {champion.version}",
        )
        return assessed(inputs, rows, Findings(estimate), kept, unlabelled=True)
    with clock.stage("data drift"):
        reference = data_reference(inputs.connection, data, champion, inputs.watermark, yardsticks.kept_out)
        batch = fit_drift_reference(features)
        drift_rows = tuple(judge_data_drift(settings, data, reference.rows, batch, inputs.config.output_model_path))
    with clock.stage("data integrity"):
        integrity = judge_data_integrity(settings, data, reference.rows, features, batch)
    log.info("data drift reference: %s", reference.describe())
    drifted = [row for row in drift_rows if row.drifted]
    triggers = tuple(retraining_triggers(settings, None, drifted, None, integrity))
    findings = Findings(
        estimate, feature_drift=drift_rows, data_reference=reference, triggers=triggers, integrity=integrity
    )
    if integrity is not None and integrity.broken:
        return assessed(inputs, rows, findings, quarantine(inputs, findings, rows, unlabelled=True), unlabelled=True)
    action = act_on_unlabelled_drift(inputs, clock, findings, rows, low_estimate, yardsticks)
    return assessed(inputs, rows, findings, action, unlabelled=True)


def act_on_unlabelled_drift(
    inputs: RunInputs, clock: StageClock, findings: Findings, rows: int, low_estimate: str, yardsticks: Yardsticks
) -> Action:
    """Retrain on the labelled rows when data drift calls for it and the recent window can judge a challenger;
    otherwise keep the serving model."""
    settings, data, champion = inputs.config.monitoring, inputs.data, inputs.champion
    estimate = findings.estimate
    assert estimate is not None  # every unlabelled batch is estimated
    evaluation = yardsticks.evaluation
    judged = int(evaluation.sum()) >= settings.min_holdout_rows and np.unique(data.labels(evaluation)).size == 2
    if findings.triggers and not judged:
        return Action(KEPT, describe_unjudged_retraining(inputs, findings, rows, int(evaluation.sum()), low_estimate))
    if findings.triggers:
        log.warning("retraining on the labelled rows: %s", "; ".join(findings.triggers))
        action = retrain_and_gate(inputs, clock, findings, evaluation, yardsticks)
        return replace(action, decision=f"{rows} unlabelled row(s) ranked; {action.decision}{low_estimate}")
    with clock.stage("evaluation window"):
        window = score_window(champion.model, data, yardsticks, settings)
    untriggered = describe_no_trigger(settings, None, findings.drifted_features)
    return Action(
        KEPT,
        f"{rows} unlabelled row(s) ranked; no drift that triggers retraining{untriggered}; "
        f"estimated F1 {estimate.f1:.4f} ({estimate.f1_low:.4f}-{estimate.f1_high:.4f}){low_estimate}; "
        f"kept {champion.version}",
        window=window,
    )


def describe_unjudged_retraining(
    inputs: RunInputs, findings: Findings, rows: int, window_rows: int, low_estimate: str
) -> str:
    """The decision when data drift calls for retraining but the window holds too few labelled rows to judge on."""
    version, min_rows, estimate = inputs.champion.version, inputs.config.monitoring.min_holdout_rows, findings.estimate
    assert estimate is not None
    log.warning(
        "data drift calls for retraining, but the recent window holds %d held-out labelled row(s), too few to "
        "judge a challenger on; %s keeps serving until outcomes arrive",
        window_rows,
        version,
    )
    return (
        f"{rows} unlabelled row(s) ranked; {'; '.join(findings.triggers)}, but the recent window "
        f"holds {window_rows} held-out labelled row(s) (at least {min_rows} with both classes are needed to judge a "
        f"challenger); estimated F1 {estimate.f1:.4f}{low_estimate}; kept {version}"
    )


def estimate_unlabelled_performance(
    inputs: RunInputs, features: np.ndarray, test: EvaluationData
) -> tuple[PerformanceEstimate, str]:
    """The serving model's F1 estimated from its probabilities alone, and a warning (or "") when that estimate
    falls below the model-drift threshold."""
    champion, rows = inputs.champion, features.shape[0]
    probabilities = champion.model.predict_proba(features)[:, 1]
    predicted = champion.model.predict(features)
    estimate = estimate_performance(probabilities, predicted, fit_serving_calibration(champion.model, test))
    yardstick = check_model_drift(
        estimate.f1,
        expected_shares(probabilities, predicted),
        rows,
        reference_scores(inputs.connection, champion),
        inputs.config.monitoring,
    )
    log.info(
        "%d unlabelled row(s): F1 estimated from the probabilities alone %.4f (%.4f-%.4f); no outcomes, so no "
        "model-drift test",
        rows,
        estimate.f1,
        estimate.f1_low,
        estimate.f1_high,
    )
    if not yardstick.drifted:
        return estimate, ""
    low_estimate = (
        f"; the estimated F1 {estimate.f1:.4f} is below the model-drift threshold {yardstick.threshold:.4f}: "
        "check the model once these clients' outcomes arrive"
    )
    log.warning("%s", low_estimate.removeprefix("; ").capitalize())
    return estimate, low_estimate


def read_yardsticks(inputs: RunInputs, clock: StageClock) -> Yardsticks:
    """The test data and the rolling evaluation window of the serving model's lineage."""
    window = inputs.champion.model_info.training_window
    held_out_from = window.held_out_from_batch if window else inputs.watermark + 1
    with clock.stage("test data"):
        test = read_test_data(inputs.config.test_data_path)
    kept_out = kept_out_rows(inputs.connection, inputs.data)
    evaluation = evaluation_mask(inputs.data, inputs.config.monitoring, held_out_from) & ~kept_out
    return Yardsticks(test, evaluation, held_out_from, kept_out)


def retrain_and_gate(
    inputs: RunInputs, clock: StageClock, findings: Findings, new: np.ndarray, yardsticks: Yardsticks
) -> Action:
    """Train the challengers (the serving model recalibrated among them when the calibration test failed), judge
    them at the gate on the held-out rows of ``new`` and of the earlier batches of the same change
    (``gate_rows``), and say what to do."""
    config, data, champion = inputs.config, inputs.data, inputs.champion
    settings, version = config.monitoring, champion.version
    recent = gate_rows(inputs, new, yardsticks)
    holdout_rows = int(recent.sum())
    if holdout_rows < settings.min_holdout_rows or np.unique(data.labels(recent)).size < 2:
        return Action(
            WAITING,
            f"drift found, but only {holdout_rows} recent rows could be held out (at least "
            f"{settings.min_holdout_rows} with both classes are needed to compare models); the rows wait for the "
            f"next batch; {version} serves",
            holdout_rows,
        )
    with clock.stage("training"):
        calibration = findings.calibration_test
        recalibrate = calibration is not None and calibration.miscalibrated and settings.recalibrate
        trained = train_candidates(inputs, findings.triggers, yardsticks, recalibrate, judged_on=recent)
    if not trained:
        return Action(
            KEPT, f"drift found, but no training window holds enough rows to train on; kept {version}", holdout_rows
        )
    with clock.stage("scoring"):
        candidates, gate = judge_trained(inputs, trained, recent, yardsticks)
    log.info("gate: %s", gate.sentence)
    log_candidates(candidates)
    with clock.stage("evaluation window"):
        best = next(one.model for one in trained if one.folder == gate.best.folder)
        window = score_window(best if gate.passed else champion.model, data, yardsticks, settings)
    if gate.passed:
        return Action(DEPLOYED, describe_deployment(gate, version), holdout_rows, candidates, gate, window, version)
    log.warning(
        "the challenger is not better by the margin; %s keeps serving (the challengers stay in %s)",
        version,
        config.output_model_path / CHALLENGER_FOLDER,
    )
    return Action(
        KEPT, f"challenger not deployed: {gate.sentence}; kept {version}", holdout_rows, candidates, gate, window
    )


def gate_rows(inputs: RunInputs, new: np.ndarray, yardsticks: Yardsticks) -> np.ndarray:
    """The rows the gate judges the challengers on: the held-out rows of ``new``, and, while a change is being
    followed (drift called for retraining in earlier runs and no challenger was deployed or found no better since),
    the held-out rows of its earlier batches still in the rolling evaluation window. So evidence gathers over
    the batches of a change until a small real gain is confirmed or shown not to be there; the challengers
    never train on any of these rows (``train_candidates``), nor on rows kept out after an integrity alarm."""
    data, settings = inputs.data, inputs.config.monitoring
    held_out = data.held_out(settings.holdout_fraction)
    judged: np.ndarray = new & held_out
    started = change_started_batch(inputs.connection)
    if started is not None and started <= inputs.watermark:
        judged = judged | (held_out & data.in_batches(started) & yardsticks.evaluation)
    judged &= ~yardsticks.kept_out
    return judged


def judge_trained(
    inputs: RunInputs,
    trained: list[TrainedChallenger],
    recent: np.ndarray,
    yardsticks: Yardsticks,
) -> tuple[tuple[Candidate, ...], Gate]:
    """The challengers scored on the held-out recent rows, the window and the test data; the gate's verdict."""
    data, champion = inputs.data, inputs.champion
    recent_rows = (data.features(recent), data.labels(recent))
    evaluation = yardsticks.evaluation
    window_rows = (data.features(evaluation), data.labels(evaluation))
    candidates = tuple(
        Candidate(
            one.window,
            one.family,
            one.folder,
            f1_on(one.model, *recent_rows),
            one.test_f1,
            f1_on(one.model, *window_rows),
        )
        for one in trained
    )
    models = {candidate.name: one.model for candidate, one in zip(candidates, trained, strict=True)}
    champion_scores = (
        f1_on(champion.model, yardsticks.test.features, yardsticks.test.labels),
        f1_on(champion.model, *window_rows),
        int(evaluation.sum()),
    )
    gate = judge_candidates(inputs.config.monitoring, champion, candidates, models, recent_rows, *champion_scores)
    return candidates, gate


def log_candidates(candidates: tuple[Candidate, ...]) -> None:
    for candidate in candidates:
        log.info(
            "candidate %s: %s; F1 %.4f on the held-out recent rows, %.4f on the recent window, %.4f on the test data",
            candidate.name,
            candidate.window.describe(),
            candidate.recent_f1,
            candidate.window_f1,
            candidate.test_f1,
        )
