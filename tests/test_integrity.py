"""A faulty join, as real processes: fullprocess.py flags it as a data integrity problem, deploys nothing trained on
it, records it and alerts; an operator accepts the batch later with ``fullprocess.py --accept-run``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from riskwatch.core.config import load_config
from riskwatch.data.generator import write_batch
from riskwatch.state.artifacts import current_version
from riskwatch.state.history import read_runs
from tests.fullprocess_runs import copy_first_run
from tests.helpers import run_script
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow


def test_a_faulty_join_is_flagged_kept_out_of_training_alerted_and_accepted_later(
    tmp_path: Path, first_run_template: Path
):
    with Receiver() as hook:
        config_path = copy_first_run(first_run_template, tmp_path, webhooks=[hook.url], alert_timeout_seconds=5)
        config = load_config(config_path)

        def run_and_wait(alerts: int) -> str:
            result = run_script("fullprocess.py", "--config", str(config_path), timeout=300)
            deadline = time.monotonic() + 15
            while len(hook.received) < alerts and time.monotonic() < deadline:
                time.sleep(0.1)
            return result.stderr

        for labelled, column, seed in ((True, "lastyear_activity", 71), (False, "number_of_employees", 72)):
            batch = tmp_path / "sourceddata" / f"faulty_{seed}.csv"
            write_batch(batch, 3000, seed=seed, labelled=labelled, faulty_join=column)
            log = run_and_wait(len(hook.received) + 1)
            run = read_runs(config.history_path, limit=1)[0]
            assert run.outcome == "quarantined" and run.integrity_alarm, run.decision
            assert run.reconstruction_error > run.reconstruction_threshold > run.reconstruction_expected
            assert "data integrity alarm: the 3000 new row(s)" in log and run.decision in log
            assert current_version(config.prod_deployment_path) == "v0001"  # nothing trained on it is deployed
            alert = hook.received[-1]["json"]
            assert alert["kind"] == "integrity" and run.decision in alert["text"]
            assert alert["details"]["reconstruction_error"] == run.reconstruction_error
            assert run.alerts is not None and run.alerts.kind == "integrity"
        labelled_run = read_runs(config.history_path, limit=2)[1]
        assert "kept out of training until accepted" in labelled_run.decision

    accepted = run_script("fullprocess.py", "--config", str(config_path), "--accept-run", str(labelled_run.id))
    assert accepted.returncode == 0 and f"accepted batch 2 of run {labelled_run.id}" in accepted.stderr
    stored = next(run for run in read_runs(config.history_path) if run.id == labelled_run.id)
    assert stored.integrity_accepted_at is not None
    again = run_script("fullprocess.py", "--config", str(config_path), "--accept-run", str(labelled_run.id))
    assert again.returncode == 1 and f"run {labelled_run.id}'s batch was accepted already" in again.stderr
    nothing = run_script("fullprocess.py", "--config", str(config_path), "--accept-run", "1")
    assert nothing.returncode == 1 and "run 1 raised no data integrity alarm; nothing to accept" in nothing.stderr
