"""The monitoring decision in-process: rows and their batches, references, windows, the gate, the record."""

from __future__ import annotations

import numpy as np
import pytest

from riskwatch.core.config import MODEL_FAMILIES, Config, load_config
from riskwatch.core.errors import PipelineError
from riskwatch.cycle.fullprocess import read_unlabelled_features
from riskwatch.data.batches import read_batch_book, read_ingested_data
from riskwatch.data.generator import write_batch
from riskwatch.monitoring.decision import assess, assess_unlabelled
from riskwatch.monitoring.verdicts import RunInputs
from riskwatch.stages.ingestion import ingest_folder
from riskwatch.state.artifacts import (
    INGESTED_FILES,
    MODEL_FILE,
    current_version_folder,
    load_deployed_version,
    load_model,
    read_ingestion_record,
)
from riskwatch.state.history import (
    DEPLOYED,
    KEPT,
    QUARANTINED,
    WAITING,
    accept_quarantined,
    open_history,
    quarantined_batches,
    save_run,
    start_run,
)
from riskwatch.state.runs import RunFields
from riskwatch.state.stages import StageClock
from riskwatch.stats.comparison import paired_gain_resamples
from tests.helpers import write_config


def add_batch(config: Config, name: str, rows: int, seed: int, world: str = "stable") -> int:
    write_batch(config.input_folder_path / name, rows, seed=seed, world=world)
    return ingest_folder(config.input_folder_path, config.output_folder_path).batch


def decide(config: Config, watermark: int):
    connection = open_history(config.history_path)
    champion = load_deployed_version(current_version_folder(config.prod_deployment_path))
    data = read_ingested_data(config.output_folder_path)
    clock = StageClock()
    return assess(RunInputs(config, connection, champion, data, watermark), clock), clock


def test_each_row_keeps_the_batch_it_arrived_in(deployed: Config):
    data = read_ingested_data(deployed.output_folder_path)
    assert data.latest_batch == 1 and set(np.unique(data.batch)) == {1}
    assert add_batch(deployed, "later.csv", 500, seed=40) == 2
    data = read_ingested_data(deployed.output_folder_path)
    assert int((data.batch == 2).sum()) == 500 and data.batches[-1].files == ("later.csv",)
    book = read_batch_book(deployed.output_folder_path)  # kept in the file's order too, and the same as by hash
    assert np.array_equal(book.row_batches, data.batch) and np.array_equal(book.batch_of(data.hashes), data.batch)
    # a rebuild (a file removed for good, --fresh) keeps every remaining row's batch
    (deployed.input_folder_path / "clients_a.csv").unlink()
    ingest_folder(deployed.input_folder_path, deployed.output_folder_path, fresh=True)
    rebuilt = read_ingested_data(deployed.output_folder_path)
    assert rebuilt.rows == data.rows - 600 and int((rebuilt.batch == 2).sum()) == 500
    assert np.array_equal(read_batch_book(deployed.output_folder_path).row_batches, rebuilt.batch)
    assert read_batch_book(deployed.output_folder_path).latest == 2  # nothing new arrived, so no new batch


def test_rows_ingested_before_batches_were_kept_are_the_first_batch(deployed: Config):
    (deployed.output_folder_path / "rowbatches.npz").unlink()  # as an earlier version of the project left it
    assert add_batch(deployed, "later.csv", 300, seed=45) == 2
    data = read_ingested_data(deployed.output_folder_path)
    assert int((data.batch == 1).sum()) == data.rows - 300 and int((data.batch == 2).sum()) == 300


def test_too_few_new_rows_wait(deployed: Config):
    add_batch(deployed, "tiny.csv", 40, seed=41)
    decision, _ = decide(deployed, watermark=1)
    assert decision.outcome == WAITING and decision.new_rows == 40 and decision.findings.model_drift is None
    assert "fewer than the 100 a drift test needs" in decision.decision


