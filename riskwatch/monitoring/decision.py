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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from riskwatch.core.config import Config, MonitoringSettings
from riskwatch.data.batches import IngestedData, TrainingWindow
from riskwatch.model.evaluation import EvaluationData, read_test_data, score_loaded_model, score_predictions
from riskwatch.model.riskmodels import (
    ADDITIVE,
    LINEAR,
    RiskModel,
    equal_count_calibration_error,
    fit_risk_model,
)
from riskwatch.state.artifacts import MODEL_FILE, Classifier, DeployedVersion, utc_now
from riskwatch.state.history import (
    DEPLOYED,
    KEPT,
    WAITING,
    HistoryStore,
    ReferenceScore,
    change_started_batch,
    gate_score,
    later_scores,
    latest_confirmation,
)
from riskwatch.state.records import CalibrationCheck, EvaluationWindow, Metrics
from riskwatch.state.runs import CandidateScore, FeatureDrift, RunFields
from riskwatch.state.stages import StageClock
from riskwatch.stats.comparison import PAIRED_RESAMPLES, paired_gain_resamples
from riskwatch.stats.drift import (
    ModelDrift,
    PerformanceEstimate,
    calibration_error,
    check_model_drift,
    confusion_shares,
    describe_feature_drift,
    estimate_performance,
    f1_from_counts,
    feature_drift,
)

log = logging.getLogger("fullprocess")

CHALLENGER_FOLDER = "challenger"
MAX_REFERENCE_ROWS = 200_000  # data drift compares with a random sample of at most this many reference rows


@dataclass(frozen=True)
class Candidate:
    """One challenger: the window it was trained on, its model family, and how it scored."""

    window: TrainingWindow
    family: str
    folder: Path
    recent_f1: float  # on the held-out recent rows of the new batch
    test_f1: float  # on the test data
    window_f1: float  # on the rolling evaluation window (those rows and the held-out rows of earlier batches)

    def record(self) -> CandidateScore:
        """The challenger as the run history keeps it."""
        return CandidateScore(
            window=self.window.name,
            describe=self.window.describe(),
            rows=self.window.rows,
            first_batch=self.window.first_batch,
            last_batch=self.window.last_batch,
            recent_f1=round(self.recent_f1, 6),
            test_f1=round(self.test_f1, 6),
            window_f1=round(self.window_f1, 6),
            family=self.family,
        )

    @property
    def name(self) -> str:
        """The window and the family, as the gate names them: ``recent/boosted``."""
        return f"{self.window.name}/{self.family}"


@dataclass(frozen=True)
class WindowScore:
    """A model's scores on the rolling evaluation window, and whether the test data still looks like it."""

    rows: int
    first_batch: int
    last_batch: int
    metrics: Metrics
    test_data_drift: list[FeatureDrift]

    @property
    def test_data_drifted(self) -> bool:
        return any(row.drifted for row in self.test_data_drift)

    def to_record(self, version: str) -> EvaluationWindow:
        """The ``evaluationwindow.json`` record of these scores, for the serving ``version``."""
        drifted = [describe_feature_drift(row) for row in self.test_data_drift if row.drifted]
        note = (
            "the test data no longer looks like the recent rows (" + "; ".join(drifted) + ")"
            if drifted
            else "the test data still looks like the recent rows"
        )
        return EvaluationWindow(
            model_version=version,
            updated_at=utc_now(),
            rows=self.rows,
            batches=[self.first_batch, self.last_batch],
            f1=self.metrics.f1,
            precision=self.metrics.precision,
            recall=self.metrics.recall,
            roc_auc=self.metrics.roc_auc,
            accuracy=self.metrics.accuracy,
            confusion=self.metrics.confusion,
            test_data_drift=self.test_data_drifted,
            test_data_note=note,
            test_data_features=list(self.test_data_drift),
        )


