"""The monitoring decision's values: what the tests found (``Findings``), what is done about it (``Action``: the
challengers' ``Candidate`` scores, the ``Gate``, the serving model's ``WindowScore``), the ``DataReference`` new rows
are compared with, and the ``Assessment`` made of them once; with the run-history columns each fills. All frozen:
the steps in ``decision.py`` return them, and nothing changes one afterwards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from riskwatch.core.config import Config
from riskwatch.data.batches import IngestedData, TrainingWindow
from riskwatch.model.evaluation import EvaluationData
from riskwatch.state.artifacts import DeployedVersion, utc_now
from riskwatch.state.history import DEPLOYED, HistoryStore
from riskwatch.state.records import EvaluationWindow, Metrics
from riskwatch.state.runs import CandidateScore, FeatureDrift, RunFields
from riskwatch.stats.calibration import CalibrationVerdict
from riskwatch.stats.drift import ModelDrift, describe_feature_drift
from riskwatch.stats.estimate import PerformanceEstimate
from riskwatch.stats.integrity import IntegrityVerdict


@dataclass(frozen=True)
class RunInputs:
    """What a decision needs: settings, the history, the serving model, the ingested rows and what is new."""

    config: Config
    connection: HistoryStore
    champion: DeployedVersion
    data: IngestedData
    watermark: int  # batches up to this one were decided on; later ones are new
    run_id: int | None = None  # the run deciding, as the history numbers it (for the sentences that name it)


@dataclass(frozen=True)
class Yardsticks:
    """What every model is measured on besides the new rows: the test data and the rolling evaluation window."""

    test: EvaluationData
    evaluation: np.ndarray  # mask of the ingested rows in the rolling evaluation window
    held_out_from: int  # the first batch whose held-out rows may be in it
    kept_out: np.ndarray  # mask of the rows a data integrity alarm keeps out of training (until accepted)


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

    @property
    def label(self) -> str:
        """The challenger in words: ``recent window, boosted``, or ``the serving model recalibrated, linear``."""
        if self.window.name == "recalibrated":
            return f"the serving model recalibrated, {self.family}"
        return f"{self.window.name} window, {self.family}"


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
    rule: str | None = None  # "f1" or "calibration": the rule ``best`` passed (None: it passed neither)
    champion_loss: float | None = None  # log loss on the held-out recent rows
    challenger_loss: float | None = None

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
    calibration_test: CalibrationVerdict | None = None  # expected against observed exits, and the slope
    integrity: IntegrityVerdict | None = None  # the new rows' columns against the reference's joint structure

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
        return (
            RunFields(
                estimated_f1=None if estimate is None else round(estimate.f1, 6),
                estimated_f1_low=None if estimate is None else round(estimate.f1_low, 6),
                estimated_f1_high=None if estimate is None else round(estimate.f1_high, 6),
                calibration_error=None if calibration is None else round(calibration, 6),
                estimate_reliable=None if calibration is None else self.reliable,
            )
            .updated(calibration_fields(self.findings.calibration_test))
            .updated(integrity_fields(self.findings.integrity))
        )


def integrity_fields(verdict: IntegrityVerdict | None) -> RunFields:
    """The run-history columns of the data integrity test; none when it did not run."""
    if verdict is None:
        return RunFields()
    return RunFields(
        reconstruction_error=round(verdict.error, 6),
        reconstruction_reference=round(verdict.reference_error, 6),
        reconstruction_expected=round(verdict.expected_error, 6),
        reconstruction_threshold=round(verdict.integrity_threshold, 6),
        multivariate_drift=verdict.multivariate_drift,
        integrity_alarm=verdict.broken,
    )


def calibration_fields(verdict: CalibrationVerdict | None) -> RunFields:
    """The run-history columns of the calibration test; none for rows without outcomes."""
    if verdict is None:
        return RunFields()
    return RunFields(
        expected_exits=round(verdict.expected_exits, 3),
        expected_exits_low=round(verdict.expected_low, 3),
        expected_exits_high=round(verdict.expected_high, 3),
        observed_exits=verdict.observed_exits,
        calibration_slope=None if verdict.slope is None else round(verdict.slope, 6),
        miscalibrated=verdict.miscalibrated,
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
        champion_recent_log_loss=None if gate.champion_loss is None else round(gate.champion_loss, 6),
        challenger_recent_log_loss=None if gate.challenger_loss is None else round(gate.challenger_loss, 6),
        gate_rule=gate.rule,
    )


def window_fields(window: WindowScore | None) -> RunFields:
    """The run-history columns of the rolling evaluation window after the decision."""
    if window is None:
        return RunFields()
    return RunFields(window_rows=window.rows, window_f1=window.metrics.f1, test_data_drift=window.test_data_drifted)


# ---------------------------------------------------------------- model drift


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