def test_a_stable_batch_is_judged_against_the_test_score_and_the_training_window(deployed: Config):
    add_batch(deployed, "stable.csv", 1500, seed=42)
    decision, clock = decide(deployed, watermark=1)
    assert decision.outcome == KEPT and not decision.findings.triggers and not decision.action.candidates
    assert decision.findings.model_drift.reference.endswith("(the test data, scored when it was deployed)")
    reference = decision.findings.data_reference
    assert reference is not None and reference.window is not None and reference.run_id is None
    assert (reference.first_batch, reference.last_batch) == (1, 1) and reference.rows.size > 0
    assert reference.describe().startswith("the serving model's training window: all rows, batch 1")
    window = decision.action.window
    assert window is not None and window.first_batch == 2  # only rows held out when they came
    fields = decision.history_fields()
    assert fields.outcome == KEPT and fields.first_batch == 2 and fields.last_batch == 2
    assert fields.data_drift_reference == reference.describe()  # the sentence, made from the fields once
    assert (fields.data_reference_first_batch, fields.data_reference_last_batch) == (1, 1)
    assert fields.window_rows == decision.action.window.rows and 0 < fields.window_f1 < 1
    assert {"model drift", "data drift", "test data"} <= set(clock.timings)


def test_a_changed_world_gets_challengers_on_each_window_and_family_and_the_best_is_chosen(deployed: Config):
    add_batch(deployed, "drift.csv", 3000, seed=43, world="drifted")
    decision, clock = decide(deployed, watermark=1)
    assert decision.findings.model_drift.drifted and decision.findings.triggers
    assert decision.findings.calibration_test.miscalibrated  # a changed relationship moves the probabilities too
    assert [candidate.name for candidate in decision.action.candidates] == ["recalibrated/linear"] + [
        f"{window}/{family}" for family in MODEL_FAMILIES for window in ("all", "recent", "weighted")
    ]
    assert len({candidate.folder for candidate in decision.action.candidates}) == 10
    recent = next(candidate for candidate in decision.action.candidates if candidate.window.name == "recent")
    assert recent.window.first_batch == 2 and recent.window.rows == 3000 - decision.action.holdout_rows
    assert decision.action.gate.best.recent_f1 == max(candidate.recent_f1 for candidate in decision.action.candidates)
    assert decision.outcome == DEPLOYED and decision.deploy_folder == decision.action.gate.best.folder
    assert (decision.deploy_folder / "metrics.json").is_file()
    fields = decision.history_fields()
    assert fields.winning_window == decision.action.gate.best.window.name and len(fields.candidates) == 10
    assert fields.winning_family == decision.action.gate.best.family
    assert [stored.family for stored in fields.candidates] == [one.family for one in decision.action.candidates]
    assert fields.outcome is None  # fullprocess.py sets it once the deployment is done
    assert {"training", "scoring"} <= set(clock.timings)


def test_the_recent_window_can_be_the_last_n_rows_and_windows_can_be_chosen(deployed: Config):
    config = load_config(
        write_config(deployed.path.parent, monitoring={"candidate_windows": ["recent"], "recent_window_rows": 1200})
    )
    add_batch(config, "drift.csv", 3000, seed=43, world="drifted")
    decision, _ = decide(config, watermark=1)
    # the serving model is recalibrated on the same recent rows
    assert [candidate.window.rows for candidate in decision.action.candidates] == [1200] * (len(MODEL_FAMILIES) + 1)


def test_the_gate_asks_for_a_gain_that_holds_in_resamples():
    rng = np.random.default_rng(3)
    labels = rng.random(2000) < 0.3
    same = np.where(rng.random(2000) < 0.85, labels, ~labels)
    better = np.where(rng.random(2000) < 0.95, labels, ~labels)
    assert np.mean(paired_gain_resamples(labels, same, better, 2000) <= 0) < 0.01
    assert np.mean(paired_gain_resamples(labels, same, same, 2000) <= 0) == 1.0


@pytest.mark.parametrize("windows", [["all"], ["weighted"]])
def test_single_windows_train(deployed: Config, windows: list[str]):
    config = load_config(
        write_config(deployed.path.parent, monitoring={"candidate_windows": windows, "recalibrate": False})
    )
    add_batch(config, "drift.csv", 3000, seed=44, world="drifted")
    decision, _ = decide(config, watermark=1)
    assert [candidate.window.name for candidate in decision.action.candidates] == windows * len(MODEL_FAMILIES)