@dataclass(frozen=True)
class Gate:
    """The best challenger against the serving model on the held-out recent rows."""

    champion_recent_f1: float
    champion_test_f1: float
    champion_window_f1: float
    best: Candidate
    gain: float
    p_no_gain: float  # share of paired resamples of the recent rows in which the challenger does not gain
    passed: bool
    sentence: str
    margin: float

    @property
    def confirms_champion(self) -> bool:
        """Not passed because no challenger was better by the margin (not for want of rows to tell)."""
        return not self.passed and self.gain < self.margin


@dataclass(frozen=True)
class Findings:
    """What the tests found on the new rows, before anything is decided: the label-free estimate, the model-drift
    verdict (rows with outcomes only), the data-drift verdicts with their reference, and the retraining they call
    for."""

    estimate: PerformanceEstimate | None = None  # from the probabilities alone, before the labels are used
    calibration: float | None = None  # expected calibration error on the new labelled rows
    model_drift: ModelDrift | None = None
    feature_drift: tuple[FeatureDrift, ...] = ()
    data_reference: DataReference | None = None
    triggers: tuple[str, ...] = ()

    @property
    def drifted_features(self) -> list[FeatureDrift]:
        return [row for row in self.feature_drift if row.drifted]


@dataclass(frozen=True)
class Action:
    """What is done about the findings: the outcome and its sentence; with challengers, their scores and the gate;
    the serving model's scores on the evaluation window once decided."""

    outcome: str  # WAITING, KEPT, or DEPLOYED (deploy ``gate.best``)
    decision: str
    holdout_rows: int = 0
    candidates: tuple[Candidate, ...] = ()
    gate: Gate | None = None
    window: WindowScore | None = None  # the serving model's, after the decision
    replaced_version: str | None = None  # the version a deployed challenger replaces


@dataclass(frozen=True)
class Assessment:
    """What the new rows showed and what to do about them: made once, by ``assessed``, from the steps' values."""

    first_batch: int
    last_batch: int
    new_rows: int
    findings: Findings
    action: Action
    max_calibration_error: float = 0.05
    unlabelled: bool = False  # the new rows carry no outcome: no model-drift test, batches untouched

    @property
    def outcome(self) -> str:
        return self.action.outcome

    @property
    def decision(self) -> str:
        return self.action.decision

    @property
    def reliable(self) -> bool:
        calibration = self.findings.calibration
        return calibration is None or calibration <= self.max_calibration_error

    @property
    def deploy_folder(self) -> Path | None:
        gate = self.action.gate
        return gate.best.folder if self.outcome == DEPLOYED and gate else None

    def history_fields(self) -> RunFields:
        """The run-history columns this assessment fills; the outcome of a deployment is fullprocess.py's to set."""
        findings, action = self.findings, self.action
        fields = RunFields(
            outcome=None if self.outcome == DEPLOYED else self.outcome,
            decision=self.decision,
            new_rows=self.new_rows,
            first_batch=None if self.unlabelled else self.first_batch,
            last_batch=None if self.unlabelled else self.last_batch,
            drift_trigger="; ".join(findings.triggers) or None,
            candidates=tuple(candidate.record() for candidate in action.candidates) or None,
            holdout_rows=action.holdout_rows if action.candidates else None,
        )
        parts = (
            model_drift_fields(findings.model_drift),
            self.data_drift_fields(),
            self.estimate_fields(),
            gate_fields(action.gate),
            window_fields(action.window),
        )
        for part in parts:
            fields = fields.updated(part)
        return fields

    def data_drift_fields(self) -> RunFields:
        reference = self.findings.data_reference
        if reference is None:
            return RunFields()
        return RunFields(
            data_drift=bool(self.findings.drifted_features),
            data_drift_reference=reference.describe(),
            data_reference_first_batch=reference.first_batch,
            data_reference_last_batch=reference.last_batch,
        )

    def estimate_fields(self) -> RunFields:
        """The F1 estimated before the labels were used, and how well calibrated the probabilities were."""
        estimate, calibration = self.findings.estimate, self.findings.calibration
        return RunFields(
            estimated_f1=None if estimate is None else round(estimate.f1, 6),
            estimated_f1_low=None if estimate is None else round(estimate.f1_low, 6),
            estimated_f1_high=None if estimate is None else round(estimate.f1_high, 6),
            calibration_error=None if calibration is None else round(calibration, 6),
            estimate_reliable=None if calibration is None else self.reliable,
        )


