"""Alerts: one JSON event per webhook, retried with backoff within a bounded time, never in the run's way.

Every receiver here is a local HTTP server started by the test on a free port.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from riskwatch.core.config import load_config
from riskwatch.data.generator import write_batch, write_shipped_data
from riskwatch.monitoring.alerts import deliver, dispatch
from riskwatch.state.history import read_runs
from tests.helpers import PROJECT_ROOT, free_port, run_script, write_config
from tests.webhook_receiver import EVENT, Receiver


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/hook"


def test_one_event_reaches_each_webhook_as_json_with_the_sentence(caplog):
    caplog.set_level(logging.INFO)
    with Receiver() as first, Receiver() as second:
        results = deliver([first.url, second.url], EVENT, deadline_seconds=5)
    assert [result.ok for result in results] == [True, True]
    for receiver in (first, second):
        (post,) = receiver.received
        assert post["type"] == "application/json" and post["json"]["text"] == EVENT.text
        assert post["json"]["kind"] == "deployed" and post["json"]["run_id"] == 4
    assert "s3cr3tT0ken" not in caplog.text and "sig=abcdef" not in caplog.text and "abcdef" not in caplog.text


def test_busy_receivers_are_retried_with_backoff_and_refusals_are_not():
    with Receiver([503, 503]) as busy, Receiver([400]) as refusing:
        retried, refused = deliver([busy.url, refusing.url], EVENT, deadline_seconds=8)
    assert retried.ok and retried.attempts == 3 and busy.attempts == 3
    assert not refused.ok and refused.attempts == 1 and refused.status == 400 and refusing.attempts == 1


def test_a_receiver_that_never_answers_or_is_not_there_costs_at_most_the_deadline():
    with Receiver(hang=True) as hanging:
        started = time.monotonic()
        results = deliver([hanging.url, closed_port_url()], EVENT, deadline_seconds=2)
        assert time.monotonic() - started < 3
    assert not any(result.ok for result in results)
    assert results[1].attempts >= 2  # a refused connection is tried again within the deadline


def test_only_http_webhooks_are_called():
    results = deliver(["file:///etc/passwd", "ftp://example.invalid/x"], EVENT, deadline_seconds=1)
    assert [result.attempts for result in results] == [0, 0]
    assert "not 'file'" in results[0].error


@pytest.mark.slow
def test_dispatch_returns_at_once_and_the_child_delivers_after(tmp_path: Path):
    with Receiver(delay=2) as slow:
        started = time.monotonic()
        child = dispatch([slow.url], EVENT, deadline_seconds=10, log_path=tmp_path / "alerts.log")
        assert time.monotonic() - started < 1 and not slow.received
        assert child.wait(timeout=20) == 0
    assert slow.received[0]["json"]["text"] == EVENT.text
    log_text = (tmp_path / "alerts.log").read_text()
    assert "alert deployed sent" in log_text and "s3cr3tT0ken" not in log_text


@pytest.mark.slow
def test_alerts_import_nothing_heavy():
    probe = "import sys, riskwatch.monitoring.alerts; print(sorted({'requests', 'numpy', 'pandas'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


@pytest.mark.slow
def test_the_monitoring_job_alerts_on_a_deployment_on_drift_it_cannot_fix_and_on_a_failure(tmp_path: Path):
    write_shipped_data(tmp_path)
    with Receiver() as hook:
        config = write_config(
            tmp_path,
            diagnostics={"package_index": "http://127.0.0.1:9/pypi", "index_timeout_seconds": 1},
            api={"url": "http://127.0.0.1:9"},
            monitoring={"webhooks": [hook.url], "alert_timeout_seconds": 5},
        )
        history = load_config(config).history_path

        def run_and_wait(expected: int) -> None:
            run_script("fullprocess.py", "--config", str(config), timeout=300)
            deadline = time.monotonic() + 15
            while len(hook.received) < expected and time.monotonic() < deadline:
                time.sleep(0.1)

        run_and_wait(1)  # the first deployment
        assert hook.received[0]["json"]["kind"] == "deployed"
        assert "deployed v0001" in hook.received[0]["json"]["text"]
        assert read_runs(history, limit=1)[0].alerts.kind == "deployed"
        run_and_wait(1)  # nothing new: no alert
        write_batch(tmp_path / "sourceddata" / "shift.csv", 2000, seed=33, world="shifted")
        run_and_wait(2)
        run = read_runs(history, limit=1)[0]
        expected = "unresolved_drift" if run.outcome == "kept" else "deployed"
        assert hook.received[1]["json"]["kind"] == expected and run.decision in hook.received[1]["json"]["text"]
        write_batch(tmp_path / "sourceddata" / "drift.csv", 3000, seed=32, world="drifted")
        (tmp_path / "testdata" / "testdata.csv").rename(tmp_path / "testdata.away")
        run_and_wait(3)
        assert hook.received[2]["json"]["kind"] == "failed" and "test data failed" in hook.received[2]["json"]["text"]
    assert len(hook.received) == 3
