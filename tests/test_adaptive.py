"""The monitoring job follows a world that changes, with the project's generator, as real processes: one
``fullprocess.py`` per run, as cron runs it.

Each scenario starts from the shipped data (10,000 clients of the first world, deployed by the
first run) and feeds batches to ``fullprocess.py`` one run at a time; the deployed model is
measured on a fresh 5,000-row sample of the world each batch came from, against a model fitted
on that world alone with the same pipeline. ``pytest -s`` prints the scenario table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.adaptive_harness import ChangingWorld, Step, format_steps

pytestmark = pytest.mark.slow

TABLE: list[Step] = []


@pytest.fixture(scope="module", autouse=True)
def print_table():
    yield
    if TABLE:
        print("\n" + format_steps(TABLE))


def quiet_tests_fired(step: Step) -> bool:
    """Whether the calibration or the data integrity test fired: on a stable batch, neither may."""
    return "calibration" in step.fired or "integrity" in step.fired


def test_a_twenty_stable_batches_trigger_at_most_one_retraining(tmp_path: Path, first_run_template: Path):
    world = ChangingWorld.start(tmp_path, "a", first_run_template)
    steps = [world.feed("stable", 2_000) for _ in range(20)]
    TABLE.extend(world.steps)
    assert world.retrained(steps) <= 1, format_steps(steps)
    assert all(step.deployed == "v0001" or step.ratio >= 0.97 for step in steps)
    assert not any(quiet_tests_fired(step) for step in steps), format_steps(steps)


def test_b_c_a_changed_world_is_followed_and_then_calms_down(tmp_path: Path, first_run_template: Path):
    world = ChangingWorld.start(tmp_path, "b, c", first_run_template)
    first = world.feed("drifted")
    # (b) the first changed batch triggers retraining and the deployed model follows the new world
    assert first.retrained and first.outcome == "deployed", format_steps(world.steps)
    assert first.ratio >= 0.95, format_steps(world.steps)
    more = [world.feed("drifted") for _ in range(2)]
    assert more[-1].ratio >= 0.98, format_steps(world.steps)
    # (c) the next 10 batches of the new world trigger at most 1 retraining
    later = [world.feed("drifted") for _ in range(10)]
    TABLE.extend(world.steps)
    assert world.retrained(later) <= 1, format_steps(world.steps)
    assert min(step.ratio for step in later) >= 0.95, format_steps(world.steps)


def test_d_a_shifted_population_never_gets_a_worse_model(tmp_path: Path, first_run_template: Path):
    world = ChangingWorld.start(tmp_path, "d", first_run_template)
    steps = [world.feed("shifted") for _ in range(3)]
    TABLE.extend(world.steps)
    for before, step in zip(world.steps, steps, strict=False):
        if step.deployed != before.deployed:  # replaced: the new model must not score worse on the shifted world
            assert step.f1 >= step.f1_before, format_steps(world.steps)


def test_e_a_change_and_a_return_are_both_followed(tmp_path: Path, first_run_template: Path):
    world = ChangingWorld.start(tmp_path, "e", first_run_template)
    away = [world.feed("drifted") for _ in range(2)]
    assert away[0].retrained and away[-1].ratio >= 0.95, format_steps(world.steps)
    back = [world.feed("stable") for _ in range(2)]
    TABLE.extend(world.steps)
    assert any(step.retrained for step in back), format_steps(world.steps)
    assert back[-1].ratio >= 0.95, format_steps(world.steps)


def test_g_a_world_whose_risk_is_not_log_linear_is_followed_by_another_model_family(
    tmp_path: Path, first_run_template: Path
):
    world = ChangingWorld.start(tmp_path, "g", first_run_template)
    steps = [world.feed("nonlinear") for _ in range(3)]
    TABLE.extend(world.steps)
    assert steps[0].retrained, format_steps(world.steps)
    assert steps[-1].family != "linear" and steps[-1].bayes >= 0.93, format_steps(world.steps)


def test_f_five_stable_batches_of_200000_rows_trigger_no_retraining(tmp_path: Path, first_run_template: Path):
    world = ChangingWorld.start(tmp_path, "f", first_run_template)
    steps = [world.feed("stable", 200_000) for _ in range(5)]
    TABLE.extend(world.steps)
    assert world.retrained(steps) == 0, format_steps(world.steps)
    assert not any(quiet_tests_fired(step) for step in steps), format_steps(world.steps)


def test_h_doubled_odds_are_repaired_within_two_batches(tmp_path: Path, first_run_template: Path):
    world = ChangingWorld.start(tmp_path, "h", first_run_template)
    steps = [world.feed("riskier") for _ in range(2)]
    TABLE.extend(world.steps)
    assert steps[0].fired != "-" and "calibration" in steps[0].fired, format_steps(world.steps)
    assert abs(steps[-1].mean_ratio - 1) <= 0.05, format_steps(world.steps)
    assert steps[-1].bayes >= 0.99, format_steps(world.steps)


def test_i_a_slow_change_is_followed_and_once_it_settles_the_alarms_stop(tmp_path: Path, first_run_template: Path):
    world = ChangingWorld.start(tmp_path, "i", first_run_template)
    ramp = [world.feed(f"ramp-{step}", 2_000) for step in range(1, 9)]
    settled = [world.feed("ramp-8", 2_000) for _ in range(5)]
    TABLE.extend(world.steps)
    assert min(step.bayes for step in ramp + settled) >= 0.97, format_steps(world.steps)
    assert world.retrained(settled) <= 1, format_steps(world.steps)