def model_drift_fields(verdict: ModelDrift | None) -> RunFields:
    """The run-history columns of the model-drift test; none for rows without outcomes."""
    if verdict is None:
        return RunFields()
    return RunFields(
        model_drift_test=verdict.test,
        new_data_f1=verdict.new_f1,
        drift_threshold=round(verdict.threshold, 6),
        drift_reference=verdict.reference,
        reference_f1=round(verdict.reference_f1, 6),
        reference_rows=verdict.reference_rows,
        drift_spread=round(verdict.spread, 6),
        model_drift=verdict.drifted,
    )


def gate_fields(gate: Gate | None) -> RunFields:
    """The run-history columns of the gate: the best challenger against the serving model."""
    if gate is None:
        return RunFields()
    return RunFields(
        winning_window=gate.best.window.name,
        winning_family=gate.best.family,
        champion_recent_f1=gate.champion_recent_f1,
        challenger_recent_f1=gate.best.recent_f1,
        champion_test_f1=gate.champion_test_f1,
        challenger_test_f1=gate.best.test_f1,
        confirmed=gate.confirms_champion,
    )


def window_fields(window: WindowScore | None) -> RunFields:
    """The run-history columns of the rolling evaluation window after the decision."""
    if window is None:
        return RunFields()
    return RunFields(window_rows=window.rows, window_f1=window.metrics.f1, test_data_drift=window.test_data_drifted)


# ---------------------------------------------------------------- model drift


def f1_on(model: Classifier, features: np.ndarray, labels: np.ndarray) -> float:
    """The F1 of a model's labels on these rows."""
    shares = confusion_shares(labels, model.predict(features))
    return float(f1_from_counts(shares[0], shares[1], shares[2]))


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
    model: Classifier, features: np.ndarray, labels: np.ndarray
) -> tuple[PerformanceEstimate, float]:
    """The F1 the probabilities alone promise on these rows, and how well calibrated they are on the labels."""
    probabilities = model.predict_proba(features)[:, 1]
    return estimate_performance(probabilities, model.predict(features)), calibration_error(labels, probabilities)


# ---------------------------------------------------------------- data drift


@dataclass(frozen=True)
class DataReference:
    """The rows new ones are compared with: their row numbers, the batches they span, and why these rows.

    ``run_id``: the run whose rows they are, once drift called for retraining and no challenger beat the
    serving model; else ``window``, the serving model's training window (``weighted``: sampled by its weights);
    else neither, the rows ingested before.
    """

    rows: np.ndarray
    first_batch: int | None
    last_batch: int | None
    run_id: int | None = None
    window: TrainingWindow | None = None
    weighted: bool = False

    def describe(self) -> str:
        if self.run_id is not None:
            return f"the {self.rows.size} rows of run {self.run_id}, where no challenger beat the serving model"
        if self.window is not None:
            sampled = ", sampled by its weights" if self.weighted else ""
            return f"the serving model's training window: {self.window.describe()}{sampled}"
        return f"the {self.rows.size} rows ingested before"


def describe_deployment(gate: Gate, replaced: str, deployed_as: str | None = None) -> str:
    """The decision of a run that deploys the gate's best challenger (``deployed_as``: its version, once known)."""
    named = f" as {deployed_as}" if deployed_as else ""
    return f"challenger deployed{named}, replacing {replaced}: {gate.sentence}"