def test_doubled_odds_fail_the_calibration_test_and_the_recalibrated_serving_model_is_deployed(deployed: Config):
    add_batch(deployed, "riskier.csv", 3000, seed=46, world="riskier")
    decision, _ = decide(deployed, watermark=1)
    findings = decision.findings
    calibration = findings.calibration_test
    assert calibration.miscalibrated and calibration.observed_exits > calibration.expected_high
    assert calibration.gap > 0.3 and "observed 1,005 (+38%)" in calibration.describe()
    assert any(trigger.startswith("miscalibration (expected") for trigger in findings.triggers)
    first = decision.action.candidates[0]
    assert first.name == "recalibrated/linear" and first.window.recalibrated_from_batch == 2
    # the serving model's coefficients, all scaled by one slope: the same ranking, new probabilities
    serving = load_model(current_version_folder(deployed.prod_deployment_path) / MODEL_FILE)
    refitted = load_model(first.folder / MODEL_FILE)
    ratio = coefficients(refitted) / coefficients(serving)
    assert np.allclose(ratio, ratio[0]) and not np.isclose(ratio[0], 1.0)
    gate = decision.action.gate
    assert decision.outcome == DEPLOYED and gate.rule == "calibration" and gate.challenger_loss < gate.champion_loss
    assert "better calibrated: log loss" in gate.sentence
    fields = decision.history_fields()
    assert fields.miscalibrated is True and fields.observed_exits == calibration.observed_exits
    assert fields.expected_exits_low < fields.expected_exits < fields.expected_exits_high < fields.observed_exits
    assert fields.gate_rule == "calibration" and fields.challenger_recent_log_loss < fields.champion_recent_log_loss


def coefficients(estimator: object) -> np.ndarray:
    return np.asarray(estimator.estimator.named_steps["classifier"].coef_).reshape(-1)  # type: ignore[attr-defined]


def test_a_stable_batch_keeps_its_exits_within_their_interval_and_the_slope_is_recorded(deployed: Config):
    add_batch(deployed, "stable.csv", 3000, seed=47)
    decision, _ = decide(deployed, watermark=1)
    calibration = decision.findings.calibration_test
    assert calibration.expected_low <= calibration.observed_exits <= calibration.expected_high
    # the small project's model (1,000 rows) is too flat: its slope, 1.26, is past the 0.2 tolerance
    assert calibration.slope_low > 1.0 and calibration.miscalibrated
    assert decision.history_fields().calibration_slope == round(calibration.slope, 6)


def test_with_recalibration_off_a_miscalibrated_model_is_kept_and_the_decision_says_why(deployed: Config):
    monitoring = {"recalibrate": False, "retrain_on": "model_drift"}
    config = load_config(write_config(deployed.path.parent, monitoring=monitoring))
    add_batch(config, "riskier.csv", 3000, seed=46, world="riskier")
    decision, _ = decide(config, watermark=1)
    assert decision.findings.calibration_test.miscalibrated and not decision.findings.triggers
    assert decision.outcome == KEPT and "miscalibration found: expected" in decision.decision
    assert "recalibrate is off" in decision.decision


def add_faulty_batch(config: Config, name: str, rows: int, seed: int, labelled: bool = True) -> None:
    write_batch(config.input_folder_path / name, rows, seed=seed, labelled=labelled, faulty_join="lastyear_activity")
    ingest_folder(config.input_folder_path, config.output_folder_path)


def test_a_faulty_join_raises_a_data_integrity_alarm_and_nothing_is_trained_on_it(deployed: Config):
    add_faulty_batch(deployed, "faulty.csv", 3000, seed=48)
    decision, clock = decide(deployed, watermark=1)
    integrity = decision.findings.integrity
    assert integrity.broken and integrity.error > integrity.integrity_threshold > integrity.expected_error
    assert decision.outcome == QUARANTINED and not decision.findings.triggers and not decision.action.candidates
    assert decision.decision.startswith("data integrity alarm: the 3000 new row(s) of batch 2 keep each column's")
    assert "kept out of training until accepted (fullprocess.py --accept-run" in decision.decision
    fields = decision.history_fields()
    assert fields.integrity_alarm is True and fields.reconstruction_error == round(integrity.error, 6)
    assert "data integrity" in clock.timings