def data_reference(
    connection: HistoryStore, data: IngestedData, champion: DeployedVersion, watermark: int
) -> DataReference:
    """The rows new ones are compared with.

    The rows the serving model was trained on (a weighted sample for a weighted window); or, once
    drift called for retraining and no challenger beat it, the rows of that run, which it is
    known to serve as well as any model could.
    """
    run_id, _ = gate_score(connection, champion.version)
    confirmed = latest_confirmation(connection, champion.version, run_id)
    if confirmed is not None:
        rows = np.flatnonzero(data.in_batches(confirmed.first_batch, confirmed.last_batch))
        return DataReference(rows, confirmed.first_batch, confirmed.last_batch, run_id=confirmed.run_id)
    window = champion.model_info.training_window
    if window is None:
        mask = data.batch <= watermark
        return DataReference(np.flatnonzero(mask), 1 if watermark >= 1 else None, watermark if watermark >= 1 else None)
    rows = np.flatnonzero(data.in_batches(window.first_batch, window.last_batch))
    weighted = window.name == "weighted" and rows.size > 0
    if weighted:
        weights = recency_weights(data, window.half_life or 1.0, window.half_life_unit or "batches", window.last_batch)
        weights = weights[rows] / weights[rows].sum()
        rows = np.sort(np.random.default_rng(0).choice(rows, size=rows.size, p=weights))
    return DataReference(rows, window.first_batch, window.last_batch, window=window, weighted=weighted)


def judge_data_drift(
    settings: MonitoringSettings, data: IngestedData, reference_rows: np.ndarray, new_features: np.ndarray
) -> list[FeatureDrift]:
    """Each feature of the new rows against the reference rows."""
    if reference_rows.size == 0:
        return []
    if reference_rows.size > MAX_REFERENCE_ROWS:  # the distances are as clear on a sample, and sorting it is cheaper
        reference_rows = np.sort(np.random.default_rng(0).choice(reference_rows, MAX_REFERENCE_ROWS, replace=False))
    rows = feature_drift(data.features()[reference_rows], new_features, settings)
    for row in rows:
        (log.warning if row.drifted else log.info)(
            "data drift %s: %s", "detected" if row.drifted else "not detected", describe_feature_drift(row)
        )
    return rows


def retraining_triggers(retrain_on: str, model_drift: ModelDrift | None, drifted: list[FeatureDrift]) -> list[str]:
    """What calls for retraining under ``monitoring.retrain_on``, each with the statistic behind it.

    ``model_drift``: None for rows without outcomes, where only data drift can call for retraining.
    """
    triggers = []
    if model_drift is not None and model_drift.drifted and retrain_on in ("model_drift", "either"):
        triggers.append(f"model drift ({model_drift.describe()})")
    if drifted and retrain_on in ("data_drift", "either"):
        triggers.append("data drift (" + "; ".join(describe_feature_drift(row) for row in drifted) + ")")
    return triggers


def describe_no_trigger(retrain_on: str, model_drift: ModelDrift | None, drifted: list[FeatureDrift]) -> str:
    """Why a run with drift found did not retrain, or "" when there was none."""
    found = []
    if model_drift is not None and model_drift.drifted:
        found.append("model drift")
    if drifted:
        found.append("data drift in " + ", ".join(row.feature for row in drifted))
    return f" ({' and '.join(found)} found, but retrain_on is {retrain_on})" if found else ""


# ---------------------------------------------------------------- windows


def recency_weights(data: IngestedData, half_life: float, unit: str, latest: int | None = None) -> np.ndarray:
    if unit == "days":
        return data.day_weights(half_life)
    return data.batch_weights(half_life, latest)


def evaluation_mask(data: IngestedData, settings: MonitoringSettings, held_out_from_batch: int) -> np.ndarray:
    """The rolling evaluation window: the newest held-out rows of the batches that were held out when they came."""
    eligible = data.held_out(settings.holdout_fraction) & data.in_batches(held_out_from_batch)
    return data.newest(eligible, settings.evaluation_window_rows)


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
            if settings.recent_window_rows:
                mask = data.newest(trainable, settings.recent_window_rows)
            else:  # since the change was first seen, in this run or an earlier one whose challenger lost
                earlier = change_started_batch(connection)
                mask = trainable & data.in_batches(min(first_new, earlier or first_new))
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