def test_stable_shifted_and_changed_batches_keep_their_integrity(deployed: Config):
    for seed, world in enumerate(("stable", "shifted", "drifted", "riskier"), start=60):
        add_batch(deployed, f"{world}.csv", 3000, seed=seed, world=world)
        decision, _ = decide(deployed, watermark=deployed_batches(deployed) - 1)
        assert not decision.findings.integrity.broken, (world, decision.findings.integrity.describe())
        assert decision.findings.integrity.multivariate_drift is (world in ("shifted", "drifted")), world


def deployed_batches(config: Config) -> int:
    return read_ingested_data(config.output_folder_path).latest_batch


def test_batches_under_an_alarm_are_kept_out_of_training_until_accepted(deployed: Config):
    connection = open_history(deployed.history_path)
    add_faulty_batch(deployed, "faulty.csv", 3000, seed=48)
    run = start_run(connection, "2026-12-07T10:00:00Z", 1, "v0001")
    decision, _ = decide(deployed, watermark=1)
    save_run(connection, run, decision.history_fields().updated(RunFields(outcome=decision.outcome)))
    assert quarantined_batches(connection) == [(2, 2)]
    add_batch(deployed, "drift.csv", 3000, seed=43, world="drifted")
    changed, _ = decide(deployed, watermark=2)
    data = read_ingested_data(deployed.output_folder_path)
    everything = next(one for one in changed.action.candidates if one.name == "all/linear")
    held_out = data.held_out(deployed.monitoring.holdout_fraction) & data.in_batches(2)
    assert everything.window.rows == data.rows - int((data.batch == 2).sum()) - int((held_out & (data.batch > 2)).sum())
    assert accept_quarantined(connection, run, "2026-12-07T11:00:00Z") == (2, 2)
    assert quarantined_batches(connection) == []
    with pytest.raises(PipelineError, match=f"run {run}'s batch was accepted already"):
        accept_quarantined(connection, run, "2026-12-07T12:00:00Z")
    with pytest.raises(PipelineError, match="raised no data integrity alarm; nothing to accept"):
        accept_quarantined(connection, run + 99, "2026-12-07T12:00:00Z")
    connection.close()


def test_unlabelled_rows_from_a_faulty_join_raise_the_alarm_too(deployed: Config):
    add_faulty_batch(deployed, "pending.csv", 3000, seed=49, labelled=False)
    data = read_ingested_data(deployed.output_folder_path)

    record = read_ingestion_record(deployed.output_folder_path / INGESTED_FILES)
    pending = [entry for entry in record.files if not entry.labelled]
    features = read_unlabelled_features(deployed.output_folder_path, pending)
    champion = load_deployed_version(current_version_folder(deployed.prod_deployment_path))
    inputs = RunInputs(deployed, open_history(deployed.history_path), champion, data, 1, run_id=7)
    decision = assess_unlabelled(inputs, StageClock(), features)
    assert decision.outcome == QUARANTINED and decision.findings.integrity.broken
    assert "they are ranked, but never trained on" in decision.decision


def test_while_a_change_is_followed_the_gate_judges_the_held_out_rows_of_all_its_batches(deployed: Config):
    add_batch(deployed, "first.csv", 2000, seed=50, world="drifted")
    connection = open_history(deployed.history_path)
    run = start_run(connection, "2026-12-07T10:00:00Z", 1, "v0001")
    undecided = RunFields(outcome=KEPT, first_batch=2, last_batch=2, drift_trigger="model drift (...)", confirmed=False)
    save_run(connection, run, undecided)  # drift called for retraining; the gate could not tell
    add_batch(deployed, "second.csv", 2000, seed=51, world="drifted")
    decision, _ = decide(deployed, watermark=2)
    data = read_ingested_data(deployed.output_folder_path)
    held_out = data.held_out(deployed.monitoring.holdout_fraction)
    assert decision.action.holdout_rows == int((held_out & data.in_batches(2)).sum())  # batches 2 and 3
    everything = next(one for one in decision.action.candidates if one.name == "all/linear")
    assert everything.window.rows == data.rows - decision.action.holdout_rows  # never trained on a judged row
    connection.close()