# ---------------------------------------------------------------- the gate


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
    """The best candidate on the recent rows against the champion: it must gain ``min_gain`` and gain reliably."""
    features, labels = recent
    # Ties: the first, so the simplest family and, within it, "all" when configured.
    best = max(candidates, key=lambda candidate: candidate.recent_f1)
    champion_recent = f1_on(champion.model, features, labels)
    gain = best.recent_f1 - champion_recent
    resampled = paired_gain_resamples(
        labels, champion.model.predict(features), models[best.name].predict(features), PAIRED_RESAMPLES
    )
    p_no_gain = float(np.mean(resampled <= 0))
    # The best of several challengers on the same rows is favoured by luck: each of them would have had to
    # clear the bar, so the share allowed is split among them (a Bonferroni correction).
    allowed = (1 - settings.gate_confidence) / len(candidates)
    # A tolerance, so that a gain of exactly the margin counts despite rounding.
    passed = gain >= settings.min_gain - 1e-9 and p_no_gain <= allowed
    others = ", ".join(f"{c.name} {c.recent_f1:.4f}" for c in candidates if c is not best)
    sentence = (
        f"challenger ({best.window.name} window, {best.family}) F1 {best.recent_f1:.4f} against champion "
        f"{champion_recent:.4f} on {labels.size} held-out recent rows (margin {settings.min_gain:g}; no gain in "
        f"{p_no_gain:.1%} of resamples, at most {allowed:.2%} allowed for the best of {len(candidates)})"
        + (f"; other challengers: {others}" if others else "")
        + f"; on the recent window ({window_rows} rows) {best.window_f1:.4f} against {champion_window_f1:.4f}"
        + f"; on the test data {best.test_f1:.4f} against {champion_test_f1:.4f}"
    )
    return Gate(
        champion_recent,
        champion_test_f1,
        champion_window_f1,
        best,
        gain,
        p_no_gain,
        passed,
        sentence,
        settings.min_gain,
    )


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


@dataclass(frozen=True)
class RunInputs:
    """What a decision needs: settings, the history, the serving model, the ingested rows and what is new."""

    config: Config
    connection: HistoryStore
    champion: DeployedVersion
    data: IngestedData
    watermark: int  # batches up to this one were decided on; later ones are new


@dataclass(frozen=True)
class Yardsticks:
    """What every model is measured on besides the new rows: the test data and the rolling evaluation window."""

    test: EvaluationData
    evaluation: np.ndarray  # mask of the ingested rows in the rolling evaluation window
    held_out_from: int  # the first batch whose held-out rows may be in it


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
    findings, verdict = look_for_drift(inputs, clock, new)
    yardsticks = read_yardsticks(inputs, clock)
    if findings.triggers:
        log.warning("retraining: %s", "; ".join(findings.triggers))
        return assessed(inputs, new_rows, findings, retrain_and_gate(inputs, clock, findings.triggers, new, yardsticks))
    with clock.stage("evaluation window"):
        window = score_window(champion.model, data, yardsticks, settings)
    untriggered = describe_no_trigger(settings.retrain_on, verdict, findings.drifted_features)
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


def look_for_drift(inputs: RunInputs, clock: StageClock, new: np.ndarray) -> tuple[Findings, ModelDrift]:
    """The label-free estimate, the model-drift and data-drift tests on the new rows, and what they trigger;
    with the model-drift verdict, which rows with outcomes always have."""
    settings, data, champion = inputs.config.monitoring, inputs.data, inputs.champion
    features, labels = data.features(new), data.labels(new)
    with clock.stage("performance estimate"):
        estimate, calibration = estimate_before_labels(champion.model, features, labels)
    with clock.stage("model drift"):
        verdict = judge_model_drift(settings, inputs.connection, champion, features, labels)
    with clock.stage("data drift"):
        reference = data_reference(inputs.connection, data, champion, inputs.watermark)
        drift_rows = judge_data_drift(settings, data, reference.rows, features)
    log.info("data drift reference: %s", reference.describe())
    drifted = [row for row in drift_rows if row.drifted]
    findings = Findings(
        estimate=estimate,
        calibration=calibration,
        model_drift=verdict,
        feature_drift=tuple(drift_rows),
        data_reference=reference,
        triggers=tuple(retraining_triggers(settings.retrain_on, verdict, drifted)),
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
    with clock.stage("performance estimate"):
        estimate, low_estimate = estimate_unlabelled_performance(inputs, features)
    if rows < settings.min_new_rows:
        log.info("%d unlabelled row(s): too few to test for data drift", rows)
        kept = Action(
            KEPT,
            f"{rows} unlabelled row(s) ranked, too few (under {settings.min_new_rows}) for a data-drift test; "
            f"estimated F1 {estimate.f1:.4f}{low_estimate}; kept {champion.version}",
        )
        return assessed(inputs, rows, Findings(estimate), kept, unlabelled=True)
    with clock.stage("data drift"):
        reference = data_reference(inputs.connection, data, champion, inputs.watermark)
        drift_rows = tuple(judge_data_drift(settings, data, reference.rows, features))
    log.info("data drift reference: %s", reference.describe())
    drifted = [row for row in drift_rows if row.drifted]
    triggers = tuple(retraining_triggers(settings.retrain_on, None, drifted))
    findings = Findings(estimate, feature_drift=drift_rows, data_reference=reference, triggers=triggers)
    action = act_on_unlabelled_drift(inputs, clock, findings, rows, low_estimate)
    return assessed(inputs, rows, findings, action, unlabelled=True)


def act_on_unlabelled_drift(
    inputs: RunInputs, clock: StageClock, findings: Findings, rows: int, low_estimate: str
) -> Action:
    """Retrain on the labelled rows when data drift calls for it and the recent window can judge a challenger;
    otherwise keep the serving model."""
    settings, data, champion = inputs.config.monitoring, inputs.data, inputs.champion
    estimate = findings.estimate
    assert estimate is not None  # every unlabelled batch is estimated
    yardsticks = read_yardsticks(inputs, clock)
    evaluation = yardsticks.evaluation
    judged = int(evaluation.sum()) >= settings.min_holdout_rows and np.unique(data.labels(evaluation)).size == 2
    if findings.triggers and not judged:
        return Action(KEPT, describe_unjudged_retraining(inputs, findings, rows, int(evaluation.sum()), low_estimate))
    if findings.triggers:
        log.warning("retraining on the labelled rows: %s", "; ".join(findings.triggers))
        action = retrain_and_gate(inputs, clock, findings.triggers, evaluation, yardsticks)
        return replace(action, decision=f"{rows} unlabelled row(s) ranked; {action.decision}{low_estimate}")
    with clock.stage("evaluation window"):
        window = score_window(champion.model, data, yardsticks, settings)
    untriggered = describe_no_trigger(settings.retrain_on, None, findings.drifted_features)
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


def estimate_unlabelled_performance(inputs: RunInputs, features: np.ndarray) -> tuple[PerformanceEstimate, str]:
    """The serving model's F1 estimated from its probabilities alone, and a warning (or "") when that estimate
    falls below the model-drift threshold."""
    champion, rows = inputs.champion, features.shape[0]
    probabilities = champion.model.predict_proba(features)[:, 1]
    predicted = champion.model.predict(features)
    estimate = estimate_performance(probabilities, predicted)
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
    evaluation = evaluation_mask(inputs.data, inputs.config.monitoring, held_out_from)
    return Yardsticks(test, evaluation, held_out_from)


def retrain_and_gate(
    inputs: RunInputs, clock: StageClock, triggers: tuple[str, ...], new: np.ndarray, yardsticks: Yardsticks
) -> Action:
    """Train the challengers, judge them at the gate on the held-out rows of ``new``, and say what to do."""
    config, data, champion = inputs.config, inputs.data, inputs.champion
    settings, version = config.monitoring, champion.version
    recent = new & data.held_out(settings.holdout_fraction)
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
        trained = train_candidates(inputs, triggers, yardsticks)
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


@dataclass(frozen=True)
class TrainedChallenger:
    """One challenger as trained: its window and family, its folder, its arithmetic and its F1 on the test data."""

    window: TrainingWindow
    family: str
    folder: Path
    model: RiskModel
    test_f1: float


def train_candidates(inputs: RunInputs, triggers: tuple[str, ...], yardsticks: Yardsticks) -> list[TrainedChallenger]:
    """Train one challenger per window and model family into ``challenger/<window>-<family>/``, on every row
    outside the evaluation window, and score it on the test data; ``triggers``: why, as the models record it."""
    from riskwatch.stages.scoring import write_scores
    from riskwatch.stages.training import FitContext, Retraining, describe_training_data, save_trained

    config, data, test = inputs.config, inputs.data, yardsticks.test
    first_new, trainable, because = inputs.watermark + 1, ~yardsticks.evaluation, "; ".join(triggers)
    described = describe_training_data(config.output_folder_path)
    retraining = Retraining(int((data.in_batches(first_new) & ~trainable).sum()), because)
    windows = candidate_windows(config, inputs.connection, data, first_new, yardsticks.held_out_from, trainable)
    # Simplest family first, so that a tie at the gate goes to the simpler model.
    jobs = [(window, mask, weights, family) for family in config.model.families for window, mask, weights in windows]

    def train(window: TrainingWindow, mask: np.ndarray, weights: np.ndarray | None, family: str) -> TrainedChallenger:
        folder = config.output_model_path / CHALLENGER_FOLDER / f"{window.name}-{family}"
        labels = data.labels(mask)
        started = time.perf_counter()
        model = fit_risk_model(family, data.features(mask), labels, config.model, weights)
        seconds = time.perf_counter() - started
        probabilities = model.score(test.features)[0]
        calibration = CalibrationCheck(
            round(equal_count_calibration_error(test.labels, probabilities), 6), int(test.labels.size), "the test data"
        )
        context = FitContext(seconds, window, retraining, calibration=calibration)
        save_trained(model, labels, described, config.model, folder, context)
        # Scored with the family's own arithmetic, the numbers the API will serve (checked against the saved
        # classifier when it is loaded); the metrics name the saved file and its hash.
        metrics = score_loaded_model(model, folder / MODEL_FILE, test)
        write_scores(metrics, folder)
        return TrainedChallenger(window, family, folder, model, metrics.f1)

    # Two at a time, each numpy operation (and each tree) on one thread: half the time of one after the other
    # on two cores, where letting numpy's own threads compete for them is no faster than one fit at a time. The
    # largest fits start first, so the two threads finish together; the results keep the order of ``jobs``.
    cap = config.model.max_fit_rows
    order = sorted(range(len(jobs)), key=lambda index: -fit_cost(jobs[index][3], int(jobs[index][1].sum()), cap))
    with threadpool_limits(1), ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(order, pool.map(lambda index: train(*jobs[index]), order), strict=True))
    return [done[index] for index in range(len(jobs))]


def fit_cost(family: str, rows: int, max_fit_rows: int) -> float:
    """A rough relative cost of fitting ``family`` on ``rows`` rows, to start the largest fits first (measured:
    the boosted family takes about ten times the linear one's time per row, the additive family four; both fit
    on at most ``max_fit_rows``)."""
    if family == LINEAR:
        return float(rows)
    return min(rows, max_fit_rows) * (4.0 if family == ADDITIVE else 10.0)
